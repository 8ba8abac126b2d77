"""Study storage: a local Optuna journal file by default (:mod:`archgen.journal`), PostgreSQL (or
any SQLAlchemy URL) for many workers on many machines. :func:`open_storage` checks a ``--storage``
value before SQLAlchemy sees it (a URL, a known dialect, an installed driver, an SQLite file in
an existing directory) and reports every problem in one line with passwords redacted
(:mod:`archgen.storage_errors`). Trials of dead workers and the locks of a search are
:mod:`archgen.liveness`'s.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage

import archgen.liveness as liveness
from archgen.journal import open_journal
from archgen.redact import secrets_of
from archgen.storage_errors import config_error, driver_detail, quote

if TYPE_CHECKING:
    from sqlalchemy.engine.url import URL


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """``None``: the journal file ``run_dir/study.journal`` (checked and, when only its tail is
    torn, repaired first: :func:`archgen.journal.check_journal`); otherwise an RDB URL.

    RDB storages get heartbeats so other workers can fail and retry the trials of a killed
    worker. Raises SearchConfigError (one line, passwords redacted) for a bad value, an
    unreachable database, a damaged journal.
    """
    if url is None:
        return open_journal(Path(run_dir))
    if not isinstance(url, str):
        raise config_error(f"storage must be a database URL string (e.g. postgresql://user@host:5432/db), "
                           f"not {type(url).__name__} {quote(url)}")
    secrets = secrets_of(url)
    if not re.match(r"^[A-Za-z][A-Za-z0-9_+]*://", url):
        raise config_error(f"--storage {quote(url)} is not a database URL (e.g. postgresql://user@host:5432/db; "
                           "leave --storage out for a journal file in the run directory)", secrets)
    parsed = _parse_url(url, secrets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(parsed)},
                heartbeat_interval=liveness.HEARTBEAT_INTERVAL_S,
                grace_period=liveness.GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=liveness.retry_stale,
            )
    except Exception as exc:  # SQLAlchemy/driver errors vary by backend
        raise config_error(f"cannot open storage {quote(url)}: {driver_detail(exc)}", secrets) from None


def _parse_url(url: str, secrets: set[str]) -> URL:
    """The SQLAlchemy URL, with its dialect and driver checked: one-line errors for what
    SQLAlchemy would report with a traceback or a message that echoes the URL."""
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import NoSuchModuleError

    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, ValueError (a port that is no number), ...
        raise config_error(f"--storage {quote(url)} cannot be parsed as a database URL "
                           "(like postgresql://user@host:5432/db; percent-encode @ : / ? # in a password)",
                           secrets) from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise config_error(f"--storage {quote(url)}: unknown database dialect {parsed.drivername[:40]!r} "
                           "(e.g. postgresql, postgresql+psycopg, mysql, sqlite)", secrets) from None
    except Exception as exc:
        raise config_error(f"--storage {quote(url)}: {driver_detail(exc)}", secrets) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise config_error(f"--storage {quote(url)}: the database driver for {parsed.drivername[:40]!r} "
                           f"is not installed ({driver_detail(exc)})", secrets) from None
    except Exception:  # left to create_engine, which reports it
        pass
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(url, parsed.database, secrets)
    return parsed


def _check_sqlite(url: str, database: str | None, secrets: set[str]) -> None:
    if not database or database == ":memory:":
        raise config_error(f"--storage {quote(url)} is an in-memory database that every worker would see "
                           "empty and that is lost at exit; give a file, e.g. sqlite:///runs/study.db", secrets)
    if database.startswith("file:"):
        return  # an SQLite URI (uri=true): SQLite reports its own errors
    path = Path(database)
    if path.is_dir():
        raise config_error(f"--storage {quote(url)}: {quote(str(path))} is a directory, not a database file",
                           secrets)
    parent = path.parent
    if not parent.is_dir():
        raise config_error(f"--storage {quote(url)}: directory {quote(str(parent))} does not exist "
                           "(create it first; sqlite:////abs/path/x.db is an absolute path, "
                           "sqlite:///rel/path/x.db a relative one)", secrets)


def _connect_args(url: URL | str) -> dict[str, int]:
    """Driver options: a connect timeout for PostgreSQL (``url``: a string or SQLAlchemy URL)."""
    backend = url.get_backend_name() if hasattr(url, "get_backend_name") else str(url).split(":", 1)[0]
    return {"connect_timeout": 5} if backend.split("+")[0] == "postgresql" else {}

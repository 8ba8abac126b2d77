"""What a storage's errors mean and how archgen reports them: one-line SearchConfigErrors with
passwords redacted (:func:`config_error`), the first line of a driver's message
(:func:`driver_detail`), whether an error says the database connection is gone
(:func:`is_connection_error`), and retrying a call while it is (:func:`retry_storage`).

Every message passes through :func:`archgen.redact.redact` / :func:`archgen.redact.redact_text`:
a ``--storage`` URL may carry a password, and driver errors often echo it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from archgen.errors import SearchConfigError
from archgen.redact import redact, redact_text, secrets_of

log = logging.getLogger(__name__)

QUOTE_CHARS = 80  # at most this much of a bad value goes into a message
DETAIL_CHARS = 200  # at most this much of a driver's error message
# How long a worker keeps retrying a storage that stopped answering (a PostgreSQL restart takes
# a few seconds) before it gives up with a one-line message.
STORAGE_RETRY_S = 30.0
_DRIVER_MODULES = ("psycopg", "psycopg2")

T = TypeVar("T")


class StorageLostError(SearchConfigError):
    """The study's storage stopped answering and did not come back within STORAGE_RETRY_S."""


def quote(value: object) -> str:
    """A redacted excerpt of a bad value for a one-line message."""
    shown = redact(value) if isinstance(value, str) else redact_text(repr(value))
    if len(shown) > QUOTE_CHARS:
        shown = f"{shown[: QUOTE_CHARS - 3]}... ({len(shown)} characters)"
    return repr(shown)


def config_error(message: str, secrets: Iterable[str] = ()) -> SearchConfigError:
    """A SearchConfigError of one line, passwords (and the literal ``secrets``) redacted."""
    return SearchConfigError(" ".join(redact_text(message, secrets).split()))


def driver_detail(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's ``(module.Class)`` prefix."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"^\([\w.]+\)\s*", "", first)
    if len(first) > DETAIL_CHARS:
        first = first[: DETAIL_CHARS - 3] + "..."
    return first


def _from_driver(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _DRIVER_MODULES


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the database connection is gone:
    SQLAlchemy wraps the driver's error, Optuna wraps SQLAlchemy's in StorageInternalError."""
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if _from_driver(e) and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_storage(call: Callable[[], T], what: str, where: str, budget_s: float | None = None) -> T:
    """``call()``, retried with a short backoff while the database connection is down (pooled
    connections are pre-pinged, so the retry reconnects); after ``budget_s`` seconds a
    StorageLostError names the storage (password redacted) and what was being done."""
    budget = STORAGE_RETRY_S if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = 0.2
    warned = False
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            if time.monotonic() + delay > deadline:
                first = _driver_message(exc)
                raise StorageLostError(
                    f"lost the connection to the storage {redact(where)} while {what} and it did not come "
                    f"back within {budget:g} s ({redact_text(first, secrets_of(where))}); rerun the same command to resume"
                ) from None
            if not warned:
                log.warning("lost the connection to the storage %s while %s; reconnecting (up to %g s)",
                            redact(where), what, budget)
                warned = True
            time.sleep(delay)
            delay = min(2 * delay, 2.0)


def _driver_message(exc: BaseException) -> str:
    """The first line of the innermost database error behind ``exc`` (Optuna's wrapper says
    "invalid data in the commit" whatever happened)."""
    import sqlalchemy.exc as sa_exc

    chosen: BaseException = exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.SQLAlchemyError) or _from_driver(e):
            chosen = e
        e = e.__cause__ or e.__context__
    if isinstance(chosen, sa_exc.DBAPIError) and chosen.orig is not None:
        chosen = chosen.orig
    return driver_detail(chosen)

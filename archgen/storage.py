"""Study storage: a local Optuna journal file by default, PostgreSQL (or any SQLAlchemy URL) for
many workers on many machines; a lock that hands out trial slots so N workers finish exactly
``trials`` trials; and recovery of trials left RUNNING by a killed worker.

Every message this module logs or raises passes through :func:`redact` / :func:`redact_text`:
a ``--storage`` URL may carry a password, and driver errors often echo it.

The journal file is checked before Optuna reads it (:func:`check_journal`): a torn tail left by a
killed write or a full disk is cut off (the bytes are kept in a side file), damage in the middle
is refused with the line number, and a journal lock left behind by a killed process is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from archgen.errors import SearchConfigError
from archgen.redact import redact, redact_text, secrets_of

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20
RETRY_ATTR = "retry_of"


JOURNAL_NAME = "study.journal"
# A journal lock (Optuna's ``<journal>.lock``) is held for one append: a write and an fsync.
# One older than this was left by a killed process; Optuna itself forcibly releases a lock after
# 30 s without journal writes (its grace period), so removing it earlier changes nothing for a
# live writer.
STALE_LOCK_S = 30.0
QUOTE_CHARS = 80  # at most this much of a bad value goes into a message
DETAIL_CHARS = 200  # at most this much of a driver's error message

def _quote(value: object) -> str:
    """A redacted excerpt of a bad value for a one-line message."""
    shown = redact(value) if isinstance(value, str) else redact_text(repr(value))
    if len(shown) > QUOTE_CHARS:
        shown = f"{shown[: QUOTE_CHARS - 3]}... ({len(shown)} characters)"
    return repr(shown)


def _error(message: str, secrets: Iterable[str] = ()) -> SearchConfigError:
    return SearchConfigError(" ".join(redact_text(message, secrets).split()))


# -- opening a storage ---------------------------------------------------------------------------


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """``None``: the journal file ``run_dir/study.journal`` (checked and, when only its tail is
    torn, repaired first: :func:`check_journal`); otherwise an RDB URL.

    RDB storages get heartbeats so other workers can fail and retry the trials of a killed
    worker. Raises SearchConfigError (one line, passwords redacted) for a bad value, an
    unreachable database, a damaged journal.
    """
    if url is None:
        return _open_journal(Path(run_dir))
    if not isinstance(url, str):
        raise _error(f"storage must be a database URL string (e.g. postgresql://user@host:5432/db), "
                     f"not {type(url).__name__} {_quote(url)}")
    secrets = secrets_of(url)
    if not re.match(r"^[A-Za-z][A-Za-z0-9_+]*://", url):
        raise _error(f"--storage {_quote(url)} is not a database URL (e.g. postgresql://user@host:5432/db; "
                     "leave --storage out for a journal file in the run directory)", secrets)
    parsed = _parse_url(url, secrets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(parsed)},
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=_retry_stale,
            )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary by backend
        raise _error(f"cannot open storage {_quote(url)}: {_detail(exc)}", secrets) from None


def _parse_url(url: str, secrets: set[str]) -> Any:
    """The SQLAlchemy URL, with its dialect and driver checked: one-line errors for what
    SQLAlchemy would report with a traceback or a message that echoes the URL."""
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import NoSuchModuleError

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (a port that is no number), ...
        raise _error(f"--storage {_quote(url)} cannot be parsed as a database URL "
                     "(like postgresql://user@host:5432/db; percent-encode @ : / ? # in a password)",
                     secrets) from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise _error(f"--storage {_quote(url)}: unknown database dialect {parsed.drivername[:40]!r} "
                     "(e.g. postgresql, postgresql+psycopg, mysql, sqlite)", secrets) from None
    except Exception as exc:  # noqa: BLE001
        raise _error(f"--storage {_quote(url)}: {_detail(exc)}", secrets) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise _error(f"--storage {_quote(url)}: the database driver for {parsed.drivername[:40]!r} "
                     f"is not installed ({_detail(exc)})", secrets) from None
    except Exception:  # noqa: BLE001 - left to create_engine, which reports it
        pass
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(url, parsed.database, secrets)
    return parsed


def _check_sqlite(url: str, database: str | None, secrets: set[str]) -> None:
    if not database or database == ":memory:":
        raise _error(f"--storage {_quote(url)} is an in-memory database that every worker would see "
                     "empty and that is lost at exit; give a file, e.g. sqlite:///runs/study.db", secrets)
    if database.startswith("file:"):
        return  # an SQLite URI (uri=true): SQLite reports its own errors
    path = Path(database)
    if path.is_dir():
        raise _error(f"--storage {_quote(url)}: {_quote(str(path))} is a directory, not a database file",
                     secrets)
    parent = path.parent
    if not parent.is_dir():
        raise _error(f"--storage {_quote(url)}: directory {_quote(str(parent))} does not exist "
                     "(create it first; sqlite:////abs/path/x.db is an absolute path, "
                     "sqlite:///rel/path/x.db a relative one)", secrets)


def _detail(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's ``(module.Class)`` prefix."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"^\([\w.]+\)\s*", "", first)
    if len(first) > DETAIL_CHARS:
        first = first[: DETAIL_CHARS - 3] + "..."
    return first


def _connect_args(url: Any) -> dict[str, Any]:
    """Driver options: a connect timeout for PostgreSQL (``url``: a string or SQLAlchemy URL)."""
    backend = url.get_backend_name() if hasattr(url, "get_backend_name") else str(url).split(":", 1)[0]
    return {"connect_timeout": 5} if backend.split("+")[0] == "postgresql" else {}


# -- the journal file ----------------------------------------------------------------------------

_LOCK_SUFFIX = ".lock"  # optuna.storages.journal._file.LOCK_FILE_SUFFIX
_RENAME_SUFFIX = ".rename"  # ... RENAME_FILE_SUFFIX: a lock being released
_MAX_LINE = 64 << 20  # a longer "line" is damage (NUL runs without a newline), read in pieces
_CHUNK = 1 << 20


@dataclass(frozen=True)
class JournalCheck:
    """What :func:`scan_journal` found: the journal is ``ok``, or has a torn tail (repairable:
    everything from ``bad_line`` on is undecodable), or damage in the ``middle``."""

    path: Path
    size: int  # bytes
    good_end: int  # byte offset just after the last good record before the first bad line
    records: int  # good records before the first bad line
    bad_line: int | None = None  # 1-based number of the first undecodable line
    bad_lines: int = 0  # lines from the first bad one to the end of the file
    next_good_line: int | None = None  # first good record after a bad line: damage in the middle
    unterminated: bool = False  # the last line is a complete record without its line end

    @property
    def ok(self) -> bool:
        return self.bad_line is None and not self.unterminated

    @property
    def middle(self) -> bool:
        return self.next_good_line is not None


def _is_record(line: bytes) -> bool:
    """A line Optuna's journal can apply: a JSON object with an ``op_code``."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(obj, dict) and "op_code" in obj


def _lines(fh: Any) -> Iterator[tuple[bytes | None, int, bool]]:
    """(line or None when longer than _MAX_LINE, its length in bytes, ends with a newline)."""
    while True:
        line = fh.readline(_MAX_LINE)
        if not line:
            return
        if line.endswith(b"\n") or len(line) < _MAX_LINE:
            yield line, len(line), line.endswith(b"\n")
            continue
        n = len(line)  # an overlong line: count its bytes without keeping them
        while True:
            more = fh.readline(_CHUNK)
            n += len(more)
            if not more or more.endswith(b"\n"):
                yield None, n, more.endswith(b"\n")
                break


def scan_journal(path: Path) -> JournalCheck:
    """Check every line of an Optuna journal file the way Optuna reads it (one JSON object per
    line, each ending with a newline). Reads only; raises SearchConfigError when unreadable."""
    path = Path(path)
    size = good_end = records = bad_lines = 0
    bad_line = next_good = None
    unterminated = False
    try:
        with open(path, "rb") as fh:
            for lineno, (line, length, terminated) in enumerate(_lines(fh), start=1):
                size += length
                valid = line is not None and _is_record(line)
                if bad_line is None:
                    if valid and terminated:
                        good_end += length
                        records += 1
                    elif valid:
                        unterminated = True  # only the last line can lack its newline
                    else:
                        bad_line, bad_lines = lineno, 1
                else:
                    bad_lines += 0 if valid else 1
                    if valid and next_good is None:
                        next_good = lineno
    except OSError as exc:
        raise _error(f"{path}: cannot read the study journal ({exc.strerror or exc})") from None
    return JournalCheck(path, size, good_end, records, bad_line, bad_lines, next_good, unterminated)


def check_journal(path: Path) -> JournalCheck:
    """Make ``path`` (an Optuna journal file) safe to resume from, before Optuna reads it.

    * a journal lock (``<path>.lock``) older than STALE_LOCK_S was left by a killed process:
      removed (Optuna would wait for it, or spin forever when its link dangles);
    * valid: untouched (not even rewritten);
    * a torn tail (a write killed mid-line, a full disk, NUL bytes at the end): the undecodable
      lines from the first bad one to the end. Their bytes are copied to
      ``<path>.damaged-<UTC time>``, the journal is cut after its last good record (good prefix
      to a temporary file, fsync, rename; in place when there is no room for a copy), and a
      warning names the file, the bytes and lines dropped and the side file;
    * a last record complete but for its newline: the newline is added;
    * an undecodable line with valid records after it: SearchConfigError naming the file and
      the line and how to recover; nothing is changed.

    The repair runs under Optuna's journal lock, so a worker appending at that moment is not
    mistaken for a torn write. Returns what it found (before any repair).
    """
    path = Path(path)
    _clear_stale_locks(path)
    if not path.exists():
        return JournalCheck(path, 0, 0, 0)
    found = scan_journal(path)
    if found.ok:
        return found
    with _journal_lock(path):
        found = scan_journal(path)  # a write in flight during the first look has finished now
        if found.ok:
            return found
        if found.middle:
            keep = found.bad_line - 1
            raise _error(
                f"{path}: line {found.bad_line} is damaged and valid records follow it, so it cannot "
                f"be repaired automatically; move the file away (e.g. to {path.name}.bad) to start "
                f"afresh, or keep only its first {keep} line(s) (head -n {keep}) to resume from them"
            )
        _repair(path, found)
    return found


def _repair(path: Path, found: JournalCheck) -> None:
    if found.bad_line is None:  # only the newline of the last, complete record is missing
        try:
            with open(path, "ab") as fh:
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _error(f"{path}: cannot add the missing line end to its last record "
                         f"({exc.strerror or exc}); free some space and rerun") from None
        log.warning("%s: the last record had no line end (a write cut short); added it, no record lost", path)
        return
    side = _save_tail(path, found.good_end)
    _cut(path, found.good_end)
    log.warning(
        "%s: torn tail (a killed write or a full disk): dropped %d byte(s) in %d line(s) after record %d "
        "(line %d on); the dropped bytes are kept in %s",
        path, found.size - found.good_end, found.bad_lines, found.records, found.bad_line, side,
    )


def _save_tail(path: Path, offset: int) -> Path:
    """Copy ``path``'s bytes from ``offset`` on into a new ``<path>.damaged-<time>`` file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(1000):
        side = path.with_name(f"{path.name}.damaged-{stamp}" + (f"-{i}" if i else ""))
        try:
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _error(f"{path}: cannot save its damaged tail in {side} ({exc.strerror or exc}); "
                         "nothing was changed") from None
    else:
        raise _error(f"{path}: too many {path.name}.damaged-* files; move them away and rerun")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            src.seek(offset)
            while chunk := src.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            side.unlink()
        raise _error(f"{path}: cannot save its damaged tail in {side} ({exc.strerror or exc}); nothing was "
                     "changed; free some space and rerun") from None
    return side


def _cut(path: Path, size: int) -> None:
    """Cut ``path`` to its first ``size`` bytes: the prefix into a temporary file, fsync, rename
    (readers see the old file or the new one); in place when a copy does not fit (a full disk)
    or the journal is a symbolic link."""
    if not path.is_symlink():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".repair", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                left = size
                while left > 0 and (chunk := src.read(min(_CHUNK, left))):
                    out.write(chunk)
                    left -= len(chunk)
                out.flush()
                os.fchmod(out.fileno(), os.stat(path).st_mode & 0o7777)
                os.fsync(out.fileno())
            if left:
                raise OSError(errno.EIO, "the journal shrank while being repaired")
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            return
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("%s: no room for a repaired copy (%s); cutting it in place", path, exc.strerror or exc)
    try:
        os.truncate(path, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _error(f"{path}: cannot cut off its damaged tail ({exc.strerror or exc}); the tail is saved "
                     "next to it; move the journal away to start afresh") from None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fs_now(directory: Path) -> float:
    """The current time by the clock of the file system holding ``directory`` (an NFS server's
    clock may differ from ours), for comparing with modification times there."""
    try:
        with tempfile.TemporaryFile(dir=directory) as fh:
            return os.fstat(fh.fileno()).st_mtime
    except OSError:
        return time.time()


def _remove_if_stale(lock: Path, now: float | None = None) -> bool:
    """Remove ``lock`` when older than STALE_LOCK_S; True when it is gone (or was already)."""
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    age = (now if now is not None else _fs_now(lock.parent)) - st.st_mtime
    if age <= STALE_LOCK_S:
        return False
    moved = Path(f"{lock}{uuid.uuid4()}{_RENAME_SUFFIX}")
    try:
        os.rename(lock, moved)  # atomic: of two removers only one gets it
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("%s: cannot remove a stale journal lock (%s)", lock, exc.strerror or exc)
        return False
    try:
        now_st = os.lstat(moved)
        if (now_st.st_ino, now_st.st_mtime) != (st.st_ino, st.st_mtime) and not os.path.lexists(lock):
            os.rename(moved, lock)  # a fresh lock replaced the stale one meanwhile: put it back
            return False
        os.unlink(moved)
    except OSError:
        pass
    log.warning("%s: removed a journal lock left behind by a killed process (%.0f s old)", lock, age)
    return True


def _clear_stale_locks(path: Path) -> None:
    lock = Path(f"{path}{_LOCK_SUFFIX}")
    leftovers = list(path.parent.glob(f"{_glob_escape(lock.name)}*{_RENAME_SUFFIX}"))
    if not os.path.lexists(lock) and not leftovers:
        return
    now = _fs_now(path.parent)
    if os.path.lexists(lock):
        _remove_if_stale(lock, now)
    for p in leftovers:  # a release killed between its rename and its unlink
        with contextlib.suppress(OSError):
            if now - os.lstat(p).st_mtime > STALE_LOCK_S:
                p.unlink()


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def _journal_lock(path: Path) -> Iterator[None]:
    """Optuna's journal lock (the symlink ``<path>.lock``, as JournalFileSymlinkLock takes it;
    JournalFileOpenLock uses the same name), so no worker appends while the journal is repaired.
    A lock older than STALE_LOCK_S is a killed process's and is removed."""
    lock = Path(f"{path}{_LOCK_SUFFIX}")
    target = str(path.absolute())
    deadline = time.monotonic() + 2 * STALE_LOCK_S + 10
    while True:
        try:
            os.symlink(target, lock)
            break
        except FileExistsError:
            if _remove_if_stale(lock):
                continue
            if time.monotonic() > deadline:
                raise _error(f"{lock}: the journal stays locked by another process; stop the other "
                             "archgen search (or remove the lock if none runs) and rerun") from None
            time.sleep(0.1)
        except OSError as exc:
            raise _error(f"{lock}: cannot lock the study journal ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        moved = f"{lock}{uuid.uuid4()}{_RENAME_SUFFIX}"
        with contextlib.suppress(OSError):
            os.rename(lock, moved)
            os.unlink(moved)


def _open_journal(run_dir: Path) -> JournalStorage:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    path = run_dir / JOURNAL_NAME
    if path.exists() and not path.is_file():
        raise _error(f"{path} exists and is not a file; move it away")
    check_journal(path)
    try:
        # An absolute path: Optuna's lock is a symbolic link to it, and a link to a relative
        # path dangles (it resolves from the link's directory), which makes Optuna's lock wait
        # spin forever on a lock left by a killed process.
        return JournalStorage(JournalFileBackend(str(path.absolute())))
    except OSError as exc:
        raise _error(f"{path}: cannot open the study journal ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - records that decode but that Optuna cannot apply
        raise _error(f"{path}: not a usable Optuna journal ({type(exc).__name__}: {_detail(exc)}); "
                     "move it away to start afresh") from None


# -- trials of dead workers, storage outages -----------------------------------------------------

# The user attribute that names the process running a trial (``worker_tag``), set right after
# ``study.ask()``: a trial whose process is gone from this machine is failed at once instead of
# after the heartbeat grace period.
WORKER_ATTR = "worker"
# Why a trial was failed without a result of its own (its worker died, the storage went away).
# Not "failure": clean failures use up a trial slot, lost trials are retried instead.
LOST_ATTR = "lost"
# How long a worker keeps retrying a storage that stopped answering (a PostgreSQL restart takes
# a few seconds) before it gives up with a one-line message.
STORAGE_RETRY_S = 30.0

T = TypeVar("T")


class StorageLostError(SearchConfigError):
    """The study's storage stopped answering and did not come back within STORAGE_RETRY_S."""


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
        if type(e).__module__.split(".")[0] in ("psycopg", "psycopg2") and type(e).__name__ in (
            "OperationalError", "InterfaceError",
        ):
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
        if isinstance(e, sa_exc.SQLAlchemyError) or type(e).__module__.split(".")[0] in ("psycopg", "psycopg2"):
            chosen = e
        e = e.__cause__ or e.__context__
    if isinstance(chosen, sa_exc.DBAPIError) and chosen.orig is not None:
        chosen = chosen.orig
    return _detail(chosen)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(start time, state) of a process from /proc, None when it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    return fields[19], fields[0]


def _machine() -> str | None:
    """This machine and PID namespace (hostname alone can repeat across containers), or None
    where /proc cannot tell whether a process is alive."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{pidns}"


def worker_tag(pid: int | None = None) -> str:
    """Names a worker process: machine, PID namespace, PID and the PID's start time (PIDs are
    reused)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return f"{_machine() or socket.gethostname() + '/?'}/{pid}/{stat[0] if stat else '?'}"


def tag_is_dead(tag: str) -> bool:
    """True only when ``tag``'s process certainly no longer runs: it is on this machine (and PID
    namespace) and its PID is gone, a zombie, or now another process."""
    machine, _, rest = tag.rpartition("/")  # rest: start time
    machine, _, pid = machine.rpartition("/")
    if not pid.isdigit() or rest == "?" or machine != _machine():
        return False
    stat = _proc_stat(int(pid))
    return stat is None or stat[1] in ("Z", "X", "x") or stat[0] != rest


def fail_lost_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str,
                    announce: bool = True) -> bool:
    """Fail a RUNNING trial that no worker will finish and retry its parameters once. Only the
    process whose state change succeeds retries it; False when it was already finished.
    ``announce``: one warning line (else at INFO level, for a caller that reports it itself)."""
    storage = study._storage  # Optuna's per-trial-id storage calls; the trial may be anyone's
    try:
        storage.set_trial_user_attr(trial._trial_id, LOST_ATTR, reason)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    log.log(logging.WARNING if announce else logging.INFO, "trial %d: %s; it is failed and retried",
            trial.number, reason)
    _retry_stale(study, storage.get_trial(trial._trial_id), announce=False)
    return True


def fail_dead_trials(study: optuna.Study, unmarked_since: dict[int, float] | None = None,
                     announce: bool = True) -> list[int]:
    """Fail (and retry once) the RUNNING trials whose worker is gone; returns the numbers of
    those this call failed (``announce``: see ``fail_lost_trial``).

    * a trial tagged by a process of this machine that no longer runs: at once;
    * a trial without a heartbeat for GRACE_PERIOD_S (storages with heartbeats): Optuna's
      ``fail_stale_trials``, which calls ``_retry_stale``;
    * a trial that never got its worker tag (the worker died between ``ask`` and the tag, so it
      has no heartbeat either, which Optuna never fails): once this caller has seen it untagged
      for GRACE_PERIOD_S (``unmarked_since`` remembers first sightings between calls).
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        if unmarked_since is not None:
            unmarked_since.clear()
        return []
    failed = []
    now = time.monotonic()
    for t in running:
        tag = t.user_attrs.get(WORKER_ATTR)
        if tag is not None:
            if tag_is_dead(tag) and fail_lost_trial(study, t, f"its worker (pid {tag.split('/')[-2]}) died",
                                                    announce):
                failed.append(t.number)
            continue
        if unmarked_since is None:
            continue
        first = unmarked_since.setdefault(t._trial_id, now)
        if now - first > GRACE_PERIOD_S and fail_lost_trial(
                study, t, f"its worker died before it started (no heartbeat in {GRACE_PERIOD_S} s)"):
            failed.append(t.number)
    if unmarked_since is not None:
        alive = {t._trial_id for t in running}
        for trial_id in [k for k in unmarked_since if k not in alive]:
            del unmarked_since[trial_id]
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return failed


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, announce: bool = True) -> None:
    """Re-enqueue the parameters of a trial whose worker died, once per original trial (a
    retry that dies too is not retried: a fresh trial takes its slot). A trial killed before it
    suggested anything keeps the parameters it was enqueued with (warm start, grid, manual)."""
    if trial.user_attrs.get(RETRY_ATTR) is not None or trial.system_attrs.get("retried"):
        return
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    attrs = {k: trial.user_attrs[k] for k in ("grid_phase", "warm_start") if k in trial.user_attrs}
    attrs[RETRY_ATTR] = trial.number
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    if announce:  # Optuna's heartbeat callback: a worker elsewhere stopped beating
        log.warning("trial %d was left running by a dead worker; retrying its parameters", trial.number)


def recover_local_stale(study: optuna.Study) -> int:
    """For storages without heartbeats, on resume: fail every RUNNING trial whose worker is gone
    and retry its parameters. A trial tagged by a process of this machine that still runs (a
    worker of a killed search finishing its trial) is left to it.

    The caller holds the run-directory lock, so no search of its own is running.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = t.user_attrs.get(WORKER_ATTR)
        if tag is not None and not tag_is_dead(tag) and tag.rpartition("/")[0].rpartition("/")[0] == _machine():
            continue
        n += fail_lost_trial(study, t, "left running by a killed search", announce=False)
    return n


def slots_used(study: optuna.Study) -> int:
    """Trials that consume a slot: finished or running, plus clean failures (diverged).
    Trials failed because their worker died do not count: their retry does."""
    used = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            used += 1
        elif t.state == TrialState.FAIL and "failure" in t.user_attrs:
            used += 1
    return used


class SlotLock:
    """What ``slot_lock`` yields: ``held()`` says whether the lock survived the critical section
    (a PostgreSQL advisory lock dies with its session, e.g. when the server restarts)."""

    def __init__(self, conn: Any = None) -> None:
        self._conn = conn

    def held(self) -> bool:
        if self._conn is None:
            return True
        from sqlalchemy import text

        try:
            self._conn.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means the session (and its lock) is gone
            return False
        return True


def _advisory_locked(engine: Any, key: int) -> Any:
    from sqlalchemy import text

    conn = engine.connect()
    try:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise
    return conn


@contextlib.contextmanager
def slot_lock(storage: optuna.storages.BaseStorage, run_dir: Path, study_name: str) -> Iterator[SlotLock]:
    """Mutual exclusion for 'count slots, then ask' across processes and machines.

    On PostgreSQL an advisory lock on a held connection (released by the server if the holder
    dies); taking it is retried while the server is unreachable (StorageLostError after
    STORAGE_RETRY_S). A lock lost with its connection is not an error on release."""
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:7], "big")
        conn = retry_storage(lambda: _advisory_locked(storage.engine, key), "taking the trial-slot lock",
                             str(storage.url))
        try:
            yield SlotLock(conn)
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except Exception as exc:  # noqa: BLE001
                if not is_connection_error(exc):
                    raise
                log.debug("slot lock lost with its connection", exc_info=True)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        return
    with open(run_dir / ".slots.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield SlotLock()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Heartbeat:
    """Records heartbeats for a running trial on storages that support them, from the first
    moment (a trial that never beat is never failed by Optuna) to the end. Nested uses for the
    same trial in one process share the outer one's thread. A missed beat (the database is
    restarting) is retried every interval."""

    _active: set[int] = set()  # trial ids beating in this process
    _active_lock = threading.Lock()

    def __init__(self, storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
        self._storage = storage
        self._trial_id = trial._trial_id  # Optuna exposes no public id; the storage API needs it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner = False

    def __enter__(self) -> Heartbeat:
        if not isinstance(self._storage, RDBStorage):
            return self
        with Heartbeat._active_lock:
            if self._trial_id in Heartbeat._active:
                return self
            Heartbeat._active.add(self._trial_id)
        self._owner = True
        try:
            self._storage.record_heartbeat(self._trial_id)
        except Exception as exc:
            if not is_connection_error(exc):
                self._release()
                raise
            log.debug("heartbeat failed", exc_info=True)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried next interval
                log.debug("heartbeat failed", exc_info=True)

    def _release(self) -> None:
        with Heartbeat._active_lock:
            Heartbeat._active.discard(self._trial_id)
        self._owner = False

    def __exit__(self, *exc: object) -> None:
        if not self._owner:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._release()


class RunLock:
    """An exclusive lock on a run directory for the lifetime of one ``archgen search``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".search.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        except OSError as exc:
            raise _error(f"{self.path.parent}: cannot use it as the run directory ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise SearchConfigError(
                f"{self.path.parent}: another archgen search is running in this directory"
            ) from None

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

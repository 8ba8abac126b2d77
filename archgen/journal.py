"""The Optuna journal file of a run directory (``study.journal``), checked before Optuna reads it.

:func:`check_journal` makes a journal safe to resume from: a torn tail left by a killed write or
a full disk is cut off (the bytes are kept in a side file), damage in the middle is refused with
the line number, and a journal lock left behind by a killed process is removed.
:func:`open_journal` checks the journal and opens it as an Optuna storage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from optuna.storages.journal import JournalFileBackend, JournalStorage

from archgen.storage_errors import config_error, driver_detail

log = logging.getLogger(__name__)

JOURNAL_NAME = "study.journal"
# A journal lock (Optuna's ``<journal>.lock``) is held for one append: a write and an fsync.
# One older than this was left by a killed process; Optuna itself forcibly releases a lock after
# 30 s without journal writes (its grace period), so removing it earlier changes nothing for a
# live writer.
STALE_LOCK_S = 30.0

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


def _lines(fh: BinaryIO) -> Iterator[tuple[bytes | None, int, bool]]:
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
        raise config_error(f"{path}: cannot read the study journal ({exc.strerror or exc})") from None
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
            raise config_error(
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
            raise config_error(f"{path}: cannot add the missing line end to its last record "
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
            raise config_error(f"{path}: cannot save its damaged tail in {side} ({exc.strerror or exc}); "
                               "nothing was changed") from None
    else:
        raise config_error(f"{path}: too many {path.name}.damaged-* files; move them away and rerun")
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
        raise config_error(f"{path}: cannot save its damaged tail in {side} ({exc.strerror or exc}); nothing was "
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
        raise config_error(f"{path}: cannot cut off its damaged tail ({exc.strerror or exc}); the tail is saved "
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
                raise config_error(f"{lock}: the journal stays locked by another process; stop the other "
                                   "archgen search (or remove the lock if none runs) and rerun") from None
            time.sleep(0.1)
        except OSError as exc:
            raise config_error(f"{lock}: cannot lock the study journal ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        moved = f"{lock}{uuid.uuid4()}{_RENAME_SUFFIX}"
        with contextlib.suppress(OSError):
            os.rename(lock, moved)
            os.unlink(moved)


def open_journal(run_dir: Path) -> JournalStorage:
    """The journal file ``run_dir/study.journal`` as an Optuna storage, checked (and, when only
    its tail is torn, repaired) first by :func:`check_journal`."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise config_error(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    path = run_dir / JOURNAL_NAME
    if path.exists() and not path.is_file():
        raise config_error(f"{path} exists and is not a file; move it away")
    check_journal(path)
    try:
        # An absolute path: Optuna's lock is a symbolic link to it, and a link to a relative
        # path dangles (it resolves from the link's directory), which makes Optuna's lock wait
        # spin forever on a lock left by a killed process.
        return JournalStorage(JournalFileBackend(str(path.absolute())))
    except OSError as exc:
        raise config_error(f"{path}: cannot open the study journal ({exc.strerror or exc})") from None
    except Exception as exc:  # records that decode but that Optuna cannot apply
        raise config_error(f"{path}: not a usable Optuna journal ({type(exc).__name__}: {driver_detail(exc)}); "
                           "move it away to start afresh") from None

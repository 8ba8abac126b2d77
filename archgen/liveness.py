"""Workers that die mid-trial, and the locks that keep N workers to exactly ``trials`` trials.

Each worker tags the trial it runs with :func:`worker_tag` (the ``trial_record.WORKER``
attribute, set right after ``study.ask()``), so a trial whose process is gone from this machine
is failed at once (:func:`fail_dead_trials`) instead of after the heartbeat grace period; a lost
trial records why under ``trial_record.LOST`` (not ``FAILURE``: clean failures use up a trial
slot, lost trials are retried once instead, their retry naming the original under
``trial_record.RETRY_OF``). :class:`Heartbeat` beats for a running trial on storages that
support it; :func:`slot_lock` hands out trial slots across processes and machines; a
:class:`RunLock` keeps one search per run directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from archgen.errors import SearchConfigError
from archgen.storage_errors import config_error, is_connection_error, retry_storage
from archgen.trial_record import (
    FAILURE,
    GRID_PHASE,
    LOST,
    LOST_BY,
    REJECTED,
    RETRY_OF,
    WARM_START,
    WORKER,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20


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
        storage.set_trial_user_attr(trial._trial_id, LOST, reason)
        storage.set_trial_user_attr(trial._trial_id, LOST_BY, worker_tag())
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    log.log(logging.WARNING if announce else logging.INFO, "trial %d: %s; it is failed and retried",
            trial.number, reason)
    retry_stale(study, storage.get_trial(trial._trial_id), announce=False)
    return True


def fail_dead_trials(study: optuna.Study, unmarked_since: dict[int, float] | None = None,
                     announce: bool = True) -> list[int]:
    """Fail (and retry once) the RUNNING trials whose worker is gone; returns the numbers of
    those this call failed (``announce``: see ``fail_lost_trial``).

    * a trial tagged by a process of this machine that no longer runs: at once;
    * a trial without a heartbeat for GRACE_PERIOD_S (storages with heartbeats): Optuna's
      ``fail_stale_trials``, which calls ``retry_stale``;
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
        tag = t.user_attrs.get(WORKER)
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


def retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, announce: bool = True) -> None:
    """Re-enqueue the parameters of a trial whose worker died, once per original trial (a
    retry that dies too is not retried: a fresh trial takes its slot). A trial killed before it
    suggested anything keeps the parameters it was enqueued with (warm start, grid, manual)."""
    if trial.user_attrs.get(RETRY_OF) is not None or trial.system_attrs.get("retried"):
        return
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    attrs = {k: trial.user_attrs[k] for k in (GRID_PHASE, WARM_START) if k in trial.user_attrs}
    attrs[RETRY_OF] = trial.number
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    if announce:  # Optuna's heartbeat callback: a worker elsewhere stopped beating
        log.warning("trial %d was left running by a dead worker; retrying its parameters", trial.number)


def retry_orphans(study: optuna.Study, max_n: int | None = None) -> list[int]:
    """Retry the lost trials whose retry was never enqueued: the process that failed one died
    (or lost the storage) between the state change and the enqueue, and nothing else would
    retry a trial that is no longer RUNNING. A trial counts as orphaned at once when the process
    that failed it is known dead, else once it has been failed for GRACE_PERIOD_S, so a live
    process in that window is not raced. Call it under the slot lock (two callers would
    otherwise both retry the same trial). At most ``max_n`` (the free trial slots: a retry the
    study has no room for would wait forever). Returns the numbers retried."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    now = datetime.datetime.now()
    numbers = []
    if max_n is not None:  # retries already waiting take free slots too
        max_n -= sum(t.state == TrialState.WAITING and t.user_attrs.get(RETRY_OF) is not None for t in trials)
    for t in trials:
        if max_n is not None and len(numbers) >= max_n:
            break
        if (t.state != TrialState.FAIL or FAILURE in t.user_attrs or t.user_attrs.get(RETRY_OF) is not None
                or str(t.user_attrs.get(LOST, "")).startswith("surplus") or t.number in retried
                or t.system_attrs.get("retried") or t.datetime_complete is None):
            continue
        failer_dead = tag_is_dead(str(t.user_attrs.get(LOST_BY, "?/?")))
        if not failer_dead and (now - t.datetime_complete).total_seconds() < GRACE_PERIOD_S:
            continue
        log.info("trial %d was failed but its retry was never enqueued (its worker died meanwhile); retrying it",
                 t.number)
        retry_stale(study, t, announce=False)
        numbers.append(t.number)
    return numbers


def recover_local_stale(study: optuna.Study) -> int:
    """For storages without heartbeats, on resume: fail every RUNNING trial whose worker is gone
    and retry its parameters. A trial tagged by a process of this machine that still runs (a
    worker of a killed search finishing its trial) is left to it.

    The caller holds the run-directory lock, so no search of its own is running.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = t.user_attrs.get(WORKER)
        if tag is not None and not tag_is_dead(tag) and tag.rpartition("/")[0].rpartition("/")[0] == _machine():
            continue
        n += fail_lost_trial(study, t, "left running by a killed search", announce=False)
    return n


def slots_used(study: optuna.Study) -> int:
    """Trials that consume a slot: finished or running, plus clean failures (diverged).
    Trials failed because their worker died do not count: their retry does; nor do candidates
    screened out before training (they cost nothing)."""
    used = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.PRUNED and REJECTED in t.user_attrs:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            used += 1
        elif t.state == TrialState.FAIL and FAILURE in t.user_attrs:
            used += 1
    return used


class SlotLock:
    """What ``slot_lock`` yields: ``held()`` says whether the lock survived the critical section
    (a PostgreSQL advisory lock dies with its session, e.g. when the server restarts)."""

    def __init__(self, conn: Connection | None = None) -> None:
        self._conn = conn

    def held(self) -> bool:
        if self._conn is None:
            return True
        from sqlalchemy import text

        try:
            self._conn.execute(text("SELECT 1"))
        except Exception:  # any failure means the session (and its lock) is gone
            return False
        return True


def _advisory_locked(engine: Engine, key: int) -> Connection:
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
            except Exception as exc:
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
            except Exception:  # a missed beat is retried next interval
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
        self._fh: TextIO | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        except OSError as exc:
            raise config_error(f"{self.path.parent}: cannot use it as the run directory ({exc.strerror or exc})") from None
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

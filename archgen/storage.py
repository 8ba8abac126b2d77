"""Study storage: a local Optuna journal file by default, PostgreSQL (or any SQLAlchemy URL) for
many workers on many machines; a lock that hands out trial slots so N workers finish exactly
``trials`` trials; and recovery of trials left RUNNING by a killed worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from archgen.errors import SearchConfigError

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20
RETRY_ATTR = "retry_of"


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """``None``: the journal file ``run_dir/study.journal``; otherwise an RDB URL.

    RDB storages get heartbeats so other workers can fail and retry the trials of a killed
    worker. Raises SearchConfigError (password redacted) when the database is unreachable.
    """
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    if not re.match(r"^[a-z0-9+]+://", url):
        raise SearchConfigError(f"--storage {redact(url)!r} is not a database URL (e.g. postgresql://user@host:5432/db)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(url)},
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=_retry_stale,
            )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary by backend
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SearchConfigError(f"cannot open storage {redact(url)}: {redact(first)}") from None


def _connect_args(url: str) -> dict[str, Any]:
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Re-enqueue the parameters of a trial whose worker died, once per original trial."""
    if trial.user_attrs.get(RETRY_ATTR) is not None or trial.system_attrs.get("retried"):
        return
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number}, skip_if_exists=False)
    log.warning("trial %d was left running by a dead worker; retrying its parameters", trial.number)


def recover_local_stale(study: optuna.Study) -> int:
    """For storages without heartbeats: fail every RUNNING trial and retry its parameters.

    Only safe while no other worker is alive; the caller holds the run-directory lock.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        _retry_stale(study, t)
        n += 1
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


@contextlib.contextmanager
def slot_lock(storage: optuna.storages.BaseStorage, run_dir: Path, study_name: str) -> Iterator[None]:
    """Mutual exclusion for 'count slots, then ask' across processes and machines."""
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:7], "big")
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    with open(run_dir / ".slots.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Heartbeat:
    """Records heartbeats for a running trial on storages that support them."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
        self._storage = storage
        self._trial_id = trial._trial_id  # Optuna exposes no public id; the storage API needs it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if isinstance(self._storage, RDBStorage):
            self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried next interval
                log.debug("heartbeat failed", exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class RunLock:
    """An exclusive lock on a run directory for the lifetime of one ``archgen search``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".search.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a")
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

"""A search worker: ask the shared Optuna study for a trial, run it (``archgen.objective``) under
a heartbeat, tell the result; until the study has its trials, the deadline passes or the worker
is told to stop. ``archgen.search_run`` runs one in-process or several as processes
(``worker_entry``); any number of other machines may join through ``--storage``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from archgen import trial_record as tr
from archgen.errors import SearchConfigError, UserError
from archgen.fsio import ENVIRONMENT_ERRNOS
from archgen.inputs import clip
from archgen.liveness import (
    Heartbeat,
    fail_dead_trials,
    fail_lost_trial,
    retry_orphans,
    slot_lock,
    slots_used,
    worker_tag,
)
from archgen.objective import Objective, TrialOutcome
from archgen.redact import redact_text
from archgen.settings import SearchSettings, sampler_seed
from archgen.space import Param, space_from_config
from archgen.storage import open_storage
from archgen.storage_errors import (
    STORAGE_RETRY_S,
    StorageLostError,
    is_connection_error,
    retry_storage,
)
from archgen.strategies import make_pruner, make_sampler

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from archgen.data import Dataset
    from archgen.profiles import ProfileChoice
    from costmodel.device_profile import DeviceProfile

log = logging.getLogger(__name__)

# What the CLI's progress line is given: the dict of ``progress_status``.
Progress = Callable[[dict[str, Any]], None]


def open_study(settings: SearchSettings, space: dict[str, Param], storage: optuna.storages.BaseStorage,
               worker_id: int = 0) -> optuna.Study:
    directions = ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]
    return optuna.create_study(
        storage=storage,
        sampler=make_sampler(settings.strategy, sampler_seed(settings, worker_id), space, settings),
        pruner=make_pruner(settings.strategy, settings),
        study_name=settings.study,
        directions=directions,
        load_if_exists=True,
    )


def load_data(settings: SearchSettings) -> Dataset:
    from archgen.data import load_dataset

    return load_dataset(settings.data, val_frac=settings.val_frac, test_frac=settings.test_frac, seed=settings.seed)


def load_profile(settings: SearchSettings) -> DeviceProfile:
    """The profile the search prices with (``archgen.profiles``): ``device_profile`` when given,
    else this machine's cached one for the search's device and runtime (1 thread on a CPU) at
    the latency batch; the built-in default when none is cached (recorded in config.yaml as
    uncalibrated)."""
    return profile_choice(settings).profile


def profile_choice(settings: SearchSettings) -> ProfileChoice:
    from archgen.profiles import choose_profile

    return choose_profile(settings.device_profile, device=settings.main_device, runtime=settings.runtime,
                          threads=1, batch_size=settings.latency_batch, measure_on=settings.main_device)


def trial_limit(settings: SearchSettings, study: optuna.Study) -> int | None:
    """The trials the study is to have in all (None: until the deadline)."""
    if settings.strategy in ("manual", "grid"):
        # Enqueued configs define the work; stop when none is waiting.
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        used = slots_used(study)
        planned = used + len(waiting)
        return min(planned, settings.trials) if settings.trials else planned
    return settings.trials


def storage_where(settings: SearchSettings) -> str:
    """The storage as messages name it (redacted where it is printed)."""
    return settings.storage or str(settings.run_dir / "study.journal")


def open_worker_storage(settings: SearchSettings) -> optuna.storages.BaseStorage:
    """open_storage, retried for STORAGE_RETRY_S: the search checked the storage before it
    started, so a failure now is an outage (a restarting server), not a bad URL."""
    deadline = time.monotonic() + STORAGE_RETRY_S
    while True:
        try:
            return open_storage(settings.storage, settings.run_dir)
        except SearchConfigError as exc:
            if settings.storage is None:
                raise
            if time.monotonic() >= deadline:
                raise StorageLostError(f"{exc} (retried for {STORAGE_RETRY_S:g} s)") from None
            time.sleep(1.0)


def run_worker(settings: SearchSettings, start: float, worker_id: int = 0, progress: Progress | None = None,
               stop: Callable[[], bool] | None = None) -> int:
    """Ask/run/tell until the study has ``trials`` slots used, the deadline (``start`` + the
    time budget) passes or ``stop()`` says so (checked between trials). Returns the number of
    trials this worker ran.

    Each trial is tagged with this process (``archgen.storage.worker_tag``) and heartbeats from
    right after ``ask`` until ``tell``, so the trial of a worker killed at any point is failed
    and retried once by whoever notices first. A storage that stops answering (a PostgreSQL
    restart) is retried for ``STORAGE_RETRY_S``; a trial whose writes failed meanwhile is failed
    and retried; a storage that stays away ends the worker with StorageLostError (one line)."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    where = storage_where(settings)
    storage = open_worker_storage(settings)
    dataset = load_data(settings)
    space = space_from_config(dataset.input_shape, settings.space)
    study = retry_storage(lambda: open_study(settings, space, storage, worker_id), "opening the study", where)
    deadline = settings.deadline(start)
    objective = Objective(settings, dataset, load_profile(settings), space, deadline,
                          device=settings.worker_device(worker_id))
    tag = worker_tag()
    unmarked: dict[int, float] = {}
    ran = 0
    while True:
        if deadline is not None and time.time() >= deadline:
            break
        if stop is not None and stop():
            break
        claimed = retry_storage(lambda: _claim_trial(settings, study, storage, unmarked),
                                "asking for the next trial", where)
        if claimed is None:
            break
        trial, lock_held, limit = claimed
        if not retry_storage(functools.partial(_mark_trial, storage, trial, tag), "starting a trial", where):
            continue  # failed as stale by another worker while the storage was away; it is retried
        if not lock_held and limit is not None and retry_storage(
                functools.partial(_drop_if_surplus, settings, study, storage, trial, limit),
                "checking the trial count", where):
            continue
        outcome = _run_trial(objective, study, storage, trial, where)
        if outcome is None:
            continue
        if retry_storage(functools.partial(_tell_outcome, study, trial, outcome), "recording a trial", where):
            ran += 1
        else:
            log.warning("trial %d was failed by another worker meanwhile (its retry stands); result dropped",
                        trial.number)
        report_progress(progress, study, settings, start, worker_id)
    return ran


def _claim_trial(settings: SearchSettings, study: optuna.Study, storage: optuna.storages.BaseStorage,
                 unmarked: dict[int, float]) -> tuple[optuna.Trial, bool, int | None] | None:
    """Under the slot lock: fail the trials of dead workers, count, ask. None when the study
    has its trials. Also says whether the lock was still held after the ask."""
    with slot_lock(storage, settings.run_dir, settings.study) as lock:
        fail_dead_trials(study, unmarked, announce=False)  # the search's main process reports them
        limit = trial_limit(settings, study)
        free = None if limit is None else limit - slots_used(study)
        if free is not None and free <= 0:
            return None
        if rejections_exhausted(settings, study):
            log.warning("%d candidates were screened out before training: stopping with %d of %d trials; "
                        "loosen the budgets or narrow the space", rejected_count(study), slots_used(study),
                        settings.trials)
            return None
        retry_orphans(study, free)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": ours is
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        return trial, lock.held(), limit


def max_rejections(trials: int) -> int:
    """Candidates screened out before training do not use up ``--trials``; a search that only
    draws such candidates stops after this many of them (a search with a time budget also stops
    at its deadline)."""
    return max(200, 20 * trials)


def rejections_exhausted(settings: SearchSettings, study: optuna.Study) -> bool:
    """True when a search with ``--trials`` has drawn ``max_rejections`` screened-out candidates."""
    return settings.trials is not None and rejected_count(study) >= max_rejections(settings.trials)


def rejected_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if tr.REJECTED in t.user_attrs)


def _mark_trial(storage: optuna.storages.BaseStorage, trial: optuna.Trial, tag: str) -> bool:
    """First heartbeat, then the worker tag, right after ask: the trial of a worker killed from
    here on is recognised as dead. False when the trial was already failed by someone else."""
    try:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(tr.WORKER, tag)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def _drop_if_surplus(settings: SearchSettings, study: optuna.Study, storage: optuna.storages.BaseStorage,
                     trial: optuna.Trial, limit: int) -> bool:
    """The slot lock died with its connection (server restart) while this worker counted and
    asked, so another worker may have taken the same slot: if the study now has more trials than
    its limit, fail this one (no result, no retry) and say so."""
    with slot_lock(storage, settings.run_dir, settings.study):
        if slots_used(study) <= limit:
            return False
        try:
            trial.set_user_attr(tr.LOST, "surplus: the slot lock was lost while asking")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        log.warning("trial %d dropped: it exceeded --trials after the storage connection was lost", trial.number)
        return True


def _run_trial(objective: Objective, study: optuna.Study, storage: optuna.storages.BaseStorage,
               trial: optuna.Trial, where: str) -> TrialOutcome | None:
    """The objective under a heartbeat, its storage calls retried through a short outage. A
    trial whose storage writes still failed (the connection stayed away, or the trial was failed
    as stale by another worker meanwhile) is failed and retried: None. Interrupted: failed and
    retried, then the interruption goes on."""
    try:
        with Heartbeat(storage, trial):
            return objective(_ReconnectingTrial(trial, where))  # type: ignore[arg-type]
    except (KeyboardInterrupt, SystemExit):
        with contextlib.suppress(Exception):
            _lose_trial(study, storage, trial, "interrupted")
        raise
    except StorageLostError:
        raise  # the storage stayed away: this worker ends; the next run fails and retries the trial
    except Exception as exc:  # one broken trial must not end the search
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            # A full disk fails every trial alike: stop; the rerun retries this trial.
            with contextlib.suppress(Exception):
                _lose_trial(study, storage, trial, f"stopped: {exc.strerror or exc}")
            raise
        if is_connection_error(exc) or isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
            retry_storage(lambda: _lose_trial(study, storage, trial, "the storage connection was lost mid-trial"),
                          "failing an interrupted trial", where)
            return None
        log.exception("trial %d failed", trial.number)
        message = clip(redact_text(f"error: {type(exc).__name__}: {exc}".splitlines()[0]), 300)
        try:
            retry_storage(lambda: trial.set_user_attr(tr.FAILURE, message), "recording a failed trial", where)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
        return TrialOutcome(TrialState.FAIL)


class _ReconnectingTrial:
    """An ``optuna.Trial`` whose calls (set_user_attr, report, should_prune, suggest_*, ...) and
    attribute reads are retried while the storage connection is down (``retry_storage``), so a
    database restart pauses a trial instead of losing it. Every such call is idempotent: the
    same attribute, step or parameter written again."""

    def __init__(self, trial: optuna.Trial, where: str) -> None:
        self._trial = trial
        self._where = where

    def __getattr__(self, name: str) -> Any:
        value = retry_storage(lambda: getattr(self._trial, name), "running a trial", self._where)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_storage(lambda: value(*args, **kwargs), "running a trial", self._where)

        return call


def _lose_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial,
                reason: str) -> None:
    fail_lost_trial(study, storage.get_trial(trial._trial_id), reason)


def _tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> bool:
    """Tell; False when the trial was finished by someone else (failed as stale): its retry
    stands. A retried tell that had in fact been recorded counts as recorded."""
    try:
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.values)
        else:
            study.tell(trial, state=outcome.state)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.RUNNING:
            raise
        return frozen.state == outcome.state and (outcome.values is None or frozen.values == outcome.values)
    return True


def worker_entry(settings: SearchSettings, worker_id: int, start: float, report: Connection | None = None) -> None:
    """A local worker process of a search that began at ``start``. Exit 0 when done; 2 with a
    one-line message sent on ``report`` for bad input or a storage that stayed away; 1 (and the
    traceback on stderr) for an internal error. A worker whose parent died (killed search) stops
    after its trial."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parent = os.getppid()
    code, message = 0, None  # message: (exception class name, one line)
    try:
        run_worker(settings, start, worker_id, stop=lambda: os.getppid() != parent)
    except KeyboardInterrupt:
        code = 130
    except UserError as exc:
        code, message = 2, (type(exc).__name__, " ".join(str(exc).split()) or type(exc).__name__)
    except Exception as exc:  # reported to the parent, which decides
        log.exception("worker %d failed", worker_id)
        code, message = 1, (type(exc).__name__, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    if report is not None:
        with contextlib.suppress(Exception):
            if message:
                report.send(message)
            report.close()
    if code:
        sys.exit(code)


# -- progress -----------------------------------------------------------------------------------


def progress_status(study: optuna.Study, settings: SearchSettings, start: float,
                    worker_id: int = 0) -> dict[str, Any]:
    """``done``: trials that used a slot and finished (complete, pruned, or a clean failure);
    ``lost``: trials failed because their worker died or lost the storage (each is retried)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and tr.FAILURE in t.user_attrs)]
    lost = [t for t in trials if t.state == TrialState.FAIL and tr.FAILURE not in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and tr.VAL_ACC in t.user_attrs]
    best = max(complete, key=lambda t: t.user_attrs[tr.VAL_ACC], default=None)
    elapsed = time.time() - start
    return {
        "worker": worker_id,
        "done": len(done),
        "lost": len(lost),
        "trials": settings.trials,
        "best_val_acc": best.user_attrs[tr.VAL_ACC] if best else None,
        "best_est_ms": best.user_attrs.get(tr.EST_MS) if best else None,
        "elapsed_s": elapsed,
        "remaining_s": max(0.0, settings.time_budget_s - elapsed) if settings.time_budget_s else None,
    }


def report_progress(progress: Progress | None, study: optuna.Study, settings: SearchSettings, start: float,
                    worker_id: int = 0) -> None:
    """A progress update; skipped while the storage does not answer."""
    if progress is None:
        return
    try:
        status = progress_status(study, settings, start, worker_id)
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        return
    progress(status)

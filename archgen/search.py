"""The search loop: settings, workers sharing one Optuna study (each trial is an
``archgen.objective.Objective``: price -> screen -> rebalance -> train with pruning), and the run
directory.

``run_search(settings)`` validates everything a user can get wrong *before* it creates the run
directory, then runs workers (in-process for one, separate processes for several; any number
of other machines may join through ``--storage``), and finally hands over to
``archgen.finalize`` which selects on validation, opens the test split once and exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from archgen.costing import total_memory_mb
from archgen.errors import SearchConfigError, SpecError, UserError
from archgen.fsio import ENVIRONMENT_ERRNOS, atomic_write_yaml
from archgen.inputs import clip, excerpt, load_document
from archgen.objective import Objective, TrialOutcome
from archgen.redact import redact, redact_text
from archgen.rundir import check_out_dir, mark
from archgen.space import MAX_CHOICES, Param, space_from_config, spec_from_params
from archgen.storage import (
    GRACE_PERIOD_S,
    LOST_ATTR,
    STORAGE_RETRY_S,
    WORKER_ATTR,
    Heartbeat,
    RunLock,
    StorageLostError,
    fail_dead_trials,
    fail_lost_trial,
    is_connection_error,
    open_storage,
    recover_local_stale,
    retry_storage,
    slot_lock,
    slots_used,
    worker_tag,
)
from archgen.strategies import (
    PRUNING,
    STRATEGIES,
    coarse_grid,
    fine_grid,
    grid_size,
    make_pruner,
    make_sampler,
    manual_configs,
)

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 240.0
# A resume with other values is refused: these define what the run is; data, seed and the
# fractions also define the train/validation/test split, which must never move under a run.
CONFIG_KEYS_THAT_DEFINE_A_RUN = ("strategy", "data", "objective", "storage", "study", "seed", "val_frac",
                                 "test_frac")


@dataclass(frozen=True)
class SearchSettings:
    """Resolved settings of one search (written to ``config.yaml``)."""

    data: str = "digits"
    strategy: str = "bohb"
    trials: int | None = None
    time_budget_s: float | None = None
    objective: str = "accuracy"  # "accuracy" (max val_acc under the budget) | "pareto"
    max_latency_ms: float | None = None
    latency_batch: int = 1
    max_macs: int | None = None
    max_params: int | None = None
    storage: str | None = None
    study: str = "archgen"
    workers: int = 1
    seed: int = 0
    out: str = "runs/search"
    max_epochs: int = 20
    min_epochs: int = 1
    patience: int = 6
    reduction_factor: int = 3
    # Hyperband/BOHB: also prune a bracket's first trial at a rung below the median of all trials
    # at that epoch (archgen.strategies.SeededHyperbandPruner). Opt-in: measured no better on
    # MNIST-10k and worse on the README's digits search (docs/benchmarks.md).
    seeded_pruning: bool = False
    # bayes/bohb: the start-up trials (before the model has 8 trained trials) draw from the
    # practitioner's prior around the default configuration instead of uniformly
    # (archgen.strategies.PriorStartupSampler); false: uniform, as random search draws.
    prior_startup: bool = True
    val_frac: float = 0.15
    test_frac: float = 0.15
    # One intra-op thread per worker: small CNNs on small batches barely scale past one core,
    # and oversubscribed OpenMP threads were 9x slower per epoch on a loaded 2-core machine
    # (1.5 s vs 13 s on digits). Use --workers to fill the cores instead.
    threads: int | None = 1
    # Where trials train and where latency is calibrated, estimated and measured: "cpu" or
    # "cuda[:N]" (the device profile is this device's; the exported ONNX model is CPU-portable).
    device: str = "cpu"
    bayes_sampler: str = "tpe"
    grid_points: int = 3
    grid_params: tuple[str, ...] = ("lr", "base_filters", "stages")
    refine: bool = True
    population: int = 8
    pbt_interval: int = 2
    pbt_quantile: float = 0.25
    finalize: bool = True
    # Opt-in: after selection on validation, retrain the selected configuration on train +
    # validation for the selected trial's best epoch count (test stays sealed until the one final
    # evaluation; not for pbt, whose members change hyperparameters). Off by default: measured
    # neutral on networks that converged (scripts/bench_refit.py), it costs up to one more trial
    # beyond --time-budget, and without it validation data never fits weights (DESIGN.md §2).
    refit: bool = False
    calibrate: bool = True  # fit a quick CPU profile first when none is cached for this machine
    warm_start: bool = True  # sampling strategies start from the practitioner's default config
    # Candidates whose estimated training memory exceeds this are rejected before training
    # (None: half of this machine's memory, shared by the workers).
    max_memory_mb: float | None = None
    space: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    manual: list = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_types(self)
        if self.strategy not in STRATEGIES:
            raise SearchConfigError(f"unknown strategy {excerpt(self.strategy)}; choose one of {', '.join(STRATEGIES)}")
        if self.objective not in ("accuracy", "pareto"):
            raise SearchConfigError(f"objective {excerpt(self.objective)} must be 'accuracy' or 'pareto'")
        if self.objective == "pareto" and self.strategy in PRUNING + ("pbt",):
            raise SearchConfigError(
                f"--objective pareto cannot prune: use random, bayes, grid or manual, not {self.strategy}"
            )
        if self.min_epochs > self.max_epochs:
            raise SearchConfigError(f"min_epochs={self.min_epochs} exceeds max_epochs={self.max_epochs}")
        for name in ("val_frac", "test_frac"):
            if not 0 < getattr(self, name) < 1:
                raise SearchConfigError(f"{name}={getattr(self, name)!r} must be a fraction in (0, 1)")
        if self.val_frac + self.test_frac >= 0.9:
            raise SearchConfigError(
                f"val_frac + test_frac = {self.val_frac + self.test_frac:g} leaves too little training data; keep it below 0.9"
            )
        if not 0 < self.pbt_quantile <= 0.5:
            raise SearchConfigError(f"pbt_quantile={self.pbt_quantile!r} must be in (0, 0.5]")
        if not (self.device == "cpu" or re.fullmatch(r"cuda(:\d{1,3})?", self.device)):
            raise SearchConfigError(f"device={excerpt(self.device)} must be 'cpu' or 'cuda[:N]'")
        if self.bayes_sampler not in ("tpe", "gp"):
            raise SearchConfigError(f"bayes_sampler={excerpt(self.bayes_sampler)} must be 'tpe' or 'gp'")
        if not self.study.strip() or len(self.study) > 200:
            raise SearchConfigError(f"study={excerpt(self.study)} must be a name of 1 to 200 characters")
        if not self.out.strip():
            raise SearchConfigError("--out must name a directory")
        if self.strategy == "pbt" and self.workers > 1:
            raise SearchConfigError("pbt trains its population in one process; use --workers 1")
        if self.strategy == "manual" and not self.manual:
            raise SearchConfigError("strategy manual needs a 'manual:' list of configs in --config FILE")
        for name, values in self.grid.items():
            values = values if isinstance(values, list) else [values]
            if not values or len(values) > MAX_CHOICES:
                raise SearchConfigError(f"grid.{clip(str(name), 40)}: give 1 to {MAX_CHOICES} values, got {len(values)}")

    def memory_cap_mb(self) -> float:
        """The memory one trial may use to train: ``max_memory_mb``, else half of this
        machine's memory (of the GPU's with ``--device cuda``) shared by the workers."""
        if self.max_memory_mb is not None:
            return float(self.max_memory_mb)
        return total_memory_mb(self.device) / 2 / self.workers

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid_params"] = list(self.grid_params)
        if d["storage"]:
            d["storage"] = redact(d["storage"])
        return d


# The type of every setting, for YAML and Python callers alike (argparse checks the CLI's).
# int/float: (low, high) inclusive bounds; None allowed where the default is None.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "trials": (1, 1_000_000), "workers": (1, 512), "seed": (0, 2**32 - 2), "max_epochs": (1, 10_000),
    "min_epochs": (1, 10_000), "patience": (1, 10_000), "latency_batch": (1, 65_536),
    "population": (2, 10_000), "pbt_interval": (1, 10_000), "grid_points": (1, 64),
    "reduction_factor": (2, 100), "threads": (1, 1024),
}
_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "time_budget_s": (1e-3, 3.2e7), "max_latency_ms": (1e-9, 1e9), "max_macs": (1, 1e15),
    "max_params": (1, 1e15), "max_memory_mb": (1, 1e9), "val_frac": (0, 1), "test_frac": (0, 1),
    "pbt_quantile": (0, 1),
}
_STR_FIELDS = ("data", "strategy", "objective", "study", "out", "device", "bayes_sampler")
_BOOL_FIELDS = ("seeded_pruning", "prior_startup", "refine", "finalize", "refit", "calibrate", "warm_start")


def _check_types(s: SearchSettings) -> None:
    """Raise SearchConfigError naming the setting when a value has the wrong type or range."""
    def bad(name: str, what: str) -> SearchConfigError:
        return SearchConfigError(f"{name}={excerpt(getattr(s, name))} must be {what}")

    for name in _STR_FIELDS:
        if not isinstance(getattr(s, name), str) or not getattr(s, name):
            raise bad(name, "a non-empty string")
    if s.storage is not None and not isinstance(s.storage, str):
        raise bad("storage", "a database URL string")
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(s, name), bool):
            raise bad(name, "true or false")
    for name, (low, high) in _INT_BOUNDS.items():
        value = getattr(s, name)
        if value is None and name in ("trials", "threads"):
            continue
        if type(value) is not int or not low <= value <= high:
            raise bad(name, f"an integer in [{low:,}, {high:,}]")
    for name, (low, high) in _FLOAT_BOUNDS.items():
        value = getattr(s, name)
        if value is None and name in _OPTIONAL:
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not low <= value <= high):
            raise bad(name, f"a finite number in [{low:g}, {high:g}]")
    for name, kind in (("space", dict), ("grid", dict), ("manual", list)):
        if not isinstance(getattr(s, name), kind):
            raise bad(name, "a mapping" if kind is dict else "a list of mappings")
    if not isinstance(s.grid_params, tuple) or not all(isinstance(v, str) for v in s.grid_params):
        raise bad("grid_params", "a list of parameter names")


_OPTIONAL = frozenset(f.name for f in dataclasses.fields(SearchSettings) if f.default is None)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a search YAML; unknown keys are an error naming the key."""
    data = load_document(path, "search config", SearchConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SearchConfigError(f"{path}: the config must be a mapping of setting: value, got {excerpt(data)}")
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    aliases = {"time_budget": "time_budget_s"}
    out = {}
    for key, value in data.items():
        name = aliases.get(key, key) if isinstance(key, str) else key
        if name not in known:
            raise SearchConfigError(f"{path}: unknown key {excerpt(key)}")
        if name == "grid_params" and isinstance(value, list):
            value = tuple(value)
        elif name in _FLOAT_BOUNDS and isinstance(value, str):
            value = _number_or_text(value)  # YAML 1.1 reads 1e6 as a string
        out[name] = value
    return out


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# -- workers ------------------------------------------------------------------------------------


def sampler_seed(settings: SearchSettings, worker_id: int = 0) -> int:
    """``--seed`` itself for a lone local process (reproducible). Concurrent workers need
    distinct streams, or every worker's random and start-up draws are the same configurations:
    local workers add their id; with shared ``--storage`` (other machines may join with the same
    ``--seed``) the host and process id go in too."""
    if settings.storage is not None:
        key = f"{settings.seed}|{socket.gethostname()}|{os.getpid()}|{worker_id}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    return settings.seed + 7919 * worker_id


def open_study(settings: SearchSettings, space: dict[str, Param], storage: Any, worker_id: int = 0) -> optuna.Study:
    directions = ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]
    return optuna.create_study(
        storage=storage,
        sampler=make_sampler(settings.strategy, sampler_seed(settings, worker_id), space, settings),
        pruner=make_pruner(settings.strategy, settings),
        study_name=settings.study,
        directions=directions,
        load_if_exists=True,
    )


def load_data(settings: SearchSettings) -> Any:
    from archgen.data import load_dataset

    return load_dataset(settings.data, val_frac=settings.val_frac, test_frac=settings.test_frac, seed=settings.seed)


def load_profile(settings: SearchSettings) -> Any:
    """The cached profile of the search's device (1 thread on a CPU) at the latency batch; the
    built-in default when none is cached (recorded in config.yaml as uncalibrated)."""
    from costmodel.device_profile import default_profile, load_cached

    profile = load_cached(device=settings.device, threads=1, batch_size=settings.latency_batch)
    return profile if profile is not None else default_profile()


def run_worker(settings: SearchSettings, worker_id: int = 0,
               progress: Callable[[dict], None] | None = None,
               stop: Callable[[], bool] | None = None) -> int:
    """Ask/run/tell until the study has ``trials`` slots used, the deadline passes or ``stop()``
    says so (checked between trials). Returns the number of trials this worker ran.

    Each trial is tagged with this process (``archgen.storage.worker_tag``) and heartbeats from
    right after ``ask`` until ``tell``, so the trial of a worker killed at any point is failed
    and retried once by whoever notices first. A storage that stops answering (a PostgreSQL
    restart) is retried for ``STORAGE_RETRY_S``; a trial whose writes failed meanwhile is failed
    and retried; a storage that stays away ends the worker with StorageLostError (one line)."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    where = _storage_where(settings)
    storage = _open_worker_storage(settings)
    dataset = load_data(settings)
    space = space_from_config(dataset.input_shape, settings.space)
    study = retry_storage(lambda: open_study(settings, space, storage, worker_id), "opening the study", where)
    deadline = _deadline(settings)
    objective = Objective(settings, dataset, load_profile(settings), space, deadline, storage)
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
        _report_progress(progress, study, settings, worker_id)
    return ran


def _storage_where(settings: SearchSettings) -> str:
    """The storage as messages name it (redacted where it is printed)."""
    return settings.storage or str(settings.run_dir / "study.journal")


def _open_worker_storage(settings: SearchSettings) -> Any:
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


def _claim_trial(settings: SearchSettings, study: optuna.Study, storage: Any,
                 unmarked: dict[int, float]) -> tuple[optuna.Trial, bool, int | None] | None:
    """Under the slot lock: fail the trials of dead workers, count, ask. None when the study
    has its trials. Also says whether the lock was still held after the ask."""
    with slot_lock(storage, settings.run_dir, settings.study) as lock:
        fail_dead_trials(study, unmarked, announce=False)  # the search's main process reports them
        limit = _trial_limit(settings, study)
        if limit is not None and slots_used(study) >= limit:
            return None
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": ours is
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        return trial, lock.held(), limit


def _mark_trial(storage: Any, trial: optuna.Trial, tag: str) -> bool:
    """First heartbeat, then the worker tag, right after ask: the trial of a worker killed from
    here on is recognised as dead. False when the trial was already failed by someone else."""
    try:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(WORKER_ATTR, tag)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def _drop_if_surplus(settings: SearchSettings, study: optuna.Study, storage: Any, trial: optuna.Trial,
                     limit: int) -> bool:
    """The slot lock died with its connection (server restart) while this worker counted and
    asked, so another worker may have taken the same slot: if the study now has more trials than
    its limit, fail this one (no result, no retry) and say so."""
    with slot_lock(storage, settings.run_dir, settings.study):
        if slots_used(study) <= limit:
            return False
        try:
            trial.set_user_attr(LOST_ATTR, "surplus: the slot lock was lost while asking")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        log.warning("trial %d dropped: it exceeded --trials after the storage connection was lost", trial.number)
        return True


def _run_trial(objective: Objective, study: optuna.Study, storage: Any, trial: optuna.Trial,
               where: str) -> TrialOutcome | None:
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
    except Exception as exc:  # noqa: BLE001 - one broken trial must not end the search
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
            retry_storage(lambda: trial.set_user_attr("failure", message), "recording a failed trial", where)
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


def _lose_trial(study: optuna.Study, storage: Any, trial: optuna.Trial, reason: str) -> None:
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


def _deadline(settings: SearchSettings) -> float | None:
    start = float(os.environ.get("ARCHGEN_SEARCH_START", time.time()))
    return start + settings.time_budget_s if settings.time_budget_s else None


def _trial_limit(settings: SearchSettings, study: optuna.Study) -> int | None:
    if settings.strategy in ("manual", "grid"):
        # Enqueued configs define the work; stop when none is waiting.
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        used = slots_used(study)
        planned = used + len(waiting)
        return min(planned, settings.trials) if settings.trials else planned
    return settings.trials


def progress_status(study: optuna.Study, settings: SearchSettings, worker_id: int = 0) -> dict[str, Any]:
    """``done``: trials that used a slot and finished (complete, pruned, or a clean failure);
    ``lost``: trials failed because their worker died or lost the storage (each is retried)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "failure" in t.user_attrs)]
    lost = [t for t in trials if t.state == TrialState.FAIL and "failure" not in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "val_acc" in t.user_attrs]
    best = max(complete, key=lambda t: t.user_attrs["val_acc"], default=None)
    start = float(os.environ.get("ARCHGEN_SEARCH_START", time.time()))
    elapsed = time.time() - start
    return {
        "worker": worker_id,
        "done": len(done),
        "lost": len(lost),
        "trials": settings.trials,
        "best_val_acc": best.user_attrs["val_acc"] if best else None,
        "best_est_ms": best.user_attrs.get("est_ms") if best else None,
        "elapsed_s": elapsed,
        "remaining_s": max(0.0, settings.time_budget_s - elapsed) if settings.time_budget_s else None,
    }


def _report_progress(progress: Callable[[dict], None] | None, study: optuna.Study, settings: SearchSettings,
                     worker_id: int = 0) -> None:
    """A progress update; skipped while the storage does not answer."""
    if progress is None:
        return
    try:
        status = progress_status(study, settings, worker_id)
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        return
    progress(status)


def _worker_entry(settings: SearchSettings, worker_id: int, start: float, report: Any = None) -> None:
    """A local worker process. Exit 0 when done; 2 with a one-line message sent on ``report``
    for bad input or a storage that stayed away; 1 (and the traceback on stderr) for an
    internal error. A worker whose parent died (killed search) stops after its trial."""
    os.environ["ARCHGEN_SEARCH_START"] = str(start)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parent = os.getppid()
    code, message = 0, None  # message: (exception class name, one line)
    try:
        run_worker(settings, worker_id, stop=lambda: os.getppid() != parent)
    except KeyboardInterrupt:
        code = 130
    except UserError as exc:
        code, message = 2, (type(exc).__name__, " ".join(str(exc).split()) or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        log.exception("worker %d failed", worker_id)
        code, message = 1, (type(exc).__name__, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    if report is not None:
        with contextlib.suppress(Exception):
            if message:
                report.send(message)
            report.close()
    if code:
        sys.exit(code)


# -- orchestration ------------------------------------------------------------------------------


def ensure_profile(settings: SearchSettings) -> None:
    """Calibrate (quick mode, cached per device) when this machine has no profile yet, so the
    latency estimates and budgets of the search are this machine's, not the built-in guess."""
    from costmodel.calibrate import calibrate
    from costmodel.device_profile import load_cached

    if not settings.calibrate or load_cached(settings.device, 1, settings.latency_batch) is not None:
        return
    log.warning("no device profile for %s/1 thread/batch %d: calibrating (quick, about a minute)",
                settings.device, settings.latency_batch)
    calibrate(device=settings.device, threads=1, batch_size=settings.latency_batch, quick=True,
              save_to_cache=True)


def prepare(settings: SearchSettings) -> tuple[Any, dict[str, Param]]:
    """Validate everything a user can get wrong before anything is written."""
    if settings.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {settings.device}: CUDA is not available on this machine; use --device cpu")
        index = int(settings.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {settings.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dataset = load_data(settings)
    ensure_profile(settings)
    space = space_from_config(dataset.input_shape, settings.space)
    if settings.strategy == "manual":
        manual_configs(settings.manual, space)
    if settings.strategy == "grid":
        coarse_grid(space, settings)
    unknown_grid = set(settings.grid) - set(space)
    if unknown_grid:
        raise SearchConfigError(f"grid: unknown parameter(s) {', '.join(sorted(unknown_grid))}")
    if settings.storage is not None:
        open_storage(settings.storage, settings.run_dir)  # reachability, before the run dir exists
    _check_budget_feasible(settings, dataset, space)
    return dataset, space


def _check_budget_feasible(settings: SearchSettings, dataset: Any, space: dict[str, Param]) -> None:
    """A budget no candidate can meet is bad input: find the cheapest candidate of the space."""
    if settings.max_latency_ms is None and settings.max_macs is None and settings.max_params is None:
        return
    from archgen.costing import spec_geoms, spec_macs
    from costmodel.estimate import estimate_total_ms

    profile = load_profile(settings)
    cheapest = {name: (p.choices[0] if p.kind == "choice" else p.low) for name, p in space.items()}
    for name in ("stages", "convs_per_stage", "base_filters", "dense_layers", "dense_units"):
        p = space[name]
        cheapest[name] = min(p.choices) if p.kind == "choice" else int(p.low)
    cheapest.update(stacking=False, batchnorm=False, growth=min(space["growth"].choices))
    try:
        spec = spec_from_params(cheapest, dataset.input_shape, dataset.num_classes)
    except SpecError:
        return
    est = estimate_total_ms(spec_geoms(spec), profile, settings.latency_batch)
    problems = []
    if settings.max_latency_ms is not None and est > settings.max_latency_ms:
        problems.append(f"--max-latency-ms {settings.max_latency_ms:g} is below the cheapest candidate's estimated {est:.3g} ms")
    if settings.max_macs is not None and spec_macs(spec) > settings.max_macs:
        problems.append(f"max_macs {settings.max_macs:,} is below the cheapest candidate's {spec_macs(spec):,} MACs")
    if settings.max_params is not None and spec.num_params() > settings.max_params:
        problems.append(f"max_params {settings.max_params:,} is below the cheapest candidate's {spec.num_params():,}")
    if problems:
        raise SearchConfigError("no candidate can meet the budget: " + "; ".join(problems))


def split_fingerprint(dataset: Any) -> str:
    """A hash of the training and validation splits (images and labels) and the test split's
    size: equal fingerprints mean the same images sit in the same splits."""
    h = hashlib.sha256()
    for split in (dataset.train, dataset.val):
        h.update(split.x.numpy().tobytes())
        h.update(split.y.numpy().tobytes())
    h.update(str(dataset.test.n).encode())
    return h.hexdigest()[:16]


def _check_resume(settings: SearchSettings, fingerprint: str) -> bool:
    """True when ``out`` holds an earlier run of the same search (resume); error when it
    holds a different one, or the same one on other data splits (images that trials trained
    on must never move into the test split)."""
    cfg = settings.run_dir / "config.yaml"
    if not cfg.exists():
        return False
    old = load_document(cfg, "run configuration", SearchConfigError)
    if not isinstance(old, dict):
        raise SearchConfigError(f"{cfg}: damaged run configuration; use another --out")
    new = settings.to_yaml_dict()
    if old.get("storage") is not None:  # earlier versions wrote some URLs unredacted: compare redacted
        old["storage"] = redact(old["storage"])
    diff = [k for k in CONFIG_KEYS_THAT_DEFINE_A_RUN if old.get(k) != new.get(k)]
    if diff:
        raise SearchConfigError(
            f"{settings.run_dir} holds a different search "
            f"({', '.join(f'{k}: {excerpt(old.get(k))} there, {excerpt(new.get(k))} now' for k in diff)}); "
            "use another --out or the same settings to resume"
        )
    if old.get("split_fingerprint") not in (None, fingerprint):
        raise SearchConfigError(
            f"{settings.run_dir}: the data behind {excerpt(settings.data)} changed since this search "
            "began (its train/validation/test split would move); use another --out"
        )
    return True


def _enqueue_plan(settings: SearchSettings, study: optuna.Study, space: dict[str, Param]) -> None:
    """manual and grid: enqueue their configs; sampling strategies: the default config as a
    warm start. Once per study (a resumed search does not enqueue again)."""
    if study.user_attrs.get("plan_enqueued"):
        return
    if settings.warm_start and settings.strategy in ("random", "bayes", "hyperband", "bohb"):
        study.enqueue_trial({name: p.default_value() for name, p in space.items()},
                            user_attrs={"warm_start": True})
    if settings.strategy == "manual":
        for cfg in manual_configs(settings.manual, space):
            study.enqueue_trial(cfg)
    elif settings.strategy == "grid":
        import itertools
        import random

        grid = coarse_grid(space, settings)
        names = list(grid)
        combos = [dict(zip(names, v)) for v in itertools.product(*(grid[n] for n in names))]
        random.Random(settings.seed).shuffle(combos)
        budget = settings.trials
        if budget and settings.refine:
            budget = max(1, budget - budget // 3)  # keep a third of the trials for the fine grid
        for cfg in combos[:budget] if budget else combos:
            study.enqueue_trial(cfg, user_attrs={"grid_phase": "coarse"})
        log.info("grid: %d coarse points of %d", min(len(combos), budget or len(combos)), grid_size(grid))
    study.set_user_attr("plan_enqueued", True)


def _enqueue_fine_grid(settings: SearchSettings, study: optuna.Study, space: dict[str, Param]) -> int:
    if study.user_attrs.get("fine_enqueued") or not settings.refine:
        return 0
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return 0
    best = max(done, key=lambda t: t.values[0])
    combos = fine_grid(best.params, coarse_grid(space, settings), space)
    if settings.trials:
        combos = combos[: max(0, settings.trials - slots_used(study))]
    for cfg in combos:
        study.enqueue_trial(cfg, user_attrs={"grid_phase": "fine"})
    study.set_user_attr("fine_enqueued", True)
    return len(combos)


def run_search(settings: SearchSettings, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a search and finalize its run directory; returns the final summary."""
    if settings.trials is None and settings.time_budget_s is None:
        settings = dataclasses.replace(settings, time_budget_s=DEFAULT_TIME_BUDGET_S)
    check_out_dir(settings.run_dir, "search")
    dataset, space = prepare(settings)
    fingerprint = split_fingerprint(dataset)
    resumed = _check_resume(settings, fingerprint)
    mark(settings.run_dir, "search")
    lock = RunLock(settings.run_dir)
    lock.acquire()
    try:
        start = time.time()
        os.environ["ARCHGEN_SEARCH_START"] = str(start)
        run_dir = settings.run_dir
        _remove_partial_files(run_dir)
        _write_config(settings, fingerprint)
        storage = open_storage(settings.storage, run_dir)
        study = open_study(settings, space, storage)
        if resumed and settings.storage is None:
            n = recover_local_stale(study)
            if n:
                log.warning("resumed: %d trial(s) left running by the killed search will be retried", n)
        if settings.strategy == "pbt":
            from archgen.pbt import run_pbt

            run_pbt(settings, study, dataset, load_profile(settings), space, _deadline(settings), progress)
        else:
            _enqueue_plan(settings, study, space)
            _run_workers(settings, progress)
            if settings.strategy == "grid" and _enqueue_fine_grid(settings, study, space):
                _run_workers(settings, progress)
        summary = {"run_dir": str(run_dir), "resumed": resumed, "elapsed_s": time.time() - start}
        if settings.finalize:
            from archgen.finalize import finalize

            summary.update(finalize(settings, study, dataset, load_profile(settings), space))
        return summary
    finally:
        lock.release()


def _remove_partial_files(run_dir: Path) -> None:
    """Temporary files a killed search left behind (atomic writes that never reached their
    rename). Safe under the run lock: no other process writes into this directory now."""
    for tmp in run_dir.rglob(".*.tmp"):
        if tmp.is_file():
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


def _write_config(settings: SearchSettings, fingerprint: str) -> None:
    from costmodel.device_profile import load_cached

    d = settings.to_yaml_dict()
    d["split_fingerprint"] = fingerprint
    d["latency_profile"] = ("calibrated" if load_cached(settings.device, 1, settings.latency_batch)
                            else "built-in default (uncalibrated)")
    atomic_write_yaml(settings.run_dir / "config.yaml", d)


def _run_workers(settings: SearchSettings, progress: Callable[[dict], None] | None) -> None:
    """Run workers until the study has its trials (or the deadline passes) and no trial is
    left RUNNING: a worker killed by a signal is reported in one line and its trial failed and
    retried at once; trials left by workers that died elsewhere (or by a killed earlier search)
    are failed once their heartbeat is GRACE_PERIOD_S old, and more workers run their retries.
    Trials still beating (other machines) are waited for."""
    where = _storage_where(settings)
    storage = _open_worker_storage(settings)
    study = retry_storage(lambda: optuna.load_study(study_name=settings.study, storage=storage),
                          "loading the study", where)
    unmarked: dict[int, float] = {}
    first_id = 0
    idle_rounds = 0
    while True:
        retry_storage(lambda: fail_dead_trials(study, unmarked), "checking for dead workers", where)
        needed = retry_storage(lambda: _workers_needed(settings, study), "counting trials", where)
        if needed == 0:
            if not _settle(study, unmarked, where):
                return
            continue
        finished = retry_storage(lambda: _finished(study), "counting trials", where)
        if settings.workers == 1:
            run_worker(settings, first_id, progress)
        else:
            _run_processes(settings, needed, first_id, progress, study, unmarked, where)
        first_id += needed
        if retry_storage(lambda: _finished(study), "counting trials", where) > finished:
            idle_rounds = 0
        else:
            idle_rounds += 1
            if idle_rounds >= MAX_IDLE_WORKER_ROUNDS:
                raise RuntimeError(f"{MAX_IDLE_WORKER_ROUNDS} rounds of workers finished no trial "
                                   "(they keep dying); see the messages above")


# Rounds of workers in a row that finish no trial before the search gives up.
MAX_IDLE_WORKER_ROUNDS = 3


def _finished(study: optuna.Study) -> int:
    """Trials that finished with a result of their own (not lost with their worker)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "failure" in t.user_attrs))


def _workers_needed(settings: SearchSettings, study: optuna.Study) -> int:
    deadline = _deadline(settings)
    if deadline is not None and time.time() >= deadline:
        return 0
    limit = _trial_limit(settings, study)
    if limit is None:
        return settings.workers
    return max(0, min(settings.workers, limit - slots_used(study)))


def _settle(study: optuna.Study, unmarked: dict[int, float], where: str) -> bool:
    """With every local worker gone: wait until no trial is RUNNING, failing those whose worker
    died (at once when it was a process of this machine, else after GRACE_PERIOD_S without a
    heartbeat). True as soon as one was failed (its retry needs a worker), False when none is
    left running."""
    t0 = time.monotonic()
    warned = False
    while True:
        if retry_storage(lambda: fail_dead_trials(study, unmarked), "checking for dead workers", where):
            return True
        running = retry_storage(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
                                "checking running trials", where)
        if not running:
            return False
        if not warned and time.monotonic() - t0 > 5:
            log.warning("waiting for %d running trial(s) (trial(s) %s): each finishes, or is failed and "
                        "retried once its heartbeat is %d s old", len(running),
                        ", ".join(str(t.number) for t in running[:5]), GRACE_PERIOD_S)
            warned = True
        time.sleep(1.0)


def _run_processes(settings: SearchSettings, n: int, first_id: int, progress: Callable[[dict], None] | None,
                   study: optuna.Study, unmarked: dict[int, float], where: str) -> None:
    """``n`` worker processes (ids from ``first_id``). A worker killed by a signal is one line
    of warning; its trial is failed and retried at once for the others to run. Bad input or a
    lost storage in a worker: UserError with its message; any other failure: RuntimeError."""
    ctx = multiprocessing.get_context("spawn")
    start = float(os.environ["ARCHGEN_SEARCH_START"])
    workers = []
    errors: list[tuple[int, tuple[str, str]]] = []
    try:
        for worker_id in range(first_id, first_id + n):
            receive, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_entry, args=(settings, worker_id, start, send), daemon=False)
            p.start()
            send.close()
            workers.append((worker_id, p, receive))
        running = list(workers)
        while running:
            for _, p, _ in running:
                p.join(timeout=2.0 / len(running))
            for worker_id, p, receive in [w for w in running if not w[1].is_alive()]:
                running.remove((worker_id, p, receive))
                message = None
                with contextlib.suppress(EOFError, OSError):
                    if receive.poll():
                        message = receive.recv()
                receive.close()
                if p.exitcode is not None and (p.exitcode < 0 or p.exitcode == 130):  # a signal, or SIGINT
                    code = -p.exitcode if p.exitcode < 0 else signal.SIGINT
                    name = signal.Signals(code).name if code in signal.valid_signals() else f"signal {code}"
                    lost = retry_storage(lambda: fail_dead_trials(study, unmarked, announce=False),
                                         "failing a dead worker's trial", where)
                    log.warning("worker %d (pid %d) was killed by %s; %s", worker_id, p.pid, name,
                                f"its trial {', '.join(map(str, lost))} is failed and retried" if lost
                                else "the other workers carry on")
                elif p.exitcode != 0:
                    errors.append((p.exitcode, message or ("", f"worker {worker_id} exited with code {p.exitcode}")))
            _report_progress(progress, study, settings)
    except BaseException as exc:
        # Ctrl-C reaches the workers too: they fail and retry their trials, then exit. Otherwise
        # (or if they take longer) they are terminated; their trials are failed on the next run.
        grace = time.monotonic() + (5.0 if isinstance(exc, KeyboardInterrupt) else 0.0)
        for _, p, _ in workers:
            p.join(timeout=max(0.0, grace - time.monotonic()))
            if p.is_alive():
                p.terminate()
        for _, p, _ in workers:
            p.join(timeout=5)
        raise
    user = [m for code, m in errors if code == 2]
    if user:
        kind, text = user[0]
        raise StorageLostError(text) if kind == StorageLostError.__name__ else SearchConfigError(text)
    if errors:
        raise RuntimeError(f"{len(errors)} worker process(es) failed: {errors[0][1][1]}")


def settings_from(cli: dict[str, Any], config_file: str | None) -> SearchSettings:
    """Merge a YAML config with CLI options (CLI wins where given)."""
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update({k: v for k, v in cli.items() if v is not None})
    try:
        return SearchSettings(**merged)
    except TypeError as exc:
        raise UserError(str(exc)) from None

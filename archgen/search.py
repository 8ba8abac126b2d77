"""The search loop: settings, workers sharing one Optuna study (each trial is an
``archgen.objective.Objective``: price -> screen -> rebalance -> train with pruning), and the run
directory.

``run_search(settings)`` validates everything a user can get wrong *before* it creates the run
directory, then runs workers (in-process for one, separate processes for several; any number
of other machines may join through ``--storage``), and finally hands over to
``archgen.finalize`` which selects on validation, opens the test split once and exports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from archgen.errors import SearchConfigError, SpecError, UserError
from archgen.objective import Objective, TrialOutcome
from archgen.space import Param, space_from_config, spec_from_params
from archgen.storage import (
    RunLock,
    open_storage,
    recover_local_stale,
    slot_lock,
    slots_used,
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
CONFIG_KEYS_THAT_DEFINE_A_RUN = ("strategy", "data", "objective", "storage", "study", "seed")


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
    space: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    manual: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.objective not in ("accuracy", "pareto"):
            raise SearchConfigError(f"objective {self.objective!r} must be 'accuracy' or 'pareto'")
        if self.objective == "pareto" and self.strategy in PRUNING + ("pbt",):
            raise SearchConfigError(
                f"--objective pareto cannot prune: use random, bayes, grid or manual, not {self.strategy}"
            )
        checks = {
            "trials": (self.trials, 1),
            "workers": (self.workers, 1),
            "max_epochs": (self.max_epochs, 1),
            "min_epochs": (self.min_epochs, 1),
            "patience": (self.patience, 1),
            "latency_batch": (self.latency_batch, 1),
            "population": (self.population, 2),
            "pbt_interval": (self.pbt_interval, 1),
            "grid_points": (self.grid_points, 1),
            "reduction_factor": (self.reduction_factor, 2),
        }
        for name, (value, low) in checks.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise SearchConfigError(f"{name}={value!r} must be an integer >= {low}")
        for name in ("time_budget_s", "max_latency_ms", "max_macs", "max_params"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise SearchConfigError(f"{name}={value!r} must be a positive number")
        if self.min_epochs > self.max_epochs:
            raise SearchConfigError(f"min_epochs={self.min_epochs} exceeds max_epochs={self.max_epochs}")
        if not 0 < self.pbt_quantile <= 0.5:
            raise SearchConfigError(f"pbt_quantile={self.pbt_quantile!r} must be in (0, 0.5]")
        if not (self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise SearchConfigError(f"device={self.device!r} must be 'cpu' or 'cuda[:N]'")
        if self.bayes_sampler not in ("tpe", "gp"):
            raise SearchConfigError(f"bayes_sampler={self.bayes_sampler!r} must be 'tpe' or 'gp'")
        if self.strategy == "pbt" and self.workers > 1:
            raise SearchConfigError("pbt trains its population in one process; use --workers 1")
        if self.strategy == "manual" and not self.manual:
            raise SearchConfigError("strategy manual needs a 'manual:' list of configs in --config FILE")

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid_params"] = list(self.grid_params)
        if d["storage"]:
            from archgen.storage import redact

            d["storage"] = redact(d["storage"])
        return d


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a search YAML; unknown keys are an error naming the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SearchConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise SearchConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SearchConfigError(f"{path}: the config must be a mapping of setting: value")
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    aliases = {"time_budget": "time_budget_s"}
    out = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in known:
            raise SearchConfigError(f"{path}: unknown key {key!r}")
        out[name] = tuple(value) if name == "grid_params" else value
    return out


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
               progress: Callable[[dict], None] | None = None) -> int:
    """Ask/run/tell until the study has ``trials`` slots used or the deadline passes.
    Returns the number of trials this worker ran."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    storage = open_storage(settings.storage, settings.run_dir)
    dataset = load_data(settings)
    space = space_from_config(dataset.input_shape, settings.space)
    study = open_study(settings, space, storage, worker_id)
    deadline = _deadline(settings)
    objective = Objective(settings, dataset, load_profile(settings), space, deadline, storage)
    ran = 0
    while True:
        if deadline is not None and time.time() >= deadline:
            break
        with slot_lock(storage, settings.run_dir, settings.study):
            if isinstance(storage, optuna.storages.RDBStorage):
                optuna.storages.fail_stale_trials(study)
            limit = _trial_limit(settings, study)
            if limit is not None and slots_used(study) >= limit:
                break
            trial = study.ask()
        try:
            outcome = objective(trial)
        except Exception as exc:  # noqa: BLE001 - one broken trial must not end the search
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("failure", f"error: {type(exc).__name__}: {exc}".splitlines()[0])
            outcome = TrialOutcome(TrialState.FAIL)
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.values)
        else:
            study.tell(trial, state=outcome.state)
        ran += 1
        if progress is not None:
            progress(progress_status(study, settings, worker_id))
    return ran


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
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "val_acc" in t.user_attrs]
    best = max(complete, key=lambda t: t.user_attrs["val_acc"], default=None)
    start = float(os.environ.get("ARCHGEN_SEARCH_START", time.time()))
    elapsed = time.time() - start
    return {
        "worker": worker_id,
        "done": len(done),
        "trials": settings.trials,
        "best_val_acc": best.user_attrs["val_acc"] if best else None,
        "best_est_ms": best.user_attrs.get("est_ms") if best else None,
        "elapsed_s": elapsed,
        "remaining_s": max(0.0, settings.time_budget_s - elapsed) if settings.time_budget_s else None,
    }


def _worker_entry(settings: SearchSettings, worker_id: int, start: float) -> None:
    os.environ["ARCHGEN_SEARCH_START"] = str(start)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(settings, worker_id)


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


def _check_resume(settings: SearchSettings) -> bool:
    """True when ``out`` holds an earlier run of the same search (resume); error when it
    holds a different one."""
    cfg = settings.run_dir / "config.yaml"
    if not cfg.exists():
        return False
    old = yaml.safe_load(cfg.read_text()) or {}
    new = settings.to_yaml_dict()
    diff = [k for k in CONFIG_KEYS_THAT_DEFINE_A_RUN if old.get(k) != new.get(k)]
    if diff:
        raise SearchConfigError(
            f"{settings.run_dir} holds a different search ({', '.join(f'{k}: {old.get(k)!r}' for k in diff)}); "
            "use another --out or the same settings to resume"
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
    dataset, space = prepare(settings)
    resumed = _check_resume(settings)
    lock = RunLock(settings.run_dir)
    lock.acquire()
    try:
        start = time.time()
        os.environ["ARCHGEN_SEARCH_START"] = str(start)
        run_dir = settings.run_dir
        _write_config(settings, resumed)
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


def _write_config(settings: SearchSettings, resumed: bool) -> None:
    from costmodel.device_profile import load_cached

    d = settings.to_yaml_dict()
    d["latency_profile"] = ("calibrated" if load_cached(settings.device, 1, settings.latency_batch)
                            else "built-in default (uncalibrated)")
    path = settings.run_dir / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    tmp.replace(path)


def _run_workers(settings: SearchSettings, progress: Callable[[dict], None] | None) -> None:
    if settings.workers == 1:
        run_worker(settings, 0, progress)
        return
    ctx = multiprocessing.get_context("spawn")
    start = float(os.environ["ARCHGEN_SEARCH_START"])
    procs = [ctx.Process(target=_worker_entry, args=(settings, i, start), daemon=False) for i in range(settings.workers)]
    for p in procs:
        p.start()
    storage = open_storage(settings.storage, settings.run_dir)
    study = optuna.load_study(study_name=settings.study, storage=storage)
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=2.0 / len(procs))
        if progress is not None:
            progress(progress_status(study, settings))
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} worker process(es) exited with codes {bad}")


def settings_from(cli: dict[str, Any], config_file: str | None) -> SearchSettings:
    """Merge a YAML config with CLI options (CLI wins where given)."""
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update({k: v for k, v in cli.items() if v is not None})
    try:
        return SearchSettings(**merged)
    except TypeError as exc:
        raise UserError(str(exc)) from None

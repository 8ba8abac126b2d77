"""The search as a whole: ``run_search(settings)`` validates everything a user can get wrong
*before* it creates the run directory, plans the study (warm start, grid, manual configs), runs
workers (``archgen.worker``: in-process for one, separate processes for several; any number of
other machines may join through ``--storage``) or PBT (``archgen.pbt``), and finally hands over
to ``archgen.finalize``, which selects on validation, opens the test split once and exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from archgen import budget
from archgen import trial_record as tr
from archgen.errors import SearchConfigError, SpecError, UserError
from archgen.liveness import (
    GRACE_PERIOD_S,
    RunLock,
    fail_dead_trials,
    recover_local_stale,
    slots_used,
)
from archgen.machine import main_module_hidden
from archgen.run_record import check_resume, resume_profile, split_fingerprint, write_config
from archgen.rundir import check_out_dir, mark
from archgen.settings import (
    DEFAULT_TIME_BUDGET_S,
    SearchSettings,
    resolve_workers,
)
from archgen.space import Param, space_from_config, spec_from_params
from archgen.storage import open_storage
from archgen.storage_errors import StorageLostError, retry_storage
from archgen.strategies import coarse_grid, enqueue_fine_grid, enqueue_plan, manual_configs
from archgen.worker import (
    Progress,
    load_data,
    load_profile,
    open_study,
    open_worker_storage,
    rejections_exhausted,
    report_progress,
    run_worker,
    storage_where,
    trial_limit,
    worker_entry,
)

if TYPE_CHECKING:
    from archgen.data import Dataset

log = logging.getLogger(__name__)

# Rounds of workers in a row that finish no trial before the search gives up.
MAX_IDLE_WORKER_ROUNDS = 3


def run_search(settings: SearchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) a search and finalize its run directory; returns the final summary:
    ``run_dir``, ``resumed``, ``elapsed_s``, and once finalized the selection's record
    (``archgen.finalize``: ``val_acc``, ``test_acc``, ``spec_name``, ...) with ``spec_path``
    (its ``best/spec.json``) and ``trials_csv``."""
    if settings.trials is None and settings.time_budget_s is None:
        settings = dataclasses.replace(settings, time_budget_s=DEFAULT_TIME_BUDGET_S)
    from archgen.profiles import adopt_device_profile

    settings = adopt_device_profile(resume_profile(settings))
    check_out_dir(settings.run_dir, "search")
    dataset, space = prepare(settings)
    settings = resolve_workers(settings, dataset)
    fingerprint = split_fingerprint(dataset)
    resumed = check_resume(settings, fingerprint)
    mark(settings.run_dir, "search")
    lock = RunLock(settings.run_dir)
    lock.acquire()
    try:
        session, run_dir = time.time(), settings.run_dir
        _remove_partial_files(run_dir)
        write_config(settings, fingerprint)
        study = open_study(settings, space, open_storage(settings.storage, run_dir))
        if resumed and settings.storage is None and (n := recover_local_stale(study)):
            log.warning("resumed: %d trial(s) left running by the killed search will be retried", n)
        start = budget.session_start(study, settings)  # what earlier sessions left of the budget
        try:
            if settings.strategy == "pbt":
                from archgen.pbt import run_pbt

                on_round = None if progress is None else (lambda s: report_progress(progress, s, settings, start))
                run_pbt(settings, study, dataset, load_profile(settings), space, settings.deadline(start), on_round)
            else:
                enqueue_plan(settings, study, space)
                _run_workers(settings, start, progress)
                if settings.strategy == "grid" and enqueue_fine_grid(settings, study, space):
                    _run_workers(settings, start, progress)
        finally:
            budget.record_used(study, start)
        summary: dict[str, Any] = {"run_dir": str(run_dir), "resumed": resumed, "elapsed_s": time.time() - session}
        if settings.finalize:
            from archgen.finalize import finalize

            summary.update(finalize(settings, study, dataset, load_profile(settings), space))
            summary.update(spec_path=str(run_dir / "best" / "spec.json"), trials_csv=str(run_dir / "trials.csv"))
        return summary
    finally:
        lock.release()


# -- before the run directory is written --------------------------------------------------------


def ensure_profile(settings: SearchSettings, input_shape: tuple[int, int, int] | None = None) -> None:
    """Calibrate (quick mode, cached per device and runtime) when this machine has no profile
    yet, so the latency estimates and budgets of the search are this machine's, not the
    built-in guess. Nothing to do with ``device_profile`` (the target's profile is given)."""
    from archgen.calibration import calibrate_device
    from costmodel.device_profile import load_cached, predates_steady_allocator

    if settings.device_profile is not None or not settings.calibrate:
        return
    device = settings.main_device if settings.runtime == "torch" else "cpu"
    if (cached := load_cached(device, 1, settings.latency_batch, settings.runtime)) and not predates_steady_allocator(cached):
        return
    why = "no device profile" if cached is None else "the cached profile predates the current timing protocol"
    log.warning("%s for %s/%s/1 thread/batch %d: calibrating (quick, about a minute; `archgen calibrate` "
                "at that batch size makes a full profile)", why, device, settings.runtime, settings.latency_batch)
    calibrate_device(device, threads=1, batch_size=settings.latency_batch, quick=True,
                     runtime=settings.runtime, input_shape=input_shape)


def prepare(settings: SearchSettings) -> tuple[Dataset, dict[str, Param]]:
    """Validate everything a user can get wrong before anything is written."""
    if settings.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {settings.device}: CUDA is not available on this machine; use --device cpu")
        index = int(settings.main_device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {settings.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dataset = load_data(settings)
    ensure_profile(settings, dataset.input_shape)
    from archgen.drift import warn_if_drifted

    warn_if_drifted(load_profile(settings), settings.main_device, "before the latency screen")
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


def _check_budget_feasible(settings: SearchSettings, dataset: Dataset, space: dict[str, Param]) -> None:
    """A budget no candidate can meet is bad input: find the cheapest candidate of the space."""
    if settings.max_latency_ms is None and settings.max_macs is None and settings.max_params is None:
        return
    from archgen.costing import spec_geoms, spec_macs
    from costmodel.estimator import estimate_total_ms

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


# -- the run directory -------------------------------------------------------------


def _remove_partial_files(run_dir: Path) -> None:
    """Temporary files a killed search left behind (atomic writes that never reached their
    rename). Safe under the run lock: no other process writes into this directory now."""
    for tmp in run_dir.rglob(".*.tmp"):
        if tmp.is_file():
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


# -- workers ------------------------------------------------------------------------------------


def _run_workers(settings: SearchSettings, start: float, progress: Progress | None) -> None:
    """Run workers until the study has its trials (or the deadline passes) and no trial is
    left RUNNING: a worker killed by a signal is reported in one line and its trial failed and
    retried at once; trials left by workers that died elsewhere (or by a killed earlier search)
    are failed once their heartbeat is GRACE_PERIOD_S old, and more workers run their retries.
    Trials still beating (other machines) are waited for."""
    where = storage_where(settings)
    storage = open_worker_storage(settings)
    study = retry_storage(lambda: optuna.load_study(study_name=settings.study, storage=storage),
                          "loading the study", where)
    unmarked: dict[int, float] = {}
    first_id = 0
    idle_rounds = 0
    while True:
        retry_storage(lambda: fail_dead_trials(study, unmarked), "checking for dead workers", where)
        needed = retry_storage(lambda: _workers_needed(settings, study, start), "counting trials", where)
        if needed == 0:
            if not _settle(study, unmarked, where):
                return
            continue
        finished = retry_storage(lambda: _finished(study), "counting trials", where)
        if settings.workers == 1:
            run_worker(settings, start, first_id, progress)
        else:
            _run_processes(settings, start, needed, first_id, progress, study, unmarked, where)
        first_id += needed
        if retry_storage(lambda: _finished(study), "counting trials", where) > finished:
            idle_rounds = 0
        else:
            idle_rounds += 1
            if idle_rounds >= MAX_IDLE_WORKER_ROUNDS:
                raise RuntimeError(f"{MAX_IDLE_WORKER_ROUNDS} rounds of workers finished no trial "
                                   "(they keep dying); see the messages above")


def _finished(study: optuna.Study) -> int:
    """Trials that finished with a result of their own (not lost with their worker)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and tr.FAILURE in t.user_attrs))


def _workers_needed(settings: SearchSettings, study: optuna.Study, start: float) -> int:
    deadline = settings.deadline(start)
    if deadline is not None and time.time() >= deadline:
        return 0
    if rejections_exhausted(settings, study):
        return 0  # the workers stopped drawing: nothing but screened-out candidates (archgen.worker)
    limit = trial_limit(settings, study)
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


def _run_processes(settings: SearchSettings, start: float, n: int, first_id: int, progress: Progress | None,
                   study: optuna.Study, unmarked: dict[int, float], where: str) -> None:
    """``n`` worker processes (ids from ``first_id``). A worker killed by a signal is one line
    of warning; its trial is failed and retried at once for the others to run. Bad input or a
    lost storage in a worker: UserError with its message; any other failure: RuntimeError."""
    ctx = multiprocessing.get_context("spawn")
    workers = []
    errors: list[tuple[int, tuple[str, str]]] = []
    try:
        for worker_id in range(first_id, first_id + n):
            receive, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_entry, args=(settings, worker_id, start, send), daemon=False)
            with main_module_hidden():
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
            report_progress(progress, study, settings, start)
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


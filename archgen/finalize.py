"""The end of a search: tables, selection on validation, the one test evaluation, exports.

Order matters for "nothing half-written": trials.csv and the best/ exports are written first,
``test_metrics.json`` (the mark of a finished run) after the single test evaluation, and the
report last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from archgen.errors import NothingTrainedError
from archgen.fsio import atomic_torch_save, atomic_write_csv, atomic_write_json
from archgen.rundata import pareto_front
from archgen.selection import nothing_trained_message, select_best, selectable
from archgen.space import Param
from archgen.spec import ArchSpec, save_spec
from archgen.trial_record import (
    BALANCE_CV_AFTER,
    BALANCE_CV_BEFORE,
    BEST_EPOCH,
    DURATION_S,
    EPOCH_BUDGET,
    EPOCHS,
    EST_EPOCH_S,
    EST_MS,
    FAILURE,
    MACS,
    MEAS_MS,
    PARAMS,
    PBT_GENERATION,
    PRUNED,
    REJECTED,
    SPEC,
    SPEC_KEY,
    SPEC_NAME,
    STOPPED,
    STRATEGY,
    TEST_ACC,
    TEST_LOSS,
    VAL_ACC,
    VAL_LOSS,
    WORKER,
    epoch_of,
)

if TYPE_CHECKING:
    from torch import nn

    from archgen.data import Dataset
    from archgen.settings import SearchSettings
    from costmodel.device_profile import DeviceProfile

log = logging.getLogger(__name__)

ATTR_COLUMNS = (
    VAL_ACC, VAL_LOSS, EST_MS, MACS, PARAMS, EPOCHS, EPOCH_BUDGET, EST_EPOCH_S, DURATION_S, SPEC_KEY,
    SPEC_NAME, REJECTED, FAILURE, PRUNED, STOPPED, BALANCE_CV_BEFORE, BALANCE_CV_AFTER, STRATEGY,
    PBT_GENERATION, WORKER,
)
TEST_OPENINGS = "test_openings.jsonl"


# --------------------------------------------------------------------------------------------
# Tables and selection
# --------------------------------------------------------------------------------------------


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the columns of docs/design.md ("Run directory") and the sampled parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
        }
        for col in ATTR_COLUMNS:
            row[col] = t.user_attrs.get(col)
        if row[EPOCHS] is None:
            row[EPOCHS] = 0
        for k, v in t.params.items():
            row[f"params_{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def intermediate_table(study: optuna.Study) -> pd.DataFrame:
    """The learning curves: one row per (trial, epoch) with that epoch's validation accuracy."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        for key, value in t.user_attrs.items():
            epoch = epoch_of(key)
            if epoch is not None:
                rows.append({"number": t.number, "epoch": epoch, VAL_ACC: value})
    df = pd.DataFrame(rows, columns=["number", "epoch", VAL_ACC])
    return df.sort_values(["number", "epoch"]) if len(df) else df


def _write_tables(settings: SearchSettings, study: optuna.Study) -> pd.DataFrame:
    """``trials.csv``, ``intermediate.csv`` and (objective ``pareto``) ``pareto.csv``; returns
    the trials table."""
    df = trials_table(study)
    atomic_write_csv(settings.run_dir / "trials.csv", df)
    atomic_write_csv(settings.run_dir / "intermediate.csv", intermediate_table(study))
    if settings.objective == "pareto":
        atomic_write_csv(settings.run_dir / "pareto.csv", pareto_front(df))
    return df


# --------------------------------------------------------------------------------------------
# The whole end of a search
# --------------------------------------------------------------------------------------------


def finalize(settings: SearchSettings, study: optuna.Study, dataset: Dataset, profile: DeviceProfile,
             space: dict[str, Param]) -> dict[str, Any]:
    """Write the tables, select the best trial on validation, export its model (refit, or its
    own weights) with its cost table, open the test split once for it, write
    ``test_metrics.json`` and the report. Returns what ``test_metrics.json`` holds (plus
    ``report``; ``reused`` when an earlier evaluation of the same selection stands)."""
    run_dir = settings.run_dir
    _write_tables(settings, study)
    best = select_best(study, settings, n_val=len(dataset.val.y))
    if best is None:
        raise NothingTrainedError(nothing_trained_message(study, settings))
    rescored = None
    if settings.rescore_folds and settings.strategy != "pbt":  # opt-in: k-fold re-scoring of the best few
        from archgen.rescore import rescore_best

        best, rescored = rescore_best(study, settings, dataset, selectable(study, settings))
    spec = ArchSpec.from_dict(best.user_attrs[SPEC])
    model, refit = _final_model(settings, best, dataset, spec)
    onnx_diff = _export(run_dir / "best", spec, model)
    from archgen.drift import warn_if_drifted

    drift = warn_if_drifted(profile, settings.main_device, "finalize") if profile is not None else None
    meas_ms = _write_cost_table(run_dir / "best", spec, model, profile, settings)

    previous = _recorded_test(run_dir)
    if previous is not None and (previous.get("trial_number"), previous.get(SPEC_KEY), previous.get("refit")) == (
        best.number, spec.key(), refit
    ):
        # A finished run finalized again (a rerun of the same command): the selection has not
        # changed, so the recorded result stands and the test split stays closed.
        log.info("test split not opened again: trial %d was already evaluated (test_metrics.json)", best.number)
        return {**previous, "reused": True}
    if previous is not None:
        log.warning("the selection changed since the last test evaluation (trial %s, now %d): opening the "
                    "test split again; test_metrics.json records every opening", previous.get("trial_number"),
                    best.number)
    test, openings = _open_test_split(run_dir, model, dataset, best.number, spec.key())
    metrics = {
        TEST_ACC: test[TEST_ACC],
        TEST_LOSS: test[TEST_LOSS],
        "n": test["n"],
        "test_opened": len(openings),
        "test_openings": openings,
        "trial_number": best.number,
        VAL_ACC: best.user_attrs[VAL_ACC],
        "refit": refit,
        "selection": settings.selection,
        "rescored": rescored,
        EST_MS: best.user_attrs.get(EST_MS),
        MEAS_MS: meas_ms,
        "latency_batch": settings.latency_batch,
        **latency_labels(profile, settings),
        "machine_drift": None if drift is None else round(drift.ratio, 3),
        SPEC_NAME: spec.short_name(),
        SPEC_KEY: spec.key(),
        "onnx_max_abs_diff": onnx_diff,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(run_dir / "test_metrics.json", metrics, default=str)
    try:
        from archgen.report import write_report

        metrics["report"] = str(write_report(run_dir))
    except Exception as exc:  # any failure: the run's results stand without the report
        log.warning("report not written: %s", exc)
    return metrics


# --------------------------------------------------------------------------------------------
# The selected model: refit or the trial's own weights, exports, cost
# --------------------------------------------------------------------------------------------


def _final_model(settings: SearchSettings, best: FrozenTrial, dataset: Dataset,
                 spec: ArchSpec) -> tuple[nn.Module, dict[str, int] | None]:
    """The model to export and test, on the CPU, and its refit record (None: the trial's own
    weights, from its checkpoint or retrained here)."""
    import torch

    from archgen.build import build_model

    model = _refit(settings, best, dataset, spec)
    if model is not None:
        refit = {"epochs": best.user_attrs[BEST_EPOCH], "n_train": len(dataset.train) + len(dataset.val)}
        return model.cpu(), refit
    model = build_model(spec, seed=0)
    ckpt = settings.run_dir / "checkpoints" / f"trial_{best.number}.pt"
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    else:  # trained on another machine: retrain its config deterministically here
        model = _retrain(settings, best, dataset, spec)
    return model.cpu(), None  # exported for any machine; profiled and tested on the search's device


def _export(best_dir: Path, spec: ArchSpec, model: nn.Module) -> float:
    """``best/``: the spec (JSON and YAML), the weights and the ONNX model; returns the ONNX
    check's largest logit difference."""
    from archgen.export import export_onnx

    best_dir.mkdir(exist_ok=True)
    save_spec(spec, best_dir / "spec.json")
    save_spec(spec, best_dir / "spec.yaml")
    atomic_torch_save(model.state_dict(), best_dir / "weights.pt")
    return export_onnx(model, spec, best_dir / "model.onnx")


def _write_cost_table(best_dir: Path, spec: ArchSpec, model: nn.Module, profile: DeviceProfile | None,
                      settings: SearchSettings) -> float | None:
    """``best/cost.csv``: the per-layer estimate of the model next to its measured per-layer time
    at the latency batch, on the search's device, in the profile's runtime and thread count;
    returns the measured whole-model time."""
    from archgen.pricing import estimate_and_measure

    runtime = profile.runtime if profile is not None else "torch"
    onnx = best_dir / "model.onnx"
    threads = int(profile.context.get("threads") or 1) if profile is not None and not profile.is_default else 1
    report = estimate_and_measure(spec, profile, settings.latency_batch, model=model, threads=threads,
                                  device="cpu" if runtime == "onnxruntime" else settings.main_device,
                                  runtime=runtime, onnx_path=onnx if runtime == "onnxruntime" else None)
    atomic_write_csv(best_dir / "cost.csv", report.table)
    return report.e2e_meas_ms


def latency_labels(profile: DeviceProfile | None, settings: SearchSettings) -> dict[str, Any]:
    """What the estimate and the local measurement are of: the profile's device (``est_on``),
    this machine in the profile's runtime (``meas_on``), and whether those differ
    (``meas_is_target`` false: the measurement is not of the device the estimate prices)."""
    from costmodel.device_profile import cpu_model_name

    if profile is None or profile.is_default:
        return {"est_on": "built-in default profile (uncalibrated)", "meas_is_target": True,
                "meas_on": f"this machine ({settings.main_device})"}
    runtime = profile.runtime
    device = "cpu" if runtime == "onnxruntime" else settings.main_device
    here = cpu_model_name() if device == "cpu" else device
    from archgen.profiles import measures_another_kind

    foreign = profile.is_foreign() or measures_another_kind(profile, settings.main_device)
    threads = int(profile.context.get("threads") or 1)
    return {"est_on": profile.describe(), "meas_is_target": not foreign,
            "meas_on": f"this machine ({here}, {runtime}, {threads} thread(s))"
                       + (", not the profile's device" if foreign else "")}


def _refit(settings: SearchSettings, trial: FrozenTrial, dataset: Dataset, spec: ArchSpec) -> nn.Module | None:
    """The selected configuration retrained on train + validation for the trial's best epoch
    count, from the trial's own initial weights; None when refit is off, not applicable or
    diverged (the trial's weights are exported then)."""
    from archgen.objective import trial_start
    from archgen.training import train_fixed

    epochs = int(trial.user_attrs.get(BEST_EPOCH) or 0)
    if not settings.refit or settings.strategy == "pbt" or epochs < 1:
        return None
    model, config = trial_start(settings, trial.number, spec, trial.params, epochs)
    t0 = time.perf_counter()
    try:
        result = train_fixed(model, dataset.with_val_in_train(), config, epochs)
    except (RuntimeError, MemoryError) as exc:  # e.g. out of device memory with the larger split
        log.warning("refit of trial %d failed (%s): exporting the trial's own weights", trial.number,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    if result.status != "ok":
        log.warning("refit of trial %d diverged (%s): exporting the trial's own weights", trial.number, result.reason)
        return None
    log.info("refit trial %d on train + validation: %d epochs in %.1f s", trial.number, epochs,
             time.perf_counter() - t0)
    return model


def _retrain(settings: SearchSettings, trial: FrozenTrial, dataset: Dataset, spec: ArchSpec) -> nn.Module:
    from archgen.objective import trial_start
    from archgen.training import train

    model, config = trial_start(settings, trial.number, spec, trial.params,
                                max(1, trial.user_attrs.get(EPOCHS, settings.max_epochs)))
    train(model, dataset, config)
    return model


# --------------------------------------------------------------------------------------------
# The one test opening
# --------------------------------------------------------------------------------------------


def _open_test_split(run_dir: Path, model: nn.Module, dataset: Dataset, trial_number: int,
                     spec_key: str) -> tuple[dict[str, float | int | str], list[dict[str, Any]]]:
    """The one look at the test split for this selection: the evaluation and every opening
    this run has recorded. The opening is recorded before it happens, so that it is never lost
    (a kill between the evaluation and test_metrics.json)."""
    from archgen.evaluation import evaluate_test

    openings = _record_opening(run_dir, trial_number, spec_key)
    test = evaluate_test(model, dataset, reason=f"final evaluation of trial {trial_number}")
    return test, openings


def _recorded_test(run_dir: Path) -> dict[str, Any] | None:
    """The last finished test evaluation of this run, or None."""
    try:
        data = json.loads((run_dir / "test_metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and TEST_ACC in data else None


def _record_opening(run_dir: Path, trial_number: int, spec_key: str) -> list[dict[str, Any]]:
    """Append one line per opening of the test split (fsync-ed before the split is opened);
    return every opening this run has recorded."""
    path = run_dir / TEST_OPENINGS
    line = json.dumps({"trial_number": trial_number, SPEC_KEY: spec_key,
                       "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    openings = []
    for raw in path.read_text().splitlines():
        try:
            openings.append(json.loads(raw))
        except ValueError:  # a line torn by a kill still marks an opening
            openings.append({"damaged_record": raw[:80]})
    return openings

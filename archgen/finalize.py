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
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from archgen.fsio import atomic_torch_save, atomic_write_csv, atomic_write_json
from archgen.space import Param

log = logging.getLogger(__name__)

ATTR_COLUMNS = (
    "val_acc", "val_loss", "est_ms", "macs", "params", "epochs", "duration_s", "spec_key", "spec_name",
    "rejected", "failure", "pruned", "stopped", "balance_cv_before", "balance_cv_after", "strategy",
    "pbt_generation",
)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the DESIGN.md columns and the sampled parameters."""
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
        if row["epochs"] is None:
            row["epochs"] = 0
        for k, v in t.params.items():
            row[f"params_{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def intermediate_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        for key, value in t.user_attrs.items():
            if key.startswith("val_acc_epoch_"):
                rows.append({"number": t.number, "epoch": int(key.rsplit("_", 1)[1]), "val_acc": value})
    df = pd.DataFrame(rows, columns=["number", "epoch", "val_acc"])
    return df.sort_values(["number", "epoch"]) if len(df) else df


def select_best(study: optuna.Study, settings: Any) -> optuna.trial.FrozenTrial | None:
    """Highest validation accuracy among completed trials within the latency budget; ties
    (common: one validation image is 0.4% on digits) go to the lower validation loss, the finer
    signal, then to the lower estimated latency. Test data plays no part."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "val_acc" in t.user_attrs]
    if settings.max_latency_ms is not None:
        done = [t for t in done if t.user_attrs.get("est_ms", 0) <= settings.max_latency_ms]
    if not done:
        return None
    return max(done, key=lambda t: (t.user_attrs["val_acc"], -t.user_attrs.get("val_loss", 0.0),
                                    -t.user_attrs.get("est_ms", 0.0)))


def finalize(settings: Any, study: optuna.Study, dataset: Any, profile: Any, space: dict[str, Param]) -> dict[str, Any]:
    import torch

    from archgen.build import build_model
    from archgen.export import export_onnx
    from archgen.spec import ArchSpec, save_spec
    from archgen.train import evaluate_test

    run_dir = settings.run_dir
    df = trials_table(study)
    atomic_write_csv(run_dir / "trials.csv", df)
    atomic_write_csv(run_dir / "intermediate.csv", intermediate_table(study))
    if settings.objective == "pareto":
        from archgen.report import pareto_front

        atomic_write_csv(run_dir / "pareto.csv", pareto_front(df))
    best = select_best(study, settings)
    if best is None:
        raise RuntimeError("no trial completed: nothing to select (raise --trials or --time-budget)")
    spec = ArchSpec.from_dict(best.user_attrs["spec"])
    model = _refit(settings, best, dataset, spec)
    refit = None if model is None else {"epochs": best.user_attrs["best_epoch"],
                                        "n_train": len(dataset.train) + len(dataset.val)}
    if model is None:
        model = build_model(spec, seed=0)
        ckpt = run_dir / "checkpoints" / f"trial_{best.number}.pt"
        if ckpt.exists():
            model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        else:  # trained on another machine: retrain its config deterministically here
            model = _retrain(settings, best, dataset, spec)
    model = model.cpu()  # exported for any machine; profiled and tested on the search's device below
    best_dir = run_dir / "best"
    best_dir.mkdir(exist_ok=True)
    save_spec(spec, best_dir / "spec.json")
    save_spec(spec, best_dir / "spec.yaml")
    atomic_torch_save(model.state_dict(), best_dir / "weights.pt")
    onnx_diff = export_onnx(model, spec, best_dir / "model.onnx")
    cost, meas_ms = _cost_table(model, spec, profile, settings.latency_batch, settings.device)
    atomic_write_csv(best_dir / "cost.csv", cost)

    previous = _recorded_test(run_dir)
    if previous is not None and (previous.get("trial_number"), previous.get("spec_key"), previous.get("refit")) == (
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
    # The one look at the test split for this selection; recorded before it happens, so that
    # an opening is never lost (a kill between the evaluation and test_metrics.json).
    openings = _record_opening(run_dir, best.number, spec.key())
    test = evaluate_test(model, dataset, reason=f"final evaluation of trial {best.number}")
    metrics = {
        "test_acc": test["test_acc"],
        "test_loss": test["test_loss"],
        "n": test["n"],
        "test_opened": len(openings),
        "test_openings": openings,
        "trial_number": best.number,
        "val_acc": best.user_attrs["val_acc"],
        "refit": refit,
        "est_ms": best.user_attrs.get("est_ms"),
        "meas_ms": meas_ms,
        "latency_batch": settings.latency_batch,
        "spec_name": spec.short_name(),
        "spec_key": spec.key(),
        "onnx_max_abs_diff": onnx_diff,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(run_dir / "test_metrics.json", metrics, default=str)
    try:
        from archgen.report import write_report

        metrics["report"] = str(write_report(run_dir))
    except Exception as exc:  # noqa: BLE001 - the run's results stand without the report
        log.warning("report not written: %s", exc)
    return metrics


TEST_OPENINGS = "test_openings.jsonl"


def _recorded_test(run_dir: Path) -> dict[str, Any] | None:
    """The last finished test evaluation of this run, or None."""
    try:
        data = json.loads((run_dir / "test_metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "test_acc" in data else None


def _record_opening(run_dir: Path, trial_number: int, spec_key: str) -> list[dict[str, Any]]:
    """Append one line per opening of the test split (fsync-ed before the split is opened);
    return every opening this run has recorded."""
    path = run_dir / TEST_OPENINGS
    line = json.dumps({"trial_number": trial_number, "spec_key": spec_key,
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


def _cost_table(model: Any, spec: Any, profile: Any, batch: int, device: str = "cpu") -> tuple[pd.DataFrame, float]:
    """Per-layer estimate of the best model next to its measured per-layer time."""
    import torch

    from archgen.costing import spec_geoms
    from costmodel.estimate import estimate
    from costmodel.profile import profile_module

    report = estimate(spec_geoms(spec), profile, batch)
    measured = profile_module(model, torch.randn(batch, *spec.input_shape), device=device, threads=1, repeats=15)
    model.train(False)
    report = report.with_measurements(measured)
    return report.table, float(measured.e2e_ms)


def _refit(settings: Any, trial: optuna.trial.FrozenTrial, dataset: Any, spec: Any) -> Any | None:
    """The selected configuration retrained on train + validation for the trial's best epoch
    count, from the trial's own initial weights; None when refit is off, not applicable or
    diverged (the trial's weights are exported then)."""
    from archgen.objective import trial_start
    from archgen.train import train_fixed

    epochs = int(trial.user_attrs.get("best_epoch") or 0)
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


def _retrain(settings: Any, trial: optuna.trial.FrozenTrial, dataset: Any, spec: Any) -> Any:
    from archgen.objective import trial_start
    from archgen.train import train

    model, config = trial_start(settings, trial.number, spec, trial.params,
                                max(1, trial.user_attrs.get("epochs", settings.max_epochs)))
    train(model, dataset, config)
    return model

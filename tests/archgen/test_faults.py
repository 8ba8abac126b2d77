"""Fault injection on one search process: SIGKILL during finalize and export, a full disk, a
NaN-producing trial, a candidate over the memory cap. What was finished is never lost, and no
file that looks complete is ever truncated."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import torch
import yaml
from optuna.trial import TrialState

from archgen.search_run import run_search
from archgen.settings import SearchSettings

FAST_SPACE = {
    "stages": 1, "convs_per_stage": 1, "base_filters": [8], "dense_layers": 0,
    "batchnorm": False, "stacking": False, "batch_size": 256,
}


def _journal_study(run_dir):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="archgen", storage=JournalStorage(JournalFileBackend(str(run_dir / "study.journal"))))


def assert_outputs_complete_or_absent(run_dir):
    """Every file a reader would trust is whole: it parses, loads or runs."""
    import onnxruntime as ort

    best = run_dir / "best"
    checks = {
        run_dir / "trials.csv": lambda p: pd.read_csv(p).shape[0] > 0,
        run_dir / "intermediate.csv": lambda p: list(pd.read_csv(p).columns) == ["number", "epoch", "val_acc"],
        run_dir / "test_metrics.json": lambda p: "test_acc" in json.loads(p.read_text()),
        run_dir / "config.yaml": lambda p: "strategy" in yaml.safe_load(p.read_text()),
        best / "spec.json": lambda p: json.loads(p.read_text())["schema_version"] == 1,
        best / "spec.yaml": lambda p: yaml.safe_load(p.read_text())["schema_version"] == 1,
        best / "weights.pt": lambda p: len(torch.load(p, weights_only=True)) > 0,
        best / "model.onnx": lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) is not None,
        best / "cost.csv": lambda p: "est_ms" in pd.read_csv(p).columns,
        run_dir / "report.html": lambda p: p.read_text().rstrip().endswith("</html>"),
    }
    present = []
    for path, ok in checks.items():
        if path.exists():
            assert ok(path), f"{path.name} is present but incomplete"
            present.append(path.name)
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        assert len(torch.load(ckpt, weights_only=True)) > 0, ckpt
    return present


def test_sigkill_during_finalize_never_leaves_a_truncated_file(tmp_path):
    """Kill the finalize step (tables, export, ONNX check, profiling, test evaluation, report) at
    points spread over its whole duration; after each kill every output is whole or absent, and
    the next run of the same command repairs the run directory."""
    run_dir = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"space": FAST_SPACE}))
    cmd = [sys.executable, "-m", "archgen", "search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "3",
           "--max-epochs", "2", "--threads", "1", "--no-calibrate", "--config", str(cfg), "--out", str(run_dir), "-q"]
    subprocess.run([*cmd, "--no-finalize"], check=True, capture_output=True, timeout=300)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)  # one full finalize, timed
    full_s = time.perf_counter() - t0
    rng = random.Random(0)
    kills = 0
    for fraction in (0.3, 0.5, 0.65, 0.8, 0.9, 1.0):
        for name in ("test_metrics.json", "trials.csv"):
            (run_dir / name).unlink(missing_ok=True)  # a fresh finalize writes everything again
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(full_s * fraction * rng.uniform(0.9, 1.1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        assert_outputs_complete_or_absent(run_dir)
    assert kills >= 3  # the kills landed inside finalize, not after it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    present = assert_outputs_complete_or_absent(run_dir)
    assert {"trials.csv", "test_metrics.json", "weights.pt", "model.onnx", "cost.csv"} <= set(present)
    assert not list(run_dir.rglob(".*.tmp")), "a rerun removes the temporary files of killed writes"
    study = _journal_study(run_dir)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3


def test_disk_full_during_a_search_stops_cleanly_and_loses_nothing(run_cli, tmp_path, monkeypatch):
    import archgen.objective

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"space": FAST_SPACE}))
    run_dir = tmp_path / "run"
    argv = ["search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "4", "--max-epochs", "1",
            "--no-calibrate", "--config", str(cfg), "--out", str(run_dir), "-q"]
    real_save = archgen.objective.atomic_torch_save
    saves = []

    def fills_up(obj, path):
        saves.append(path)
        if len(saves) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)

    monkeypatch.setattr(archgen.objective, "atomic_torch_save", fills_up)
    code, _, err = run_cli(*argv)
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1, err
    study = _journal_study(run_dir)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2  # the two finished trials are kept
    monkeypatch.setattr(archgen.objective, "atomic_torch_save", real_save)
    code, _, err = run_cli(*argv)  # space freed: the same command finishes the search
    assert code == 0, err
    study = _journal_study(run_dir)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_nan_producing_trial_fails_cleanly_and_the_search_goes_on(tmp_path):
    # lr 10 with SGD on digits drives the loss to inf/NaN within an epoch.
    settings = SearchSettings(workers=1,
        data="digits", strategy="manual", max_epochs=2, threads=1, out=str(tmp_path / "run"), calibrate=False,
        space={**FAST_SPACE, "optimizer": ["adam", "sgd"], "lr": {"low": 1e-4, "high": 10.0, "log": True}},
        manual=[{"lr": 1e-3}, {"lr": 10.0, "optimizer": "sgd"}],
    )
    summary = run_search(settings)
    study = _journal_study(tmp_path / "run")
    trials = {t.params["lr"]: t for t in study.get_trials()}
    assert trials[10.0].state == TrialState.FAIL and trials[10.0].user_attrs["failure"].startswith("diverged")
    assert trials[1e-3].state == TrialState.COMPLETE
    assert summary["trial_number"] == trials[1e-3].number and summary["test_opened"] == 1


def test_a_candidate_over_the_memory_cap_is_rejected_before_training(tmp_path):
    settings = SearchSettings(workers=1,
        data="digits", strategy="manual", max_epochs=1, threads=1, out=str(tmp_path / "run"), calibrate=False,
        space={**FAST_SPACE, "base_filters": [8, 48], "batch_size": [32, 256]},
        manual=[{"base_filters": 8, "batch_size": 32}, {"base_filters": 48, "batch_size": 256}],
        max_memory_mb=3.0,
    )
    run_search(settings)
    study = _journal_study(tmp_path / "run")
    by_width = {t.params["base_filters"]: t for t in study.get_trials()}
    big = by_width[48]
    assert big.state == TrialState.PRUNED and "training memory" in big.user_attrs["rejected"]
    assert "cap 3 MB" in big.user_attrs["rejected"] and "epochs" not in big.user_attrs
    assert by_width[8].state == TrialState.COMPLETE


def test_training_memory_estimate_bounds_what_torch_allocates():
    """The screen's estimate is an upper bound of what training a batch really holds."""
    from archgen.build import build_model
    from archgen.costing import spec_geoms, training_memory_mb
    from archgen.spec import ArchSpec

    spec = ArchSpec.from_dict({"schema_version": 1, "input_shape": [1, 28, 28], "num_classes": 10,
                               "layers": [{"op": "conv", "filters": 32, "kernel": 3}, {"op": "pool"},
                                          {"op": "conv", "filters": 64, "kernel": 3}, {"op": "pool"},
                                          {"op": "dense", "units": 128}]})
    model = build_model(spec, seed=0)
    batch = 64
    saved = []

    def keep(module, inputs, output):
        saved.append(output.numel())

    hooks = [m.register_forward_hook(keep) for m in model.modules() if not list(m.children())]
    model(torch.randn(batch, 1, 28, 28)).sum().backward()
    for h in hooks:
        h.remove()
    weights_mb = 4 * 4 * sum(p.numel() for p in model.parameters()) / 2**20  # weights, grads, Adam x2
    outputs_mb = 4 * sum(saved) / 2**20
    est = training_memory_mb(spec, spec_geoms(spec), batch)
    assert est >= weights_mb + outputs_mb
    assert est <= 4 * (weights_mb + outputs_mb)  # an upper bound, not a wild one

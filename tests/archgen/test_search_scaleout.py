"""Scale-out and recovery against real storage: 4 worker processes on PostgreSQL, and a
search killed with SIGKILL mid-trial, then resumed with the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from archgen.search_run import run_search
from archgen.settings import SearchSettings

PG_URL = os.environ.get("ARCHGEN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAST_SPACE = {
    "stages": 1, "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": 0,
    "batchnorm": False, "stacking": False, "batch_size": 256,
}


def _pg_available() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


@pytest.mark.postgres
def test_four_workers_on_postgres_finish_exactly_40_trials(tmp_path):
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: the scale-out test needs it (see .ci/run)")
    study_name = f"archgen-test-{uuid.uuid4().hex[:10]}"
    settings = SearchSettings(
        data="digits", strategy="random", trials=40, max_epochs=1, threads=1, workers=4,
        storage=PG_URL, study=study_name, out=str(tmp_path / "pg"), space=FAST_SPACE,
    )
    try:
        summary = run_search(settings)
        study = optuna.load_study(study_name=study_name, storage=PG_URL)
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 40
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert len({t.number for t in trials}) == len(trials)
        table = pd.read_csv(tmp_path / "pg" / "trials.csv")
        assert sorted(table["number"]) == sorted(t.number for t in trials)
        assert summary["test_opened"] == 1
    finally:
        optuna.delete_study(study_name=study_name, storage=PG_URL)


def _journal_study(run_dir):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name="archgen", storage=storage)


def test_sigkill_mid_trial_then_resume_keeps_every_completed_trial_once(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    # Trials of a few seconds (about 6 M MACs per image, 12 epochs) so that the kill lands inside
    # one: a one-conv net trained 6 epochs in 0.07 s on a fast core and the window was missed.
    space = {**FAST_SPACE, "stages": 2, "convs_per_stage": 2, "base_filters": 64, "batch_size": 32, "lr": 0.002}
    cfg.write_text(yaml.safe_dump({"space": space, "patience": 50}))
    cmd = [sys.executable, "-m", "archgen", "search", "--workers", "1", "--data", "digits", "--strategy", "random",
           "--trials", "4", "--max-epochs", "12", "--threads", "1", "--config", str(cfg),
           "--out", str(run_dir), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    before = []
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if proc.poll() is not None:
                break  # finished (or died) before the kill: the assertion below says so
            if not (run_dir / "study.journal").exists():
                continue
            study = _journal_study(run_dir)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            # Mid-trial = the running trial has finished an epoch: all of its parameters are
            # suggested (a kill between two suggestions leaves a partial parameter set).
            training = [t for t in running if any(k.startswith("val_acc_epoch_") for k in t.user_attrs)]
            if len(complete) >= 2 and training:
                before = [(t.number, t.values[0], t.user_attrs["spec_key"]) for t in complete]
                break
        assert before, f"never saw 2 completed trials and one in training (search exit code {proc.poll()})"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run_dir / "test_metrics.json").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study = _journal_study(run_dir)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    after = {t.number: (t.values[0], t.user_attrs["spec_key"]) for t in complete}
    for number, value, key in before:  # kept, unchanged, not re-run
        assert after[number] == (value, key)
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1  # the interrupted trial, failed and retried with its parameters
    retried = [t for t in complete if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    assert (run_dir / "test_metrics.json").exists()

"""Faults during a search (issue "Hardening", acceptance points 2 and 3): randomized SIGKILL
rounds of a 4-worker PostgreSQL study (scripts/fault_rounds.py), a PostgreSQL restart while
trials run, a local worker killed mid-trial, and a worker that died between ``ask`` and its
first heartbeat. PostgreSQL missing is a failure, never a skip (as in test_search_scaleout.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from archgen.search_run import run_search
from archgen.settings import SearchSettings

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("ARCHGEN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAST_SPACE = {
    "stages": 1, "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": 0,
    "batchnorm": False, "stacking": False, "batch_size": 256,
}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def _require_pg() -> None:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect():
            return
    except Exception as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}): these tests need it (see .ci/run)")


def _finished(trials: list) -> list:
    return [t for t in trials if t.state in DONE or (t.state == TrialState.FAIL and "failure" in t.user_attrs)]


def _assert_lineage(trials: list, n: int) -> None:
    """n trials finished, nothing left running or waiting, each lost trial failed and retried
    once with its parameters, no trial finished twice."""
    by_number = {t.number: t for t in trials}
    assert len(_finished(trials)) == n
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    originals = [t.user_attrs["retry_of"] for t in retries]
    assert len(originals) == len(set(originals))  # retried once
    for r in retries:
        original = by_number[r.user_attrs["retry_of"]]
        assert original.state == TrialState.FAIL and "failure" not in original.user_attrs
        assert all(r.params.get(k) == v for k, v in original.params.items())
    lost = [t for t in trials if t.state == TrialState.FAIL and "failure" not in t.user_attrs]
    for t in lost:  # a lost retry is not retried again: a fresh trial took its slot
        assert t.user_attrs.get("retry_of") is not None or t.number in originals


def _workers_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and b"--multiprocessing-fork" in cmd:
            out.append(int(entry.name))
    return out


def _search_cmd(tmp_path: Path, out: Path, trials: int, workers: int, space: dict, storage: str | None = None,
                study: str | None = None, epochs: int = 2) -> list[str]:
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump({"space": space}))
    cmd = [sys.executable, "-m", "archgen", "search", "--data", "digits", "--strategy", "random",
           "--trials", str(trials), "--workers", str(workers), "--max-epochs", str(epochs),
           "--config", str(cfg), "--out", str(out), "--no-calibrate", "-q"]
    if storage:
        cmd += ["--storage", storage, "--study", study]
    return cmd


@pytest.mark.postgres
@pytest.mark.slow
def test_randomized_kill_rounds_keep_every_trial_once(tmp_path):
    _require_pg()
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fault_rounds.py"), "--rounds", "4", "--seed", "7",
         "--storage", PG_URL, "--out", str(tmp_path / "work"), "--json-out", str(summary_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert summary_path.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    assert s["problems"] == [], s["problems"]
    assert s["kills_total"] >= 4
    assert s["final_rc"] == 0
    assert s["finished"] == s["trials"]
    assert s["duplicates"] == 0
    assert s["running_left"] == 0 and s["waiting_left"] == 0
    assert s["lost_unretried"] == 0
    assert s["best_matches"] is True
    assert s["concurrent_run_refused"] is True  # a second copy of the command: one line, exit 2
    assert done.returncode == 0


def _pg_ctl(action: str) -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.fail("cannot restart PostgreSQL here: pg_ctlcluster and /etc/postgresql/VERSION are needed")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action],
                   check=True, capture_output=True, timeout=120)


def _pg_ready(timeout_s: float = 60) -> None:
    """Wait for the server; start it if it is still down after a while (a failed restart must
    not leave the machine without PostgreSQL)."""
    import sqlalchemy

    deadline = time.time() + timeout_s
    started = False
    while True:
        try:
            with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect():
                return
        except Exception:
            if time.time() > deadline:
                raise
            if not started and time.time() > deadline - timeout_s / 2:
                started = True
                with contextlib.suppress(Exception):
                    _pg_ctl("start")
            time.sleep(0.5)


def _count_complete(study_name: str) -> int:
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as conn:
            return conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :n AND t.state = 'COMPLETE'"), {"n": study_name}).scalar_one()
    except Exception:  # tables or study not there yet
        return 0


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restart_mid_study_then_rerun_loses_nothing(tmp_path):
    _require_pg()
    study_name = f"archgen-pgrestart-{uuid.uuid4().hex[:10]}"
    out = tmp_path / "run"
    # Two workers (kind to 2 cores); trials of about a second, so that the restart lands in some.
    space = {**FAST_SPACE, "base_filters": 16, "batch_size": 32}
    cmd = _search_cmd(tmp_path, out, 30, 2, space, PG_URL, study_name)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while _count_complete(study_name) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before the restart: " + proc.communicate()[1][-2000:]
        before = _count_complete(study_name)
        assert before >= 3
        try:
            _pg_ctl("restart")
        finally:
            _pg_ready()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _pg_ready()
    try:
        # Reconnected and finished, or a clear one-line exit 2 naming the storage; no traceback.
        print(f"after the restart: exit {proc.returncode}; stderr: {stderr.strip()}")
        assert "Traceback" not in stderr
        if proc.returncode != 0:
            assert proc.returncode == 2, stderr
            errors = [line for line in stderr.splitlines() if "error:" in line]
            assert len(errors) == 1 and "lost the connection to the storage" in errors[0], stderr
            assert "postgresql://postgres@127.0.0.1" in errors[0] or PG_URL.split("@")[-1] in errors[0]
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        study = optuna.load_study(study_name=study_name, storage=PG_URL)
        trials = study.get_trials(deepcopy=False)
        _assert_lineage(trials, 30)
        assert len([t for t in trials if t.state == TrialState.COMPLETE]) >= before  # nothing lost
        print(f"trials lost to the restart (failed and retried): "
              f"{sum(t.state == TrialState.FAIL for t in trials)}")
        table = pd.read_csv(out / "trials.csv")
        assert sorted(table["number"]) == sorted(t.number for t in trials)
    finally:
        optuna.delete_study(study_name=study_name, storage=PG_URL)


def _journal_study(run_dir: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name="archgen", storage=storage)


@pytest.mark.slow
def test_one_of_four_local_workers_killed_mid_trial_the_search_finishes(tmp_path):
    out = tmp_path / "run"
    # Trials of about a second (small batches), so that the kill lands inside one.
    space = {**FAST_SPACE, "base_filters": 16, "batch_size": 32}
    cmd = _search_cmd(tmp_path, out, 16, 4, space, epochs=3)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    victim_trial = None
    try:
        deadline = time.time() + 240
        while victim_trial is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            if not (out / "study.journal").exists():
                continue
            try:
                study = _journal_study(out)
            except KeyError:
                continue
            workers = set(_workers_of(proc.pid))
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                tag = t.user_attrs.get("worker", "")
                pid = int(tag.split("/")[-2]) if tag.count("/") >= 2 and tag.split("/")[-2].isdigit() else None
                # Mid-trial: an epoch finished (every parameter suggested), its worker one of ours.
                if pid in workers and any(k.startswith("val_acc_epoch_") for k in t.user_attrs):
                    os.kill(pid, signal.SIGKILL)
                    victim_trial = t.number
                    break
        assert victim_trial is not None, f"never saw a trial in training (exit code {proc.poll()})"
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    killed_lines = [line for line in stderr.splitlines() if "was killed by SIGKILL" in line]
    assert len(killed_lines) == 1, stderr  # reported in one line
    trials = _journal_study(out).get_trials(deepcopy=False)
    _assert_lineage(trials, 16)
    victim = next(t for t in trials if t.number == victim_trial)
    assert victim.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim_trial]
    assert len(retry) == 1 and retry[0].state in DONE
    assert (out / "test_metrics.json").exists()


@pytest.mark.postgres
def test_a_worker_dead_between_ask_and_first_heartbeat_is_failed_and_retried(tmp_path, monkeypatch):
    """A trial RUNNING without heartbeat or worker tag (its worker died right after ``ask``) is
    never failed by Optuna's heartbeat check; the search fails it after the grace period, retries
    it with the parameters it was enqueued with, and ends with nothing RUNNING."""
    _require_pg()
    import archgen.liveness

    monkeypatch.setattr(archgen.liveness, "GRACE_PERIOD_S", 2)
    study_name = f"archgen-orphan-{uuid.uuid4().hex[:10]}"
    orphan_study = optuna.create_study(study_name=study_name, storage=PG_URL, direction="maximize")
    try:
        orphan_study.enqueue_trial({"lr": 0.0123})
        orphan = orphan_study.ask()  # RUNNING, never beats, never tagged
        settings = SearchSettings(data="digits", strategy="random", trials=3, max_epochs=1, threads=1, workers=1,
                                  storage=PG_URL, study=study_name, out=str(tmp_path / "run"), space=FAST_SPACE,
                                  calibrate=False)
        run_search(settings)
        trials = optuna.load_study(study_name=study_name, storage=PG_URL).get_trials(deepcopy=False)
        _assert_lineage(trials, 3)
        failed = next(t for t in trials if t.number == orphan.number)
        assert failed.state == TrialState.FAIL and "before it started" in failed.user_attrs["lost"]
        retry = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
        assert len(retry) == 1 and retry[0].state in DONE and retry[0].params["lr"] == 0.0123
    finally:
        optuna.delete_study(study_name=study_name, storage=PG_URL)

"""Workers by default: how many (affinity, cgroup quota, memory, trials, GPUs), the time budget
shared by N workers, short budgets that lower the epochs instead of rejecting, and calibration
and the final latency measurement with no worker running."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import time

import optuna
import pandas as pd
import pytest

from archgen import machine
from archgen import trial_record as tr
from archgen.cli import argtypes
from archgen.costing import spec_macs
from archgen.errors import SearchConfigError
from archgen.objective import MAX_TRIAL_SHARE_OF_BUDGET, Objective, trial_share
from archgen.search_run import run_search
from archgen.settings import SearchSettings, resolve_workers
from archgen.space import space_from_config, spec_from_params

TINY_SPACE = {
    "stages": [1, 2], "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": [0, 1],
    "dense_units": 64, "batchnorm": [False, True], "stacking": False, "growth": 2, "batch_size": 128,
    "lr": {"low": 3e-4, "high": 3e-2, "log": True},
}


# -- how many workers ---------------------------------------------------------------------------


def test_usable_cpus_is_the_affinity_capped_by_a_cgroup_v2_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert machine.usable_cpus(tmp_path) == 6  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.usable_cpus(tmp_path) == 6  # unlimited
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert machine.cgroup_cpu_limit(tmp_path) == 2.5
    assert machine.usable_cpus(tmp_path) == 2  # 2.5 CPUs: 2 whole cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert machine.usable_cpus(tmp_path) == 1  # never below one


def test_usable_cpus_reads_a_cgroup_v1_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert machine.usable_cpus(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert machine.usable_cpus(tmp_path) == 16


def test_this_machine_resolves_to_its_usable_cores():
    assert machine.usable_cpus() == min(len(os.sched_getaffinity(0)),
                                        int(machine.cgroup_cpu_limit() or 10**6)) or machine.usable_cpus() == 1


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"cpus": 8}, 8),
    ({"cpus": 8, "trials": 3}, 3),  # never more workers than trials
    ({"cpus": 8, "memory_mb": 1000, "data_mb": 50}, 1),  # 500 MB for workers of 500 MB each
    ({"cpus": 8, "memory_mb": 4000, "data_mb": 50}, 4),
    ({"cpus": 8, "strategy": "pbt"}, 1),  # PBT trains its population in one process
    ({"cpus": 16, "device": "cuda"}, machine.GPU_WORKERS_PER_DEVICE),
    ({"cpus": 16, "device": "cuda:all", "gpus": 2}, 2 * machine.GPU_WORKERS_PER_DEVICE),
    ({"cpus": 3, "device": "cuda:all", "gpus": 2}, 3),  # at most one per core
])
def test_auto_workers_rules(kwargs, expected):
    args = {"device": "cpu", "strategy": "bohb", "trials": None, "data_mb": 1.0, "memory_mb": 64_000.0, **kwargs}
    assert machine.auto_workers(**args) == expected


def test_workers_default_to_auto_and_resolve_before_the_first_trial(monkeypatch):
    from archgen.data import load_dataset

    monkeypatch.setattr(machine, "usable_cpus", lambda root=machine.CGROUP_ROOT: 3)
    data = load_dataset("digits")
    assert SearchSettings().workers == "auto"
    assert resolve_workers(SearchSettings(), data).workers == 3
    assert resolve_workers(SearchSettings(trials=2), data).workers == 2
    assert resolve_workers(SearchSettings(strategy="pbt"), data).workers == 1
    assert resolve_workers(SearchSettings(workers=1), data).workers == 1  # an explicit number stands
    assert resolve_workers(SearchSettings(workers=5), data).workers == 5
    with pytest.raises(SearchConfigError, match="workers='two' must be an integer in .* or auto"):
        SearchSettings(workers="two")
    with pytest.raises(SearchConfigError, match="pbt trains its population in one process"):
        SearchSettings(strategy="pbt", workers=2)


def test_cli_workers_option_takes_auto_or_a_number():
    assert argtypes.workers_count("auto") == "auto"
    assert argtypes.workers_count("3") == 3
    with pytest.raises(Exception, match="must be an integer in"):
        argtypes.workers_count("0")


def test_cuda_all_spreads_workers_over_the_gpus_and_measures_on_the_first(monkeypatch):
    import archgen.settings as settings_mod

    monkeypatch.setattr(settings_mod, "_cuda_count", lambda: 3)
    s = SearchSettings(device="cuda:all", workers=7)
    assert [s.worker_device(i) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert s.main_device == "cuda:0"
    assert SearchSettings(device="cuda:1").worker_device(4) == "cuda:1"
    with pytest.raises(SearchConfigError, match="'cpu', 'cuda\\[:N\\]' or 'cuda:all'"):
        SearchSettings(device="cuda:any")


# -- the time budget, shared by N workers --------------------------------------------------------


def test_a_trial_may_take_a_larger_share_of_the_wall_clock_with_more_workers():
    assert trial_share(SearchSettings(workers=1)) == pytest.approx(MAX_TRIAL_SHARE_OF_BUDGET)
    assert trial_share(SearchSettings(workers=2)) == pytest.approx(2 / 3)
    assert trial_share(SearchSettings(workers=16)) == pytest.approx(2 / 3)


@pytest.mark.parametrize(("workers", "budget", "expected"), [
    (1, 30.0, 5),    # 30 s x 1/3 = 10 s at 2 s/epoch: 5 epochs of max 20
    (2, 30.0, 10),   # two workers: 20 s for this trial
    (2, 300.0, 20),  # a long budget: max_epochs
    (1, 5.0, None),  # 5 s x 1/3 < one 2-s epoch: screened out
])
def test_short_budgets_train_fewer_epochs_instead_of_rejecting(tmp_path, workers, budget, expected):
    from archgen.data import load_dataset
    from costmodel.device_profile import default_profile

    data = load_dataset("digits")
    settings = SearchSettings(workers=workers, time_budget_s=budget, max_epochs=20, out=str(tmp_path / "r"))
    space = space_from_config(data.input_shape, settings.space)
    study = optuna.create_study(direction="maximize")
    objective = Objective(settings, data, default_profile(), space, deadline=None)
    params = {name: p.default for name, p in space.items()}
    params.update(stages=1, base_filters=8, dense_layers=0, batchnorm=False, rebalance=False)
    macs = spec_macs(spec_from_params(params, data.input_shape, data.num_classes))
    # A training speed learned from a finished trial: exactly 2 s per epoch for this network.
    rate = macs * len(data.train.y) / 2.0
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5,
                                              user_attrs={tr.TRAIN_MACS_PER_S: rate}))
    trial = study.ask()
    spec = objective.candidate(trial, params)
    assert trial.user_attrs[tr.EST_EPOCH_S] == pytest.approx(2.0)
    if expected is None:
        assert spec is None and trial.user_attrs[tr.REJECTED].startswith("too slow for the time budget")
    else:
        assert spec is not None and trial.user_attrs[tr.EPOCH_BUDGET] == expected


def test_screened_out_candidates_do_not_use_up_trials(tmp_path):
    space = {**TINY_SPACE, "base_filters": [8, 64], "stages": [1, 2]}
    settings = SearchSettings(data="digits", strategy="random", trials=4, max_epochs=1, threads=1, workers=1,
                              max_macs=20_000, out=str(tmp_path / "b"), space=space)
    run_search(settings)
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    rejected = trials["rejected"].notna()
    assert rejected.sum() >= 1
    assert (~rejected).sum() == 4  # four trained trials, however many were screened out
    assert (trials.loc[~rejected, "epochs"] >= 1).all()


def test_a_search_that_only_draws_screened_out_candidates_stops(tmp_path, monkeypatch):
    import archgen.worker as worker_mod

    monkeypatch.setattr(worker_mod, "max_rejections", lambda trials: 5)
    # Every candidate needs more memory than the cap: all screened out; the search stops and
    # says in one line that nothing could be trained.
    settings = SearchSettings(data="digits", strategy="random", trials=2, max_epochs=1, threads=1, workers=1,
                              max_memory_mb=1, out=str(tmp_path / "m"), space=TINY_SPACE)
    from archgen.errors import NothingTrainedError

    with pytest.raises(NothingTrainedError, match="all 5 candidate\\(s\\) were screened out before training"):
        run_search(settings)


def test_a_budget_too_short_for_any_epoch_is_exit_2_saying_what_budget_would_work(run_cli, tmp_path, mnist_dir):
    space = {"stages": 3, "convs_per_stage": 2, "base_filters": 64, "growth": 2, "max_filters": 256,
             "batch_size": 32}
    import yaml

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"space": space}))
    code, out, err = run_cli("search", "--data", f"idx:{mnist_dir}", "--strategy", "random", "--trials", "3",
                             "--time-budget", "3", "--workers", "1", "--config", str(cfg),
                             "--out", str(tmp_path / "r"), "-q")
    assert code == 2, err
    line = [x for x in err.splitlines() if x.startswith("archgen search:")]
    assert len(line) == 1 and "nothing could be trained in --time-budget 3 s" in line[0]
    suggested = float(line[0].split("use --time-budget ")[1].split()[0])
    assert suggested > 3
    assert "internal error" not in err


def test_the_first_epoch_of_a_study_finishes_past_the_deadline(tmp_path):
    """A budget that allows one epoch always trains something: the search's first trial
    finishes its first epoch even when the deadline passes during it."""
    space = {**TINY_SPACE, "lr": 0.01, "batch_size": 32}  # one epoch learns digits well past chance
    settings = SearchSettings(data="digits", strategy="random", trials=1, time_budget_s=0.5, max_epochs=5,
                              threads=1, workers=1, out=str(tmp_path / "g"), space=space)
    summary = run_search(settings)
    trials = pd.read_csv(tmp_path / "g" / "trials.csv")
    assert len(trials) == 1 and trials["epochs"].iloc[0] >= 1
    assert summary["test_acc"] > 0.3


# -- several workers, and the measurements that must run alone ------------------------------------


def test_two_workers_overlap_and_calibration_and_final_measurement_run_alone(tmp_path, monkeypatch):
    import archgen.calibration as calibration
    import archgen.finalize as finalize

    events: dict[str, tuple[float, int]] = {}
    real_calibrate, real_measure = calibration.calibrate_device, finalize._write_cost_table

    def calibrate(*args, **kwargs):
        events["calibrate_start"] = (time.time(), len(multiprocessing.active_children()))
        out = real_calibrate(*args, **kwargs)
        events["calibrate_end"] = (time.time(), len(multiprocessing.active_children()))
        return out

    def measure(*args, **kwargs):
        events["measure"] = (time.time(), len(multiprocessing.active_children()))
        return real_measure(*args, **kwargs)

    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))  # no profile yet: calibrates first
    monkeypatch.setattr(calibration, "calibrate_device", calibrate)
    monkeypatch.setattr(finalize, "_write_cost_table", measure)
    settings = SearchSettings(data="digits", strategy="random", trials=6, max_epochs=3, threads=1, workers=2,
                              out=str(tmp_path / "w"), space=TINY_SPACE)
    run_search(settings)
    trials = pd.read_csv(tmp_path / "w" / "trials.csv")
    assert len(trials) == 6 and trials["worker"].nunique() == 2
    # optuna records naive local times: datetime.timestamp() reads them as such
    start = [datetime.datetime.fromisoformat(v).timestamp() for v in trials["datetime_start"]]
    end = [datetime.datetime.fromisoformat(v).timestamp() for v in trials["datetime_complete"]]
    spans = sorted(zip(start, end))
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two trials overlapped in time"
    # No worker process while calibrating or measuring; every trial between the two.
    assert events["calibrate_start"][1] == 0 and events["calibrate_end"][1] == 0
    assert events["measure"][1] == 0
    assert events["calibrate_end"][0] <= min(start)
    assert events["measure"][0] >= max(end)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "bayes", "hyperband", "bohb", "pbt", "grid", "manual"])
def test_a_short_budget_on_mnist_trains_and_selects_with_every_strategy(run_cli, tmp_path, mnist_dir, strategy):
    """``--trials 6 --time-budget 90`` on MNIST-10k used to reject every candidate ("too slow
    for the time budget") and end in an internal error. Here with a budget six times shorter
    and the default workers and space: every strategy trains and selects a model."""
    import yaml

    extra: list[str] = []
    if strategy == "manual":
        cfg = tmp_path / "m.yaml"
        cfg.write_text(yaml.safe_dump({"manual": [{"base_filters": 16, "stages": 2}, {"base_filters": 32}]}))
        extra = ["--config", str(cfg)]
    out = tmp_path / "run"
    code, stdout, err = run_cli("search", "--data", f"idx:{mnist_dir}", "--strategy", strategy, "--trials", "6",
                                "--time-budget", "15", "--out", str(out), "-q", *extra)
    assert code == 0, err
    assert "internal error" not in err
    trials = pd.read_csv(out / "trials.csv")
    trained = trials[trials["epochs"] > 0]
    assert len(trained) >= 1 and trials["rejected"].notna().sum() < len(trials)
    assert (trials["state"] == "COMPLETE").any()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["test_acc"] > 0.5  # one epoch of a CNN on MNIST is far above chance


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_search_with_several_workers(tmp_path):
    """Worker processes are spawned without re-importing the caller's script: a plain script
    calling archgen.search() with two workers searches once, and does not fail in the workers."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "plain_script.py"
    script.write_text(
        "import archgen\n"
        "print('script body ran')\n"
        f"r = archgen.search(data='digits', strategy='random', trials=4, out={str(tmp_path / 'run')!r}, "
        f"workers=2, max_epochs=1, calibrate=False, space={TINY_SPACE!r})\n"
        "print('selected', r.val_acc)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script body ran") == 1 and "selected 0." in done.stdout
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(trials) == 4 and trials["worker"].nunique() == 2

"""The search loop end to end on tiny budgets: every strategy, pruning rungs, budget
screening, the sealed test split, bad input."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import torch
import yaml

from archgen.data import SealedTest, load_dataset
from archgen.search_run import run_search
from archgen.selection import selection_margin
from archgen.settings import SearchSettings

# Small, fast networks so a trial takes about a second on one core.
TINY_SPACE = {
    "stages": [1, 2],
    "convs_per_stage": 1,
    "base_filters": [8, 16],
    "dense_layers": [0, 1],
    "dense_units": 64,
    "batchnorm": [False, True],
    "stacking": False,
    "growth": 2,
    "batch_size": 128,
    "lr": {"low": 3e-4, "high": 3e-2, "log": True},
}
COMPLETE_RUN = [
    "config.yaml", "trials.csv", "best/spec.json", "best/spec.yaml", "best/weights.pt",
    "best/model.onnx", "best/cost.csv", "test_metrics.json", "report.html",
]


def _write_config(tmp_path, **extra):
    cfg = {"space": TINY_SPACE, **extra}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


STRATEGY_ARGS = {
    "random": ["--trials", "3"],
    "bayes": ["--trials", "3"],
    "hyperband": ["--trials", "4"],
    "bohb": ["--trials", "4"],
    "pbt": ["--trials", "3"],
    "grid": ["--trials", "4"],
    "manual": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("data", ["digits", "mnist"])
@pytest.mark.parametrize("strategy", list(STRATEGY_ARGS))
def test_every_strategy_produces_a_complete_run(run_cli, tmp_path, mnist_dir, strategy, data):
    source = "digits" if data == "digits" else f"idx:{mnist_dir}"
    extra = {"manual": [{"base_filters": 8, "stages": 1}, {"base_filters": 16, "lr": 0.003}]} if strategy == "manual" else {}
    if strategy == "pbt":
        extra["pbt_interval"] = 1
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "search", "--workers", "1", "--data", source, "--strategy", strategy, "--max-epochs", "2", "--threads", "1",
        "--config", _write_config(tmp_path, **extra), "--out", str(out), "-q", *STRATEGY_ARGS[strategy],
    )
    assert code == 0, err
    for name in COMPLETE_RUN:
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) >= 2 and (trials["state"] == "COMPLETE").any()
    assert set(trials["strategy"].dropna()) == {strategy}
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["test_opened"] == 1 and 0.0 <= metrics["test_acc"] <= 1.0
    best = trials.loc[trials["number"] == metrics["trial_number"]].iloc[0]
    done = trials.loc[trials["state"] == "COMPLETE"]
    top = done["val_acc"].max()
    near = done.loc[done["val_acc"] >= top - selection_margin(top, len(load_dataset(source, seed=0).val.y)) - 1e-9]
    assert metrics["selection"] == "se1" and best["number"] in set(near["number"])  # the default rule
    assert best["est_ms"] == near["est_ms"].min()
    assert f"test_acc {metrics['test_acc']:.4f}" in stdout
    if strategy == "grid":  # coarse-to-fine: a fine phase around the best coarse point
        study = optuna.load_study(study_name="archgen", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
        phases = [t.user_attrs.get("grid_phase") for t in study.trials]
        assert "coarse" in phases and "fine" in phases


def test_hyperband_prunes_at_the_rungs(tmp_path):
    settings = SearchSettings(workers=1,
        data="digits", strategy="hyperband", trials=12, max_epochs=9, reduction_factor=3,
        patience=9, threads=1, out=str(tmp_path / "hb"), space=TINY_SPACE,
    )
    run_search(settings)
    trials = pd.read_csv(tmp_path / "hb" / "trials.csv")
    pruned = trials[trials["pruned"].notna()]
    assert len(pruned) >= 1
    # Hyperband with min_resource 1, eta 3, max 9: rungs at epochs 1, 3 and 9.
    assert set(pruned["epochs"]) <= {1, 3, 9}
    assert (pruned["epochs"] < 9).any()
    completed = trials[trials["state"] == "COMPLETE"]
    assert (completed["epochs"] > 1).all()


def test_over_budget_candidates_are_never_trained(tmp_path):
    space = {**TINY_SPACE, "base_filters": [8, 64], "stages": [1, 2]}
    settings = SearchSettings(workers=1,
        data="digits", strategy="random", trials=8, max_epochs=1, threads=1, max_macs=20_000,
        out=str(tmp_path / "b"), space=space,
    )
    run_search(settings)
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    rejected = trials[trials["rejected"].fillna("").str.startswith("over budget")]
    assert len(rejected) >= 1
    assert (rejected["epochs"] == 0).all() and rejected["duration_s"].isna().all()
    for n in rejected["number"]:
        assert not (tmp_path / "b" / "checkpoints" / f"trial_{n}.pt").exists()
    trained = trials[trials["state"] == "COMPLETE"]
    assert (trained["macs"] <= 20_000).all() and len(trained) >= 1


def test_test_split_is_opened_once_for_the_selected_model_only(tmp_path, monkeypatch):
    opened: list[str] = []
    real_open = SealedTest.open

    def spy(self, reason):
        opened.append(reason)
        return real_open(self, reason)

    monkeypatch.setattr(SealedTest, "open", spy)
    settings = SearchSettings(workers=1, data="digits", strategy="random", trials=3, max_epochs=1, threads=1,
                              out=str(tmp_path / "t"), space=TINY_SPACE, refit=True)
    summary = run_search(settings)
    assert len(opened) == 1
    assert opened[0] == f"final evaluation of trial {summary['trial_number']}"
    assert summary["refit"] is not None  # the refit on train + validation does not open it either


def test_refit_retrains_the_selected_config_on_train_plus_val(tmp_path):
    import torch

    from archgen.data import load_dataset

    base = dict(data="digits", strategy="random", trials=2, max_epochs=3, patience=3, threads=1, space=TINY_SPACE)
    on = run_search(SearchSettings(workers=1, out=str(tmp_path / "on"), refit=True, **base))
    off = run_search(SearchSettings(workers=1, out=str(tmp_path / "off"), **base))  # the default
    assert on["trial_number"] == off["trial_number"] and on["val_acc"] == off["val_acc"]
    trials = pd.read_csv(tmp_path / "on" / "trials.csv").set_index("number")
    data = load_dataset("digits", seed=0)
    n = len(data.train) + len(data.val)
    study = optuna.load_study(study_name="archgen", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "on" / "study.journal"))))
    best = study.trials[on["trial_number"]]
    assert on["refit"] == {"epochs": best.user_attrs["best_epoch"], "n_train": n}
    assert 1 <= on["refit"]["epochs"] <= 3 and trials.loc[on["trial_number"], "state"] == "COMPLETE"
    assert off["refit"] is None
    # without refit the export is the trial's checkpoint; with it, new weights
    ckpt = torch.load(tmp_path / "off" / "checkpoints" / f"trial_{off['trial_number']}.pt", weights_only=True)
    exported_off = torch.load(tmp_path / "off" / "best" / "weights.pt", weights_only=True)
    exported_on = torch.load(tmp_path / "on" / "best" / "weights.pt", weights_only=True)
    assert all(torch.equal(ckpt[k], exported_off[k]) for k in ckpt)
    assert any(not torch.equal(ckpt[k], exported_on[k]) for k in ckpt)
    assert json.loads((tmp_path / "on" / "test_metrics.json").read_text())["refit"]["n_train"] == n
    # the refit is the selected configuration trained from the trial's own initial weights
    from archgen.build import build_model
    from archgen.space import train_kwargs
    from archgen.spec import ArchSpec
    from archgen.training import TrainConfig, seed_everything, train_fixed

    seed = 0 * 100_003 + best.number
    seed_everything(seed)
    model = build_model(ArchSpec.from_dict(best.user_attrs["spec"]), seed=seed)
    config = TrainConfig(epochs=on["refit"]["epochs"], patience=3, seed=seed, threads=1, **train_kwargs(best.params))
    train_fixed(model, data.with_val_in_train(), config, on["refit"]["epochs"])
    assert all(torch.equal(v, exported_on[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "argv, config, needle",
    [
        (["--strategy", "annealing"], None, "unknown strategy 'annealing'"),
        ([], {"colour": "blue"}, "unknown key 'colour'"),
        (["--strategy", "manual"], {"manual": [{"lr": 5.0}]}, "manual[0]: lr=5.0 is outside"),
        (["--strategy", "manual"], {"manual": [{"wings": 2}]}, "manual[0]: unknown parameter(s) wings"),
        (["--strategy", "grid"], {"grid": {"base_filters": [7]}}, "grid.base_filters: base_filters=7 is not one of"),
        (["--max-latency-ms", "0.000001"], None, "no candidate can meet the budget"),
        (["--storage", "postgresql://bob:hunter2@127.0.0.1:1/nope"], None, "cannot open storage 'postgresql://bob:***@127.0.0.1:1/nope'"),
        (["--data", "idx:/nonexistent/dir"], None, "/nonexistent/dir"),
        (["--trials", "0"], None, "argument --trials: 0 must be an integer in [1, 1,000,000]"),
        (["--device", "tpu"], None, "device='tpu' must be 'cpu', 'cuda[:N]' or 'cuda:all'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, argv, config, needle):
    out = tmp_path / "run"
    args = ["search", "--workers", "1", "--out", str(out), "-q", *argv]
    if config is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    code, stdout, err = run_cli(*args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "hunter2" not in err
    assert not out.exists()


def test_cuda_search_without_cuda_is_one_line_exit_2(run_cli, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli("search", "--workers", "1", "--device", "cuda", "--out", str(tmp_path / "run"), "-q")
    assert code == 2 and err.strip().endswith("CUDA is not available on this machine; use --device cpu"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_search_trains_profiles_and_tests_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    summary = run_search(SearchSettings(workers=1, data="digits", strategy="bohb", trials=4, max_epochs=3, device="cuda",
                                        out=str(tmp_path / "g"), space=TINY_SPACE, refit=True))
    assert summary["test_acc"] > 0.5 and summary["meas_ms"] > 0 and summary["refit"] is not None
    profiles = list((tmp_path / "cache").rglob("profile-t1-b1.json"))
    assert len(profiles) == 1 and profiles[0].parent.name.startswith("cuda-")  # calibrated on the GPU
    for name in COMPLETE_RUN:
        assert (tmp_path / "g" / name).exists(), name


def test_resume_with_different_settings_is_refused(run_cli, tmp_path):
    out = tmp_path / "run"
    cfg = _write_config(tmp_path)
    assert run_cli("search", "--workers", "1", "--trials", "1", "--max-epochs", "1", "--config", cfg, "--out", str(out), "-q",
                   "--strategy", "random")[0] == 0
    code, _, err = run_cli("search", "--workers", "1", "--trials", "2", "--config", cfg, "--out", str(out), "-q", "--strategy", "bohb")
    assert code == 2 and "holds a different search" in err


def test_pareto_objective_exports_the_front(tmp_path):
    settings = SearchSettings(workers=1, data="digits", strategy="bayes", objective="pareto", trials=4, max_epochs=1,
                              threads=1, out=str(tmp_path / "p"), space=TINY_SPACE)
    run_search(settings)
    front = pd.read_csv(tmp_path / "p" / "pareto.csv")
    trials = pd.read_csv(tmp_path / "p" / "trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    assert 1 <= len(front) <= len(done)
    for _, row in front.iterrows():  # no completed trial dominates a front member
        dominated = (done["val_acc"] >= row["val_acc"]) & (done["est_ms"] <= row["est_ms"]) & (
            (done["val_acc"] > row["val_acc"]) | (done["est_ms"] < row["est_ms"]))
        assert not dominated.any()


def test_bayes_with_gaussian_process_sampler(tmp_path):
    settings = SearchSettings(workers=1, data="digits", strategy="bayes", bayes_sampler="gp", trials=3, max_epochs=1,
                              threads=1, out=str(tmp_path / "gp"), space=TINY_SPACE)
    summary = run_search(settings)
    assert summary["test_opened"] == 1
    assert (pd.read_csv(tmp_path / "gp" / "trials.csv")["state"] == "COMPLETE").sum() >= 2


@pytest.mark.parametrize("name", ["grid.yaml", "manual.yaml", "space.yaml"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    from archgen.settings import load_config_file, settings_from
    from archgen.space import space_from_config
    from archgen.strategies import coarse_grid, manual_configs

    path = Path(__file__).resolve().parents[2] / "examples" / name
    settings = settings_from({}, str(path))
    space = space_from_config((1, 8, 8), settings.space)
    if settings.strategy == "manual":
        assert len(manual_configs(settings.manual, space)) == len(load_config_file(path)["manual"])
    if settings.strategy == "grid":
        assert coarse_grid(space, settings)["lr"] == [0.0003, 0.003, 0.03]


def test_selection_breaks_accuracy_ties_by_validation_loss():
    from types import SimpleNamespace

    from archgen.selection import select_best

    study = optuna.create_study(direction="maximize")
    for acc, loss, est in [(0.98, 0.09, 1.0), (0.99, 0.08, 2.0), (0.99, 0.05, 3.0), (0.99, 0.05, 2.5)]:
        t = study.ask()
        t.set_user_attr("val_acc", acc)
        t.set_user_attr("val_loss", loss)
        t.set_user_attr("est_ms", est)
        study.tell(t, acc)
    best = select_best(study, SimpleNamespace(max_latency_ms=None))
    assert best.number == 3  # 0.99, lowest loss, then cheaper
    capped = select_best(study, SimpleNamespace(max_latency_ms=2.0))
    assert capped.number == 1


def test_candidates_too_slow_for_the_time_budget_are_not_started(tmp_path):
    # A 2-second budget cannot afford 20 epochs of the wide network; the narrow one is fine.
    space = {**TINY_SPACE, "base_filters": 48, "stages": 2, "convs_per_stage": 2, "dense_layers": 0,
             "rebalance": False}  # rebalancing can narrow the wide network until it fits
    settings = SearchSettings(workers=1, data="digits", strategy="random", trials=2, time_budget_s=2.0, max_epochs=20,
                              threads=1, out=str(tmp_path / "slow"), space=space, warm_start=False, finalize=False)
    run_search(settings)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "slow" / "study.journal")))
    trials = optuna.load_study(study_name="archgen", storage=storage).trials
    assert trials and all(t.user_attrs.get("rejected", "").startswith("too slow for the time budget") for t in trials)
    assert all("epochs" not in t.user_attrs for t in trials)


class _Recorder(optuna.samplers.RandomSampler):
    """Records which trials a sampler is shown."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[int] = []

    def sample_independent(self, study, trial, name, distribution):
        self.seen = [t.number for t in study._get_trials(deepcopy=False, states=None, use_cache=False)]
        return super().sample_independent(study, trial, name, distribution)


def test_tpe_past_its_start_up_trials_under_hyperband_with_screened_out_trials():
    """The filtered view holds up where TPE really models (after n_startup_trials), with pruned,
    rejected and concurrently running trials, and constant_liar writing to storage."""
    from archgen.strategies import TrainedTrialsSampler

    sampler = TrainedTrialsSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True,
                                                              constant_liar=True))
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=optuna.pruners.HyperbandPruner(1, 9, 3))
    running = study.ask()  # a trial another worker is still training
    running.suggest_float("x", 0, 1)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        width = trial.suggest_int("width", 8, 128, log=True)
        if width > 96:  # screened out before training
            trial.set_user_attr("rejected", "over budget")
            raise optuna.TrialPruned()
        for epoch in range(1, 10):
            trial.report(1 - (x - 0.3) ** 2 - epoch ** -1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1 - (x - 0.3) ** 2

    study.optimize(objective, n_trials=40)
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trained) >= 5
    late = [t.params["x"] for t in study.trials[-15:] if "x" in t.params]
    assert sum(abs(x - 0.3) < 0.2 for x in late) >= len(late) // 2  # TPE homes in on the optimum


def test_sampler_seeds_differ_between_concurrent_workers(monkeypatch, tmp_path):
    from archgen.settings import sampler_seed

    lone = SearchSettings(workers=1, data="digits", seed=5, out=str(tmp_path))
    assert sampler_seed(lone) == 5  # a lone process stays reproducible
    assert len({sampler_seed(lone, w) for w in range(4)}) == 4
    shared = SearchSettings(workers=1, data="digits", seed=5, out=str(tmp_path), storage="postgresql://u@h/db")
    monkeypatch.setattr("os.getpid", lambda: 100)
    a = sampler_seed(shared)
    monkeypatch.setattr("os.getpid", lambda: 101)
    assert sampler_seed(shared) != a  # another process (or machine) joining with the same --seed


def test_model_based_samplers_ignore_screened_out_trials():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from archgen.strategies import TrainedTrialsSampler

    def study_with(sampler):
        study = optuna.create_study(direction="maximize", sampler=sampler,
                                    pruner=optuna.pruners.HyperbandPruner(1, 20, 3))
        dist = {"x": FloatDistribution(0, 1)}
        first = study.ask()  # the pruner sets its brackets up at its first decision
        first.suggest_float("x", 0, 1)
        first.report(0.0, 1)
        first.should_prune()
        study.tell(first, 0.0)
        for i in range(1, 30):
            if i % 5 == 4:  # screened out before training: no accuracy, not a bad result
                study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.9}, distributions=dist,
                                             user_attrs={"rejected": "over budget"}))
            else:
                study.add_trial(create_trial(value=i / 30, params={"x": i / 30}, distributions=dist,
                                             intermediate_values={1: i / 40}))
        study.ask().suggest_float("x", 0, 1)
        return study

    bare = _Recorder()
    study_with(bare)
    wrapped = _Recorder()
    study_with(TrainedTrialsSampler(wrapped))
    trained = [i for i in range(30) if i % 5 != 4]
    # Optuna alone shows the sampler the screened-out trials as (the worst) pruned trials
    assert sorted(n for n in bare.seen if n < 30) == list(range(30))
    # ours: every trained trial of every Hyperband bracket (plus the running one), none screened out
    assert sorted(n for n in wrapped.seen if n < 30) == trained
    assert 30 in wrapped.seen


def test_pbt_members_that_never_finished_an_epoch_fail(tmp_path):
    """A budget that runs out before a member's first epoch must not leave it COMPLETE with
    untrained weights: it is a failed trial with its reason."""
    import time

    from archgen.pbt import run_pbt
    from archgen.space import space_from_config
    from archgen.worker import load_data, load_profile, open_study

    settings = SearchSettings(workers=1, data="digits", strategy="pbt", trials=3, max_epochs=2, threads=1,
                              out=str(tmp_path / "p"), space=TINY_SPACE)
    settings.run_dir.mkdir(parents=True)
    dataset = load_data(settings)
    space = space_from_config(dataset.input_shape, settings.space)
    study = open_study(settings, space, optuna.storages.InMemoryStorage())
    members = run_pbt(settings, study, dataset, load_profile(settings), space, deadline=time.time() - 1)
    assert len(members) == 3 and all(m.trainer.epoch == 0 for m in members)
    trained = [t for t in study.trials if "rejected" not in t.user_attrs]
    assert {t.state for t in trained} == {optuna.trial.TrialState.FAIL}
    assert all(t.user_attrs["failure"] == "no epoch finished" for t in trained)


def _epochs_trained(pruner) -> tuple[list[int], list[int]]:
    """Alternating good (about 0.9 at every epoch) and hopeless (0.1) learners, one at a time,
    up to 20 epochs (the search's default): the epochs each kind trained."""
    study = optuna.create_study(study_name="seeded-hb", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    trained: dict[str, list[int]] = {"good": [], "bad": []}
    for n in range(24):
        kind = "bad" if n % 2 else "good"
        trial = study.ask()
        epoch = 0
        for epoch in range(1, 21):
            trial.report(0.1 if kind == "bad" else 0.9 + 0.001 * n, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, 0.9)
        trained[kind].append(epoch)
    return trained["good"], trained["bad"]


def test_seeded_hyperband_stops_a_brackets_first_hopeless_trial_at_its_rung():
    from archgen.strategies import SeededHyperbandPruner

    # Hyperband, min 1, max 20, eta 3: brackets with rungs at epochs {1, 3, 9}, {3, 9} and {9}.
    _, bad_plain = _epochs_trained(optuna.pruners.HyperbandPruner(1, 20, 3))
    good, bad = _epochs_trained(SeededHyperbandPruner(1, 20, 3))
    # Optuna's Hyperband promotes the first trial of a bracket at a rung, however bad: some
    # chance-level learners train all 20 epochs. Seeded: each stops at a rung of its bracket.
    assert 20 in bad_plain
    assert set(bad) <= {1, 3, 9} and sum(bad) < sum(bad_plain)
    # the good learners (each better than all before it) are never pruned
    assert good == [20] * len(good)


def test_pbt_fills_its_time_budget_with_fresh_populations(tmp_path):
    """A population that reaches max_epochs long before --time-budget is followed by another
    (it used to stop and leave the rest of the budget idle); every member stays one trial."""
    settings = SearchSettings(workers=1, data="digits", strategy="pbt", population=2, max_epochs=1, pbt_interval=1,
                              time_budget_s=25, threads=1, out=str(tmp_path / "p"), space=TINY_SPACE,
                              finalize=False)
    summary = run_search(settings)
    study = optuna.load_study(study_name=settings.study, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "p" / "study.journal"))))
    from archgen.finalize import trials_table

    table = trials_table(study)
    members = [t for t in study.trials if "pbt_generation" in t.user_attrs]
    assert sorted(table["pbt_generation"].dropna().astype(int)) == sorted(
        t.user_attrs["pbt_generation"] for t in members)
    generations = {t.user_attrs["pbt_generation"] for t in members}
    assert len(generations) >= 2 and max(generations) == len(generations) - 1
    done = [t for t in members if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 4 and all(t.user_attrs["epochs"] == 1 for t in done)
    assert summary["elapsed_s"] >= 12  # kept going past the first population (a second or two)


def test_seeded_pruning_is_opt_in(tmp_path):
    from archgen.strategies import SeededHyperbandPruner, make_pruner

    plain = make_pruner("bohb", SearchSettings(workers=1, data="digits", out=str(tmp_path)))
    assert type(plain) is optuna.pruners.HyperbandPruner
    seeded = make_pruner("bohb", SearchSettings(workers=1, data="digits", out=str(tmp_path), seeded_pruning=True))
    assert isinstance(seeded, SeededHyperbandPruner)


def test_se1_selection_takes_the_fastest_trial_within_one_standard_error():
    from types import SimpleNamespace

    from archgen.selection import select_best, selection_margin

    study = optuna.create_study(direction="maximize")
    # 270 validation images: one standard error at 267/270 is 0.0064, more than one image (0.0037)
    for right, loss, est in [(267, 0.02, 0.50), (266, 0.03, 0.20), (266, 0.01, 0.30), (265, 0.02, 0.05)]:
        acc = right / 270
        t = study.ask()
        t.set_user_attr("val_acc", acc)
        t.set_user_attr("val_loss", loss)
        t.set_user_attr("est_ms", est)
        study.tell(t, acc)
    assert selection_margin(267 / 270, 270) == pytest.approx(0.00638, abs=1e-5)
    assert selection_margin(269 / 270, 270) < 1 / 270 and selection_margin(1.0, 270) == 0.0  # exact ties only
    se1 = SimpleNamespace(max_latency_ms=None, selection="se1")
    assert select_best(study, se1, n_val=270).number == 1  # within one image of the best, the fastest
    assert select_best(study, se1, n_val=100_000).number == 0  # a large split tells them apart
    assert select_best(study, SimpleNamespace(max_latency_ms=None, selection="best"), n_val=270).number == 0
    # under a 0.25 ms cap the best is 266/270 (one SE 0.0074), and 265/270 is the faster within it
    assert select_best(study, SimpleNamespace(max_latency_ms=0.25, selection="se1"), n_val=270).number == 3


def test_selection_must_be_se1_or_best():
    from archgen.errors import SearchConfigError

    with pytest.raises(SearchConfigError, match="selection 'cheapest' must be one of se1, best"):
        SearchSettings(selection="cheapest")

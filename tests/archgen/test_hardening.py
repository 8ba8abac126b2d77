"""Regression tests for the hardening issue: user mistakes and hostile files end in one short
line and exit 2, never destroy a user's files, and never re-open the test split."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from archgen.spec import ArchSpec, save_spec

TINY = {
    "schema_version": 1, "input_shape": [1, 8, 8], "num_classes": 10,
    "layers": [{"op": "conv", "filters": 4, "kernel": 3}, {"op": "pool"}],
}
FAST_TRAIN = ("--epochs", "1", "--threads", "1", "--quiet")
FAST_SPACE = {
    "stages": 1, "convs_per_stage": 1, "base_filters": [8], "dense_layers": 0,
    "batchnorm": False, "stacking": False, "batch_size": 256,
}


def one_line(err: str, limit: int = 400) -> bool:
    return len(err.strip().splitlines()) == 1 and len(err) <= limit and "Traceback" not in err


def user_project(path):
    """A folder a user cares about."""
    (path / "src").mkdir(parents=True)
    (path / "src" / "main.py").write_text("print('mine')\n")
    (path / "notes.txt").write_text("my notes\n")
    (path / "config.yaml").write_text("mine: true\n")
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(TINY))
    return path


# -- run directories: a user's folder is never replaced ------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_train_refuses_a_user_folder_with_and_without_force(run_cli, tmp_path, spec_file, force):
    project = tmp_path / "myproject"
    before = user_project(project)
    code, _, err = run_cli("train", str(spec_file), *FAST_TRAIN, "--out", str(project),
                           *(["--force"] if force else []))
    assert code == 2 and one_line(err), err
    assert "holds files that are not an archgen run" in err
    assert snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myproject", "spec.json"]  # no temp left


def test_train_force_refuses_a_search_run_directory(run_cli, tmp_path, spec_file):
    search_run = tmp_path / "s"
    search_run.mkdir()
    (search_run / ".archgen-run").write_text('{"kind": "search"}')
    (search_run / "trials.csv").write_text("number\n")
    code, _, err = run_cli("train", str(spec_file), *FAST_TRAIN, "--out", str(search_run), "--force")
    assert code == 2 and "holds an archgen search run" in err
    assert (search_run / "trials.csv").read_text() == "number\n"


@pytest.mark.parametrize("extra", [[], ["--no-finalize"]])
def test_search_refuses_a_non_empty_folder_that_is_not_a_search_run(run_cli, tmp_path, extra):
    project = tmp_path / "myproject"
    before = user_project(project)
    code, _, err = run_cli("search", "--workers", "1", "--trials", "1", "--out", str(project), "-q", *extra)
    assert code == 2 and one_line(err), err
    assert "holds files that are not an archgen run" in err
    assert snapshot(project) == before


def test_search_refuses_a_train_run_directory(run_cli, tmp_path, spec_file):
    run = tmp_path / "t"
    assert run_cli("train", str(spec_file), *FAST_TRAIN, "--out", str(run))[0] == 0
    before = snapshot(run)
    code, _, err = run_cli("search", "--workers", "1", "--trials", "1", "--out", str(run), "-q")
    assert code == 2 and "holds an archgen train run" in err
    assert snapshot(run) == before


# -- numbers on the command line and in configs ---------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["search", "--time-budget", "nan"], "argument --time-budget: 'nan' is not a finite number"),
    (["search", "--time-budget", "inf"], "argument --time-budget: 'inf' is not a finite number"),
    (["search", "--time-budget", "-5"], "argument --time-budget: -5 must be in"),
    (["search", "--max-latency-ms", "nan"], "argument --max-latency-ms: 'nan' is not a finite number"),
    (["search", "--threads", "-1"], "argument --threads: -1 must be an integer in [1, 1,024]"),
    (["search", "--workers", "0"], "argument --workers: 0 must be an integer"),
    (["search", "--seed", "-3"], "argument --seed: -3 must be an integer"),
    (["search", "--latency-batch", "1e9"], "argument --latency-batch: '1e9' is not an integer"),
    (["generate", "--input", "1,8,8", "--classes", "10", "--max-macs", "nan"], "argument --max-macs: 'nan'"),
    (["generate", "--input", "1,8,8", "--classes", "10", "--max-params", "inf"], "argument --max-params: 'inf'"),
    (["generate", "--input", "1,8,8", "--classes", "10", "--max-latency-ms", "-1"], "argument --max-latency-ms: -1"),
    (["generate", "--input", "1,99999,8", "--classes", "10"], "exceeds the limit of 64 channels and 4096 pixels"),
    (["calibrate", "--threads", "0"], "argument --threads: 0 must be an integer"),
    (["calibrate", "--batch-size", "-2"], "argument --batch-size: -2 must be an integer"),
])
def test_bad_numbers_on_the_command_line_are_one_line_exit_2(run_cli, tmp_path, argv, needle):
    out = tmp_path / "run"
    if argv[0] == "search":
        argv = [*argv, "--out", str(out), "-q"]
    code, _, err = run_cli(*argv)
    assert code == 2 and one_line(err) and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv_tail", [["--threads", "-1"], ["--lr", "nan"], ["--val-frac", "1.5"],
                                       ["--epochs", "0"], ["--batch-size", "0"], ["--patience", "-1"]])
def test_train_bad_numbers_write_nothing(run_cli, tmp_path, spec_file, argv_tail):
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(spec_file), "--quiet", "--out", str(out), *argv_tail)
    assert code == 2 and one_line(err) and f"argument {argv_tail[0]}" in err, err
    assert not out.exists()


@pytest.mark.parametrize("config, needle", [
    ({"space": [1, 2]}, "space=[1, 2] must be a mapping"),
    ({"grid": [1]}, "grid=[1] must be a mapping"),
    ({"storage": 5}, "storage=5 must be a database URL string"),
    ({"manual": {"lr": 1}, "strategy": "manual"}, "manual={'lr': 1} must be a list of mappings"),
    ({"time_budget": "nan"}, "time_budget_s=nan must be a finite number"),
    ({"max_latency_ms": float("inf")}, "max_latency_ms=inf must be a finite number"),
    ({"max_latency_ms": "fast"}, "max_latency_ms='fast' must be a finite number"),
    ({"trials": 2.5}, "trials=2.5 must be an integer"),
    ({"trials": True}, "trials=True must be an integer"),
    ({"threads": -1}, "threads=-1 must be an integer in [1, 1,024]"),
    ({"workers": "4"}, "workers='4' must be an integer"),
    ({"refit": "yes please"}, "refit='yes please' must be true or false"),
    ({"val_frac": 0.5, "test_frac": 0.45}, "val_frac + test_frac = 0.95 leaves too little training data"),
    ({"study": ""}, "study='' must be a non-empty string"),
    ({"space": {"lr": {"low": "a", "high": 1}}}, "space.lr: needs finite numbers low <= high"),
    ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "space.lr: needs finite numbers low <= high"),
    ({"space": {"lr": {"low": 1e-3, "high": 1e3}}}, "space.lr: range 0.001..1000 is outside the usable"),
    ({"space": {"base_filters": [10**12]}}, "space.base_filters: 1000000000000 must be an integer in [1, 65536]"),
    ({"space": {"batch_size": [0]}}, "space.batch_size: 0 must be an integer in [1, 65536]"),
    ({"space": {"optimizer": ["lbfgs"]}}, "space.optimizer: 'lbfgs' is not one of"),
    ({"space": {"batchnorm": [1]}}, "space.batchnorm: 1 is not one of [False, True]"),
    ({"space": {"dropout": [float("nan")]}}, "space.dropout: nan must be a number in [0, 0.95]"),
    ({"space": {"base_filters": []}}, "space.base_filters: give 1 to 64 values, got 0"),
    ({"space": {"base_filters": {"low": 1, "high": 4}}}, "space.base_filters: is a choice"),
    ({"strategy": "grid", "grid": {"lr": []}}, "grid.lr: give 1 to 64 values, got 0"),
    ({"strategy": "grid", "grid": {"lr": [float("nan")]}}, "grid.lr: lr=nan must be a finite number"),
    ({"strategy": "manual", "manual": [[1]]}, "manual[0]: must be a mapping, got [1]"),
    ({"strategy": "manual", "manual": [{"lr": None}]}, "manual[0]: lr=None must be a finite number"),
])
def test_bad_search_configs_are_one_line_exit_2_and_write_nothing(run_cli, tmp_path, config, needle):
    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run_cli("search", "--config", str(path), "--out", str(out), "-q")
    assert code == 2 and one_line(err) and needle in err, err
    assert not out.exists()


def test_binary_and_huge_configs_are_refused(run_cli, tmp_path):
    out = tmp_path / "run"
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 4)
    code, _, err = run_cli("search", "--config", str(binary), "--out", str(out), "-q")
    assert code == 2 and one_line(err) and "is a binary file" in err, err
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (5 * 2**20) + "\n")
    code, _, err = run_cli("search", "--config", str(huge), "--out", str(out), "-q")
    assert code == 2 and one_line(err) and "the limit is 4,194,304" in err, err
    code, _, err = run_cli("search", "--config", str(tmp_path), "--out", str(out), "-q")
    assert code == 2 and one_line(err) and "is not a regular file" in err, err
    assert not out.exists()


ALIAS_BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
layers: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("command", ["cost", "export", "profile", "train"])
def test_yaml_alias_bomb_is_refused_quickly_in_one_line(run_cli, tmp_path, command):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    extra = {"export": ["--format", "json"], "train": ["--out", str(tmp_path / "r")]}.get(command, [])
    t0 = time.perf_counter()
    code, out, err = run_cli(command, str(bomb), *extra)
    assert time.perf_counter() - t0 < 5  # not a timing claim: a hang guard (it took 8 s and 80 MB)
    assert code == 2 and one_line(err) and "expands to more than 100,000 values" in err, err
    assert out == ""


def test_alias_bomb_as_search_config(run_cli, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB.replace("layers:", "space:"))
    code, _, err = run_cli("search", "--config", str(bomb), "--out", str(tmp_path / "r"), "-q")
    assert code == 2 and one_line(err) and "expands to more than" in err, err


@pytest.mark.parametrize("command", ["cost", "export"])
def test_deeply_nested_json_spec_is_one_line(run_cli, tmp_path, command):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    extra = ["--format", "json"] if command == "export" else []
    code, _, err = run_cli(command, str(deep), *extra)
    assert code == 2 and one_line(err) and "nested too deeply" in err, err
    moderate = tmp_path / "moderate.json"
    moderate.write_text('{"layers": ' + "[" * 500 + "]" * 500 + "}")
    code, _, err = run_cli(command, str(moderate), *extra)
    assert code == 2 and one_line(err) and "nested too deeply (limit 64 levels)" in err, err


def test_a_large_spec_with_one_bad_layer_prints_a_short_line(run_cli, tmp_path):
    spec = dict(TINY)
    spec["layers"] = [{"op": "conv", "filters": 4, "kernel": 3, "activation": "x" * (3 * 2**20)}]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(spec))
    code, _, err = run_cli("cost", str(path))
    assert code == 2 and one_line(err, 300), err[:500]
    assert "activation 'xxxxx" in err and "layer 0 (conv)" in err
    spec["layers"] = [{"op": ["conv"] * 1_000_000}]
    path.write_text(json.dumps(spec))
    code, _, err = run_cli("cost", str(path))
    assert code == 2 and one_line(err, 300) and "the limit is 4,194,304" in err, err[:500]


@pytest.mark.parametrize("layer, needle", [
    ({"op": "conv", "filters": 10**12, "kernel": 3}, "filters 1,000,000,000,000 exceeds the limit of 65,536"),
    ({"op": "conv", "filters": 4, "kernel": 999}, "kernel 999 exceeds the limit of 64"),
    ({"op": "dense", "units": 10**9}, "units 1,000,000,000 exceeds the limit of 65,536"),
    ({"op": "conv", "filters": 4, "kernel": 3, "stride": 2**70}, "stride 1,180,591,620,717,411,303,424 exceeds"),
    ({"op": ["conv"]}, "layer 0: unknown op ['conv']"),
    ({"op": "dropout", "rate": float("nan")}, "rate nan must be in [0, 1)"),
])
@pytest.mark.parametrize("command", ["cost", "export", "profile", "train"])
def test_oversized_or_odd_layers_fail_the_same_way_everywhere(run_cli, tmp_path, layer, needle, command):
    spec = {**TINY, "layers": [layer]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    extra = {"export": ["--format", "onnx", "--out", str(tmp_path / "m.onnx")],
             "train": ["--out", str(tmp_path / "r")]}.get(command, [])
    code, _, err = run_cli(command, str(path), *extra)
    assert code == 2 and one_line(err) and needle in err, err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("shape, layers, needle", [
    ([3, 4096, 4096], [{"op": "conv", "filters": 20, "kernel": 1}], "activations per image"),
    ([3, 2048, 2048], [{"op": "conv", "filters": 64, "kernel": 7}] * 3, "multiply-adds per image exceed the limit"),
    ([1, 8, 8], [{"op": "dense", "units": 65536}, {"op": "dense", "units": 65536}], "parameters"),
    ([1, 8, 8], [{"op": "pool", "kernel": 1, "stride": 1}] * 300, "300 layers exceed the limit of 256"),
])
def test_networks_too_big_to_run_are_refused_with_the_limit_named(shape, layers, needle):
    from archgen.errors import SpecError

    with pytest.raises(SpecError, match="limit") as info:
        ArchSpec.from_dict({**TINY, "input_shape": shape, "layers": layers})
    assert needle in str(info.value) and len(str(info.value)) < 200


# -- the test split: sealed across processes ------------------------------------------------------


def _search(run_cli, out, *extra):
    return run_cli("search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "2", "--max-epochs", "1",
                   "--no-calibrate", "--out", str(out), "-q", *extra)


@pytest.fixture
def finished_search(run_cli, tmp_path):
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump({"space": FAST_SPACE}))
    out = tmp_path / "run"
    code, stdout, err = _search(run_cli, out, "--config", str(cfg))
    assert code == 0, err
    return out, cfg, stdout


def test_resume_with_other_split_fractions_is_refused(run_cli, finished_search):
    out, cfg, _ = finished_search
    before = snapshot(out)
    for flagged in (["val_frac", 0.2], ["test_frac", 0.1]):
        other = cfg.with_name("other.yaml")
        other.write_text(yaml.safe_dump({"space": FAST_SPACE, flagged[0]: flagged[1]}))
        code, _, err = _search(run_cli, out, "--config", str(other))
        assert code == 2 and one_line(err, 600), err
        assert f"{flagged[0]}: 0.15 there, {flagged[1]} now" in err
    code, _, err = _search(run_cli, out, "--config", str(cfg), "--seed", "1")
    assert code == 2 and "seed: 0 there, 1 now" in err
    assert snapshot(out) == before


def test_resume_with_changed_data_files_is_refused(run_cli, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(120, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 30)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump({"space": FAST_SPACE}))
    out = tmp_path / "run"
    argv = ["search", "--workers", "1", "--data", f"npz:{data}", "--strategy", "random", "--trials", "1", "--max-epochs", "1",
            "--no-calibrate", "--no-finalize", "--config", str(cfg), "--out", str(out), "-q"]
    assert run_cli(*argv)[0] == 0
    np.savez(data, x=x[::-1].copy(), y=y)  # the same file name, other images
    code, _, err = run_cli(*argv)
    assert code == 2 and one_line(err) and "changed since this search began" in err, err


def test_rerunning_a_finished_search_does_not_open_the_test_split_again(run_cli, finished_search, monkeypatch):
    import archgen.data

    out, cfg, stdout = finished_search
    first = json.loads((out / "test_metrics.json").read_text())
    assert first["test_opened"] == 1 and len(first["test_openings"]) == 1
    opened = []
    real_open = archgen.data.SealedTest.open
    monkeypatch.setattr(archgen.data.SealedTest, "open",
                        lambda self, reason: (opened.append(reason), real_open(self, reason))[1])
    code, stdout2, err = _search(run_cli, out, "--config", str(cfg))
    assert code == 0, err
    assert opened == []
    assert "recorded earlier; the test split was not opened again" in stdout2
    again = json.loads((out / "test_metrics.json").read_text())
    assert again == first
    assert len((out / "test_openings.jsonl").read_text().splitlines()) == 1


def test_a_changed_selection_records_the_second_opening(run_cli, finished_search):
    out, cfg, _ = finished_search
    first = json.loads((out / "test_metrics.json").read_text())
    # Pretend an earlier finalize evaluated another trial: the selection now differs from it.
    (out / "test_metrics.json").write_text(json.dumps({**first, "trial_number": 999}))
    code, stdout, err = _search(run_cli, out, "--config", str(cfg))
    assert code == 0, err
    second = json.loads((out / "test_metrics.json").read_text())
    assert second["test_opened"] == 2 and len(second["test_openings"]) == 2
    assert "opened 2 times" in stdout


# -- files written atomically ----------------------------------------------------------------------


def test_a_failing_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    import errno
    import os

    from archgen.fsio import atomic_torch_save, atomic_write_text

    target = tmp_path / "weights.pt"
    atomic_write_text(target, "old complete file")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        atomic_torch_save({"w": 1}, target)
    assert target.read_text() == "old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_export_killed_before_verification_leaves_no_file(run_cli, tmp_path, monkeypatch):
    import archgen.export

    spec = save_spec(ArchSpec.from_dict(TINY), tmp_path / "s.json")
    out = tmp_path / "m.onnx"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C mid-export raises

    monkeypatch.setattr(archgen.export, "verify_onnx", killed)
    code, _, err = run_cli("export", str(spec), "--format", "onnx", "--out", str(out))
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_disk_full_is_one_line_exit_2(run_cli, tmp_path, spec_file, monkeypatch):
    import errno

    import archgen.fsio

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(archgen.fsio, "atomic_torch_save", full_disk)
    monkeypatch.setattr("archgen.train_run.atomic_torch_save", full_disk)
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(spec_file), *FAST_TRAIN, "--out", str(out))
    assert code == 2 and one_line(err) and "No space left on device" in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_a_finished_time_budgeted_search_run_again_reports_instead_of_searching_on(run_cli, tmp_path, caplog):
    """The same command again on a run whose time budget is used up: no more trials, the test
    split stays closed, the recorded result is reported; a larger --time-budget searches on for
    the difference (archgen.budget)."""
    import pandas as pd

    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump({"space": FAST_SPACE}))
    out = tmp_path / "run"
    argv = ("search", "--workers", "1", "--data", "digits", "--strategy", "random", "--max-epochs", "1",
            "--no-calibrate", "--out", str(out), "-q", "--config", str(cfg))
    code, _, err = run_cli(*argv, "--time-budget", "6")
    assert code == 0, err
    first = pd.read_csv(out / "trials.csv")
    assert len(first) >= 2  # the budget was spent on trials
    code, stdout, err = run_cli(*argv, "--time-budget", "6")
    assert code == 0, err
    assert "this run has used its time budget" in caplog.text
    assert "the test split was not opened again" in stdout
    assert len(pd.read_csv(out / "trials.csv")) == len(first)
    assert len((out / "test_openings.jsonl").read_text().splitlines()) == 1
    code, _, err = run_cli(*argv, "--time-budget", "12")
    assert code == 0, err
    assert len(pd.read_csv(out / "trials.csv")) > len(first)


def test_budget_used_accumulates_over_sessions_and_keeps_the_largest(tmp_path):
    import optuna

    from archgen import budget
    from archgen.settings import SearchSettings

    study = optuna.create_study()
    settings = SearchSettings(data="digits", time_budget_s=100.0, out=str(tmp_path))
    start = budget.session_start(study, settings)
    assert abs(start - time.time()) < 1.0  # a new study: the whole budget
    budget.record_used(study, start - 30.0)  # a session of 30 s
    assert 30.0 <= budget.used_s(study) < 31.0
    start = budget.session_start(study, settings)
    assert 99.0 < settings.deadline(start) - time.time() + 30.0 < 101.0  # 70 s left
    budget.record_used(study, time.time() - 10.0)  # a joiner that ran 10 s: the study keeps 30
    assert budget.used_s(study) >= 30.0
    study.set_user_attr(budget.BUDGET_USED_S, "garbage")
    assert budget.used_s(study) == 0.0

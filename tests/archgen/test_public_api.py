"""The public Python API: lazy, torch-free on import, the same run as the CLI, and the README's
example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


@pytest.mark.parametrize("package", ["archgen", "costmodel"])
def test_importing_the_package_imports_no_torch_and_every_public_name_resolves(package: str) -> None:
    assert not {"torch", "optuna", "pandas"} & _loaded_after(f"import {package}")
    # every exported name resolves (build_model and the profiler load torch then, as they must)
    assert f"{package}.api" in _loaded_after(f"import {package}; [getattr({package}, n) for n in {package}.__all__]") \
        or package == "costmodel"


def test_public_functions_are_functions_not_modules() -> None:
    import archgen
    import archgen.training  # the modules whose names the functions would shadow  # noqa: F401

    for name in ("generate", "search", "train"):
        assert callable(getattr(archgen, name)), name
    assert archgen.search.__module__ == "archgen.api"


def test_generate_matches_the_cli(run_cli) -> None:
    import json

    import archgen

    specs = archgen.generate(input_shape=(1, 28, 28), num_classes=10, n=6, seed=3, disable="R5", max_macs=5e6)
    code, out, _ = run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "6", "--seed", "3",
                           "--disable", "R5", "--max-macs", "5e6", "--format", "json")
    assert code == 0
    assert [s.key() for s in specs] == [row["key"] for row in json.loads(out)]
    assert all(layer.padding == "valid" for s in specs for layer in s.layers if layer.op == "conv")


def _comparable(run_dir: Path) -> tuple[list[str], pd.DataFrame]:
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    trials = pd.read_csv(run_dir / "trials.csv")
    keep = ["number", "state", "spec_key", "val_acc", "est_ms"] + [c for c in trials.columns if c.startswith("params_")]
    return files, trials[keep]


@pytest.mark.slow
def test_search_returns_the_cli_run(tmp_path: Path, run_cli) -> None:
    import archgen

    args = dict(data="digits", strategy="random", trials=3, max_epochs=2, seed=0, calibrate=False, workers=1)
    result = archgen.search(out=tmp_path / "api", **args)
    code, out, err = run_cli("search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "3",
                             "--max-epochs", "2", "--seed", "0", "--no-calibrate", "--quiet",
                             "--out", str(tmp_path / "cli"))
    assert code == 0, err
    assert isinstance(result, archgen.SearchResult) and result.run_dir == tmp_path / "api"
    assert result.spec == archgen.load_spec(result.run_dir / "best" / "spec.json")
    assert 0.5 < result.val_acc <= 1 and 0.5 < result.test_acc <= 1
    assert len(result.trials) == 3
    api_files, api_trials = _comparable(result.run_dir)
    cli_files, cli_trials = _comparable(tmp_path / "cli")
    assert api_files == cli_files
    pd.testing.assert_frame_equal(api_trials, cli_trials)
    assert f"test_acc {result.test_acc:.4f}" in out


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path, monkeypatch) -> None:
    code = _readme_example()
    assert "archgen.search(" in code and "archgen.generate(" in code
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "api-demo" / "best" / "model.onnx").is_file()
    assert (tmp_path / "runs" / "api-train" / "status.json").is_file()
    lines = done.stdout.splitlines()
    assert lines[0].startswith("['c")  # the generated names
    assert re.match(r"^c\S+ 0\.\d+ 0\.\d+ .*api-demo$", lines[1])  # spec, val_acc, test_acc, run dir
    assert re.match(r"^ok 0\.\d+$", lines[-2])  # the train run's status and test accuracy
    assert re.match(r"^\[\('same padding', 0\.\d+\), \('valid padding', 0\.\d+\)\]$", lines[-1])  # ablate

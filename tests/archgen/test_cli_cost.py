"""`archgen cost`, `archgen profile`, `archgen calibrate`: outputs, formats, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from spec_helpers import NAMES, SPEC


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def test_cost_json_matches_library(run_cli, spec_file: Path) -> None:
    from archgen.costing import spec_geoms
    from archgen.spec import load_spec
    from costmodel.estimator import estimate

    code, out, err = run_cli("cost", str(spec_file), "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert [r["layer"] for r in d["layers"]] == NAMES
    report = estimate(spec_geoms(load_spec(spec_file)))
    assert d["total_est_ms"] == pytest.approx(report.total_est_ms)
    assert d["total_macs"] == 28 * 28 * 8 * 25 + 14 * 14 * 16 * 8 * 9 + 784 * 32 + 32 * 10
    assert d["is_default_profile"] is True and d["batch_size"] == 1


@pytest.mark.parametrize(("fmt", "marker"), [("table", "t_c_seed_ms"), ("csv", "layer,op,c_in"),
                                            ("markdown", "| layer | op |")])
def test_cost_formats(run_cli, spec_file: Path, fmt: str, marker: str) -> None:
    code, out, _ = run_cli("cost", str(spec_file), "--format", fmt)
    assert code == 0 and marker in out and "s2.conv1" in out


def test_cost_bad_inputs_exit_2(run_cli, spec_file: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("cost", str(tmp_path / "missing.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("cost", str(spec_file), "--batch-size", "0")
    assert code == 2 and "argument --batch-size: 0 must be an integer" in err


def test_cost_prices_with_another_machines_profile_and_says_so(run_cli, spec_file: Path, tmp_path: Path) -> None:
    """A profile from the device the network will run on prices for that device (its
    estimates), named as another machine's on stderr."""
    from costmodel.device_profile import DeviceProfile, current_context, default_profile

    ctx = current_context("cpu", 1, 32)
    ctx["device_name"] = "Another CPU 9000"
    base = default_profile()
    prof = DeviceProfile(context=ctx, coeffs={k: {n: 2 * v for n, v in c.items()} for k, c in base.coeffs.items()},
                         t_k_ms=dict(base.t_k_ms), act_elem_ms={k: 2 * v for k, v in base.act_elem_ms.items()})
    path = prof.save(tmp_path / "foreign.json")
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(path), "--format", "json")
    assert code == 0, err
    assert "another machine's profile" in err and "Another CPU 9000" in err
    d = json.loads(out)
    assert d["batch_size"] == 32 and "Another CPU 9000" in d["profile"] and not d["is_default_profile"]
    code, out2, _ = run_cli("cost", str(spec_file), "--batch-size", "1", "--format", "json")
    # the foreign profile holds twice the built-in coefficients (its own batch size, 32, is
    # its unit), so every layer costs twice the built-in profile's batch-1 price
    builtin = json.loads(out2)
    assert builtin["is_default_profile"]
    assert [a["est_ms"] for a in d["layers"]] == pytest.approx([2 * b["est_ms"] for b in builtin["layers"]])


def test_profile_predicted_next_to_measured(run_cli, spec_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "layers.png"
    code, out, err = run_cli("profile", str(spec_file), "--batch-size", "2", "--repeats", "3",
                             "--format", "json", "--plot", str(png))
    assert code == 0, err
    d = json.loads(out)
    assert [r["layer"] for r in d["layers"]] == NAMES
    assert all(r["meas_ms"] > 0 and "err_pct" in r for r in d["layers"])
    assert d["e2e_meas_ms"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_bad_device_exit_2(run_cli, spec_file: Path) -> None:
    code, _, err = run_cli("profile", str(spec_file), "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli("profile", str(spec_file), "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err


@pytest.mark.slow
def test_calibrate_quick_then_cost_and_profile_use_it(run_cli, spec_file: Path,
                                                      tmp_path: Path) -> None:
    code, out, err = run_cli("calibrate", "--quick", "--batch-size", "4")
    assert code == 0, err
    path = Path(out.strip())
    assert path.is_file() and path.name == "profile-t1-b4.json"
    saved = json.loads(path.read_text())
    assert saved["context"]["batch_size"] == 4 and saved["protocol"]["quick"] is True
    code, out, err = run_cli("cost", str(spec_file), "--batch-size", "4", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["is_default_profile"] is False and d["batch_size"] == 4
    code, out, err = run_cli("profile", str(spec_file), "--batch-size", "4", "--repeats", "2",
                             "--format", "json")
    assert code == 0 and json.loads(out)["is_default_profile"] is False
    target = tmp_path / "p.json"
    code, out, _ = run_cli("calibrate", "--quick", "--batch-size", "2", "--out", str(target))
    assert code == 0 and Path(out.strip()) == target and target.is_file()


@pytest.mark.parametrize(("argv", "refused"), [
    (["--bundle", "B", "--out", "p.json"], "--out: not used with --bundle"),
    (["--bundle", "B", "--force"], "--force: not used with --bundle"),
    (["--bundle", "B", "--device", "cuda"], "--device: not used with --bundle"),
    (["--bundle", "B", "--save-measurements", "m.json"], "--save-measurements: not used with --bundle"),
    (["--measurements", "m.json", "--runtime", "onnxruntime", "--threads", "1"],
     "--runtime, --threads: not used with --measurements (the measurements file names its own"),
    (["--measurements", "m.json", "--batch-size", "1", "--quick"], "--batch-size, --quick: not used"),
    (["--measurements", "m.json", "--seed", "0"], "--seed: not used with --measurements"),
    (["--check", "--out", "p.json"], "--out: not used with --check"),
    (["--check", "--quick"], "--quick: not used with --check"),
    (["--device-profile", "p.json", "--quick"], "--device-profile: not used without --check"),
    (["--bundle", "B", "--check"], "give one of --bundle, --measurements and --check"),
])
def test_calibrate_refuses_options_it_would_ignore(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   argv: list[str], refused: str) -> None:
    """An option that means nothing in calibrate's mode is refused in one line before any work,
    not silently ignored (an --out never written, a --runtime the measurements file overrides)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("calibrate", *argv)
    assert code == 2 and refused in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == []


def test_calibrate_checks_save_measurements_before_measuring(run_cli, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--save-measurements is checked as --out is, before minutes of measuring: an existing file
    is kept without --force, a folder or a path under a file is refused."""
    import archgen.calibration

    def measure(*a, **k):
        raise AssertionError("measured before checking --save-measurements")

    monkeypatch.setattr(archgen.calibration, "calibrate_device", measure)
    kept = tmp_path / "m.json"
    kept.write_text("mine")
    (tmp_path / "file").write_text("x")
    for path, says in ((kept, "already exists; pass --force"), (tmp_path, "is a directory"),
                       (tmp_path / "file" / "m.json", "is not a directory")):
        code, _, err = run_cli("calibrate", "--quick", "--save-measurements", str(path))
        assert code == 2 and "--save-measurements" in err and says in err, err
    assert kept.read_text() == "mine"

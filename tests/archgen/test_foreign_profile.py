"""`archgen search --device-profile FILE` with the profile of another device: the search prices
candidates for that device, at its batch size, and says that the local measurement is not of it.

The profile is a real one, fitted here in seconds (4 networks, 2 repeats), then relabelled as
a Raspberry Pi's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from spec_helpers import empty_cache

from costmodel.device_profile import DeviceProfile, cache_root, current_context

PI = "Raspberry Pi 4 (Cortex-A72)"
BATCH = 4
# Small, fast networks (as tests/archgen/test_search.py).
TINY_SPACE = {
    "stages": [1, 2], "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": [0, 1],
    "dense_units": 64, "batchnorm": [False, True], "stacking": False, "growth": 2,
    "batch_size": 128, "lr": {"low": 3e-4, "high": 3e-2, "log": True},
}


@pytest.fixture(scope="module")
def fitted() -> DeviceProfile:
    """A real profile of this machine at batch 4."""
    from costmodel.calibration import calibrate

    return calibrate(quick=True, batch_size=BATCH, n_networks=4, repeats=2, seed=3)


def relabel(profile: DeviceProfile, **changes: object) -> DeviceProfile:
    ctx = dict(profile.context, **changes)
    ctx.pop("fingerprint", None)
    return dataclasses.replace(profile, context=ctx)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return empty_cache(tmp_path, monkeypatch)


@pytest.fixture
def pi_file(fitted: DeviceProfile, tmp_path: Path) -> Path:
    return relabel(fitted, device_name=PI).save(tmp_path / "pi.json")


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"space": TINY_SPACE}))
    return path


def test_search_prices_for_the_profiles_device(run_cli, pi_file: Path, space_file: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "2", "--max-epochs", "1",
        "--threads", "1", "--config", str(space_file), "--out", str(out), "-q",
        "--device-profile", str(pi_file),
    )
    assert code == 0, err
    # the target's profile is given: nothing calibrated on this machine
    assert not cache_root().exists() or not any(cache_root().rglob("*.json"))

    # est_ms of the selected trial = `archgen cost --device-profile FILE` of its spec
    metrics = json.loads((out / "test_metrics.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    best = trials.loc[trials["number"] == metrics["trial_number"]].iloc[0]
    code, cost_out, cost_err = run_cli("cost", str(out / "best" / "spec.json"), "--device-profile",
                                       str(pi_file), "--format", "json")
    assert code == 0, cost_err
    assert "another machine's profile" in cost_err
    cost = json.loads(cost_out)
    assert cost["batch_size"] == BATCH and PI in cost["profile"]
    assert best["spec_key"] == metrics["spec_key"]
    assert float(best["est_ms"]) == pytest.approx(cost["total_est_ms"], rel=1e-9)
    assert metrics["est_ms"] == pytest.approx(cost["total_est_ms"], rel=1e-9)
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) >= 1 and (done["est_ms"] > 0).all()
    # best/cost.csv: the per-layer estimates are the Pi profile's at batch 4
    table = pd.read_csv(out / "best" / "cost.csv")
    assert list(table["layer"]) == [r["layer"] for r in cost["layers"]]
    assert table["est_ms"].to_numpy() == pytest.approx([r["est_ms"] for r in cost["layers"]], rel=1e-9)

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["latency_batch"] == BATCH
    assert config["latency_profile"] == "another device's profile"
    assert PI in config["latency_profile_device"] and f"batch {BATCH}" in config["latency_profile_device"]
    assert config["latency_profile_path"] == str(pi_file)
    assert config["device_profile"] == str(pi_file)

    # the same search again without --device-profile: the run's own copy prices it (the cache is
    # empty: without it, the built-in profile), and it reports the recorded result
    again = ["search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "2",
             "--max-epochs", "1", "--threads", "1", "--config", str(space_file), "--out", str(out), "-q"]
    code, stdout, err = run_cli(*again)
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["latency_profile_path"] == str(out / "latency_profile.json") and PI in config["latency_profile_device"]
    assert pd.read_csv(out / "trials.csv")["est_ms"].tolist() == trials["est_ms"].tolist()
    # with another profile: refused before anything in the run changes
    before = (out / "config.yaml").read_bytes()
    other = relabel(DeviceProfile.load(pi_file), device_name="Another board")
    code, _, err = run_cli(*again, "--device-profile", str(other.save(tmp_path / "other.json")))
    assert code == 2 and "priced with another latency profile" in err and len(err.strip().splitlines()) == 1, err
    assert (out / "config.yaml").read_bytes() == before

    assert metrics["latency_batch"] == BATCH
    assert metrics["meas_is_target"] is False
    assert "not the profile's device" in metrics["meas_on"] and PI not in metrics["meas_on"]
    assert PI in metrics["est_on"]
    assert metrics["meas_ms"] > 0

    best_line = next(line for line in stdout.splitlines() if line.startswith("best: "))
    assert f"latency est {metrics['est_ms']:.3f} ms at batch {BATCH} on the profile's device" in best_line
    assert "not the target" in best_line and f"measured here {metrics['meas_ms']:.3f} ms" in best_line

    import html

    report = html.unescape((out / "report.html").read_text())
    assert "Latency priced for" in report and PI in report
    assert "not of the device the estimate is for" in report
    # the per-layer chart's caption says so too
    assert f"the measurements were taken on {metrics['meas_on']}." in report


def test_latency_batch_other_than_the_profiles_is_refused(run_cli, pi_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli("search", "--workers", "1", "--data", "digits", "--trials", "1", "--out", str(out), "-q",
                                "--device-profile", str(pi_file), "--latency-batch", "2")
    assert code == 2, err
    assert f"--latency-batch 2: the device profile {pi_file} holds for batch {BATCH}" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = run_cli("search", "--workers", "1", "--data", "digits", "--trials", "1", "--out", str(out), "-q",
                           "--device-profile", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err and not out.exists()


def test_adopt_device_profile_takes_batch_and_runtime(fitted: DeviceProfile, tmp_path: Path) -> None:
    from archgen.profiles import adopt_device_profile
    from archgen.settings import SearchSettings

    plain = SearchSettings(workers=1, data="digits", out=str(tmp_path / "r"))
    assert adopt_device_profile(plain) is plain
    pi = relabel(fitted, device_name=PI).save(tmp_path / "pi.json")
    s = adopt_device_profile(dataclasses.replace(plain, device_profile=str(pi)))
    assert s.latency_batch == BATCH and s.runtime == "torch"
    ort_ctx = current_context("cpu", 1, 2, runtime="onnxruntime")
    ort = relabel(fitted, **ort_ctx).save(tmp_path / "ort.json")
    s = adopt_device_profile(dataclasses.replace(plain, device_profile=str(ort)))
    assert s.latency_batch == 2 and s.runtime == "onnxruntime"


def test_config_names_the_profile(fitted: DeviceProfile, tmp_path: Path) -> None:
    from archgen.profiles import adopt_device_profile
    from archgen.run_record import write_config
    from archgen.settings import SearchSettings

    cases = [
        (None, "built-in default (uncalibrated)", "built-in default profile"),
        (fitted.save(tmp_path / "mine.json"), "calibrated", fitted.describe()),
        (relabel(fitted, device_name=PI).save(tmp_path / "pi.json"), "another device's profile", PI),
    ]
    for i, (path, label, device) in enumerate(cases):
        out = tmp_path / f"run{i}"
        out.mkdir()
        settings = SearchSettings(workers=1, data="digits", out=str(out),
                                  device_profile=None if path is None else str(path))
        write_config(adopt_device_profile(settings), "fp")
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["latency_profile"] == label, path
        assert device in config["latency_profile_device"], path
        assert config.get("latency_profile_path") == (None if path is None else str(path))
        assert config["latency_batch"] == (1 if path is None else BATCH)


def test_a_resume_prices_with_the_runs_own_profile(fitted: DeviceProfile, tmp_path: Path) -> None:
    """Trials priced by one profile and trials priced by another would sit side by side in one
    study (est_ms, the Pareto objective): the run keeps a copy of its profile, a resume without
    --device-profile prices with that copy (not with what the cache holds by then), and one with
    another profile, or the same file refitted, is refused."""
    from archgen.errors import SearchConfigError
    from archgen.profiles import adopt_device_profile
    from archgen.run_record import PROFILE_COPY, check_resume, resume_profile, write_config
    from archgen.settings import SearchSettings

    mine = fitted.save(tmp_path / "mine.json")
    pi = relabel(fitted, device_name=PI).save(tmp_path / "pi.json")
    out = tmp_path / "run"
    out.mkdir()

    def settings(path: Path | None) -> SearchSettings:
        plain = SearchSettings(workers=1, data="digits", out=str(out), device_profile=None if path is None else str(path))
        return adopt_device_profile(resume_profile(plain))

    assert settings(None).device_profile is None and check_resume(settings(pi), "fp") is False  # nothing there yet
    write_config(settings(pi), "fp")
    copy = out / PROFILE_COPY
    assert DeviceProfile.load(copy).to_dict() == DeviceProfile.load(pi).to_dict()
    assert check_resume(settings(pi), "fp") is True
    resumed = settings(None)  # the cache is empty: without the copy this would be the built-in profile
    assert resumed.device_profile == str(copy) and resumed.latency_batch == BATCH
    assert check_resume(resumed, "fp") is True
    write_config(resumed, "fp")  # the copy stays the copy
    assert DeviceProfile.load(copy).to_dict() == DeviceProfile.load(pi).to_dict()
    with pytest.raises(SearchConfigError, match=r"another latency profile \('device profile: cpu Raspberry Pi.*"
                                                 r"resume without --device-profile"):
        check_resume(settings(mine), "fp")
    # the same path, refitted: another profile
    dataclasses.replace(relabel(fitted, device_name=PI), t_k_ms={k: 2 * v for k, v in fitted.t_k_ms.items()}).save(pi)
    with pytest.raises(SearchConfigError, match="priced with another latency profile"):
        check_resume(settings(pi), "fp")
    # a run from before the copy was kept: its config.yaml's hash decides; before the hash, nothing
    copy.unlink()
    with pytest.raises(SearchConfigError, match="priced with another latency profile"):
        check_resume(settings(mine), "fp")
    assert check_resume(settings(relabel(fitted, device_name=PI).save(tmp_path / "pi2.json")), "fp") is True
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["latency_profile_id"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert check_resume(settings(mine), "fp") is True


def test_latency_labels(fitted: DeviceProfile, tmp_path: Path) -> None:
    from archgen.finalize import latency_labels
    from archgen.settings import SearchSettings
    from costmodel.device_profile import default_profile

    settings = SearchSettings(workers=1, data="digits", out=str(tmp_path / "r"))
    for prof in (None, default_profile()):
        labels = latency_labels(prof, settings)
        assert labels["meas_is_target"] is True and "built-in" in labels["est_on"]
    mine = latency_labels(fitted, settings)
    assert mine["meas_is_target"] is True and mine["est_on"] == fitted.describe()
    assert "not the profile's device" not in mine["meas_on"]
    pi = relabel(fitted, device_name=PI)
    theirs = latency_labels(pi, settings)
    assert theirs["meas_is_target"] is False and theirs["est_on"] == pi.describe()
    assert theirs["meas_on"].endswith(", not the profile's device")


def test_search_with_an_onnxruntime_profile_measures_model_onnx_in_onnxruntime(
        run_cli, tmp_path: Path) -> None:
    """A local onnxruntime profile: the screen prices ONNX Runtime's fused layers, finalize
    times best/model.onnx in ONNX Runtime (this machine: the target), per layer."""
    import random

    from costmodel.calibration import calibrate
    from costmodel.netgen import random_plain_cnn

    rng = random.Random(11)
    nets = [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(6)]
    profile = calibrate(runtime="onnxruntime", batch_size=1, quick=True, networks=nets, repeats=2)
    path = profile.save(tmp_path / "ort.json")
    # A second stage wide enough to run for tens of microseconds: ONNX Runtime's profiler reports
    # whole microseconds, and the 8-filter convs on digits' 8x8 images can all read 0 under load.
    space = tmp_path / "wide.yaml"
    space.write_text(yaml.safe_dump({"space": dict(TINY_SPACE, stages=2, base_filters=[32, 48])}))
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "search", "--workers", "1", "--data", "digits", "--strategy", "random", "--trials", "2", "--max-epochs", "1",
        "--threads", "1", "--config", str(space), "--out", str(out), "-q", "--device-profile", str(path),
    )
    assert code == 0, err
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["meas_is_target"] is True and "onnxruntime" in metrics["meas_on"]
    assert "onnxruntime" in metrics["est_on"] and metrics["meas_ms"] > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["runtime"] == "onnxruntime" and config["latency_profile"] == "calibrated"
    table = pd.read_csv(out / "best" / "cost.csv")
    assert (table["meas_ms"] >= 0).all()
    convs = table.loc[table["op"] == "conv"]
    assert convs.loc[convs["macs"].idxmax(), "meas_ms"] > 0
    # batch norm right after a conv without activation would be fused; dropout always is
    if "dropout" in set(table["op"]):
        assert (table.loc[table["op"] == "dropout", "est_ms"] == 0).all()
    assert "latency est" in stdout and "not the target" not in stdout

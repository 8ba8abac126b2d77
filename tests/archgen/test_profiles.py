"""Which device profile prices a network (``archgen.profiles``), and the commands that use the
rule: ``archgen cost``, ``archgen generate --device-profile``, ``archgen profile --runtime
onnxruntime``.

Profiles here are synthetic: this machine's context with the built-in coefficients times a
factor, so the factor tells which profile priced a network (the model is linear in them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spec_helpers import NAMES, SPEC, empty_cache

from archgen.errors import UserError
from archgen.profiles import cached_batch_sizes, choose_profile
from costmodel.device_profile import DeviceProfile, cache_path, current_context, default_profile


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty profile cache of our own for every test."""
    return empty_cache(tmp_path, monkeypatch)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def fake_profile(batch_size: int = 1, factor: float = 3.0, *, runtime: str = "torch", threads: int = 1,
                 **changes: object) -> DeviceProfile:
    """This machine's context (with ``changes``), the built-in coefficients times ``factor``."""
    ctx = current_context("cpu", threads, batch_size, runtime=runtime)
    ctx.update(changes)
    ctx.pop("fingerprint")
    base = default_profile()
    return DeviceProfile(
        context=ctx,
        coeffs={op: {k: v * factor for k, v in c.items()} for op, c in base.coeffs.items()},
        t_k_ms=dict(base.t_k_ms),
        act_elem_ms={k: v * factor for k, v in base.act_elem_ms.items()},
    )


def cache_it(profile: DeviceProfile) -> Path:
    return profile.save(cache_path(profile.context))


def builtin_total_ms(batch_size: int = 1) -> float:
    """The spec priced with the built-in profile (a fake profile's total is factor times this at
    batch 1)."""
    from archgen.costing import spec_geoms
    from archgen.spec import ArchSpec
    from costmodel.estimator import estimate

    return estimate(spec_geoms(ArchSpec.from_dict(SPEC)), None, batch_size).total_est_ms


# -- choose_profile and cached_batch_sizes ------------------------------------------------------


def test_nothing_cached_is_the_builtin_profile() -> None:
    assert cached_batch_sizes() == []
    choice = choose_profile()
    assert choice.source == "built-in" and choice.is_default and choice.profile.is_default
    assert choice.path is None and choice.foreign is False
    assert choice.note.startswith("built-in default profile (uncalibrated, rough)")
    # the command to run calibrates what was looked up (the built-in profile prices batch 1)
    assert "run `archgen calibrate --batch-size 1` for real numbers" in choice.note
    onnx = choose_profile(runtime="onnxruntime")
    assert onnx.source == "built-in" and "`archgen calibrate --runtime onnxruntime --batch-size 1`" in onnx.note
    four = choose_profile(runtime="onnxruntime", threads=4, batch_size=8)
    assert "run `archgen calibrate --runtime onnxruntime --threads 4 --batch-size 8` for" in four.note


def test_cached_batch_sizes_per_runtime_and_threads() -> None:
    for b in (8, 1, 4):
        cache_it(fake_profile(b))
    cache_it(fake_profile(16, threads=2))
    cache_it(fake_profile(2, runtime="onnxruntime"))
    assert cached_batch_sizes("cpu", "torch", 1) == [1, 4, 8]
    assert cached_batch_sizes("cpu", "torch", 2) == [16]
    assert cached_batch_sizes("cpu", "onnxruntime", 1) == [2]
    assert cached_batch_sizes("cpu", "onnxruntime", 2) == []


def test_without_a_batch_size_the_smallest_cached_one() -> None:
    p4, p2 = fake_profile(4, 6.0), fake_profile(2, 4.0)
    cache_it(p4)
    path2 = cache_it(p2)
    choice = choose_profile()
    assert choice.source == "cache" and not choice.is_default and choice.foreign is False
    assert choice.profile.batch_size == 2 and choice.path == path2
    assert choice.profile.to_dict() == p2.to_dict()
    assert choice.note == f"cached {p2.describe()} ({path2})"
    assert "batch 2" in choice.note
    # an explicit batch size takes that one
    assert choose_profile(batch_size=4).profile.to_dict() == p4.to_dict()
    # the thread count and runtime are part of what is looked up
    assert choose_profile(threads=2).source == "built-in"
    assert choose_profile(runtime="onnxruntime").source == "built-in"


def test_batch_size_not_cached_falls_back_to_builtin_naming_the_cached_ones() -> None:
    cache_it(fake_profile(4))
    cache_it(fake_profile(2))
    choice = choose_profile(batch_size=3)
    assert choice.source == "built-in" and choice.profile.is_default and choice.path is None
    assert "torch profiles for batch 2, 4 only" in choice.note
    assert "price at --batch-size 2" in choice.note and "archgen calibrate --batch-size 3" in choice.note


def test_onnxruntime_cache_is_separate_from_torch() -> None:
    torch_p, ort_p = fake_profile(1, 3.0), fake_profile(1, 5.0, runtime="onnxruntime")
    cache_it(torch_p)
    ort_path = cache_it(ort_p)
    assert ort_path.name == "profile-onnxruntime-t1-b1.json"
    choice = choose_profile(runtime="onnxruntime")
    assert choice.source == "cache" and choice.path == ort_path
    assert choice.profile.runtime == "onnxruntime" and choice.profile.to_dict() == ort_p.to_dict()
    assert choose_profile().profile.to_dict() == torch_p.to_dict()


def test_a_file_beats_the_cache_and_a_local_one_is_not_foreign(tmp_path: Path) -> None:
    cache_it(fake_profile(1, 3.0))
    mine = fake_profile(4, 7.0)
    path = mine.save(tmp_path / "mine.json")
    for batch in (None, 4, 1):  # the asked batch size never makes a profile foreign
        choice = choose_profile(path, batch_size=batch)
        assert choice.source == "file" and choice.path == Path(path) and choice.foreign is False
        assert choice.profile.to_dict() == mine.to_dict()
        assert choice.note == f"device profile {path}: {mine.describe()}"


@pytest.mark.parametrize(
    "changes",
    [
        {"device_name": "Raspberry Pi 4 (Cortex-A72)"},
        {"torch_version": "1.0.0", "runtime_version": "1.0.0"},
        {"runtime": "onnxruntime", "runtime_version": "0.1.0"},
        {"device_name": "Raspberry Pi 4 (Cortex-A72)", "batch_size": 8},
    ],
    ids=["device_name", "torch_version", "onnxruntime_version", "device_and_batch"],
)
def test_a_profile_of_another_context_is_foreign(tmp_path: Path, changes: dict) -> None:
    prof = fake_profile(**{"batch_size": 1, **changes})
    path = prof.save(tmp_path / "other.json")
    choice = choose_profile(path)
    assert choice.source == "file" and choice.foreign is True
    assert choice.note.startswith(f"another machine's profile {path}: ")
    assert choice.note.endswith("(its estimates are for that device, not this machine)")
    assert prof.describe() in choice.note


def test_other_threads_is_this_machine_and_other_dtype_is_foreign(tmp_path: Path) -> None:
    """A profile of this machine at another thread count prices this machine (finalize
    measures at the profile's thread count); one of another number type is not this machine's."""
    path = fake_profile(1, 3.0, threads=4).save(tmp_path / "threads.json")
    choice = choose_profile(path, threads=1)
    assert choice.foreign is False and "4 thread(s)" in choice.note
    path = fake_profile(1, 3.0, dtype="float16").save(tmp_path / "dtype.json")
    assert choose_profile(path, threads=1).foreign is True


def test_bad_profile_files_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        choose_profile(tmp_path / "missing.json")
    with pytest.raises(UserError, match="is a directory"):
        choose_profile(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        choose_profile(bad)
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a device profile"):
        choose_profile(bad)


# -- archgen cost --------------------------------------------------------------------------------


def test_cost_finds_the_batch1_profile_a_search_cached(run_cli, spec_file: Path) -> None:
    """Regression: with only a batch-1 profile cached, `archgen cost SPEC` (no --batch-size)
    prices with it, not with the built-in one, and says so."""
    prof = fake_profile(1, 3.0)
    path = cache_it(prof)
    code, out, err = run_cli("cost", str(spec_file), "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["is_default_profile"] is False and d["batch_size"] == 1
    assert d["total_est_ms"] == pytest.approx(3.0 * builtin_total_ms(), rel=1e-9)
    assert [r["layer"] for r in d["layers"]] == NAMES
    assert f"profile: cached {prof.describe()} ({path})\n" in err
    code, out, err = run_cli("cost", str(spec_file))  # the table says it too
    assert code == 0 and "built-in default" not in out and "built-in default" not in err


def test_cost_without_cache_says_builtin(run_cli, spec_file: Path) -> None:
    code, out, err = run_cli("cost", str(spec_file), "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["is_default_profile"] is True
    assert d["total_est_ms"] == pytest.approx(builtin_total_ms(), rel=1e-9)
    assert err.startswith("profile: built-in default profile (uncalibrated, rough); run `archgen calibrate --batch-size 1`")


def test_cost_batch_size_and_threads_pick_the_cached_profile(run_cli, spec_file: Path) -> None:
    cache_it(fake_profile(1, 3.0))
    cache_it(fake_profile(4, 5.0))
    cache_it(fake_profile(1, 9.0, threads=2))
    for argv, factor, batch in [((), 3.0, 1), (("--batch-size", "4"), 5.0, 4),
                                (("--threads", "2"), 9.0, 1)]:
        code, out, err = run_cli("cost", str(spec_file), "--format", "json", *argv)
        assert code == 0, err
        d = json.loads(out)
        assert d["batch_size"] == batch and d["is_default_profile"] is False, argv
        assert d["total_est_ms"] == pytest.approx(factor * builtin_total_ms(), rel=1e-9), argv
    code, out, err = run_cli("cost", str(spec_file), "--batch-size", "2", "--format", "json")
    assert code == 0 and json.loads(out)["is_default_profile"] is True
    assert "torch profiles for batch 1, 4 only" in err


def test_cost_runtime_onnxruntime_uses_the_onnxruntime_profile(run_cli, spec_file: Path) -> None:
    cache_it(fake_profile(1, 3.0))
    ort_p = fake_profile(1, 5.0, runtime="onnxruntime")
    cache_it(ort_p)
    code, out, err = run_cli("cost", str(spec_file), "--runtime", "onnxruntime", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["total_est_ms"] == pytest.approx(5.0 * builtin_total_ms(), rel=1e-9)
    assert "onnxruntime" in d["profile"] and f"profile: cached {ort_p.describe()}" in err


def test_cost_with_a_foreign_profile_file_prices_for_that_device(run_cli, spec_file: Path,
                                                                 tmp_path: Path) -> None:
    cache_it(fake_profile(1, 3.0))  # a cached profile of this machine must not win
    prof = fake_profile(4, 11.0, device_name="Raspberry Pi 4 (Cortex-A72)")
    path = prof.save(tmp_path / "pi.json")
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(path), "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["batch_size"] == 4 and d["is_default_profile"] is False
    assert d["total_est_ms"] == pytest.approx(11.0 * builtin_total_ms(), rel=1e-9)
    assert "Raspberry Pi 4 (Cortex-A72)" in d["profile"]
    assert err == (f"profile: another machine's profile {path}: {prof.describe()} "
                   "(its estimates are for that device, not this machine)\n")
    # another batch size than the profile's: one-line error
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(path), "--batch-size", "1")
    assert code == 2 and out == "" and "holds for batch size 4, not 1" in err
    # --runtime onnxruntime with a torch profile file: one-line error
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(path),
                             "--runtime", "onnxruntime")
    assert code == 2 and out == "" and "is a torch profile" in err
    assert len(err.strip().splitlines()) == 1


def test_cost_missing_profile_file_exit_2(run_cli, spec_file: Path, tmp_path: Path) -> None:
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(tmp_path / "nope.json"))
    assert code == 2 and out == "" and "no such file" in err and len(err.strip().splitlines()) == 1


# -- archgen generate --max-latency-ms --device-profile ------------------------------------------


def test_generate_prices_with_the_profile_file_at_its_batch_size(run_cli, tmp_path: Path) -> None:
    from archgen.costing import spec_geoms
    from archgen.spec import ArchSpec
    from costmodel.estimator import estimate_total_ms

    prof = fake_profile(4, 7.0, device_name="Raspberry Pi 4 (Cortex-A72)")
    path = prof.save(tmp_path / "pi.json")
    cache_it(fake_profile(1, 3.0))  # must not be used
    base = ["generate", "--input", "1,28,28", "--classes", "10", "--seed", "5", "--format", "json"]
    code, out, err = run_cli(*base, "-n", "20")
    assert code == 0, err
    prices = sorted(estimate_total_ms(spec_geoms(ArchSpec.from_dict(r["spec"])), prof, 4)
                    for r in json.loads(out))
    budget = prices[len(prices) // 2]  # about half the unconstrained candidates are over it
    code, out, err = run_cli(*base, "-n", "5", "--max-latency-ms", repr(budget), "--device-profile", str(path))
    assert code == 0, err
    assert f"profile: another machine's profile {path}: {prof.describe()}" in err
    rows = json.loads(out)
    assert rows
    for r in rows:
        est = estimate_total_ms(spec_geoms(ArchSpec.from_dict(r["spec"])), prof, 4)
        assert r["est_ms"] == round(est, 4) and est <= budget
        # batch-4 per-sample coefficients: the built-in profile at batch 1, times 7
        assert est == pytest.approx(7.0 * estimate_total_ms(spec_geoms(ArchSpec.from_dict(r["spec"]))))


def test_generate_device_profile_errors(run_cli, tmp_path: Path) -> None:
    path = fake_profile(4, 7.0).save(tmp_path / "p.json")
    base = ["generate", "--input", "1,28,28", "--classes", "10", "-n", "2"]
    code, out, err = run_cli(*base, "--device-profile", str(path))
    assert code == 2 and out == "" and "give --max-latency-ms too" in err
    code, out, err = run_cli(*base, "--max-latency-ms", "5", "--device-profile", str(path), "--batch-size", "1")
    assert code == 2 and out == "" and "holds for batch size 4, not 1" in err


# -- archgen profile --runtime onnxruntime ------------------------------------------------------


HEAVY_SPEC = {
    "schema_version": 1, "input_shape": [1, 28, 28], "num_classes": 10,
    "layers": [
        {"op": "conv", "filters": 4, "kernel": 3, "stride": 1, "padding": "same", "activation": "relu"},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "conv", "filters": 96, "kernel": 5, "stride": 1, "padding": "same", "activation": "relu"},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "dense", "units": 16, "activation": "relu"},
    ],
    "init": {"scheme": "lecun_uniform"},
}


def test_profile_onnxruntime_measures_each_layer(run_cli, tmp_path: Path) -> None:
    spec = tmp_path / "heavy.json"
    spec.write_text(json.dumps(HEAVY_SPEC))
    code, out, err = run_cli("profile", str(spec), "--runtime", "onnxruntime", "--batch-size", "4",
                             "--repeats", "5", "--format", "json")
    assert code == 0, err
    assert "`archgen calibrate --runtime onnxruntime --batch-size 4`" in err  # nothing cached: built-in, says so
    d = json.loads(out)
    assert d["meas_clock"].startswith("onnxruntime")
    layers = d["layers"]
    assert [r["layer"] for r in layers] == NAMES
    meas = {r["layer"]: r["meas_ms"] for r in layers}
    assert all(v > 0 for v in meas.values()), meas
    # aligned with the spec's layers: the 4->96 5x5 conv (~100x the MACs of anything else) is
    # by far the slowest layer
    assert max(meas, key=meas.get) == "s2.conv1", meas
    assert meas["s2.conv1"] > 5 * max(meas["s1.pool"], meas["s2.pool"], meas["classifier"]), meas
    assert d["e2e_meas_ms"] > 0
    assert 0.5 < sum(meas.values()) / d["e2e_meas_ms"] < 2.0, (meas, d["e2e_meas_ms"])
    code, out, err = run_cli("profile", str(spec), "--runtime", "onnxruntime", "--batch-size", "4",
                             "--repeats", "2", "--format", "csv")
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert "meas_ms" in header.split(",") and len(rows) == len(NAMES)


def test_profile_onnxruntime_uses_the_cached_onnxruntime_profile(run_cli, spec_file: Path) -> None:
    ort_p = fake_profile(2, 5.0, runtime="onnxruntime")
    cache_it(ort_p)
    cache_it(fake_profile(2, 3.0))
    code, out, err = run_cli("profile", str(spec_file), "--runtime", "onnxruntime", "--batch-size", "2",
                             "--repeats", "2", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["is_default_profile"] is False and d["meas_clock"].startswith("onnxruntime")
    assert d["total_est_ms"] == pytest.approx(5.0 * builtin_total_ms(), rel=1e-9)
    assert f"profile: cached {ort_p.describe()}" in err
    # torch runtime: the torch profile and torch's clock
    code, out, err = run_cli("profile", str(spec_file), "--batch-size", "2", "--repeats", "2", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["total_est_ms"] == pytest.approx(3.0 * builtin_total_ms(), rel=1e-9)
    assert not d["meas_clock"].startswith("onnxruntime")


def test_a_cached_profile_measured_before_the_steady_allocator_says_to_recalibrate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile calibrated with page faults in its layer times is still used (with a note that
    says how to replace it), and a search calibrates anew instead of screening with it."""
    import dataclasses

    from archgen import search_run
    from archgen.settings import SearchSettings

    old = dataclasses.replace(fake_profile(1), protocol={"repeats": 21, "statistic": "min"})  # calibrate's before
    cache_it(old)
    choice = choose_profile()
    assert choice.source == "cache"
    assert choice.note.endswith("measured with an older timing protocol (page faults included): "
                                "recalibrate with `archgen calibrate --batch-size 1`")
    calls: list[dict] = []
    monkeypatch.setattr("archgen.calibration.calibrate_device", lambda *a, **k: calls.append(k))
    settings = SearchSettings(data="digits", latency_batch=1, out=str(tmp_path / "run"))
    search_run.ensure_profile(settings)
    assert len(calls) == 1 and calls[0]["batch_size"] == 1 and calls[0]["quick"]
    # ONNX Runtime keeps its own arena: an old ONNX Runtime profile is not flagged
    from costmodel.device_profile import predates_steady_allocator

    assert not predates_steady_allocator(dataclasses.replace(fake_profile(1, runtime="onnxruntime"),
                                                             protocol={"repeats": 21}))
    # nor is its reference time compared with one measured now (it held page faults)
    from archgen.drift import check_drift

    assert check_drift(dataclasses.replace(old, reference_ms=1.0)) is None
    # glibc's thresholds raised but mmap still on (2026-12-01 to 12-07): flagged as well, while
    # its reference workload (batch 1, small buffers) is still compared with one timed now
    thresholds = dataclasses.replace(old, protocol={
        "repeats": 21, "allocator": "glibc 2.36 malloc, mmap threshold 32 MiB, trim threshold 1024 MiB"})
    cache_it(thresholds)
    assert choose_profile().note.endswith("recalibrate with `archgen calibrate --batch-size 1`")
    monkeypatch.setattr("costmodel.measure.reference_ms", lambda *a, **k: 2.0)
    report = check_drift(dataclasses.replace(thresholds, reference_ms=1.0))
    assert report is not None and report.ratio == pytest.approx(2.0)
    search_run.ensure_profile(settings)
    assert len(calls) == 2  # calibrated anew
    current = dataclasses.replace(fake_profile(1), protocol={
        "repeats": 21, "allocator": "glibc 2.36 malloc, mmap threshold 32 MiB, trim threshold 1024 MiB, mmap off"})
    cache_it(current)
    assert choose_profile().note == f"cached {current.describe()} ({cache_path(current.context)})"
    search_run.ensure_profile(settings)
    assert len(calls) == 2  # the current profile is used as it is


# -- the same lookup in profile and generate; the profile's device and threads ------------------


def test_profile_and_generate_find_the_cached_profile_without_a_batch_size(run_cli, spec_file: Path) -> None:
    """As `cost`: without --batch-size, `profile` and `generate --max-latency-ms` use the cached
    profile with the smallest batch size there is, at that batch size, and say which."""
    p2 = fake_profile(2, 5.0)
    cache_it(fake_profile(8, 9.0))
    cache_it(p2)
    code, out, err = run_cli("profile", str(spec_file), "--repeats", "2", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["batch_size"] == 2 and d["is_default_profile"] is False
    assert d["total_est_ms"] == pytest.approx(5.0 * builtin_total_ms(), rel=1e-9)
    assert f"profile: cached {p2.describe()}" in err
    base = ["generate", "--input", "1,28,28", "--classes", "10", "-n", "3", "--seed", "2", "--format", "json"]
    code, out, err = run_cli(*base, "--max-latency-ms", "1000")
    assert code == 0, err
    assert f"profile: cached {p2.describe()}" in err
    from archgen.costing import spec_geoms
    from archgen.spec import ArchSpec
    from costmodel.estimator import estimate_total_ms

    for r in json.loads(out):
        assert r["est_ms"] == round(estimate_total_ms(spec_geoms(ArchSpec.from_dict(r["spec"])), p2, 2), 4)


def test_nothing_cached_profile_prices_batch_1_and_generate_asks_for_a_calibration(run_cli, spec_file: Path) -> None:
    code, out, err = run_cli("profile", str(spec_file), "--repeats", "2", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["batch_size"] == 1 and d["is_default_profile"] is True
    code, out, err = run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "2", "--max-latency-ms", "5")
    assert code == 2 and out == "" and "run 'archgen calibrate --batch-size 1' first" in err
    assert len(err.strip().splitlines()) == 1


def test_profile_measures_at_the_profile_files_threads(run_cli, spec_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`profile --device-profile FILE` measures at the thread count FILE prices, unless --threads
    says otherwise (and then says that the two differ)."""
    import archgen.pricing

    seen = []
    real = archgen.pricing.estimate_and_measure

    def spy(*args, **kwargs):
        seen.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(archgen.pricing, "estimate_and_measure", spy)
    path = fake_profile(1, 3.0, threads=2).save(tmp_path / "t2.json")
    code, out, err = run_cli("profile", str(spec_file), "--device-profile", str(path), "--repeats", "2")
    assert code == 0 and seen == [2] and "note: measured at" not in err, err
    code, out, err = run_cli("profile", str(spec_file), "--device-profile", str(path), "--repeats", "2",
                             "--threads", "1")
    assert code == 0 and seen == [2, 1] and "note: measured at 1 thread(s), priced by a profile of 2" in err


def test_a_profile_of_this_machines_gpu_is_not_what_runs_on_its_cpu(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's CUDA profile given for a run on the CPU prices the GPU: the measurement here
    is labelled as not of the profile's device, and no drift is computed against the CPU."""
    import dataclasses

    from archgen.drift import check_drift
    from archgen.finalize import latency_labels
    from archgen.settings import SearchSettings

    gpu = dataclasses.replace(fake_profile(4, 5.0, device="cuda", device_name="NVIDIA H100"), reference_ms=0.5)
    path = gpu.save(tmp_path / "gpu.json")
    # as on the machine that has that GPU (here, with no GPU, it would be another machine's)
    monkeypatch.setattr(DeviceProfile, "is_foreign", lambda self, current=None: False)
    choice = choose_profile(path, measure_on="cpu")
    assert choice.foreign is True and choice.note.endswith(
        "(its estimates are for this machine's cuda, not the cpu measured here)")
    assert choose_profile(path, measure_on="cuda:0").foreign is False
    assert choose_profile(path).foreign is False  # `cost` measures nothing: it just prices the GPU
    # ONNX Runtime measures on the CPU, wherever the trials train
    ort = fake_profile(1, 5.0, runtime="onnxruntime").save(tmp_path / "ort.json")
    assert choose_profile(ort, measure_on="cuda").foreign is False
    labels = latency_labels(gpu, SearchSettings(workers=1, data="digits", out=str(tmp_path / "r")))
    assert labels["meas_is_target"] is False and labels["meas_on"].endswith("not the profile's device")
    assert check_drift(gpu, "cpu") is None  # would time the CPU against the GPU's reference
    cpu = dataclasses.replace(fake_profile(4, 5.0), reference_ms=0.5)
    assert latency_labels(cpu, SearchSettings(workers=1, data="digits", out=str(tmp_path / "r")))["meas_is_target"]
    assert check_drift(cpu, "cuda") is None and check_drift(cpu, "cpu") is not None


@pytest.mark.parametrize("context", [[], {}, {"device": "cpu", "threads": 1}, {"device": "tpu", "threads": 1,
                                                                              "batch_size": 1},
                                     {"device": "cpu", "threads": True, "batch_size": 1}])
def test_a_profile_file_with_a_broken_context_is_one_clear_error(run_cli, spec_file: Path, tmp_path: Path,
                                                                  context: object) -> None:
    d = fake_profile(1).to_dict()
    d["context"] = context
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    code, out, err = run_cli("cost", str(spec_file), "--device-profile", str(path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "its 'context' must name the device ('cpu' or 'cuda'), its threads and its batch size" in err


def test_calibrate_check_takes_the_profile_files_own_context(run_cli, tmp_path: Path) -> None:
    """`calibrate --check --device-profile FILE`: FILE names its runtime, threads and batch size;
    giving them too is refused rather than ignored."""
    path = fake_profile(1, 3.0).save(tmp_path / "p.json")
    for flag, value in (("--runtime", "onnxruntime"), ("--threads", "2"), ("--batch-size", "4")):
        code, out, err = run_cli("calibrate", "--check", "--device-profile", str(path), flag, value)
        assert code == 2 and out == "" and f"{flag}: not used with --check" in err, err
    code, out, err = run_cli("calibrate", "--check", "--device-profile", str(path))
    assert code == 0 and out.startswith("nothing to compare"), (out, err)  # a fake profile has no reference time

"""Calibration bundles: written here, measured by their run.py in a process that imports
neither archgen nor costmodel (nor torch, for ONNX Runtime), fitted back here, used to price."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.bundle import write_bundle
from costmodel.calibration import fit_measurements
from costmodel.errors import CostModelError
from costmodel.estimator import estimate_total_ms
from costmodel.measure import ANCHOR_GEOMS, micro_benchmark_geoms
from costmodel.measurements import Measurements
from costmodel.netgen import random_plain_cnn

REPO = Path(__file__).resolve().parents[2]
# run.py in a clean process: these imports fail there, so the runner must not need them.
BLOCKED = {"onnxruntime": ("archgen", "costmodel", "torch"), "torch": ("archgen", "costmodel")}


def _networks(n: int) -> list:
    rng = random.Random(7)
    return [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(n)]


def _run_bundle(folder: Path, out: Path, runtime: str) -> subprocess.CompletedProcess:
    blocked = "".join(f"sys.modules[{m!r}] = None; " for m in BLOCKED[runtime])
    code = (f"import sys, runpy; {blocked}sys.argv = ['run.py', '--out', {str(out)!r}, '--repeats', '3', "
            f"'--warmup-s', '0']; runpy.run_path('run.py', run_name='__main__')")
    # cwd is the bundle, outside the repository: the packages are not importable from there anyway
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_bundle_round_trip(tmp_path: Path, runtime: str) -> None:
    networks = _networks(8)
    micro = micro_benchmark_geoms(quick=True)[:12]
    folder = write_bundle(tmp_path / "bundle", networks, micro, runtime=runtime, batch_size=2, repeats=3)
    names = sorted(p.name for p in folder.iterdir())
    assert names == (["README.txt", "bundle.json", "models", "run.py", "speed.py", "timing.py", "timing_ort.py"]
                     if runtime == "onnxruntime" else ["README.txt", "bundle.json", "run.py", "speed.py", "timing.py",
                                                       "timing_ort.py"])
    if runtime == "onnxruntime":  # + the reference workload, 2 probes and the speed anchors
        assert len(list((folder / "models").glob("*.onnx"))) == len(networks) + len(micro) + 3 + len(ANCHOR_GEOMS)
    assert "python run.py --out measurements.json" in (folder / "README.txt").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # others may read it, as any folder made here

    out = tmp_path / "measurements.json"
    done = _run_bundle(folder, out, runtime)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["context"]["runtime"] == runtime and doc["context"]["batch_size"] == 2
    assert doc["reference_ms"] > 0 and doc["protocol"]["clock"] == "thread"  # the thread's CPU time, as here
    # one chunk: the anchors were timed with it, and there was nothing to normalize
    assert doc["protocol"]["speed"]["anchors"] == len(ANCHOR_GEOMS) and doc["protocol"]["speed"]["factors"] == [1.0]

    measured = Measurements.load(out)
    assert len(measured.networks) == len(networks) and len(measured.micro) == len(micro)
    for (geoms, layers, e2e), want in zip(measured.networks, networks):
        assert [g.config_key() for g in geoms] == [g.config_key() for g in want]
        assert len(layers) == len(geoms) and e2e > 0 and all(t >= 0 for t in layers)
    profile = fit_measurements(measured)
    assert profile.runtime == runtime and profile.batch_size == 2
    assert profile.reference_ms == pytest.approx(doc["reference_ms"])
    assert profile.fit_quality["network_oof"]["n"] == len(networks)
    assert doc["noise_floor"]["n"] == len(networks)  # run.py measures its own noise floor
    assert profile.fit_quality["noise_floor"] == measured.noise_floor == doc["noise_floor"]
    # The fitted profile prices networks: the calibration networks' estimates are within a
    # factor of two of their measured times.
    for geoms, _, e2e in measured.networks:
        est = estimate_total_ms(geoms, profile)
        assert 0.5 * e2e < est < 2.0 * e2e


def test_bundle_goes_into_a_new_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(CostModelError, match="exists"):
        write_bundle(tmp_path / "b", _networks(1), [], runtime="torch")
    with pytest.raises(CostModelError, match="unknown runtime"):
        write_bundle(tmp_path / "c", _networks(1), [], runtime="tflite")
    assert not (tmp_path / "c").exists()


def test_run_py_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "something else"}))
    done = subprocess.run([sys.executable, str(REPO / "costmodel" / "runner.py"), "--bundle", str(tmp_path),
                           "--out", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not an archgen calibration bundle" in done.stderr
    assert not (tmp_path / "m.json").exists()


def test_cli_bundle_then_measurements(tmp_path: Path, monkeypatch) -> None:
    """archgen calibrate --bundle writes the one recipe's networks; --measurements fits them and
    --device-profile prices with the result."""
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--bundle", str(folder), "--quick",
                           "--runtime", "torch", "--batch-size", "1"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    bundle = json.loads((folder / "bundle.json").read_text())
    assert len(bundle["networks"]) == 36 and bundle["batch_size"] == 1 and bundle["runtime"] == "torch"
    # A measurements file as run.py would write it, made from two networks only (fast).
    bundle["networks"] = bundle["networks"][:6]
    bundle["micro"] = bundle["micro"][:10]
    (folder / "bundle.json").write_text(json.dumps(bundle))
    out = tmp_path / "m.json"
    assert _run_bundle(folder, out, "torch").returncode == 0
    profile_path = tmp_path / "target.json"
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--measurements", str(out), "--out",
                           str(profile_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(profile_path)
    assert "within 10%" in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # the fit beside the noise floor the target measured
    assert last.startswith("fitted in") and "repeatability (the same networks, odd rounds against even rounds): within 10%" in last
    # without --out the profile goes next to the measurements, never over an existing file
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--measurements", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "m.profile.json")
    before = (tmp_path / "m.profile.json").read_bytes()
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--measurements", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and "exists" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "m.profile.json").read_bytes() == before
    done = subprocess.run([sys.executable, "-m", "archgen", "cost", str(REPO / "examples" / "digits_cnn.json"),
                           "--device-profile", str(profile_path), "--format", "json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["batch_size"] == 1 and report["total_est_ms"] > 0
    assert not report["is_default_profile"]


CTX = '{"batch_size": 1, "threads": 1, "device": "cpu", "device_name": "Cortex-A72", "runtime": "onnxruntime"}'
CONV = ('{"name": "a", "op": "conv", "c_in": 1, "c_out": 2, "h_in": 4, "w_in": 4, "h_out": 4, '
        '"w_out": 4}')


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ('{"format": "x"}', "not an archgen measurements file"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], '
     '"networks": [{"geoms": [], "layers_ms": [], "e2e_ms": 1}]}', "0 layer times for 0 layers"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], '
     '"networks": [{"geoms": [' + CONV + '], "layers_ms": [-1], "e2e_ms": 1}]}', "a time must be a finite number >= 0"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], '
     '"networks": [{"geoms": [' + CONV + '], "layers_ms": [0], "e2e_ms": 0}]}', "e2e_ms is 0: the clock was too coarse"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], '
     '"networks": [{"geoms": [{"name": "a", "op": "warp"}], "layers_ms": [1], "e2e_ms": 1}]}', "networks"),
    ('{"format": "archgen-measurements", "version": 1, "context": {"batch_size": 1}, "micro": [], '
     '"networks": []}', "context.threads must be a positive integer"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX.replace("onnxruntime", "tflite")
     + ', "micro": [], "networks": []}', "context.runtime must be one of"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "protocol": 3, "micro": [], '
     '"networks": []}', "protocol"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], "networks": [], '
     '"reference_ms": 0}', "reference_ms must be above 0"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], "networks": [], '
     '"noise_floor": {"n": 3}}', "noise_floor must be an object with"),
    ('{"format": "archgen-measurements", "version": 1, "context": ' + CTX + ', "micro": [], "networks": [], '
     '"noise_floor": {"n": 3, "within_10pct": 1.5, "within_5pct": 0.5, "median_abs_pct": 2}}',
     "noise_floor shares must lie in"),
])
def test_bad_measurements_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(CostModelError, match=message):
        Measurements.load(path)


def test_no_networks_nothing_to_fit() -> None:
    with pytest.raises(CostModelError, match="no calibration network"):
        fit_measurements(Measurements(context={"batch_size": 1}))


def test_run_py_checks_out_before_measuring(tmp_path: Path) -> None:
    """run.py's --out is checked before minutes of measuring (here: before it even reads the
    bundle, which does not exist): an existing file is kept without --force, a folder or a
    missing folder is refused, in one line."""
    kept = tmp_path / "m.json"
    kept.write_text("mine")
    for out, says in ((kept, "already exists; pass --force"), (tmp_path, "a folder; name a file"),
                      (tmp_path / "no" / "m.json", "its folder does not exist")):
        done = subprocess.run([sys.executable, str(REPO / "costmodel" / "runner.py"), "--bundle",
                               str(tmp_path / "nothing"), "--out", str(out)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert kept.read_text() == "mine"
    # with --force it goes on, to the bundle it cannot read
    done = subprocess.run([sys.executable, str(REPO / "costmodel" / "runner.py"), "--bundle", str(tmp_path / "nothing"),
                           "--out", str(kept), "--force"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "FileNotFoundError" in done.stderr and kept.read_text() == "mine"


def test_run_py_without_its_files_says_so(tmp_path: Path) -> None:
    """run.py copied alone, without the modules beside it: one line, not a traceback."""
    shutil.copyfile(REPO / "costmodel" / "runner.py", tmp_path / "run.py")
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip() == "run.py: speed.py is missing next to run.py; copy the whole bundle folder"


def test_a_coarse_thread_clock_times_wall_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a target whose thread CPU clock moves in steps of 15.6 ms (Windows), a bundle is timed
    with the wall clock instead: sub-millisecond networks would otherwise time at 0."""
    import time

    import costmodel.runner as runner

    assert runner.thread_clock_is_fine() and runner.bundle_clock(1) == "auto"  # Linux: nanoseconds
    folder = write_bundle(tmp_path / "bundle", _networks(2), [], runtime="torch", batch_size=1, repeats=2)
    coarse = lambda: 0.015625 * int(time.perf_counter() / 0.015625)  # noqa: E731
    monkeypatch.setattr(time, "thread_time", coarse)
    assert not runner.thread_clock_is_fine()
    assert runner.bundle_clock(1) == "wall"
    assert runner.bundle_clock(4) == "auto"  # wall time anyway at several threads
    said: list[str] = []
    doc = runner.measure_bundle(folder, warmup_s=0.0, say=said.append)
    assert doc["protocol"]["clock"] == "wall" and "too coarse" in said[0]
    assert doc["reference_ms"] > 0 and all(0 < n["e2e_ms"] < 15 for n in doc["networks"])
    assert Measurements.from_dict(doc).networks  # a file the fit takes


def test_the_runner_parses_as_python_3_9() -> None:
    """A bundle's files run on the target's Python, 3.9 or later (README.txt): no syntax newer
    than that (match statements, parenthesized context managers, except*)."""
    for name in ("runner.py", *__import__("costmodel.runner").runner.FILES):
        source = (REPO / "costmodel" / name).read_text()
        ast.parse(source, filename=name, feature_version=(3, 9))


def test_the_cpu_is_named_alike_here_and_by_run_py() -> None:
    """A bundle measured on this very machine must not look like another device's: run.py and a
    local profile name the CPU by the same rule, 'model name' first wherever it stands."""
    from costmodel.device_profile import cpu_model_name
    from costmodel.runner import device_name

    assert cpu_model_name() == device_name(Path("/proc/cpuinfo").read_text())
    pi = "processor\t: 0\nBogoMIPS\t: 108.00\nHardware\t: BCM2835\nRevision\t: c03111\n"
    assert device_name(pi) == "BCM2835"
    assert device_name("Hardware\t: BCM2835\nmodel name\t: ARMv7 Processor rev 3 (v7l)\n") == \
        "ARMv7 Processor rev 3 (v7l)"
    assert device_name("model name\t:\nHardware\t: BCM2711\n") == "BCM2711"  # an empty name is no name

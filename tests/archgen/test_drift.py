"""Drift: the profile keeps a reference workload's time; re-timing it says plainly when the
machine runs in another state than when the profile was fitted."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from archgen.drift import DRIFT_LIMIT, DriftReport, check_drift
from costmodel.device_profile import DeviceProfile, current_context, default_profile
from costmodel.measure import reference_ms

REPO = Path(__file__).resolve().parents[2]


def make_profile(batch_size: int = 8, **ctx_changes) -> DeviceProfile:
    ctx = current_context("cpu", 1, batch_size)
    ctx.update(ctx_changes)
    return DeviceProfile(context=ctx, coeffs={"conv": {"c": 0.1, "a": 1e-8, "b": 1e-7}}, t_k_ms={"conv": 1e-5})


def test_report_arithmetic() -> None:
    assert DriftReport(1.0, 1.0 + DRIFT_LIMIT).ok
    slow = DriftReport(1.0, 2.0)
    assert not slow.ok and slow.ratio == 2.0
    assert "runs 100% slower" in slow.line() and "recalibrate" in slow.line()
    fast = DriftReport(2.0, 1.0)
    assert not fast.ok and "50% faster" in fast.line()
    assert "runs as when its profile was fitted" in DriftReport(1.0, 1.05).line()


def test_check_drift_re_times_the_reference_workload() -> None:
    now = reference_ms()
    assert now > 0
    slowed = dataclasses.replace(make_profile(batch_size=1), reference_ms=now / 3)  # fitted on a 3x faster state
    report = check_drift(slowed)
    assert report is not None and report.profile_ms == pytest.approx(now / 3)
    assert report.ratio > 1 + DRIFT_LIMIT and not report.ok
    sped = dataclasses.replace(make_profile(batch_size=1), reference_ms=now * 3)
    assert check_drift(sped).ratio < 1 - DRIFT_LIMIT


def test_nothing_to_compare() -> None:
    assert check_drift(default_profile()) is None
    assert check_drift(make_profile()) is None  # no reference time kept
    foreign = dataclasses.replace(make_profile(device_name="Cortex-A72"), reference_ms=1.0)
    assert check_drift(foreign) is None


def test_calibrate_check_says_it_in_one_line(tmp_path: Path) -> None:
    prof = dataclasses.replace(make_profile(batch_size=1), reference_ms=reference_ms() / 4)
    path = prof.save(tmp_path / "p.json")
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--check", "--device-profile", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "slower than when its profile was fitted" in lines[0]
    done = subprocess.run([sys.executable, "-m", "archgen", "calibrate", "--check", "--device-profile",
                           str(make_profile().save(tmp_path / "q.json"))],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and "nothing to compare" in done.stdout

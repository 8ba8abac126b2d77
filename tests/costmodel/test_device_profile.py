"""DeviceProfile: JSON round trip, context checks, the per-device cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel.device_profile import (
    DeviceProfile,
    cache_path,
    cache_root,
    current_context,
    load_cached,
)
from costmodel.errors import CostModelError


def make_profile(**ctx_changes) -> DeviceProfile:
    ctx = current_context("cpu", 1, 8)
    ctx.update(ctx_changes)
    return DeviceProfile(
        context=ctx, coeffs={"conv": {"c": 0.1, "a": 1e-8, "b": 1e-7}}, t_k_ms={"conv": 1e-5},
        fit_quality={"network_oof": {"mape": 0.05}}, protocol={"statistic": "min"},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    prof = make_profile()
    path = prof.save(tmp_path / "p.json")
    back = DeviceProfile.load(path)
    assert back.to_dict() == prof.to_dict()
    data = json.loads(path.read_text())
    assert data["context"]["threads"] == 1 and data["context"]["batch_size"] == 8
    assert data["context"]["fingerprint"] == prof.fingerprint
    assert data["protocol"] == {"statistic": "min"}


def test_context_matches_here() -> None:
    make_profile().check_context()


@pytest.mark.parametrize(
    ("key", "value"),
    [("torch_version", "1.0.0"), ("device_name", "Some Other CPU"), ("threads", 4),
     ("batch_size", 64)],
)
def test_foreign_or_stale_profile_is_refused(key: str, value: object) -> None:
    prof = make_profile(**{key: value})
    with pytest.raises(CostModelError, match=f"calibrated for {key}="):
        prof.check_context(batch_size=8, threads=1)


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CostModelError, match="not valid JSON"):
        DeviceProfile.load(bad)
    old = make_profile().to_dict()
    old["schema_version"] = 0
    bad.write_text(json.dumps(old))
    with pytest.raises(CostModelError, match="schema_version"):
        DeviceProfile.load(bad)
    with pytest.raises(FileNotFoundError):
        DeviceProfile.load(tmp_path / "missing.json")


def test_cache_per_device_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "profiles"
    assert load_cached("cpu", 1, 8) is None
    prof = make_profile()
    path = cache_path(prof.context)
    assert path.parent.parent == tmp_path / "profiles" and path.name == "profile-t1-b8.json"
    prof.save(path)
    assert load_cached("cpu", 1, 8).to_dict() == prof.to_dict()
    assert load_cached("cpu", 1, 16) is None  # another batch size is another file

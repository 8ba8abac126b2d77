"""Shared test helpers: a small reference spec and its layer names, and an empty profile
cache per test."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEC = {
    "schema_version": 1, "input_shape": [1, 28, 28], "num_classes": 10,
    "layers": [
        {"op": "conv", "filters": 8, "kernel": 5, "stride": 1, "padding": "same", "activation": "relu"},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "conv", "filters": 16, "kernel": 3, "stride": 1, "padding": "same", "activation": "relu"},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "dense", "units": 32, "activation": "relu"},
    ],
    "init": {"scheme": "lecun_uniform"},
}
NAMES = ["s1.conv1", "s1.pool", "s2.conv1", "s2.pool", "fc1", "classifier"]


def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ARCHGEN_CACHE at a new folder (the user's profile cache is never touched)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ARCHGEN_CACHE", str(root))
    return root

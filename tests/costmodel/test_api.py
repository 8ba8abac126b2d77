"""The public API of the costmodel package: lazy names, torch-free import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import costmodel

REPO = Path(__file__).resolve().parents[2]


def test_estimate_is_the_function_and_prices_a_module() -> None:
    import torch
    from torch import nn

    from costmodel.estimator import estimate

    assert costmodel.estimate is estimate
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10))
    geoms = costmodel.geoms_from_module(model, torch.randn(1, 1, 8, 8))
    report = costmodel.estimate(geoms, costmodel.default_profile(), batch_size=2)
    assert isinstance(report, costmodel.CostReport)
    assert list(report.table["op"]) == ["conv", "pool", "dense"]
    assert report.total_est_ms > 0 and report.is_default_profile


def test_calibrate_is_the_function() -> None:
    from costmodel.calibration import calibrate

    assert costmodel.calibrate is calibrate


def test_every_exported_name_resolves() -> None:
    for name in costmodel.__all__:
        value = getattr(costmodel, name)
        assert getattr(value, "__name__", name) == name
        assert name in dir(costmodel)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        costmodel.nope  # noqa: B018


def test_import_costmodel_does_not_import_torch() -> None:
    code = (
        "import sys, costmodel; costmodel.estimate, costmodel.LayerGeom, costmodel.DeviceProfile, "
        "costmodel.default_profile; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "False"

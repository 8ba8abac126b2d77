"""Rendering: every format carries the layers and totals; err_pct appears once profiled."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from costmodel.errors import CostModelError
from costmodel.estimator import estimate
from costmodel.geometry import LayerGeom
from costmodel.profile import ModelProfile
from costmodel.report import comparison_table, plot_layers, render

GEOMS = [
    LayerGeom("s1.conv1", "conv", 1, 8, 28, 28, 28, 28, kernel=5, padding=2, activation="relu"),
    LayerGeom("s1.pool", "pool", 8, 8, 28, 28, 14, 14, 2, 2, bias=False),
    LayerGeom("classifier", "dense", 8 * 14 * 14, 10, 1, 1, 1, 1),
]


def profiled():
    report = estimate(GEOMS)
    meas = ModelProfile(tuple(GEOMS), (0.5, 0.25, 0.1), (0.01, 0.01, 0.01), 0.9, 0.02, 0.88,
                        "cpu", 1, 1, 3, "thread")
    return report.with_measurements(meas)


def test_formats_carry_layers_and_totals() -> None:
    report = estimate(GEOMS)
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [r["layer"] for r in rows] == ["s1.conv1", "s1.pool", "classifier"]
    assert float(rows[0]["macs"]) == GEOMS[0].macs
    d = json.loads(render(report, "json"))
    assert d["total_macs"] == sum(g.macs for g in GEOMS)
    table = render(report, "table")
    assert "total_est_ms=" in table and "built-in default profile" in table
    md = render(report, "markdown")
    assert md.splitlines()[0].startswith("| layer | op |") and md.count("\n| s1.") == 2
    with pytest.raises(CostModelError, match="unknown format 'xml'"):
        render(report, "xml")


def test_error_column_when_profiled() -> None:
    report = profiled()
    table = comparison_table(report)
    est0 = report.table["est_ms"][0]
    assert table["err_pct"][0] == pytest.approx(100 * (est0 - 0.5) / 0.5)
    d = json.loads(render(report, "json"))
    assert d["layers"][1]["err_pct"] == pytest.approx(table["err_pct"][1])
    assert d["meas_clock"] == "thread" and d["e2e_meas_ms"] == 0.9
    assert "measured end-to-end 0.9 ms" in render(report, "table")


def test_onnxruntime_layers_at_the_profilers_resolution_are_named() -> None:
    """Layers ONNX Runtime measured under 2 us are at its profiler's resolution (whole
    microseconds): the report says how many, and only for ONNX Runtime measurements."""
    report = estimate(GEOMS)
    meas = ModelProfile(tuple(GEOMS), (0.5, 0.0, 0.0012), (0.01, 0.0, 0.001), 0.9, 0.02, 0.5012,
                        "cpu", 1, 1, 3, "onnxruntime, thread")
    text = render(report.with_measurements(meas), "table")
    assert "2 layer(s) measured under 2 us" in text and "whole microseconds" in text
    torch_meas = dataclasses.replace(meas, clock="thread")
    assert "whole microseconds" not in render(report.with_measurements(torch_meas), "table")
    assert "whole microseconds" not in render(profiled(), "table")


def test_plot_writes_png(tmp_path: Path) -> None:
    path = plot_layers(profiled(), tmp_path / "sub" / "bars.png")
    assert path.read_bytes()[:4] == b"\x89PNG"

"""Render cost reports for people and machines: table, csv, json, markdown, and a bar chart.

Pure functions returning strings (or writing one PNG); printing is the CLI's job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from costmodel.atomic import atomic_path
from costmodel.errors import CostModelError
from costmodel.estimator import CostReport

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json", "markdown")


def comparison_table(report: CostReport) -> pd.DataFrame:
    """The report's table with ``err_pct = 100 * (est_ms - meas_ms) / meas_ms`` when profiled."""
    table = report.table.copy()
    if "meas_ms" in table.columns:
        meas = table["meas_ms"].where(table["meas_ms"] > 0)
        table["err_pct"] = 100.0 * (table["est_ms"] - meas) / meas
    return table


def _totals_lines(report: CostReport) -> list[str]:
    lines = [
        f"total_est_ms={report.total_est_ms:.4g} (layers {report.total_est_ms - report.overhead_ms:.4g}"
        f" + network overhead {report.overhead_ms:.4g})  total_seed_ms={report.total_seed_ms:.4g}",
        f"total_macs={report.total_macs:,}  total_params={report.total_params:,}  "
        f"batch_size={report.batch_size}",
        f"balance over conv layers: cv={report.balance['cv']:.3f}  "
        f"max_over_mean={report.balance['max_over_mean']:.3f}",
    ]
    if report.e2e_meas_ms is not None:
        err = 100.0 * (report.total_est_ms - report.e2e_meas_ms) / report.e2e_meas_ms
        layer_sum = float(report.table["meas_ms"].sum())
        lines.append(
            f"measured end-to-end {report.e2e_meas_ms:.4g} ms (iqr {report.e2e_meas_iqr_ms:.3g}); "
            f"sum of measured layers {layer_sum:.4g} ms; estimate error {err:+.1f}% "
            f"(minimum of repeats, clock {report.meas_clock})"
        )
        coarse = _below_profiler_resolution(report)
        if coarse:
            lines.append(f"{coarse} layer(s) measured under {RESOLUTION_NOTE_MS * 1e3:g} us: ONNX Runtime's "
                         "profiler reports whole microseconds, less its own cost per node, so those "
                         "per-layer times are at its resolution (the end-to-end time is not)")
    lines.append(report.profile_note)
    return lines


# ONNX Runtime per-layer times under this (ms) are within a microsecond or two of its profiler's
# resolution (whole microseconds, less the profiler's cost per node, about 1.8 us here).
RESOLUTION_NOTE_MS = 0.002


def _below_profiler_resolution(report: CostReport) -> int:
    """How many priced layers an ONNX Runtime profile measured under ``RESOLUTION_NOTE_MS``."""
    if "onnxruntime" not in (report.meas_clock or "") or "meas_ms" not in report.table.columns:
        return 0
    t = report.table
    return int(((t["est_ms"] > 0) & (t["meas_ms"] < RESOLUTION_NOTE_MS)).sum())


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in table.itertuples(index=False):
        out.append("| " + " | ".join(_cell(v) for v in rec) + " |")
    return "\n".join(out)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def render(report: CostReport, fmt: str = "table") -> str:
    """The report as text in ``fmt`` (``table | csv | json | markdown``)."""
    if fmt not in FORMATS:
        raise CostModelError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    table = comparison_table(report)
    if fmt == "json":
        d = report.to_dict()
        if "err_pct" in table.columns:
            for rec, err in zip(d["layers"], table["err_pct"]):
                rec["err_pct"] = None if not math.isfinite(err) else float(err)
        return json.dumps(d, indent=2)
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    if fmt == "markdown":
        return _markdown(table) + "\n\n" + "\n".join(f"* {x}" for x in _totals_lines(report))
    with_fmt = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return with_fmt + "\n\n" + "\n".join(_totals_lines(report))


def plot_layers(report: CostReport, path: str | Path) -> Path:
    """Bar chart of estimated (and measured, if profiled) ms per layer, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report.table
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2), 4.0))
    xs = list(range(n))
    profiled = "meas_ms" in table.columns
    width = 0.4 if profiled else 0.8
    ax.bar([x - width / 2 if profiled else x for x in xs], table["est_ms"], width, label="estimated")
    if profiled:
        ax.bar([x + width / 2 for x in xs], table["meas_ms"], width, label="measured",
               yerr=table["meas_iqr_ms"], capsize=2)
    ax.set_xticks(xs)
    ax.set_xticklabels(table["layer"], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"ms per batch of {report.batch_size}")
    ax.set_title("per-layer cost")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return path

"""The HTML report of a search run directory (``archgen report RUN_DIR``).

Contract:

* :func:`write_report` renders what :func:`archgen.rundata.load_run` read from a run directory
  into one self-contained ``report.html`` (plots embedded as base64 PNG) and writes each plot as
  ``report_<name>.png`` next to it. Only ``trials.csv`` is required; a section whose file is
  missing (a search still running, a search that never trained a model) says what is missing
  instead of failing.
* Reading the run and its arithmetic live in :mod:`archgen.rundata`, the plots in
  :mod:`archgen.plots`; this module only lays them out.

This module does not import torch: a report is rendered from files, on any machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from archgen.errors import UserError
from archgen.fsio import atomic_write_bytes
from archgen.plots import plot_layers, plot_pareto, plot_progress, plot_rungs
from archgen.rundata import (
    RunData,
    completed_trials,
    completion_times_s,
    float_or_none,
    has_text,
    load_run,
    pareto_front,
)
from archgen.trial_record import (
    DURATION_S,
    EPOCHS,
    EST_MS,
    MACS,
    MEAS_MS,
    PARAMS,
    REJECTED,
    SPEC_NAME,
    TEST_ACC,
    TEST_LOSS,
    VAL_ACC,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# One PNG per plot, written next to report.html; the key is the section that embeds it.
PLOT_FILES = {
    "progress": "report_progress.png",
    "pareto": "report_pareto.png",
    "layers": "report_layers.png",
    "rungs": "report_rungs.png",
}
TOP_N_TRIALS = 10

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.key { text-align: left; font-weight: 600; }
table.summary td { text-align: left; }
img { max-width: 100%; } .missing { color: #a33; font-style: italic; }
.caption { color: #555; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.7em; }
"""

# Whole numbers, shown with thousands separators even where a missing cell made them floats.
_INT_COLUMNS = {
    "number", MACS, PARAMS, EPOCHS, "c_in", "c_out", "kernel", "stride", "h_out", "w_out",
    "n_p", "n_f", "acts", "bytes", "n", "trial_number",
}


# --------------------------------------------------------------------------------------------
# Cells, tables, figures
# --------------------------------------------------------------------------------------------


def _fmt_cell(col: str, value: object) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (int, np.integer)) or (
        col in _INT_COLUMNS
        and isinstance(value, (float, np.floating))
        and float(value).is_integer()
    ):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if col.endswith("acc") or col.startswith("balance_cv"):
            return f"{value:.4f}"
        if col == "t_k_ms":  # one filter application: microseconds or less
            return f"{value:.3g}"
        if col.endswith("_ms"):
            return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
        if col.endswith("_s"):
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value)


def _table_html(df: pd.DataFrame) -> str:
    """``df`` as an HTML table with per-column number formats; pandas escapes every cell."""
    shown = pd.DataFrame({c: [_fmt_cell(str(c), v) for v in df[c]] for c in df.columns})
    return shown.to_html(index=False, escape=True, border=0, na_rep="")


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _figure_html(png: bytes | None, caption: str, alt: str) -> str:
    if png is None:
        return _missing(caption)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f'<p class="caption">{html.escape(caption)}</p>'
    )


def _fmt_num(value: object, spec: str) -> str:
    out = float_or_none(value)
    return "n/a" if out is None else format(out, spec)


def _top_trials(trials: pd.DataFrame, n: int = TOP_N_TRIALS) -> pd.DataFrame:
    done = completed_trials(trials).copy()
    if VAL_ACC not in done.columns:
        return done.head(0)
    done["_acc"] = pd.to_numeric(done[VAL_ACC], errors="coerce")
    done["_cost"] = pd.to_numeric(done[EST_MS], errors="coerce") if EST_MS in done.columns else 0.0
    done = done.sort_values(["_acc", "_cost"], ascending=[False, True], na_position="last").head(n)
    return _trial_view(done)


def _trial_view(trials: pd.DataFrame) -> pd.DataFrame:
    """The columns of a trials table a reader compares: results first, then the sampled
    parameters."""
    wanted = ["number", VAL_ACC, EST_MS, MACS, PARAMS, EPOCHS, DURATION_S, SPEC_NAME]
    cols = [c for c in wanted if c in trials.columns]
    cols += sorted(c for c in trials.columns if str(c).startswith("params_"))
    return trials[cols]


def _cost_table(cost: pd.DataFrame) -> pd.DataFrame:
    """The per-layer cost with a totals row (sums of the additive columns)."""
    additive = [
        c
        for c in ("macs", "params", "acts", "bytes", "t_c_seed_ms", "est_ms", "meas_ms")
        if c in cost.columns
    ]
    totals: dict[str, object] = {
        c: pd.to_numeric(cost[c], errors="coerce").sum(min_count=1) for c in additive
    }
    totals["layer"] = "total"
    return pd.concat([cost, pd.DataFrame([totals])], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _summary_rows(run: RunData, selected: int | None) -> list[tuple[str, str]]:
    cfg, trials = run.config, run.trials
    counts = trials["state"].value_counts()
    by_state = " · ".join(f"{s} {int(counts[s])}" for s in sorted(counts.index)) or "none yet"
    if REJECTED in trials.columns:
        by_state += f" (rejected before training: {int(has_text(trials[REJECTED]).sum())})"
    rows = [
        ("Run directory", str(run.run_dir)),
        ("Strategy", run.strategy),
        ("Data", str(cfg.get("data", "unknown"))),
        ("Objective", str(cfg.get("objective", "unknown"))),
        ("Budget", _budget_text(cfg)),
        ("Trials by state", f"{len(trials)} trials: {by_state}"),
        _best_row(trials),
    ]
    if run.test_metrics is not None:
        rows += _test_rows(run, run.test_metrics)
    else:
        rows.append(("Test accuracy", "not evaluated yet (no test_metrics.json)"))
        if selected is not None:
            rows.append(("Selected model", f"trial #{selected} (highest val_acc so far)"))
    try:
        times = completion_times_s(trials)
        if times.notna().any():
            rows.append(
                (
                    "Search wall time",
                    f"{float(times.max()):.1f} s from the first trial start to the last completion",
                )
            )
    except UserError:
        pass
    return rows


def _best_row(trials: pd.DataFrame) -> tuple[str, str]:
    done = completed_trials(trials)
    acc = (
        pd.to_numeric(done[VAL_ACC], errors="coerce")
        if VAL_ACC in done.columns
        else pd.Series(dtype=float)
    )
    if not acc.notna().any():
        return ("Best val_acc", "no completed trial yet")
    best = done.loc[acc.idxmax()]
    name = best.get(SPEC_NAME, "")
    return (
        "Best val_acc",
        f"{float(acc.max()):.4f} (trial #{int(best['number'])}"
        + (f", {name}" if isinstance(name, str) and name else "")
        + ")",
    )


def _test_rows(run: RunData, tm: dict[str, Any]) -> list[tuple[str, str]]:
    """What ``test_metrics.json`` says of the selected model."""
    refit = tm.get("refit")
    batch = run.latency_batch
    return [
        ("Selected model", f"trial #{tm.get('trial_number', 'n/a')}: {tm.get(SPEC_NAME, 'n/a')}"),
        (
            "Test accuracy",
            f"{_fmt_num(tm.get(TEST_ACC), '.4f')} on {tm.get('n', 'n/a')} test images "
            f"(test loss {_fmt_num(tm.get(TEST_LOSS), '.4f')}; "
            f"val_acc {_fmt_num(tm.get(VAL_ACC), '.4f')})",
        ),
        (
            "Exported weights",
            f"refit on train + validation ({refit.get('n_train', 'n/a')} images, "
            f"{refit.get('epochs', 'n/a')} epochs)"
            if isinstance(refit, dict)
            else "the selected trial's own (no refit)",
        ),
        (
            "Latency of the selected model",
            f"estimated {_fmt_num(tm.get(EST_MS), '.3f')} ms, "
            f"measured {_fmt_num(tm.get(MEAS_MS), '.3f')} ms"
            + (f" (batch size {batch})" if batch is not None else "")
            + ("" if tm.get("meas_is_target", True) else
               f"; the measurement is of {tm.get('meas_on', 'this machine')}, not of the device the estimate is for"),
        ),
        ("Latency priced for", str(tm.get("est_on") or run.config.get("latency_profile_device")
                                   or run.config.get("latency_profile", "unknown"))),
    ]


def _budget_text(cfg: dict[str, Any]) -> str:
    trials, time_s, latency_ms = (cfg.get(k) for k in ("trials", "time_budget_s", "max_latency_ms"))
    return ", ".join(
        [
            f"{trials} trials" if trials is not None else "no trial limit",
            f"time budget {time_s} s" if time_s is not None else "no time budget",
            f"max latency {latency_ms} ms" if latency_ms is not None else "no latency budget",
        ]
    )


# --------------------------------------------------------------------------------------------
# Sections and the page
# --------------------------------------------------------------------------------------------


def _plot_section(
    run_dir: Path, key: str, draw: Callable[[], tuple[bytes | None, str]], alt: str
) -> str:
    """Draw one plot, save it as its PNG (or remove a stale PNG when there is nothing to
    draw) and return its HTML."""
    png, caption = draw()
    path = run_dir / PLOT_FILES[key]
    if png is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_bytes(path, png)
    return _figure_html(png, caption, alt)


def _pareto_body(run: RunData, selected: int | None) -> str:
    body = _plot_section(
        run.run_dir, "pareto", lambda: plot_pareto(run, selected), "accuracy vs estimated latency"
    )
    if {VAL_ACC, EST_MS} <= set(run.trials.columns):
        front = pareto_front(run.trials)
        if len(front):
            source = "pareto.csv" if run.pareto is not None else "computed from trials.csv"
            body += f"<p>Pareto front ({html.escape(source)}):</p>"
            body += _table_html(_trial_view(run.pareto if run.pareto is not None else front))
    return body


def _layers_body(run: RunData) -> str:
    cost = run.cost
    if cost is None:
        (run.run_dir / PLOT_FILES["layers"]).unlink(missing_ok=True)
        return _missing(run.notes.get("cost", "No best/cost.csv."))
    body = _plot_section(
        run.run_dir, "layers", lambda: plot_layers(cost, _measured_elsewhere(run)), "per-layer cost of the best model"
    )
    return body + _table_html(_cost_table(cost))


def _measured_elsewhere(run: RunData) -> str | None:
    """Where finalize measured the best model, when that is not the device its estimates price."""
    tm = run.test_metrics or {}
    return None if tm.get("meas_is_target", True) else str(tm.get("meas_on", "this machine"))


def _rungs_body(run: RunData) -> str:
    inter = run.intermediate
    if inter is None:
        (run.run_dir / PLOT_FILES["rungs"]).unlink(missing_ok=True)
        return _missing(run.notes.get("intermediate", "No intermediate.csv."))
    return _plot_section(
        run.run_dir, "rungs", lambda: plot_rungs(run, inter), "validation accuracy per epoch"
    )


def _render_html(
    run: RunData, sections: list[tuple[str, str]], summary: list[tuple[str, str]]
) -> str:
    title = f"archgen search report: {run.run_dir.name}"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="caption">Generated {html.escape(now)} by <code>archgen report</code>.</p>',
        "<h2>Summary</h2>",
        '<table class="summary">'
        + "".join(
            f'<tr><td class="key">{html.escape(k)}</td><td>{html.escape(v)}</td></tr>'
            for k, v in summary
        )
        + "</table>",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(body)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: Path, extra_runs: list[Path] | None = None) -> Path:
    """Write ``run_dir/report.html`` and the four ``report_*.png`` plots; return the HTML path.

    ``extra_runs`` are other run directories whose best-so-far curves are drawn on the progress
    plot next to this run's (a benchmark comparing strategies); only their ``trials.csv`` is
    read. Raises :class:`UserError` naming the path when ``run_dir`` (or an extra run) has no
    readable ``trials.csv``. Missing optional files leave a note in their section instead.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    others = [load_run(p) for p in (extra_runs or [])]
    selected = run.selected_trial
    sections: list[tuple[str, str]] = []
    notes = [run.notes[k] for k in ("config", "test") if k in run.notes]
    if notes:
        sections.append(("Missing files", "".join(_missing(n) for n in notes)))
    progress = _plot_section(
        run_dir,
        "progress",
        lambda: plot_progress([run, *others]),
        "best-so-far validation accuracy over time",
    )
    sections.append(("Search progress", progress))
    sections.append(("Pareto front: accuracy vs estimated latency", _pareto_body(run, selected)))
    sections.append(("Best model: per-layer cost", _layers_body(run)))
    sections.append(("Learning curves and Hyperband rungs", _rungs_body(run)))
    top = _top_trials(run.trials)
    sections.append(
        (
            f"Top {TOP_N_TRIALS} trials by validation accuracy",
            _table_html(top) if len(top) else _missing("No completed trial yet."),
        )
    )
    if run.config:
        config_text = html.escape(yaml.safe_dump(run.config, sort_keys=True))
        sections.append(("Configuration (config.yaml)", f"<pre>{config_text}</pre>"))
    text = _render_html(run, sections, _summary_rows(run, selected))
    out = run_dir / REPORT_NAME
    atomic_write_bytes(out, text.encode("utf-8"))
    log.info("wrote %s", out)
    return out

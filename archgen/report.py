"""The HTML report of a search run directory (``archgen report RUN_DIR``).

Contract:

* :func:`write_report` reads what ``archgen search`` wrote into a run directory (``config.yaml``,
  ``trials.csv``, ``intermediate.csv``, ``best/cost.csv``, ``test_metrics.json``, ``pareto.csv``)
  and writes one self-contained ``report.html`` (plots embedded as base64 PNG) plus each plot as
  ``report_<name>.png`` next to it. Only ``trials.csv`` is required; every other file may be
  missing (a search still running, a search that never trained a model) and the section that
  needs it then says what is missing instead of failing.
* :func:`pareto_front` and :func:`best_so_far` are the two pieces of arithmetic behind the plots;
  the search loop reuses :func:`pareto_front` to pick its Pareto set.
* The plots themselves live in :mod:`archgen.plots`, which imports this module's tables;
  this module imports it only when a report is written, so the two never import each other in
  a cycle.

This module does not import torch: a report is rendered from files, on any machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from archgen.errors import UserError
from archgen.fsio import atomic_write_bytes
from archgen.redact import redact

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
_REQUIRED_TRIAL_COLUMNS = ("number", "state")


# --------------------------------------------------------------------------------------------
# Arithmetic: Pareto front and best-so-far curve
# --------------------------------------------------------------------------------------------


def completed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` that were trained to the end: ``state == COMPLETE`` (when a ``state``
    column exists) and no ``rejected`` reason (a rejected candidate was never trained)."""
    mask = pd.Series(True, index=df.index)
    if "state" in df.columns:
        mask &= _normalise_state(df["state"]) == "COMPLETE"
    if "rejected" in df.columns:
        mask &= ~_has_text(df["rejected"])
    return df[mask]


def pareto_front(
    df: pd.DataFrame, acc_col: str = "val_acc", cost_col: str = "est_ms"
) -> pd.DataFrame:
    """The non-dominated completed trials of ``df``: higher ``acc_col`` is better, lower
    ``cost_col`` is better, sorted by cost ascending (ties: accuracy descending).

    A trial is dominated when another completed trial is at least as accurate and at least as
    cheap, and strictly better in one of the two. Exact duplicates therefore both stay on the
    front. Rows without a numeric accuracy or cost are ignored. The index is reset; the rows keep
    all their columns (``number`` identifies the trial).
    """
    missing = [c for c in (acc_col, cost_col) if c not in df.columns]
    if missing:
        raise UserError(
            f"pareto_front: column(s) {', '.join(missing)} not in the trials table "
            f"(it has: {', '.join(map(str, df.columns))}); pass acc_col=/cost_col= that exist"
        )
    done = completed_trials(df)
    acc = pd.to_numeric(done[acc_col], errors="coerce")
    cost = pd.to_numeric(done[cost_col], errors="coerce")
    ok = acc.notna() & cost.notna()
    done, acc, cost = done[ok], acc[ok].to_numpy(float), cost[ok].to_numpy(float)
    order = np.lexsort((-acc, cost))  # primary key cost ascending, then accuracy descending
    keep: list[int] = []
    best_cheaper = -np.inf  # best accuracy among strictly cheaper trials
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]
        group_best = acc[group[0]]  # the group is sorted by accuracy descending
        if group_best > best_cheaper:
            keep.extend(int(k) for k in group if acc[k] == group_best)
        best_cheaper = max(best_cheaper, group_best)
        i = j
    return done.iloc[keep].reset_index(drop=True)


def best_so_far(df: pd.DataFrame) -> pd.DataFrame:
    """The best validation accuracy reached so far, one row per completed trial in order of
    completion: columns ``time_s`` (seconds from the earliest ``datetime_start`` of any trial
    in ``df`` to the trial's ``datetime_complete``) and ``best_val_acc`` (running maximum of
    ``val_acc``).

    Only completed, non-rejected trials count: a pruned trial's accuracy was measured at a lower
    fidelity (fewer epochs) and is not comparable. Where the datetimes are missing the time is
    taken from ``duration_s`` (completion = start + duration; without any datetimes the trials
    are assumed to have run one after another in ``number`` order). Raises :class:`UserError`
    when neither datetimes nor ``duration_s`` exist.
    """
    if "val_acc" not in df.columns:
        raise UserError("best_so_far: the trials table has no val_acc column; is it a trials.csv?")
    times = _completion_times_s(df)
    done = completed_trials(df)
    acc = pd.to_numeric(done["val_acc"], errors="coerce")
    t = times.loc[done.index]
    ok = acc.notna() & t.notna()
    out = pd.DataFrame({"time_s": t[ok].to_numpy(float), "acc": acc[ok].to_numpy(float)})
    out = out.sort_values("time_s", kind="stable").reset_index(drop=True)
    return pd.DataFrame({"time_s": out["time_s"], "best_val_acc": out["acc"].cummax()})


def _completion_times_s(df: pd.DataFrame) -> pd.Series:
    """Seconds from the run's first start to each trial's completion (NaN where unknown)."""
    start = _datetimes(df, "datetime_start")
    end = _datetimes(df, "datetime_complete")
    duration = (
        pd.to_numeric(df["duration_s"], errors="coerce") if "duration_s" in df.columns else None
    )
    if start.notna().any():
        origin = start.min()
        if duration is not None:
            end = end.fillna(start + pd.to_timedelta(duration, unit="s"))
        return (end - origin).dt.total_seconds()
    if duration is None:
        raise UserError(
            "the trials table has neither datetime_start/datetime_complete nor duration_s, "
            "so trials cannot be placed in time; regenerate trials.csv with archgen search"
        )
    numbers = pd.to_numeric(df["number"], errors="coerce") if "number" in df.columns else None
    order = numbers.sort_values(kind="stable").index if numbers is not None else df.index
    # Sequential assumption: each trial starts when the previous one (any state) ended.
    return duration.loc[order].fillna(0.0).cumsum().reindex(df.index)


def _datetimes(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    parsed = pd.to_datetime(df[col], errors="coerce", format="mixed")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(None)  # compare in UTC, naive
    return parsed


def _normalise_state(states: pd.Series) -> pd.Series:
    # Optuna's str(TrialState.COMPLETE) is "TrialState.COMPLETE"; accept both spellings.
    return states.astype(str).str.strip().str.upper().str.replace("TRIALSTATE.", "", regex=False)


def _has_text(col: pd.Series) -> pd.Series:
    return col.notna() & (col.astype(str).str.strip() != "")


# --------------------------------------------------------------------------------------------
# Reading a run directory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """What a run directory holds. ``None`` marks an optional file that is absent or
    unreadable; ``notes`` says which, in words for the report."""

    run_dir: Path
    trials: pd.DataFrame
    config: dict[str, Any]
    intermediate: pd.DataFrame | None
    cost: pd.DataFrame | None
    test_metrics: dict[str, Any] | None
    pareto: pd.DataFrame | None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        value = self.config.get("strategy")
        if not value and "strategy" in self.trials.columns:
            named = self.trials["strategy"][_has_text(self.trials["strategy"])]
            value = named.mode().iloc[0] if len(named) else None
        return str(value) if value else "unknown strategy"


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory. Raises :class:`UserError` naming the path when ``trials.csv`` is
    missing or unreadable; every other file is optional."""
    run_dir = Path(run_dir)
    trials_path = run_dir / "trials.csv"
    if not trials_path.is_file():
        what = "does not exist" if not run_dir.exists() else "has no trials.csv"
        raise UserError(
            f"{run_dir} {what}, so it is not a search run directory; "
            "pass the --out directory of `archgen search`"
        )
    trials = _read_trials_csv(trials_path)
    notes: dict[str, str] = {}

    config: dict[str, Any] = {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text())
            config = loaded if isinstance(loaded, dict) else {}
            if config.get("storage") is not None:  # older runs wrote some URLs unredacted
                config["storage"] = redact(config["storage"])
        except (OSError, yaml.YAMLError) as exc:
            notes["config"] = f"config.yaml could not be read ({_first_line(exc)})."
    else:
        notes["config"] = "No config.yaml in the run directory: the search settings are unknown."

    intermediate = _read_optional_csv(
        run_dir / "intermediate.csv",
        ("number", "epoch", "val_acc"),
        "intermediate",
        notes,
        missing_text="No intermediate.csv yet: per-epoch validation accuracy has not been recorded.",
    )
    cost = _read_optional_csv(
        run_dir / "best" / "cost.csv",
        ("layer", "est_ms"),
        "cost",
        notes,
        missing_text="No best/cost.csv yet: the best model's per-layer cost appears once the "
        "search has exported it.",
    )
    pareto = _read_optional_csv(
        run_dir / "pareto.csv", ("number",), "pareto", notes, missing_text=None
    )

    test_metrics: dict[str, Any] | None = None
    metrics_path = run_dir / "test_metrics.json"
    if metrics_path.is_file():
        try:
            loaded = json.loads(metrics_path.read_text())
            if isinstance(loaded, dict):
                test_metrics = loaded
            else:
                notes["test"] = "test_metrics.json does not hold a JSON object; ignored."
        except (OSError, ValueError) as exc:
            notes["test"] = f"test_metrics.json could not be read ({_first_line(exc)})."
    else:
        notes["test"] = (
            "No test_metrics.json yet: the selected model has not been evaluated on the test set."
        )
    return RunData(run_dir, trials, config, intermediate, cost, test_metrics, pareto, notes)


def _read_trials_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; a search writes its header when it starts") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read as CSV ({_first_line(exc)})") from None
    missing = [c for c in _REQUIRED_TRIAL_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)}; it is not a trials.csv written by "
            "archgen search"
        )
    df["state"] = _normalise_state(df["state"])
    return df


def _read_optional_csv(
    path: Path, columns: tuple[str, ...], key: str, notes: dict[str, str], missing_text: str | None
) -> pd.DataFrame | None:
    if not path.is_file():
        if missing_text:
            notes[key] = missing_text
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        notes[key] = f"{path.name} could not be read ({_first_line(exc)})."
        return None
    lacking = [c for c in columns if c not in df.columns]
    if lacking:
        notes[key] = f"{path.name} lacks column(s) {', '.join(lacking)}; ignored."
        return None
    return df


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

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

_INT_COLUMNS = {
    "number",
    "macs",
    "params",
    "epochs",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "h_out",
    "w_out",
    "n_p",
    "n_f",
    "acts",
    "bytes",
    "n",
    "trial_number",
}


def _fmt_cell(col: str, value: Any) -> str:
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


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _fmt_num(value: Any, spec: str) -> str:
    out = _float_or_none(value)
    return "n/a" if out is None else format(out, spec)


def _latency_batch(run: RunData) -> Any:
    """The batch size the latencies hold for, under whichever key the run recorded it."""
    for source, key in (
        (run.config, "batch_size_latency"),
        (run.config, "latency_batch"),
        (run.test_metrics or {}, "latency_batch"),
    ):
        if source.get(key) is not None:
            return source[key]
    return None


def _selected_trial(run: RunData) -> int | None:
    """The trial the search selected: ``test_metrics.json``'s ``trial_number``, else the
    completed trial with the highest val_acc."""
    if run.test_metrics is not None:
        number = _float_or_none(run.test_metrics.get("trial_number"))
        if number is not None:
            return int(number)
    done = completed_trials(run.trials)
    if "val_acc" not in done.columns:
        return None
    acc = pd.to_numeric(done["val_acc"], errors="coerce")
    if acc.notna().any():
        return int(pd.to_numeric(done.loc[acc.idxmax(), "number"]))
    return None


def _summary_rows(run: RunData, selected: int | None) -> list[tuple[str, str]]:
    cfg, trials = run.config, run.trials
    counts = trials["state"].value_counts()
    by_state = " · ".join(f"{s} {int(counts[s])}" for s in sorted(counts.index)) or "none yet"
    if "rejected" in trials.columns:
        by_state += f" (rejected before training: {int(_has_text(trials['rejected']).sum())})"
    rows = [
        ("Run directory", str(run.run_dir)),
        ("Strategy", run.strategy),
        ("Data", str(cfg.get("data", "unknown"))),
        ("Objective", str(cfg.get("objective", "unknown"))),
        ("Budget", _budget_text(cfg)),
        ("Trials by state", f"{len(trials)} trials: {by_state}"),
    ]
    done = completed_trials(trials)
    acc = (
        pd.to_numeric(done["val_acc"], errors="coerce")
        if "val_acc" in done.columns
        else pd.Series(dtype=float)
    )
    if acc.notna().any():
        best = done.loc[acc.idxmax()]
        name = best.get("spec_name", "")
        rows.append(
            (
                "Best val_acc",
                f"{float(acc.max()):.4f} (trial #{int(best['number'])}"
                + (f", {name}" if isinstance(name, str) and name else "")
                + ")",
            )
        )
    else:
        rows.append(("Best val_acc", "no completed trial yet"))
    tm = run.test_metrics
    if tm is not None:
        rows.append(
            (
                "Selected model",
                f"trial #{tm.get('trial_number', 'n/a')}: {tm.get('spec_name', 'n/a')}",
            )
        )
        rows.append(
            (
                "Test accuracy",
                f"{_fmt_num(tm.get('test_acc'), '.4f')} on {tm.get('n', 'n/a')} test images "
                f"(test loss {_fmt_num(tm.get('test_loss'), '.4f')}; val_acc {_fmt_num(tm.get('val_acc'), '.4f')})",
            )
        )
        refit = tm.get("refit")
        rows.append(
            (
                "Exported weights",
                f"refit on train + validation ({refit.get('n_train', 'n/a')} images, {refit.get('epochs', 'n/a')} epochs)"
                if isinstance(refit, dict) else "the selected trial's own (no refit)",
            )
        )
        batch = _latency_batch(run)
        rows.append(
            (
                "Latency of the selected model",
                f"estimated {_fmt_num(tm.get('est_ms'), '.3f')} ms, measured {_fmt_num(tm.get('meas_ms'), '.3f')} ms"
                + (f" (batch size {batch})" if batch is not None else ""),
            )
        )
    else:
        rows.append(("Test accuracy", "not evaluated yet (no test_metrics.json)"))
        if selected is not None:
            rows.append(("Selected model", f"trial #{selected} (highest val_acc so far)"))
    try:
        times = _completion_times_s(trials)
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


def _budget_text(cfg: dict[str, Any]) -> str:
    trials, time_s, latency_ms = (cfg.get(k) for k in ("trials", "time_budget_s", "max_latency_ms"))
    return ", ".join(
        [
            f"{trials} trials" if trials is not None else "no trial limit",
            f"time budget {time_s} s" if time_s is not None else "no time budget",
            f"max latency {latency_ms} ms" if latency_ms is not None else "no latency budget",
        ]
    )


def _top_trials(trials: pd.DataFrame, n: int = TOP_N_TRIALS) -> pd.DataFrame:
    done = completed_trials(trials).copy()
    if "val_acc" not in done.columns:
        return done.head(0)
    done["_acc"] = pd.to_numeric(done["val_acc"], errors="coerce")
    done["_cost"] = (
        pd.to_numeric(done["est_ms"], errors="coerce") if "est_ms" in done.columns else 0.0
    )
    done = done.sort_values(["_acc", "_cost"], ascending=[False, True], na_position="last").head(n)
    return _trial_view(done)


def _trial_view(trials: pd.DataFrame) -> pd.DataFrame:
    """The columns of a trials table a reader compares: results first, then the sampled
    parameters."""
    wanted = ["number", "val_acc", "est_ms", "macs", "params", "epochs", "duration_s", "spec_name"]
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
    totals: dict[str, Any] = {
        c: pd.to_numeric(cost[c], errors="coerce").sum(min_count=1) for c in additive
    }
    totals["layer"] = "total"
    return pd.concat([cost, pd.DataFrame([totals])], ignore_index=True)


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


def write_report(run_dir: Path, extra_runs: list[Path] | None = None) -> Path:
    """Write ``run_dir/report.html`` and the four ``report_*.png`` plots; return the HTML path.

    ``extra_runs`` are other run directories whose best-so-far curves are drawn on the progress
    plot next to this run's (a benchmark comparing strategies); only their ``trials.csv`` is
    read. Raises :class:`UserError` naming the path when ``run_dir`` (or an extra run) has no
    readable ``trials.csv``. Missing optional files leave a note in their section instead.
    """
    # Imported here, not at module level: archgen.plots imports this module's tables.
    from archgen.plots import plot_layers, plot_pareto, plot_progress, plot_rungs

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    others = [load_run(p) for p in (extra_runs or [])]
    selected = _selected_trial(run)
    sections: list[tuple[str, str]] = []

    notes = [run.notes[k] for k in ("config", "test") if k in run.notes]
    if notes:
        sections.append(("Missing files", "".join(_missing(n) for n in notes)))

    sections.append(
        (
            "Search progress",
            _plot_section(
                run_dir,
                "progress",
                lambda: plot_progress([run, *others]),
                "best-so-far validation accuracy over time",
            ),
        )
    )

    pareto_body = _plot_section(
        run_dir, "pareto", lambda: plot_pareto(run, selected), "accuracy vs estimated latency"
    )
    if {"val_acc", "est_ms"} <= set(run.trials.columns):
        front = pareto_front(run.trials)
        if len(front):
            source = "pareto.csv" if run.pareto is not None else "computed from trials.csv"
            pareto_body += f"<p>Pareto front ({html.escape(source)}):</p>"
            pareto_body += _table_html(_trial_view(run.pareto if run.pareto is not None else front))
    sections.append(("Pareto front: accuracy vs estimated latency", pareto_body))

    if run.cost is not None:
        layers_body = _plot_section(
            run_dir, "layers", lambda: plot_layers(run.cost), "per-layer cost of the best model"
        )
        layers_body += _table_html(_cost_table(run.cost))
    else:
        (run_dir / PLOT_FILES["layers"]).unlink(missing_ok=True)
        layers_body = _missing(run.notes.get("cost", "No best/cost.csv."))
    sections.append(("Best model: per-layer cost", layers_body))

    if run.intermediate is not None:
        rungs_body = _plot_section(
            run_dir,
            "rungs",
            lambda: plot_rungs(run, run.intermediate),
            "validation accuracy per epoch",
        )
    else:
        (run_dir / PLOT_FILES["rungs"]).unlink(missing_ok=True)
        rungs_body = _missing(run.notes.get("intermediate", "No intermediate.csv."))
    sections.append(("Learning curves and Hyperband rungs", rungs_body))

    top = _top_trials(run.trials)
    sections.append(
        (
            f"Top {TOP_N_TRIALS} trials by validation accuracy",
            _table_html(top) if len(top) else _missing("No completed trial yet."),
        )
    )
    if run.config:
        sections.append(
            (
                "Configuration (config.yaml)",
                f"<pre>{html.escape(yaml.safe_dump(run.config, sort_keys=True))}</pre>",
            )
        )

    text = _render_html(run, sections, _summary_rows(run, selected))
    out = run_dir / REPORT_NAME
    atomic_write_bytes(out, text.encode("utf-8"))
    log.info("wrote %s", out)
    return out


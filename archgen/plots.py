"""The four plots of a search run's report: how did the search progress, which trials trade
accuracy for latency best, where does the best model spend its time, and where did Hyperband
stop its trials?

Each ``plot_*`` function takes the tables :func:`archgen.rundata.load_run` read and returns a PNG
(``None`` when there is nothing to draw yet) and a caption; :func:`archgen.report.write_report`
embeds them in ``report.html``. Drawn with matplotlib's object API on the Agg canvas: no pyplot
global state, no display needed. matplotlib is imported inside the functions, so importing this
module costs neither matplotlib nor torch.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from archgen.errors import UserError
from archgen.rundata import (
    RunData,
    best_so_far,
    completed_trials,
    completion_times_s,
    float_or_none,
    has_text,
    pareto_front,
)
from archgen.trial_record import EST_MS, STRATEGY, VAL_ACC

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

_PNG_DPI = 110

# Colours per trial state, shared by every plot so a reader learns them once.
_STATE_COLOURS = {
    "COMPLETE": "tab:blue",
    "PRUNED": "tab:orange",
    "FAIL": "tab:red",
    "RUNNING": "tab:green",
}


def _new_figure(width_in: float = 7.5, height_in: float = 4.3) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" metadata: the same run renders to the same bytes across matplotlib versions.
    fig.savefig(buf, format="png", dpi=_PNG_DPI, metadata={"Software": None})
    return buf.getvalue()


@dataclass(frozen=True)
class ProgressCurve:
    """One line of the progress plot: a strategy's best-so-far curve within one run.

    ``best`` is :func:`best_so_far` of the strategy's trials, ``points`` the ``time_s`` and
    ``val_acc`` of each of its completed trials, ``end_s`` its last completion of any state.
    """

    label: str
    best: pd.DataFrame
    points: pd.DataFrame
    end_s: float


def progress_curves(runs: list[RunData]) -> list[ProgressCurve]:
    """One curve per (run, strategy), the strategy taken from the trials' ``strategy`` column
    (else the run's ``config.yaml``). Each curve's clock starts at the first start among its own
    trials. Labels name the run directory when several runs are compared. Strategies without a
    completed trial are left out."""
    several = len(runs) > 1
    curves: list[ProgressCurve] = []
    for run in runs:
        trials = run.trials
        strategies = (
            trials[STRATEGY].where(has_text(trials[STRATEGY]), run.strategy)
            if STRATEGY in trials.columns
            else pd.Series(run.strategy, index=trials.index)
        )
        for strategy, group in trials.groupby(strategies.astype(str), sort=True):
            try:
                best = best_so_far(group)
                times = completion_times_s(group)
            except UserError as exc:
                log.warning("%s: no progress curve for %s: %s", run.run_dir, strategy, exc)
                continue
            if best.empty:
                continue
            done = completed_trials(group)
            points = pd.DataFrame(
                {
                    "time_s": times.loc[done.index].to_numpy(float),
                    "val_acc": pd.to_numeric(done[VAL_ACC], errors="coerce").to_numpy(float),
                }
            ).dropna()
            label = f"{strategy} ({run.run_dir.name})" if several else str(strategy)
            curves.append(ProgressCurve(label, best, points, float(times.max())))
    return curves


def plot_progress(runs: list[RunData]) -> tuple[bytes | None, str]:
    """Best-so-far validation accuracy over wall-clock time, one line per (run, strategy), a dot
    per completed trial. Returns the PNG (None when no run has a completed trial) and a caption."""
    curves = progress_curves(runs)
    if not curves:
        return None, "No completed trial yet: nothing to plot."
    fig = _new_figure()
    ax = fig.add_subplot()
    for curve in curves:
        t = curve.best["time_s"].to_numpy(float)
        best = curve.best["best_val_acc"].to_numpy(float)
        if np.isfinite(curve.end_s) and curve.end_s > t[-1]:
            # Carry the line to the strategy's last event so run lengths compare at a glance.
            t, best = np.append(t, curve.end_s), np.append(best, best[-1])
        (line,) = ax.step(t, best, where="post", lw=2, label=curve.label)
        ax.plot(
            curve.points["time_s"],
            curve.points["val_acc"],
            "o",
            ms=3.5,
            alpha=0.35,
            color=line.get_color(),
        )
    ax.set_xlabel("wall-clock time since the first trial started (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Search progress")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(
        title="strategy (line: best so far, dots: each completed trial)",
        fontsize=8,
        title_fontsize=8,
    )
    caption = (
        "Running maximum of the validation accuracy of completed trials against wall-clock time "
        "since the first trial started; each dot is one completed trial."
    )
    return _png_bytes(fig), caption


def plot_pareto(run: RunData, selected: int | None) -> tuple[bytes | None, str]:
    """Validation accuracy against estimated latency of every completed trial, the
    non-dominated front highlighted; the latency budget and the selected trial marked."""
    trials = run.trials
    if EST_MS not in trials.columns or VAL_ACC not in trials.columns:
        return None, "trials.csv has no est_ms or val_acc column: no accuracy-latency plot."
    done = completed_trials(trials)
    acc = pd.to_numeric(done[VAL_ACC], errors="coerce")
    cost = pd.to_numeric(done[EST_MS], errors="coerce")
    ok = acc.notna() & cost.notna()
    if not ok.any():
        return None, "No completed trial with both val_acc and est_ms yet: nothing to plot."
    front = pareto_front(trials)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.scatter(
        cost[ok],
        acc[ok],
        s=18,
        color="tab:gray",
        alpha=0.6,
        label=f"completed trials ({int(ok.sum())})",
    )
    ax.step(
        front[EST_MS].astype(float),
        front[VAL_ACC].astype(float),
        where="post",
        color="tab:red",
        lw=1.5,
        marker="o",
        ms=6,
        label=f"Pareto front ({len(front)})",
    )
    budget = float_or_none(run.config.get("max_latency_ms"))
    if budget is not None:
        ax.axvline(budget, color="black", ls="--", lw=1, label=f"latency budget {budget:g} ms")
    if selected is not None:
        row = done[pd.to_numeric(done["number"], errors="coerce") == selected]
        if len(row):
            ax.scatter(
                float(row[EST_MS].iloc[0]),
                float(row[VAL_ACC].iloc[0]),
                marker="*",
                s=220,
                color="gold",
                edgecolor="black",
                zorder=5,
                label=f"selected trial #{selected}",
            )
    batch = run.latency_batch
    per = f"ms per batch of {batch}" if batch is not None else "ms per batch"
    ax.set_xlabel(f"estimated latency est_ms ({per}, cost model)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Accuracy vs estimated latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    caption = (
        "Every completed trial; the red line joins the non-dominated trials (no other trial is "
        "both at least as accurate and at least as fast)."
    )
    return _png_bytes(fig), caption


def plot_layers(cost: pd.DataFrame, measured_on: str | None = None) -> tuple[bytes | None, str]:
    """Grouped bars per layer of the best model: predicted ``est_ms`` and measured ``meas_ms``
    with its interquartile range as error bar. ``measured_on``: where the measurement was taken
    when that is not the device the estimates price (a profile from another device)."""
    est = pd.to_numeric(cost["est_ms"], errors="coerce").fillna(0.0).to_numpy(float)
    meas = (
        pd.to_numeric(cost["meas_ms"], errors="coerce").to_numpy(float)
        if "meas_ms" in cost.columns
        else np.full(len(cost), np.nan)
    )
    iqr = (
        pd.to_numeric(cost["meas_iqr_ms"], errors="coerce").to_numpy(float)
        if "meas_iqr_ms" in cost.columns
        else np.full(len(cost), np.nan)
    )
    if len(cost) == 0:
        return None, "best/cost.csv has no rows: nothing to plot."
    measured = np.isfinite(meas).any()
    names = [str(x) for x in cost["layer"]]
    x = np.arange(len(names))
    width = 0.4 if measured else 0.6
    fig = _new_figure(max(6.5, 0.55 * len(names) + 2.5), 4.3)
    ax = fig.add_subplot()
    ax.bar(
        x - (width / 2 if measured else 0), est, width, color="tab:blue", label="predicted est_ms"
    )
    if measured:
        # The IQR is a span; drawn centred on the measurement it covers the spread of repeats.
        half = np.where(np.isfinite(iqr), iqr / 2, 0.0)
        ax.bar(
            x + width / 2,
            np.nan_to_num(meas),
            width,
            color="tab:orange",
            yerr=half,
            capsize=3,
            ecolor="black",
            label="measured meas_ms (bar: IQR)",
        )
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("time per batch (ms)")
    ax.set_title("Best model: per-layer cost, predicted vs measured"
                 + ("\n(measured on another device than the one predicted)" if measured and measured_on else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    caption = "Predicted (cost model) and measured time of each layer of the best model."
    if not measured:
        caption += " No measured times in best/cost.csv (meas_ms missing): predicted only."
    elif measured_on:
        caption += (f" The predictions price the device profile's device; the measurements were taken on "
                    f"{measured_on}.")
    return _png_bytes(fig), caption


def plot_rungs(run: RunData, intermediate: pd.DataFrame) -> tuple[bytes | None, str]:
    """Validation accuracy per epoch of every trial, coloured by the trial's final state; a
    cross marks where a pruned trial stopped (its Hyperband rung)."""
    inter = intermediate.assign(
        number=pd.to_numeric(intermediate["number"], errors="coerce"),
        epoch=pd.to_numeric(intermediate["epoch"], errors="coerce"),
        val_acc=pd.to_numeric(intermediate["val_acc"], errors="coerce"),
    ).dropna(subset=["number", "epoch", "val_acc"])
    if inter.empty:
        return None, "intermediate.csv has no rows yet: nothing to plot."
    numbers = pd.to_numeric(run.trials["number"], errors="coerce")
    state_of = dict(zip(numbers, run.trials["state"]))
    fig = _new_figure()
    ax = fig.add_subplot()
    seen_states: dict[str, int] = {}
    pruned_stops: list[tuple[float, float]] = []
    for number, group in inter.groupby("number", sort=True):
        group = group.sort_values("epoch")
        state = str(state_of.get(number, "UNKNOWN"))
        colour = _STATE_COLOURS.get(state, "tab:purple")
        seen_states[state] = seen_states.get(state, 0) + 1
        # Pruned and failed trials are few among many completed ones: draw them on top.
        on_top = state != "COMPLETE"
        ax.plot(
            group["epoch"],
            group["val_acc"],
            color=colour,
            lw=1.5 if on_top else 1,
            alpha=0.9 if on_top else 0.45,
            marker="o" if on_top else ".",
            ms=4 if on_top else 3,
            zorder=3 if on_top else 2,
        )
        if state == "PRUNED":
            pruned_stops.append((float(group["epoch"].iloc[-1]), float(group["val_acc"].iloc[-1])))
    if pruned_stops:
        xs, ys = zip(*pruned_stops)
        ax.scatter(xs, ys, marker="x", s=30, color="black", lw=1, zorder=4)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=_STATE_COLOURS.get(s, "tab:purple"), lw=2, label=f"{s.lower()} ({n})")
        for s, n in sorted(seen_states.items())
    ]
    if pruned_stops:
        handles.append(Line2D([], [], color="black", marker="x", ls="", label="pruned here"))
    ax.legend(handles=handles, fontsize=8, title="trial state", title_fontsize=8, loc="best")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Learning curves and Hyperband rungs")
    ax.grid(alpha=0.3)
    caption = (
        "Validation accuracy after each epoch of every trial, coloured by the trial's final state; "
        "a cross marks the epoch at which a pruned trial was stopped."
    )
    return _png_bytes(fig), caption

"""Reading a search run directory: its tables, and the arithmetic the report and benchmarks
draw from them.

Contract:

* :func:`load_run` reads what ``archgen search`` wrote into a run directory (``config.yaml``,
  ``trials.csv``, ``intermediate.csv``, ``best/cost.csv``, ``test_metrics.json``, ``pareto.csv``)
  into a :class:`RunData`. Only ``trials.csv`` is required; every other file may be missing (a
  search still running, a search that never trained a model) and ``RunData.notes`` then says
  which, in words for the report.
* :func:`pareto_front` and :func:`best_so_far` are the two pieces of arithmetic behind the plots;
  finalize reuses :func:`pareto_front` to write ``pareto.csv``.

This module imports neither torch nor matplotlib: a run is read from files, on any machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from archgen.errors import UserError
from archgen.redact import redact
from archgen.trial_record import DURATION_S, EST_MS, REJECTED, STRATEGY, VAL_ACC

_REQUIRED_TRIAL_COLUMNS = ("number", "state")


# --------------------------------------------------------------------------------------------
# Arithmetic: completed trials, Pareto front, best-so-far curve, completion times
# --------------------------------------------------------------------------------------------


def completed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` that were trained to the end: ``state == COMPLETE`` (when a ``state``
    column exists) and no ``rejected`` reason (a rejected candidate was never trained)."""
    mask = pd.Series(True, index=df.index)
    if "state" in df.columns:
        mask &= _normalise_state(df["state"]) == "COMPLETE"
    if REJECTED in df.columns:
        mask &= ~has_text(df[REJECTED])
    return df[mask]


def pareto_front(df: pd.DataFrame, acc_col: str = VAL_ACC, cost_col: str = EST_MS) -> pd.DataFrame:
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
    if VAL_ACC not in df.columns:
        raise UserError("best_so_far: the trials table has no val_acc column; is it a trials.csv?")
    times = completion_times_s(df)
    done = completed_trials(df)
    acc = pd.to_numeric(done[VAL_ACC], errors="coerce")
    t = times.loc[done.index]
    ok = acc.notna() & t.notna()
    out = pd.DataFrame({"time_s": t[ok].to_numpy(float), "acc": acc[ok].to_numpy(float)})
    out = out.sort_values("time_s", kind="stable").reset_index(drop=True)
    return pd.DataFrame({"time_s": out["time_s"], "best_val_acc": out["acc"].cummax()})


def completion_times_s(df: pd.DataFrame) -> pd.Series:
    """Seconds from the run's first start to each trial's completion (NaN where unknown)."""
    start = _datetimes(df, "datetime_start")
    end = _datetimes(df, "datetime_complete")
    duration = pd.to_numeric(df[DURATION_S], errors="coerce") if DURATION_S in df.columns else None
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


def has_text(col: pd.Series) -> pd.Series:
    """Which cells of ``col`` hold a non-blank value (a rejection reason, a strategy name)."""
    return col.notna() & (col.astype(str).str.strip() != "")


def float_or_none(value: object) -> float | None:
    """``value`` as a finite float, else None (missing, text, NaN, infinite)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


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
        value = self.config.get(STRATEGY)
        if not value and STRATEGY in self.trials.columns:
            named = self.trials[STRATEGY][has_text(self.trials[STRATEGY])]
            value = named.mode().iloc[0] if len(named) else None
        return str(value) if value else "unknown strategy"

    @property
    def latency_batch(self) -> object:
        """The batch size the latencies hold for (``config.yaml``, else ``test_metrics.json``),
        as recorded; None when neither records it."""
        for source in (self.config, self.test_metrics or {}):
            if source.get("latency_batch") is not None:
                return source["latency_batch"]
        return None

    @property
    def selected_trial(self) -> int | None:
        """The trial the search selected: ``test_metrics.json``'s ``trial_number``, else the
        completed trial with the highest val_acc."""
        if self.test_metrics is not None:
            number = float_or_none(self.test_metrics.get("trial_number"))
            if number is not None:
                return int(number)
        done = completed_trials(self.trials)
        if VAL_ACC not in done.columns:
            return None
        acc = pd.to_numeric(done[VAL_ACC], errors="coerce")
        if acc.notna().any():
            return int(pd.to_numeric(done.loc[acc.idxmax(), "number"]))
        return None


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
    trials = read_trials_csv(trials_path)
    notes: dict[str, str] = {}
    config = _read_config(run_dir / "config.yaml", notes)
    intermediate = _read_optional_csv(
        run_dir / "intermediate.csv",
        ("number", "epoch", VAL_ACC),
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
    test_metrics = _read_test_metrics(run_dir / "test_metrics.json", notes)
    return RunData(run_dir, trials, config, intermediate, cost, test_metrics, pareto, notes)


def read_trials_csv(path: Path) -> pd.DataFrame:
    """``trials.csv`` with its ``state`` column normalised (``COMPLETE``, ``PRUNED``, ...).
    Raises :class:`UserError` naming ``path`` when it is empty, unreadable or lacks the
    ``number``/``state`` columns."""
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


def _read_config(path: Path, notes: dict[str, str]) -> dict[str, Any]:
    if not path.is_file():
        notes["config"] = "No config.yaml in the run directory: the search settings are unknown."
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        notes["config"] = f"config.yaml could not be read ({_first_line(exc)})."
        return {}
    config = loaded if isinstance(loaded, dict) else {}
    if config.get("storage") is not None:  # older runs wrote some URLs unredacted
        config["storage"] = redact(config["storage"])
    return config


def _read_test_metrics(path: Path, notes: dict[str, str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes["test"] = (
            "No test_metrics.json yet: the selected model has not been evaluated on the test set."
        )
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes["test"] = f"test_metrics.json could not be read ({_first_line(exc)})."
        return None
    if not isinstance(loaded, dict):
        notes["test"] = "test_metrics.json does not hold a JSON object; ignored."
        return None
    return loaded


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

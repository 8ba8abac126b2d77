"""What ``archgen ablate`` reports: per-arm means with 95% confidence intervals (Student t over
the arm's trained runs), paired differences against the first arm (the rule) over the matched
runs both trained, a table (text or markdown) and a plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

METRICS = ("val_acc", "test_acc", "est_ms", "meas_ms", "params", "macs", "conv_cv_est", "conv_cv_meas",
           "acc_per_ms", "epochs", "train_s")


def mean_ci(values: list[float]) -> dict[str, float | int | None]:
    """``mean``, ``lo``, ``hi`` (95% t interval; None below two values) and ``n``."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    from scipy.stats import t

    half = float(t.ppf(0.975, len(vals) - 1)) * statistics.stdev(vals) / math.sqrt(len(vals))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(vals)}


def _with_ratio(run: dict[str, Any]) -> dict[str, Any]:
    meas = run.get("meas_ms")
    ok = run.get("status") == "ok" and meas is not None and meas > 0
    return {**run, "acc_per_ms": run["test_acc"] / meas if ok else None}


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """``summary`` (one entry per arm: counts and every metric's mean_ci) and ``paired`` (per
    later arm: the difference to the first arm in test and validation accuracy and measured
    time over the (seed, network) pairs where both trained)."""
    runs = [_with_ratio(r) for r in doc["runs"]]
    arms = doc["arms"]
    summary = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        ok = [r for r in mine if r["status"] == "ok"]
        na = sum(r["status"] == "not applicable" for r in mine)
        entry: dict[str, Any] = {"arm": arm, "trained": len(ok), "not_applicable": na,
                                 "failed": len(mine) - len(ok) - na}
        entry.update({m: mean_ci([r.get(m) for r in ok]) for m in METRICS})
        summary.append(entry)
    base = {(r["seed"], r["network"]): r for r in runs if r["arm"] == arms[0] and r["status"] == "ok"}
    paired = []
    for arm in arms[1:]:
        pairs = [(base[(r["seed"], r["network"])], r) for r in runs
                 if r["arm"] == arm and r["status"] == "ok" and (r["seed"], r["network"]) in base]
        entry = {"arm": arm, "vs": arms[0], "pairs": len(pairs)}
        for m in ("test_acc", "val_acc", "meas_ms"):
            entry[m] = mean_ci([y[m] - x[m] for x, y in pairs if x.get(m) is not None and y.get(m) is not None])
        paired.append(entry)
    return {"summary": summary, "paired": paired}


def _fmt(ci: dict[str, Any], digits: int = 4, pct: bool = False, bounded: bool = False) -> str:
    """``mean [lo, hi]``; ``bounded``: an accuracy, whose interval is shown within [0, 100]%
    (the JSON keeps the unclipped t interval)."""
    if ci["mean"] is None:
        return "-"
    scale = 100.0 if pct else 1.0
    text = f"{ci['mean'] * scale:.{digits}f}"
    if ci["lo"] is not None:
        lo, hi = ci["lo"] * scale, ci["hi"] * scale
        if bounded:
            lo, hi = max(lo, 0.0), min(hi, scale)
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def render(doc: dict[str, Any], fmt: str = "table") -> str:
    """The arms side by side: ``table`` (aligned text) or ``markdown``."""
    head = ["arm", "trained", "test acc % [95% CI]", "val acc %", "est ms", "meas ms", "params", "MACs",
            "conv CV est", "conv CV meas", "test acc / ms"]
    rows = []
    for s in doc["summary"]:
        notes = [f"{s[k]} {k.replace('_', ' ')}" for k in ("failed", "not_applicable") if s[k]]
        rows.append([s["arm"], f"{s['trained']}" + (f" ({', '.join(notes)})" if notes else ""),
                     _fmt(s["test_acc"], 2, pct=True, bounded=True), _fmt(s["val_acc"], 2, pct=True, bounded=True), _fmt(s["est_ms"], 3),
                     _fmt(s["meas_ms"], 3), _int(s["params"]), _int(s["macs"]), _fmt(s["conv_cv_est"], 2),
                     _fmt(s["conv_cv_meas"], 2), _fmt(s["acc_per_ms"], 2)])
    lines = [f"{doc['factor']}: {doc['claim']}",
             f"data {doc['data']}, {doc['seeds']} seed(s) x {doc['networks']} network(s); latency: batch "
             f"{doc['latency']['batch']}, 1 thread, {doc['latency']['profile']}"]
    if fmt == "markdown":
        lines = [f"**{lines[0]}**", "", lines[1], "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in (head, *rows)]
    lines.append("")
    for p in doc["paired"]:
        lines.append(f"{p['arm']} - {p['vs']} over {p['pairs']} matched run(s): test acc "
                     f"{_fmt(p['test_acc'], 2, pct=True)} pt, measured {_fmt(p['meas_ms'], 3)} ms")
    return "\n".join(lines) + "\n"


def _int(ci: dict[str, Any]) -> str:
    return "-" if ci["mean"] is None else f"{ci['mean']:,.0f}"


def plot(doc: dict[str, Any], path: str | Path) -> Path:
    """Test accuracy against measured (else estimated) time: every run, and each arm's mean
    with its 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "meas_ms" if doc["latency"].get("measured") else "est_ms"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, s) in enumerate(zip(doc["arms"], doc["summary"])):
        runs = [r for r in doc["runs"] if r["arm"] == arm and r["status"] == "ok" and r.get(key) is not None]
        color = f"C{i}"
        ax.scatter([r[key] for r in runs], [100 * r["test_acc"] for r in runs], s=14, alpha=0.4, color=color)
        x, y = s[key], s["test_acc"]
        if x["mean"] is None or y["mean"] is None:
            continue
        xerr = [[x["mean"] - x["lo"]], [x["hi"] - x["mean"]]] if x["lo"] is not None else None
        # the t interval of an accuracy, drawn within [0, 100]%
        yerr = ([[100 * (y["mean"] - max(y["lo"], 0.0))], [100 * (min(y["hi"], 1.0) - y["mean"])]]
                if y["lo"] is not None else None)
        ax.errorbar([x["mean"]], [100 * y["mean"]], xerr=xerr, yerr=yerr, fmt="o", ms=8, capsize=4,
                    color=color, label=f"{arm} (n={s['trained']})")
    ax.set_xlabel(f"{'measured' if key == 'meas_ms' else 'estimated'} latency, ms (batch 1, 1 thread)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(f"archgen ablate {doc['factor']} on {doc['data']}: {doc['seeds']} seed(s) x {doc['networks']} "
                 "network(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    """``ablate.json``, ``runs.csv`` and ``ablate.png`` in ``out``, each written whole or not at all."""
    import pandas as pd

    from archgen.fsio import atomic_write_csv, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ablate.json", doc)
    atomic_write_csv(out / "runs.csv", pd.DataFrame(doc["runs"]))
    tmp = out / ".ablate.png.tmp.png"
    plot(doc, tmp)
    tmp.replace(out / "ablate.png")

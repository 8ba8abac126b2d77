"""Compute balancing (R1 checked against the cost model): adjust conv widths so the calibrated
per-layer time is even across conv layers, without exceeding the network's conv-time budget.

Why: the textbook growth rule keeps ``N_p x N_f`` (or MACs) constant per layer, but the time
per filter ``T_k`` grows with ``C_in * k^2`` and real kernels have per-shape efficiencies, so a
rule-built network is rarely balanced in *time*. This is a greedy local search over conv widths
in moves of 8 to 32 filters (widths stay multiples of 8, as vectorized kernels like), pure
arithmetic on the calibrated estimate (tens of milliseconds per candidate). What it evens out
is the time of the conv layers after the stem (``balanceable``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from archgen.costing import spec_geoms
from archgen.spec import ArchSpec, ConvSpec
from costmodel.device_profile import DeviceProfile
from costmodel.estimator import estimate_layers_ms

STEP = 8
# Width moves tried per layer and step: one step of 8 is often no move at all on a machine
# whose kernels favour multiples of 16 or 32, so larger jumps get past those plateaus.
DELTAS = (-4 * STEP, -2 * STEP, -STEP, STEP, 2 * STEP, 4 * STEP)


@dataclass(frozen=True)
class BalanceResult:
    spec: ArchSpec
    cv_before: float
    cv_after: float
    max_over_mean_before: float
    max_over_mean_after: float
    conv_ms_before: float
    conv_ms_after: float
    steps: int


def conv_times(spec: ArchSpec, profile: DeviceProfile | None, batch_size: int) -> tuple[list[float], dict]:
    """The estimated time of every conv layer and the spread of the balanceable ones
    (:func:`spread`)."""
    geoms = spec_geoms(spec)
    per_layer, _ = estimate_layers_ms(geoms, profile, batch_size)
    conv = [t for g, t in zip(geoms, per_layer) if g.op == "conv"]
    return conv, spread(conv)


def balanceable(conv_ms: list[float]) -> list[float]:
    """The conv times balancing evens out: all but the stem when there are three or more convs
    (the stem reads 1-3 input channels, so no width makes it cost what the others cost), else
    all of them."""
    return conv_ms[1:] if len(conv_ms) >= 3 else conv_ms


def spread(conv_ms: list[float]) -> dict[str, float]:
    """``cv`` (coefficient of variation) and ``max_over_mean`` of the balanceable conv times."""
    vals = balanceable(conv_ms)
    mean = sum(vals) / len(vals) if vals else 0.0
    if mean <= 0:
        return {"cv": 0.0, "max_over_mean": 1.0}
    return {"cv": math.sqrt(sum((t - mean) ** 2 for t in vals) / len(vals)) / mean,
            "max_over_mean": max(vals) / mean}


def _with_widths(spec: ArchSpec, widths: list[int]) -> ArchSpec:
    it = iter(widths)
    layers = tuple(replace(l, filters=next(it)) if isinstance(l, ConvSpec) else l for l in spec.layers)
    return replace(spec, layers=layers)


def rebalance(
    spec: ArchSpec,
    profile: DeviceProfile | None,
    batch_size: int = 1,
    max_steps: int = 64,
    budget_slack: float = 0.0,
) -> BalanceResult:
    """Greedy width moves (``DELTAS`` filters on one conv at a time, no layer below half its
    rule width) that lower the CV of the balanceable convs' est_ms while the summed conv time
    stays within ``(1 + budget_slack)`` of the original. ``cv_*`` and ``max_over_mean_*`` are
    of the balanceable convs."""
    widths = [l.filters for l in spec.layers if isinstance(l, ConvSpec)]
    conv0, summary0 = conv_times(spec, profile, batch_size)
    if len(widths) < 2:
        total = sum(conv0)
        return BalanceResult(spec, summary0["cv"], summary0["cv"], summary0["max_over_mean"],
                             summary0["max_over_mean"], total, total, 0)
    budget = sum(conv0) * (1 + budget_slack)
    best_cv, best_widths, best_summary, best_total = summary0["cv"], list(widths), summary0, sum(conv0)
    steps = 0
    for _ in range(max_steps):
        improved = None
        for i in range(len(best_widths)):
            for delta in DELTAS:
                w = best_widths[i] + delta
                # Never starve a layer below half its rule width: balance, not pruning.
                if w < max(STEP, widths[i] // 2):
                    continue
                trial = list(best_widths)
                trial[i] = w - (w % STEP) if w % STEP else w
                conv, summary = conv_times(_with_widths(spec, trial), profile, batch_size)
                total = sum(conv)
                if total <= budget and summary["cv"] < best_cv - 1e-9:
                    if improved is None or summary["cv"] < improved[0]:
                        improved = (summary["cv"], trial, summary, total)
        if improved is None:
            break
        best_cv, best_widths, best_summary, best_total = improved
        steps += 1
    return BalanceResult(
        spec=_with_widths(spec, best_widths),
        cv_before=summary0["cv"],
        cv_after=best_summary["cv"],
        max_over_mean_before=summary0["max_over_mean"],
        max_over_mean_after=best_summary["max_over_mean"],
        conv_ms_before=sum(conv0),
        conv_ms_after=best_total,
        steps=steps,
    )

"""Compute balancing (R1 checked against the cost model): adjust conv widths so the calibrated
per-layer time is even across conv layers, without exceeding the network's conv-time budget.

Why: the textbook growth rule keeps ``N_p x N_f`` (or MACs) constant per layer, but the time
per filter ``T_k`` grows with ``C_in * k^2`` and real kernels have per-shape efficiencies, so a
rule-built network is rarely balanced in *time*. This is a greedy local search in steps of 8
filters (widths stay multiples of 8, as vectorized kernels like), pure arithmetic on the
calibrated estimate, so it costs milliseconds per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from archgen.costing import spec_geoms
from archgen.spec import ArchSpec, ConvSpec
from costmodel.device_profile import DeviceProfile
from costmodel.estimator import balance_summary, estimate_layers_ms

STEP = 8


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
    geoms = spec_geoms(spec)
    per_layer, _ = estimate_layers_ms(geoms, profile, batch_size)
    conv = [t for g, t in zip(geoms, per_layer) if g.op == "conv"]
    return conv, balance_summary(geoms, per_layer)


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
    """Greedy width moves (+-8 filters on one conv) that lower the CV of per-conv est_ms while
    the summed conv time stays within ``(1 + budget_slack)`` of the original."""
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
            for delta in (-STEP, STEP):
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

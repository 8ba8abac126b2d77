"""A layer's context: how its in-context time depends on the network around it (no torch; numpy
only to fit it).

The same layer configuration, timed in different calibration networks, does not take the same
time (docs/benchmarks.md, "The layer's context"). Two things around it move it:

* the network's own end-to-end time T: a layer of op ``o`` takes ``(T / ref_ms) ** beta[o]``
  times its time in the reference network (``ref_ms``, the calibration networks' geometric mean
  time). At batch 32, dense layers ran 7-10% slower in a network 2x as slow, global pooling
  11-16%, convolutions 1-1.5% (at batch 1 more): a larger network leaves less of their weights
  and inputs in the caches;
* the layer before it (``neighbour``: its op and activation, ``"input"`` for the first): a layer
  of op ``o`` after ``p`` takes ``exp(after[o][p])`` times its time after the average neighbour.
  A max pooling over tanh outputs ran about 20% slower than over ReLU outputs, which are half
  zeros; the first dense layer after a pooling carries the flatten before it.

A profile's ``network["context"]`` is ``{"ref_ms": float, "beta": {op: float}, "after": {op:
{neighbour: float}}}``. The calibration fits it on the configurations measured two or more times
in its networks (``fit_context``), moves every measured layer to the reference context before the
per-layer fits and the table, and the estimator moves the priced layers back to the network's
own context: the neighbour's factor at once, T's by a fixed point of the network's total and its
layers (``solve_in_context``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from costmodel.geometry import LayerGeom

# |beta| at most, and |after| at most (in ln).
BETA_CLAMP = 0.5
AFTER_CLAMP = 1.0
# The fixed point of ln T (``solve_in_context``): at most ITERATIONS evaluations of the network's
# total, stopping when ln T is within TOLERANCE of the value the total gives.
ITERATIONS = 8
TOLERANCE = 1e-6
# The context is fitted only with this many calibration networks or more (full calibrations), as
# the log-form network correction is.
MIN_NETWORKS = 100
# A neighbour seen before an op fewer times than this (in configurations measured twice or more)
# has no factor; a factor is shrunk toward none as if this many more layers had shown none.
MIN_AFTER_SAMPLES = 8
AFTER_PRIOR = 4.0
# Exponents and factors smaller than this are left out (0.07% per doubling of T; 0.1%).
NEGLIGIBLE = 1e-3
FLOOR_MS = 5e-4

Context = Mapping[str, object]


def neighbour(g: LayerGeom | None) -> str:
    """What a layer is as the neighbour of the layer after it: its op and its activation
    (``"conv+relu"``, ``"act+tanh"``, ``"pool"``), ``"input"`` for none."""
    if g is None:
        return "input"
    key = (g.op, g.activation)
    name = _NEIGHBOURS.get(key)
    if name is None:
        name = _NEIGHBOURS[key] = f"{g.op}+{g.activation}" if g.activation else g.op
    return name


_NEIGHBOURS: dict[tuple[str, str | None], str] = {}


def neighbours(priced: Sequence[LayerGeom | None]) -> list[str]:
    """Per layer the neighbour before it among the priced layers (a fused member is skipped)."""
    out, before = [], None
    for g in priced:
        out.append(neighbour(before))
        if g is not None:
            before = g
    return out


def network_multiplier(context: Context, op: str, network_ms: float) -> float:
    """``(network_ms / ref_ms) ** beta[op]`` (1 for an op without an exponent)."""
    beta = context["beta"].get(op, 0.0)  # type: ignore[union-attr]
    if not beta:
        return 1.0
    return (max(network_ms, 1e-6) / float(context["ref_ms"])) ** beta  # type: ignore[arg-type]


def after_multiplier(context: Context, op: str, before: str) -> float:
    """``exp(after[op][before])`` (1 for a neighbour without a factor)."""
    f = context.get("after", {}).get(op, {}).get(before, 0.0)  # type: ignore[union-attr]
    return math.exp(f) if f else 1.0


def checked_context(ctx: object) -> dict[str, object] | None:
    """A profile's layer context as the estimator uses it (None: none); ValueError, KeyError,
    TypeError or AttributeError when it is malformed."""
    if ctx is None:
        return None
    ref = float(ctx["ref_ms"])  # type: ignore[index]
    beta = {str(op): float(b) for op, b in ctx["beta"].items()}  # type: ignore[index]
    after = {str(op): {str(p): float(f) for p, f in by.items()}
             for op, by in ctx.get("after", {}).items()}  # type: ignore[attr-defined]
    factors = [f for by in after.values() for f in by.values()]
    if not (math.isfinite(ref) and ref > 0) or not all(math.isfinite(b) and abs(b) <= BETA_CLAMP for b in beta.values()) \
            or not all(math.isfinite(f) and abs(f) <= AFTER_CLAMP for f in factors):
        raise ValueError("out of range")
    return {"ref_ms": ref, "beta": beta, "after": after}


def solve_in_context(raw: Sequence[float], priced: Sequence[LayerGeom | None], context: Context,
                     total_of: Callable[[list[float]], float],
                     total_of_sum: Callable[[float], float] | None = None) -> list[float]:
    """The priced layers' times ``raw`` (in the reference context) moved to their own network's
    context: each by its neighbour's factor, then by the network's total T, which ``total_of``
    gives from its layers' times (``total_of_sum`` from their sum, where that is all it needs:
    faster). T solves ``ln T = ln total_of(layers at T)``, found by the secant method in ln T
    from the reference network's time (until ln T is within ``TOLERANCE`` of the map's value,
    ``ITERATIONS`` evaluations at most; the map contracts by about the exponents, so three or
    four do). A ``None`` layer keeps its time."""
    after = context.get("after")
    if after:
        placed = [t if g is None else t * after_multiplier(context, g.op, b)
                  for t, g, b in zip(raw, priced, neighbours(priced))]
    else:
        placed = list(raw)
    beta: Mapping[str, float] = context["beta"]  # type: ignore[assignment]
    exponents = [0.0 if g is None else beta.get(g.op, 0.0) for g in priced]
    ln_ref = math.log(float(context["ref_ms"]))  # type: ignore[arg-type]
    groups: dict[float, float] = defaultdict(float)
    for t, b in zip(placed, exponents):
        groups[b] += t

    def at(x: float) -> list[float]:
        powers = {b: math.exp(b * (x - ln_ref)) for b in groups}
        return [t * powers[b] for t, b in zip(placed, exponents)]

    def step(x: float) -> float:  # ln of the total with the layers at T = e^x, minus x
        if total_of_sum is not None:
            total = total_of_sum(sum(g * math.exp(b * (x - ln_ref)) for b, g in groups.items()))
        else:
            total = total_of(at(x))
        return math.log(max(total, 1e-9)) - x

    x0 = ln_ref  # where the layers are as placed
    h0 = step(x0)
    x1 = x0 + h0
    h1 = step(x1)
    for _ in range(ITERATIONS - 2):
        if abs(h1) <= TOLERANCE or h1 == h0:
            break
        x0, x1, h0 = x1, x1 - h1 * (x1 - x0) / (h1 - h0), h1
        h1 = step(x1)
    return at(x1)


def in_measured_context(context: Context, net: Sequence[tuple[LayerGeom, float]], network_ms: float) -> list[float]:
    """The multipliers that take a network's layers (its priced layers, in order) from the
    reference context to the one they were measured in, its end-to-end time ``network_ms``."""
    before = neighbours([g for g, _ in net])
    return [network_multiplier(context, g.op, network_ms) * after_multiplier(context, g.op, b)
            for (g, _), b in zip(net, before)]


def fit_context(samples: Sequence[Sequence[tuple[LayerGeom, float]]], e2e: Sequence[float]) -> dict[str, object] | None:
    """Fit the context on the calibration networks (``samples``: per network its priced layers
    and their in-context times; ``e2e``: its end-to-end time): one least-squares fit of ln(layer
    time) within each layer configuration measured two or more times (the configuration's
    own mean taken out) on ln T per op and on the neighbour per op, the neighbours' factors shrunk
    by ``AFTER_PRIOR`` and centred on each op's layers. None when nothing is left."""
    import numpy as np  # the estimator imports this module and needs no numpy

    rows: dict[str, list[tuple[float, float, str, str]]] = defaultdict(list)
    for net, total in zip(samples, e2e):
        for (g, t), before in zip(net, neighbours([g for g, _ in net])):
            if t > FLOOR_MS and total > 0:
                rows[g.config_key()].append((math.log(t), math.log(total), g.op, before))
    groups = [r for r in rows.values() if len(r) >= 2]
    if not groups:
        return None
    count: dict[tuple[str, str], int] = defaultdict(int)
    for r in groups:
        for _, _, op, before in r:
            count[op, before] += 1
    ops = sorted({r[0][2] for r in groups})
    cats = sorted(c for c, n in count.items() if n >= MIN_AFTER_SAMPLES)
    col = {c: len(ops) + i for i, c in enumerate(cats)}
    x_rows, y = [], []
    for r in groups:
        a = np.zeros((len(r), len(ops) + len(cats)))
        for i, (_, ln_e, op, before) in enumerate(r):
            a[i, ops.index(op)] = ln_e
            if (op, before) in col:
                a[i, col[op, before]] = 1.0
        x_rows.append(a - a.mean(axis=0))
        ys = np.array([v[0] for v in r])
        y.append(ys - ys.mean())
    x, yv = np.vstack(x_rows), np.concatenate(y)
    penalty = np.diag([1e-9] * len(ops) + [AFTER_PRIOR] * len(cats))
    w = np.linalg.solve(x.T @ x + penalty, x.T @ yv)
    beta = {op: float(np.clip(w[i], -BETA_CLAMP, BETA_CLAMP)) for i, op in enumerate(ops) if abs(w[i]) >= NEGLIGIBLE}
    after: dict[str, dict[str, float]] = {}
    for op in ops:  # centred: the op's layers at their average neighbour
        mine = [(c, count[c]) for c in cats if c[0] == op]
        total_n = sum(count[c] for c in count if c[0] == op)
        mean = sum(w[col[c]] * n for c, n in mine) / total_n if mine else 0.0
        by = {c[1]: float(np.clip(w[col[c]] - mean, -AFTER_CLAMP, AFTER_CLAMP)) for c, _ in mine}
        by = {k: v for k, v in by.items() if abs(v) >= NEGLIGIBLE}
        if by:
            after[op] = by
    if not beta and not after:
        return None
    ref = float(np.exp(np.mean(np.log(np.maximum(np.asarray(e2e, dtype=float), FLOOR_MS)))))
    return {"ref_ms": ref, "beta": beta, "after": after}


def context_variants(full: dict[str, object] | None) -> list[tuple[str, dict[str, object] | None]]:
    """The contexts a calibration chooses among by their out-of-fold error: none, the network's
    time alone, and ``full`` (the network's time and the neighbour), each named, those that
    ``full`` holds."""
    out: list[tuple[str, dict[str, object] | None]] = [("none", None)]
    if full is None:
        return out
    if full["beta"]:
        out.append(("network", dict(full, after={})))
    if full["after"]:
        out.append(("network and neighbour" if full["beta"] else "neighbour", full))
    return out

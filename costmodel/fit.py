"""Fit a device profile from measured layers (``costmodel.measure``): no torch.

The inputs are isolated micro-benchmarks of the cheap ops and calibration networks profiled as
a whole, every layer measured *in context* (see ``costmodel.measure``). What is fitted
(relative-error weighted throughout; the model itself is defined in ``costmodel.modeldef``):

* per op class (conv per kernel size, dense, pool per mode, bn, gap, act, dropout):
  ``T = c + a*MACs + b*bytes`` by non-negative least squares on ``(T_pred - T)/T``;
* a log-space ridge regressor per class on ``log(T / T_linear)`` (features in
  ``costmodel.modeldef.residual_features``) for what the linear form misses (oneDNN efficiency
  depending on channel counts);
* a lookup table: the median in-context time of every distinct layer configuration seen, pulled
  toward what the linear form and the trees (or the residual regressor) give for it, in log space:
  the median at weight n, the number of times the configuration was seen, the model at
  ``TABLE_PRIOR_WEIGHT``. One in-context time carries its instance's luck, and a configuration
  seen once had priced held-out PyTorch batch-1 networks worse than the model alone
  (docs/benchmarks.md);
* a network-level correction ``T_net = c0 + scale * sum(layers) + per_layer * n_layers`` (the
  per-layer term absorbs per-layer transition costs, and the hook overhead that inflates
  in-context layer times at small batch sizes), or its log form ``T_net = S * exp(w . (1, ln S,
  (ln S)^2, n / S, W / S))`` when that cross-validates better (relative errors that change with
  the network's size: small networks under-priced by a negative ``c0``; n the module calls in
  torch, whose hooks cost per call, else the priced layers; W the conv and dense weights in MiB),
  fitted on the calibration networks' end-to-end times with layer predictions made out of fold
  (5 folds), so the table's perfect recall of its own networks does not bias it;
* the layer context (``costmodel.layer_context``, full calibrations only): how a layer's time
  follows its network's time and the layer before it. Every measured layer is moved to the
  reference context before the fits above, and the estimator moves it back into its network's.
  Of no context, the network's time alone, and the network's time and the neighbour, the profile
  keeps the one whose out-of-fold error on the calibration networks is lowest
  (``fit_quality.layer_context_cv_mape``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from costmodel.device_profile import Context, DeviceProfile, TreeEnsemble
from costmodel.errors import CostModelError
from costmodel.estimator import estimate_layers_ms
from costmodel.geometry import LayerGeom
from costmodel.layer_context import (
    MIN_NETWORKS,
    context_variants,
    fit_context,
    in_measured_context,
    solve_in_context,
)
from costmodel.measurements import Network, Sample
from costmodel.modeldef import (
    RESIDUAL_CLAMP,
    fit_classes,
    grouped_samples,
    linear_features,
    module_calls,
    priced_layers,
    residual_features,
    seed_units,
    strip_activation,
    t_k_classes,
    weight_mib,
)
from costmodel.netfit import (
    FLOOR_MS,
    fit_network,
    network_total,
    nnls_relative,
)
from costmodel.trees import fit_trees

MIN_CLASS_SAMPLES = 6
# The weight of the model's own time against the table's median, as if seen this many times.
TABLE_PRIOR_WEIGHT = 2.0
RIDGE_LAMBDA = 0.3


def _ridge(x: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    """Ridge regression with standardised features and an unpenalised intercept (column 0).

    Returned weights apply to the raw features (standardisation folded back in)."""
    mu = x[:, 1:].mean(axis=0)
    sd = x[:, 1:].std(axis=0)
    sd[sd < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x[:, 1:] - mu) / sd])
    pen = lam * len(x) * np.eye(z.shape[1])
    pen[0, 0] = 0.0
    wz = np.linalg.solve(z.T @ z + pen, z.T @ r)
    w = np.empty_like(wz)
    w[1:] = wz[1:] / sd
    w[0] = wz[0] - float(np.sum(wz[1:] * mu / sd))
    return w


def fit_layers(
    samples: Sequence[Sample], act_elem_ms: dict[str, float], residual: bool = True
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]], dict[str, object]]:
    """Fit the per-class linear coefficients and residual weights on (geom, ms) samples.

    ``act_elem_ms`` gives the cost of fused activations, subtracted before fitting conv/dense.
    Returns ``(coeffs, residual, quality)``.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for g, t in samples:
        for cls in fit_classes(g):
            by_class[cls].append((g, t))
    coeffs: dict[str, dict[str, float]] = {}
    weights: dict[str, list[float]] = {}
    quality: dict[str, object] = {}
    for cls, rows in sorted(by_class.items()):
        generic = cls in ("conv", "act", "dense", "bn", "gap", "dropout") or cls.startswith("pool")
        if len(rows) < MIN_CLASS_SAMPLES and not generic:
            continue
        y = np.maximum([strip_activation(g, t, act_elem_ms) for g, t in rows], FLOOR_MS)
        x = np.array([linear_features(g) for g, _ in rows], dtype=float)
        if cls.startswith("conv") or cls == "dense":
            coef = nnls_relative(x, y)
        else:  # no MACs: c + b*bytes
            coef = np.insert(nnls_relative(x[:, [0, 2]], y), 1, 0.0)
        if coef[0] == 0.0 and coef[1] == 0.0 and coef[2] == 0.0:
            coef[0] = float(np.median(y))
        coeffs[cls] = {"c": float(coef[0]), "a": float(coef[1]), "b": float(coef[2])}
        base = np.maximum(x @ coef, 1e-9)
        pred = base
        if residual and len(rows) >= MIN_CLASS_SAMPLES:
            feats = np.array([residual_features(g) for g, _ in rows])
            r = np.log(np.maximum(y, 1e-9) / base)
            w = _ridge(feats, r, RIDGE_LAMBDA)
            weights[cls] = [float(v) for v in w]
            pred = base * np.exp(np.clip(feats @ w, -RESIDUAL_CLAMP, RESIDUAL_CLAMP))
        err = np.abs(pred - y) / y
        quality[cls] = {"n": len(rows), "mape": float(err.mean()),
                        "within_10pct": float((err < 0.1).mean())}
    return coeffs, weights, quality


def fit_act_elem(samples: Sequence[Sample]) -> dict[str, float]:
    """Per-element cost of each standalone activation (slope of ms over elements)."""
    out: dict[str, float] = {}
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for g, t in samples:
        if g.op == "act" and g.activation:
            by_name[g.activation].append((g, t))
    for name, rows in by_name.items():
        x = np.array([[1.0, g.acts] for g, _ in rows], dtype=float)
        y = np.array([t for _, t in rows])
        coef = nnls_relative(x, y)
        out[name] = float(coef[1])
    return out


def fit_profile(
    context: Context,
    micro: Sequence[Sample],
    networks: Sequence[Network],
    protocol: dict[str, object],
    folds: int = 5,
    seed: int = 0,
    use_trees: bool = True,
    use_table: bool = True,
    reference_ms: float | None = None,
    use_context: bool = True,
) -> DeviceProfile:
    """Fit a profile from isolated micro-benchmarks and profiled calibration networks.

    ``networks`` holds ``(geoms, per-layer in-context ms, end-to-end ms)``. With
    ``use_context`` and at least ``layer_context.MIN_NETWORKS`` networks, the layer context is
    fitted and the profile keeps whichever of no context, the network's time alone, or the
    network's time and the neighbour prices the calibration networks best out of fold.
    """
    if not networks:
        raise CostModelError("calibration needs at least one profiled network")
    # Batch size here is the profile's; estimates are per sample * (B / B0) with B0 == B.
    runtime = str(context.get("runtime") or "torch")
    measured = [grouped_samples(geoms, meas, runtime) for geoms, meas, _ in networks]
    setup = _Setup(context, micro, fit_act_elem(micro), protocol, runtime, seed, use_trees, use_table,
                   _fit_t_k([s for net in measured for s in net]))
    e2e = np.array([n[2] for n in networks])
    folds_held = _folds(len(networks), folds, seed)
    full = fit_context(measured, e2e) if use_context and len(networks) >= MIN_NETWORKS else None
    # each fold's context fitted once, on its training networks, for every choice
    fold_full = [None if full is None else fit_context([measured[i] for i in train], e2e[train])
                 for _, train in folds_held]
    fits = {name: _network_fit(setup, networks, measured, e2e, folds_held,
                               [_variant(name, c) for c in [full, *fold_full]])
            for name, _ in context_variants(full)}
    cv = {name: float(np.mean(np.abs(f[1] - e2e) / e2e)) for name, f in fits.items()}
    chosen = min(cv, key=cv.__getitem__)
    network, pred, forms = fits[chosen]
    model, quality = _layer_model(setup, [s for net, total in zip(measured, e2e)
                                          for s in _moved(net, total, network.get("context"))])
    err = np.abs(pred - e2e) / e2e
    quality["network_oof"] = {
        "n": len(networks), "mape": float(err.mean()), "within_10pct": float((err < 0.1).mean()),
        "within_5pct": float((err < 0.05).mean()),
        "p95_abs_pct": float(np.percentile(err, 95)) if len(err) else 0.0,
    }
    if forms:
        quality["network_forms_cv_mape"] = forms
    if len(cv) > 1:
        quality["layer_context_cv_mape"] = cv
        quality["layer_context"] = chosen
    quality["table_entries"] = len(model.table)
    quality["baselines"] = fit_baselines(networks)
    return dataclasses.replace(model, network=network, fit_quality=quality, reference_ms=reference_ms)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every per-layer fit of one calibration shares."""

    context: Context
    micro: Sequence[Sample]
    act_elem: dict[str, float]
    protocol: dict[str, object]
    runtime: str
    seed: int
    use_trees: bool
    use_table: bool
    t_k: dict[str, float]


def _layer_model(setup: _Setup, in_context: list[Sample]) -> tuple[DeviceProfile, dict[str, object]]:
    """The per-layer model (linear bases, residuals, trees, table; neutral network correction)
    fitted on in-context samples and the micro-benchmarks of the cheap ops, and its quality."""
    samples = in_context + [s for s in setup.micro if s[0].op not in ("conv", "dense")]
    coeffs, weights, quality = fit_layers(samples, setup.act_elem)
    trees, tq = fit_trees(in_context, coeffs, setup.act_elem, setup.seed) if setup.use_trees else ({}, {})
    quality.update(tq)
    no_table = _make(setup.context, coeffs, weights, trees, {}, setup.t_k, setup.act_elem, _NEUTRAL, {},
                     setup.protocol)
    table = _layer_table(in_context, no_table) if setup.use_table else {}
    return dataclasses.replace(no_table, table=table, use_table=bool(table)), quality


def _folds(n: int, folds: int, seed: int) -> list[tuple[set[int], list[int]]]:
    """The calibration's folds: per fold the networks held out and those it trains on (one fold
    of everything when there is one network)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, min(folds, n))
    out = []
    for f in range(k):
        held = set(order[f::k])
        out.append((held, [i for i in range(n) if i not in held or k == 1]))
    return out


def _variant(name: str, full: dict[str, object] | None) -> dict[str, object] | None:
    """The layer context of choice ``name`` (``layer_context.context_variants``) within a fitted
    one (None: "none", or a choice that context does not hold)."""
    return None if name == "none" else dict(context_variants(full)).get(name)


def _network_fit(setup: _Setup, networks: Sequence[Network], measured: list[list[Sample]], e2e: np.ndarray,
                 folds: list[tuple[set[int], list[int]]], contexts: list[dict[str, object] | None],
                 ) -> tuple[dict[str, object], np.ndarray, dict[str, float]]:
    """With one choice of layer context (``contexts``: fitted on all networks, then on each
    fold's training networks; None: none): the network-level correction fitted on the networks'
    out-of-fold layer times (the layer model and the context fitted in each fold, so that neither
    the table's perfect recall of its own networks nor the context's fit on them biases it), and
    the networks' out-of-fold totals as the estimator would price them. ``(network, totals,
    forms)``, the network holding the context."""
    oof_raw: list[list[float]] = [[] for _ in networks]  # in the fold's reference context
    oof_context: list[dict[str, object] | None] = [None] * len(networks)
    for (held, train), ctx_f in zip(folds, contexts[1:]):
        prof_f, _ = _layer_model(setup, [s for i in train for s in _moved(measured[i], e2e[i], ctx_f)])
        for i in held:
            raw = estimate_layers_ms(networks[i][0], prof_f)[0]  # neutral correction: the raw times
            oof_raw[i] = [t for t, g in zip(raw, priced_layers(networks[i][0], setup.runtime)) if g is not None]
            oof_context[i] = ctx_f
    # Fitted in each network's measured context; priced below in the context the model solves for.
    oof_layers = [raw if ctx is None else [t * m for t, m in zip(raw, in_measured_context(ctx, net, total))]
                  for raw, ctx, net, total in zip(oof_raw, oof_context, measured, e2e)]
    calls = [module_calls(n[0]) for n in networks] if setup.runtime == "torch" else None
    weight_sizes = [weight_mib(n[0]) for n in networks]
    network, pred, forms = fit_network(oof_layers, e2e, setup.seed, calls=calls, weights=weight_sizes,
                                       measured=[sum(n[1]) for n in networks])
    if contexts[0] is not None:
        pred = np.array([_solved_total(network, ctx, raw, networks[i][0], setup.runtime, weight_sizes[i])
                         for i, (raw, ctx) in enumerate(zip(oof_raw, oof_context))])
        network["context"] = contexts[0]
    return network, pred, forms


def _moved(net: Sequence[Sample], total: float, ctx: dict[str, object] | None) -> list[Sample]:
    """A network's measured layers moved to the reference context of ``ctx`` (as they are: None)."""
    if ctx is None:
        return list(net)
    return [(g, t / m) for (g, t), m in zip(net, in_measured_context(ctx, net, total))]


def _solved_total(network: dict[str, object], ctx: dict[str, object] | None, raw: list[float],
                  geoms: Sequence[LayerGeom], runtime: str, weight: float) -> float:
    """A calibration network's total from its priced layers' out-of-fold times in the reference
    context of ``ctx``, moved to the context the model solves for
    (``layer_context.solve_in_context``)."""
    priced = [g for g in priced_layers(geoms, runtime) if g is not None]
    n = float(module_calls(geoms) if network.get("count") == "calls" else len(raw))
    w = weight if len(network.get("log_coef", ())) == 5 else 0.0  # type: ignore[arg-type]
    if ctx is not None:
        raw = solve_in_context(raw, priced, ctx, lambda moved: network_total(network, moved, n, w))
    return network_total(network, raw, n, w)


def fit_baselines(networks: Sequence[Network]) -> dict[str, float]:
    """One-constant baselines fitted on the calibration networks' end-to-end times
    (relative least squares): ``flops_ms_per_mac`` (T = k * MACs) and ``seed_t_k_ms``
    (T = T_k * sum of N_p x N_f, the textbook form with one T_k)."""

    def one_constant(xs: list[float], ys: list[float]) -> float:
        r = [x / y for x, y in zip(xs, ys) if y > 0]
        return float(sum(r) / sum(v * v for v in r)) if r else 0.0

    ys = [float(n[2]) for n in networks]
    macs = [float(sum(g.macs for g in n[0])) for n in networks]
    units = [float(seed_units(n[0])) for n in networks]
    return {"flops_ms_per_mac": one_constant(macs, ys), "seed_t_k_ms": one_constant(units, ys)}


def _make(context: Context, coeffs: dict[str, dict[str, float]],
          weights: dict[str, list[float]], trees: dict[str, TreeEnsemble],
          table: dict[str, float], t_k: dict[str, float],
          act_elem: dict[str, float], network: dict[str, float], quality: dict[str, object],
          protocol: dict[str, object]) -> DeviceProfile:
    return DeviceProfile(
        context=dict(context), coeffs=coeffs, t_k_ms=t_k, act_elem_ms=act_elem, residual=weights,
        trees=trees, table=table, use_table=bool(table), network=network, fit_quality=quality, protocol=dict(protocol),
        batch_scaling="fixed", is_default=False,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


# The network correction that leaves the layers' times as they are.
_NEUTRAL = {"c0_ms": 0.0, "scale": 1.0}


def _layer_table(samples: Sequence[Sample], model: DeviceProfile) -> dict[str, float]:
    """Every configuration's median in-context time, pulled toward ``model``'s raw time for it (its
    table and network correction left out) by ``TABLE_PRIOR_WEIGHT`` (see the module's docstring);
    n counts the layers measured, two identical layers of one network twice."""
    model = dataclasses.replace(model, table={}, use_table=False, network=_NEUTRAL)
    by_key: dict[str, list[float]] = defaultdict(list)
    first: dict[str, LayerGeom] = {}
    for g, t in samples:
        by_key[g.config_key()].append(t)
        first.setdefault(g.config_key(), g)
    table = {}
    for key, times in by_key.items():
        median = float(np.median(times))
        prior = estimate_layers_ms([first[key]], model)[0][0]
        if median > 0 and prior > 0:
            n = len(times)
            median = float(np.exp((n * np.log(median) + TABLE_PRIOR_WEIGHT * np.log(prior)) / (n + TABLE_PRIOR_WEIGHT)))
        table[key] = median
    return table


def _fit_t_k(samples: Sequence[Sample]) -> dict[str, float]:
    """Textbook T_k per op (conv also per kernel size): time / (n_p * n_f), relative LSQ."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for g, t in samples:
        npnf = g.n_p * g.n_f
        if npnf > 0 and t > 0:
            for cls in t_k_classes(g):
                ratios[cls].append(t / npnf)
    # argmin sum((tk*x - y)/y)^2 = sum(x/y) / sum((x/y)^2) over samples; with r = y/x this is
    # sum(1/r) / sum(1/r^2).
    return {k: float(sum(1 / r for r in v) / sum(1 / r**2 for r in v)) for k, v in ratios.items()}

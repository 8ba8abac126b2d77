"""The network-level correction of a device profile (``costmodel.modeldef``), fitted on the
calibration networks' out-of-fold layer sums and end-to-end times: the linear form or the log
form, whichever cross-validates better on those networks; and the relative least squares the
fits share. No torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from costmodel.modeldef import (
    corrected_layer_ms,
    log_network_features,
    network_factor,
    network_overhead_ms,
)

# Times below this (ms) count as this much where the fit divides by a time or takes its log:
# ONNX Runtime reports whole microseconds, and a layer it fused away measures 0.
FLOOR_MS = 5e-4
# The log-form network correction is tried only with this many calibration networks or more
# (full calibrations: 244 and up; a search's quick calibration, 44, keeps the linear form).
MIN_LOG_NETWORKS = 100
# The log form learns how in-context layer times add up to end-to-end times. A calibration
# network whose out-of-fold layer sum is off its own measured in-context sum by more than this
# (in ln, against the median such ratio) would teach it a layer error instead, one a held-out
# network whose layers the table holds does not have (at batch 1 a small calibration network's
# layers were priced out of fold up to 32% high, and small held-out networks then up to 20% low): it
# is left out of the log form's fit, and still counted in the form's cross-validated error. At
# batch 1, 1-2.5% of the calibration networks are left out. Of 0.1, 0.15, 0.2 and 0.3, 0.2 put the
# most PyTorch batch-1 held-out networks within 10% (docs/benchmarks.md). The fit keeps every
# network when this would leave out half or more.
LAYER_SUM_TOL = 0.2


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares minimising the relative error of ``x @ coef`` against y."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, FLOOR_MS)
    coef, _ = nnls(x * w[:, None], y * w)
    return coef


def _linear_network(s: np.ndarray, n_layers: np.ndarray, e2e: np.ndarray) -> np.ndarray:
    """``[c0, scale, per_layer]`` of the linear form."""
    x = np.c_[np.ones_like(s), s, n_layers]
    coef = np.array([0.0, float(np.median(e2e / np.maximum(s, 1e-9))), 0.0])
    if len(s) >= 8:
        # Relative least squares: the per-layer term is negative when hooks inflated the
        # in-context layer times (small batches), positive for per-layer costs the hooks did not
        # see. The constant is a fixed cost of a call, never negative: fitted below zero (the
        # constant and the per-layer term trading off), it is left out and the rest refitted; a
        # negative one had priced small batch-32 networks up to 40% low (docs/benchmarks.md).
        # Kept only if the result stays sane.
        w = 1.0 / np.maximum(e2e, 1e-9)
        fitted, *_ = np.linalg.lstsq(x * w[:, None], np.ones_like(e2e), rcond=None)
        if fitted[0] < 0:
            fitted = np.insert(np.linalg.lstsq(x[:, 1:] * w[:, None], np.ones_like(e2e), rcond=None)[0], 0, 0.0)
        if fitted[1] > 0 and np.all(x @ fitted > 0):
            coef = fitted
    elif len(s) >= 4:
        coef = np.insert(nnls_relative(x[:, :2], e2e), 2, 0.0)
    return coef


def _linear_predict(coef: np.ndarray, layers: Sequence[Sequence[float]]) -> np.ndarray:
    """The linear form's totals of networks given their layers' times, as the estimator prices
    them (its floors on a layer and on the constant included)."""
    c0, scale, per_layer = (float(v) for v in coef)
    out = []
    for raw in layers:
        total = sum(corrected_layer_ms(r, scale, per_layer) for r in raw)
        out.append(total + network_overhead_ms(c0, total))
    return np.array(out)


def network_total(network: dict[str, object], layers: Sequence[float], n: float, weight: float = 0.0) -> float:
    """A fitted correction's total for one network from its priced layers' times (``n``: its
    module calls where the log form counts calls, else its priced layers; ``weight``: its
    weights in MiB), as the estimator prices it."""
    if network.get("form") == "log":
        s = float(sum(layers))
        coef = network["log_coef"]
        return s * network_factor(coef, network["log_bounds"], s, n, weight)  # type: ignore[arg-type]
    c = np.array([network["c0_ms"], network["scale"], network["per_layer_ms"]], dtype=float)
    return float(_linear_predict(c, [layers])[0])


def _log_network(s: np.ndarray, n_layers: np.ndarray, e2e: np.ndarray, weights: np.ndarray | None = None,
                 keep: np.ndarray | None = None) -> tuple[list[float], list[list[float]]]:
    """``(coef, bounds)`` of the log form: least squares of ln(T / S) on its features (W / S
    among them when ``weights`` are given), on the networks ``keep`` marks (all without it)."""
    if keep is not None and 2 * keep.sum() > len(keep):
        s, n_layers, e2e = s[keep], n_layers[keep], e2e[keep]
        weights = None if weights is None else weights[keep]
    s = np.maximum(s, 1e-6)
    cols = [np.log(s), n_layers / s] + ([] if weights is None else [weights / s])
    bounds = [[float(c.min()), float(c.max())] for c in cols]
    ws = [None] * len(s) if weights is None else weights
    f = np.array([log_network_features(a, b, None, w) for a, b, w in zip(s, n_layers, ws)])
    coef, *_ = np.linalg.lstsq(f, np.log(np.maximum(e2e, 1e-9) / s), rcond=None)
    return [float(v) for v in coef], bounds


def _log_predict(coef: list[float], bounds: list[list[float]], s: np.ndarray, n_layers: np.ndarray,
                 weights: np.ndarray | None = None) -> np.ndarray:
    w = np.zeros_like(s) if weights is None else weights
    return np.array([a * network_factor(coef, bounds, a, b, c) for a, b, c in zip(s, n_layers, w)])


def fit_network(layers: Sequence[Sequence[float]], e2e: np.ndarray, seed: int = 0, folds: int = 5,
                calls: Sequence[float] | None = None, weights: Sequence[float] | None = None,
                measured: Sequence[float] | None = None) -> tuple[dict[str, object], np.ndarray, dict[str, float]]:
    """The network-level correction from the calibration networks' out-of-fold times of their
    priced layers and their end-to-end times: the linear form, or the log form when the
    calibration has at least ``MIN_LOG_NETWORKS`` networks and the log form's ``folds``-fold
    cross-validated relative error on them is lower. Returns ``(network, predictions,
    {form: cross-validated MAPE})`` (the last empty when only the linear form was tried).
    ``calls``: per network its module calls (``modeldef.module_calls``; torch, whose hooks
    cost per call), the log form's n instead of the number of priced layers; ``weights``: per
    network its weights in MiB (``modeldef.weight_mib``), the log form's W / S feature;
    ``measured``: per network the sum of its measured in-context layer times, against which
    ``LAYER_SUM_TOL`` picks the networks the log form is fitted on."""
    s = np.array([float(sum(raw)) for raw in layers])
    n_layers = np.array([float(len(raw)) for raw in layers])
    lin = _linear_network(s, n_layers, e2e)
    n_log = n_layers if calls is None else np.array([float(c) for c in calls])
    w = None if weights is None else np.array([float(v) for v in weights])
    keep = None
    if measured is not None:
        r = np.log(np.maximum(s, FLOOR_MS) / np.maximum(np.array([float(v) for v in measured]), FLOOR_MS))
        keep = np.abs(r - np.median(r)) <= LAYER_SUM_TOL
    network: dict[str, object] = {"form": "linear", "c0_ms": float(lin[0]), "scale": float(lin[1]),
                                  "per_layer_ms": float(lin[2])}
    pred = _linear_predict(lin, layers)
    if len(s) < MIN_LOG_NETWORKS:
        return network, pred, {}
    order = np.random.default_rng(seed).permutation(len(s))
    cv = {"linear": np.zeros(len(s)), "log": np.zeros(len(s))}
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        c = _linear_network(s[train], n_layers[train], e2e[train])
        cv["linear"][test] = _linear_predict(c, [layers[i] for i in test])
        coef, bounds = _log_network(s[train], n_log[train], e2e[train], None if w is None else w[train],
                                    None if keep is None else keep[train])
        cv["log"][test] = _log_predict(coef, bounds, s[test], n_log[test], None if w is None else w[test])
    mape = {k: float(np.mean(np.abs(v - e2e) / e2e)) for k, v in cv.items()}
    if mape["log"] < mape["linear"]:
        coef, bounds = _log_network(s, n_log, e2e, w, keep)
        network = {"form": "log", "log_coef": coef, "log_bounds": bounds, "c0_ms": 0.0, "scale": 1.0,
                   "per_layer_ms": 0.0}
        if calls is not None:
            network["count"] = "calls"
        pred = _log_predict(coef, bounds, s, n_log, w)
    return network, pred, mape

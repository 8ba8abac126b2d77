"""The layer context (``costmodel.layer_context``): a layer's time follows its network's time and
the layer before it; the calibration learns both from made-up devices, keeps the context that
prices its own networks best out of fold, and the estimator prices each layer in its network's
context. And the trees' channel-padding features."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from made_up_device import synthetic_networks, true_ms

from costmodel.calibration import fit_measurements
from costmodel.device_profile import DeviceProfile, current_context
from costmodel.errors import CostModelError
from costmodel.estimator import estimate, estimate_total_ms
from costmodel.fit import fit_profile
from costmodel.geometry import LayerGeom
from costmodel.layer_context import context_variants, neighbours, solve_in_context
from costmodel.measurements import Measurements


def in_context(net: list[LayerGeom], beta: dict[str, float], ref_ms: float,
               after: dict[tuple[str, str], float] | None = None) -> tuple[list[float], float]:
    """The device's layers in their network: each takes true_ms x after[(op, neighbour)] x
    (T / ref_ms) ** beta[op], and the network's T is the sum of them (by iteration)."""
    before = neighbours(net)
    base = [true_ms(g) * (after or {}).get((g.op, b), 1.0) for g, b in zip(net, before)]
    total = sum(base)
    for _ in range(60):
        times = [t * (total / ref_ms) ** beta.get(g.op, 0.0) for g, t in zip(net, base)]
        total = sum(times)
    return times, total


def fit(data: list, **kw: object) -> DeviceProfile:
    return fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"}, **kw)


def test_a_calibration_learns_how_a_layer_slows_down_in_a_slower_network() -> None:
    """Dense and global-pooling layers 20% slower in a network 2.5x as slow (exponent 0.2), the
    other ops unaffected: from 150 networks the fit recovers the exponents, keeps the network's
    time alone (no neighbour effect to find) and says so, and prices held-out networks within 0.5%, each
    layer in its own network's context (the fixed point of the network's total and its layers);
    without the context the same layers are priced at their calibration networks' medians, and
    the worst held-out network is over 3% off (5.7% here). The profile round-trips as schema
    version 4, which an older archgen refuses."""
    beta = {"dense": 0.2, "gap": 0.2}
    nets = synthetic_networks(150, 21)
    data = [(n, *in_context(n, beta, 5.0)) for n in nets]
    prof = fit(data)
    ctx = prof.network["context"]
    assert ctx["beta"]["dense"] == pytest.approx(0.2, abs=0.01)
    assert ctx["beta"]["gap"] == pytest.approx(0.2, abs=0.01)
    assert set(ctx["beta"]) <= {"dense", "gap"} and ctx["after"] == {}
    cv = prof.fit_quality["layer_context_cv_mape"]
    assert set(cv) == {"none", "network"} and cv["network"] < 0.1 * cv["none"]
    assert prof.fit_quality["layer_context"] == "network"
    said: list[str] = []  # a calibration says which context it kept, and why
    fit_measurements(Measurements(current_context("cpu", 1, 4), {"statistic": "min"}, [], data), progress=said.append)
    assert [m for m in said if m.startswith("layer context:")] == [
        f"layer context: network (out of fold MAPE none {100 * cv['none']:.2f}%, network {100 * cv['network']:.2f}%)"]
    plain = fit(data, use_context=False)
    assert "context" not in plain.network and "layer_context_cv_mape" not in plain.fit_quality
    errors, plain_errors = [], []
    for n in synthetic_networks(30, 22):
        _, want = in_context(n, beta, 5.0)
        errors.append(abs(estimate_total_ms(n, prof) / want - 1))
        plain_errors.append(abs(estimate_total_ms(n, plain) / want - 1))
    assert max(errors) < 0.005
    assert max(plain_errors) > 0.03
    # a calibration network's layers come back at their measured times, each in its network's
    # context (the reference context's table entries moved back: the inverse of the fit's move)
    bare = dataclasses.replace(prof, network={k: v for k, v in prof.network.items() if k != "context"})
    for n, times, _ in data[:20]:
        assert estimate(n, prof).table["est_ms"].tolist() == pytest.approx(times, rel=0.005)
        if any(g.op in beta for g in n):  # not moved back, they would be off
            assert estimate(n, bare).table["est_ms"].tolist() != pytest.approx(times, rel=0.005)
    written = json.loads(json.dumps(prof.to_dict()))
    assert written["schema_version"] == 4
    again = DeviceProfile.from_dict(written)
    assert estimate_total_ms(nets[0], again) == estimate_total_ms(nets[0], prof)
    assert again.to_dict()["schema_version"] == 4
    # a malformed context is one line, not an internal error
    for bad in ({"ref_ms": 0.0, "beta": {"dense": 0.2}}, {"ref_ms": 5.0, "beta": {"dense": 2.0}},
                {"ref_ms": 5.0}, "fast", {"ref_ms": 5.0, "beta": {}, "after": {"pool": {"conv+tanh": 9.0}}}):
        broken = DeviceProfile.from_dict(dict(written, network=dict(written["network"], context=bad)))
        with pytest.raises(CostModelError, match="layer context is malformed"):
            estimate_total_ms(nets[0], broken)


def test_a_calibration_learns_what_the_layer_before_costs() -> None:
    """A pooling over tanh outputs 25% slower than over others, the first dense layer after a
    pooling or a global pooling 60% slower (the flatten): the fit finds both factors (as ratios
    between neighbours, shrunk toward none: the dense layers' by up to a quarter, fewer of them
    repeat across networks), keeps the neighbour over no context out of
    fold (any exponent found is under 0.01), and prices held-out networks within 1% (0.6% here);
    without the context the worst is over 3% off (3.6%), and the mean error over 3x as large (4.7x)."""
    after = {("pool", "conv+tanh"): 1.25, ("pool", "act+tanh"): 1.25, ("dense", "pool"): 1.6, ("dense", "gap"): 1.6}
    nets = synthetic_networks(150, 31)
    data = [(n, *in_context(n, {}, 5.0, after)) for n in nets]
    prof = fit(data)
    ctx = prof.network["context"]
    assert all(abs(b) < 0.01 for b in ctx["beta"].values())  # no exponent to speak of
    pool, dense = ctx["after"]["pool"], ctx["after"]["dense"]
    assert pool["conv+tanh"] - pool.get("conv+relu", 0.0) == pytest.approx(math.log(1.25), abs=0.03)
    assert 0.7 * math.log(1.6) < dense["pool"] - dense["dense+relu"] <= math.log(1.6) + 0.02
    cv = prof.fit_quality["layer_context_cv_mape"]
    assert ctx["after"] and min(cv, key=cv.__getitem__).endswith("neighbour") and min(cv.values()) < 0.5 * cv["none"]
    plain = fit(data, use_context=False)
    errors, plain_errors = [], []
    for n in synthetic_networks(30, 32):
        _, want = in_context(n, {}, 5.0, after)
        errors.append(abs(estimate_total_ms(n, prof) / want - 1))
        plain_errors.append(abs(estimate_total_ms(n, plain) / want - 1))
    assert max(errors) < 0.01
    assert max(plain_errors) > 0.03 and sum(plain_errors) > 3 * sum(errors)


def test_the_fixed_point_and_the_variants() -> None:
    """solve_in_context moves each layer by its neighbour's factor and by the network's own
    total, to the fixed point; a fused member (None) keeps its time and is no one's neighbour.
    context_variants offers none, the network's time alone and both, as the context holds them."""
    conv = LayerGeom("c", "conv", 3, 8, 8, 8, 8, 8, 3, 1, 1, activation="tanh")
    pool = LayerGeom("p", "pool", 8, 8, 8, 8, 4, 4, 2, 2, 0, bias=False)
    ctx = {"ref_ms": 2.0, "beta": {"conv": 0.25}, "after": {"pool": {"conv+tanh": math.log(1.5)}}}
    moved = solve_in_context([1.0, 0.3, 1.0], [conv, None, pool], ctx, sum)
    total = sum(moved)
    assert moved[0] == pytest.approx((total / 2.0) ** 0.25, rel=1e-6)  # to TOLERANCE
    assert moved[1] == 0.3 and moved[2] == pytest.approx(1.5, rel=1e-12)
    assert neighbours([conv, None, pool]) == ["input", "conv+tanh", "conv+tanh"]
    full = dict(ctx)
    names = [name for name, _ in context_variants(full)]
    assert names == ["none", "network", "network and neighbour"]
    assert dict(context_variants(full))["network"]["after"] == {}
    assert [name for name, _ in context_variants(dict(ctx, beta={}))] == ["none", "neighbour"]
    assert context_variants(None) == [("none", None)]


def test_the_trees_price_a_channel_count_padded_to_the_simd_block() -> None:
    """A device whose convolutions compute in blocks of 16 output channels (a 24-channel conv
    costs what a 32-channel one does): trained on networks of 8 to 128 channels (24 the only
    padded width but 8), the trees price 24-channel convs from input widths and sizes that no
    calibration network combined with 24 within 5% (without the padding features of
    ``modeldef.tree_features``, up to 11% low), and a 40-channel conv, a width none had, within
    12% (without them 12-15% low); such a profile is written as schema version 4."""

    def padded_ms(g: LayerGeom) -> float:
        if g.op != "conv":
            return true_ms(g)
        c = -(-g.c_out // 16) * 16
        return true_ms(LayerGeom(g.name, "conv", g.c_in, c, g.h_in, g.w_in, g.h_out, g.w_out, g.kernel,
                                 g.stride, g.padding, activation=g.activation))

    nets = synthetic_networks(200, 41)
    data = [(n, [padded_ms(g) for g in n], sum(padded_ms(g) for g in n)) for n in nets]
    prof = fit(data, use_table=False)
    raw = DeviceProfile.from_dict(dict(prof.to_dict(), network={"c0_ms": 0.0, "scale": 1.0}))
    seen = {(g.c_in, g.c_out) for n in nets for g in n if g.op == "conv"}
    assert not any(c_out == 40 for _, c_out in seen)
    for c_in, size, k in ((16, 32, 3), (32, 16, 3), (128, 8, 5), (48, 16, 3), (8, 32, 3), (64, 8, 3)):
        for c_out, tol in ((24, 0.05), (40, 0.12)):
            g = LayerGeom("x", "conv", c_in, c_out, size, size, size, size, k, 1, k // 2, activation="relu")
            assert (c_in, c_out) not in seen
            assert estimate_total_ms([g], raw) == pytest.approx(padded_ms(g), rel=tol)
    assert prof.to_dict()["schema_version"] == 4


def test_onnxruntime_knows_a_fused_group_as_the_neighbour() -> None:
    """In ONNX Runtime a conv, its batch norm and its activation run as one node, priced as one
    layer (``modeldef.priced_layers``): the pooling after a conv -> batch norm -> tanh group has
    the group, "conv+tanh", as its neighbour, in the fit as in the estimate. A device whose
    pooling over tanh outputs is 25% slower (and whose first dense layer pays for the flatten):
    the fit finds the pooling's factor and prices held-out networks, with and without batch
    norms, within 0.5% on average and 2.5% at worst (0.17% and 1.8% here; the dense layers'
    factors are shrunk); without the context 0.8% and 7.5%."""
    from costmodel.modeldef import priced_layers

    after = {("pool", "conv+tanh"): 1.25, ("dense", "pool"): 1.6, ("dense", "gap"): 1.6}

    def measured(n: list[LayerGeom]) -> tuple[list[float], float]:
        priced = priced_layers(n, "onnxruntime")
        times = [0.0 if p is None else true_ms(p) * after.get((p.op, b), 1.0)
                 for p, b in zip(priced, neighbours(priced))]
        return times, sum(times)

    nets = synthetic_networks(150, 51)
    fused = [n for n in nets if any(g.op == "bn" for g in n) and any(g.activation == "tanh" for g in n)]
    assert fused  # groups whose tanh comes from a separate layer
    data = [(n, *measured(n)) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4, runtime="onnxruntime"), [], data, {"statistic": "min"})
    pool = prof.network["context"]["after"]["pool"]
    assert pool["conv+tanh"] - pool.get("conv+relu", 0.0) == pytest.approx(math.log(1.25), abs=0.03)
    assert "act+tanh" not in pool  # no standalone activation is anyone's neighbour here
    plain = fit_profile(current_context("cpu", 1, 4, runtime="onnxruntime"), [], data, {"statistic": "min"},
                        use_context=False)
    errors = [abs(estimate_total_ms(n, prof) / measured(n)[1] - 1) for n in synthetic_networks(40, 52)]
    plain_errors = [abs(estimate_total_ms(n, plain) / measured(n)[1] - 1) for n in synthetic_networks(40, 52)]
    assert sum(errors) / len(errors) < 0.005 and max(errors) < 0.025
    assert sum(plain_errors) > 3 * sum(errors) and max(plain_errors) > 2 * max(errors)


def test_the_network_factor_written_out_is_the_log_form_of_its_features() -> None:
    """``modeldef.network_factor`` writes ``log_network_features`` and the dot product out for
    the estimator's hot path: over random coefficients, bounds, sums, counts and weights (four
    and five coefficients) it gives exactly exp(clamp(coef . features))."""
    from costmodel.modeldef import LOG_NETWORK_CLAMP, log_network_features, network_factor

    rng = random.Random(7)
    for _ in range(20_000):
        k = rng.choice((4, 5))
        coef = [rng.uniform(-1, 1) for _ in range(k)]
        bounds = [sorted((rng.uniform(-5, 5), rng.uniform(-5, 5))) for _ in range(k - 2)]
        s, n, w = math.exp(rng.uniform(-8, 6)), rng.randint(1, 60), rng.uniform(0, 20)
        feats = log_network_features(s, n, bounds, w if k == 5 else None)
        r = sum(c * f for c, f in zip(coef, feats))
        assert network_factor(coef, bounds, s, n, w) == math.exp(max(-LOG_NETWORK_CLAMP, min(LOG_NETWORK_CLAMP, r)))

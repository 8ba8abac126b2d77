"""Calibration: fits recover known coefficients; a tiny real calibration yields a usable profile."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from made_up_device import synthetic_networks, true_ms

from costmodel.calibration import calibrate, fit_measurements
from costmodel.device_profile import DeviceProfile, current_context
from costmodel.errors import CostModelError
from costmodel.estimator import compile_trees, estimate, estimate_total_ms
from costmodel.fit import fit_layers, fit_profile
from costmodel.geometry import LayerGeom
from costmodel.measurements import Measurements
from costmodel.timing import repeat_agreement
from costmodel.trees import _export_gbr

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_linear_fit_recovers_exact_coefficients() -> None:
    samples = [(g, true_ms(g)) for net in synthetic_networks(20, 1) for g in net]
    coeffs, _, quality = fit_layers(samples, {}, residual=False)
    assert coeffs["conv"]["c"] == pytest.approx(0.05, rel=1e-3)
    assert coeffs["conv"]["a"] == pytest.approx(8e-8, rel=1e-3)
    assert coeffs["conv"]["b"] == pytest.approx(1.2e-7, rel=1e-3)
    assert coeffs["pool_max"]["b"] == pytest.approx(4e-8, rel=1e-3)
    assert quality["conv"]["mape"] < 1e-6


def test_network_correction_recovers_constant_and_scale() -> None:
    nets = synthetic_networks(40, 2)
    # End to end = 0.3 ms + 1.2 x the sum of the layers: what the correction must learn.
    data = [(n, [true_ms(g) for g in n], 0.3 + 1.2 * sum(true_ms(g) for g in n)) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"})
    assert prof.network["scale"] == pytest.approx(1.2, rel=0.02)
    assert prof.network["c0_ms"] == pytest.approx(0.3, abs=0.05)
    held = synthetic_networks(10, 3)
    for n in held:
        want = 0.3 + 1.2 * sum(true_ms(g) for g in n)
        assert estimate_total_ms(n, prof) == pytest.approx(want, rel=0.05)


def test_network_correction_never_takes_a_negative_constant() -> None:
    """End to end = 1.1 x the layer sum - 0.1 ms: the unconstrained fit's constant would be
    -0.1 ms, which on real devices is the constant and the per-layer term trading off, and priced
    the smallest networks far too low. The constant is dropped and the scale and per-layer term
    are the relative least squares without it."""
    from costmodel.netfit import _linear_network

    nets = synthetic_networks(40, 2)
    sums = np.array([sum(true_ms(g) for g in n) for n in nets])
    counts = np.array([float(len(n)) for n in nets])
    e2e = 1.1 * sums - 0.1
    c0, scale, per_layer = _linear_network(sums, counts, e2e)
    assert c0 == 0.0 and scale > 0
    w = 1 / e2e
    want, *_ = np.linalg.lstsq(np.c_[sums, counts] * w[:, None], np.ones_like(e2e), rcond=None)
    assert (scale, per_layer) == pytest.approx(tuple(want), rel=1e-9)
    # a positive constant is kept as fitted
    c0, scale, _ = _linear_network(sums, counts, 1.1 * sums + 0.1)
    assert c0 == pytest.approx(0.1, abs=1e-6) and scale == pytest.approx(1.1, rel=1e-6)


def test_network_correction_takes_the_log_form_when_the_error_grows_with_size() -> None:
    """End to end = (sum of layers)^1.3 (ms): small networks run relatively faster than large
    ones, which no constant + scale + per-layer term follows over the 14x range of sizes here; the
    cross-validation picks the log form, and held-out networks are priced within 3%."""
    nets = synthetic_networks(120, 4)
    data = [(n, [true_ms(g) for g in n], sum(true_ms(g) for g in n) ** 1.3) for n in nets]
    sums = [sum(true_ms(g) for g in n) for n in nets]
    assert max(sums) / min(sums) > 10  # the sizes the test is about
    prof = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"})
    assert prof.network["form"] == "log"
    cv = prof.fit_quality["network_forms_cv_mape"]
    assert cv["log"] < 0.5 * cv["linear"]
    assert prof.fit_quality["network_oof"]["within_5pct"] > 0.95
    priced = 0
    for n in synthetic_networks(15, 5):
        s = sum(true_ms(g) for g in n)
        if min(sums) <= s <= max(sums):
            assert estimate_total_ms(n, prof) == pytest.approx(s ** 1.3, rel=0.03)
            priced += 1
    assert priced >= 10
    # torch: n counts module calls, and W / S is a feature (five coefficients)
    assert prof.network["count"] == "calls" and len(prof.network["log_coef"]) == 5
    # the profile round-trips through JSON with its form, written as schema version 3 (an older
    # archgen, which knows only the linear form or the log form of four coefficients, refuses it
    # instead of misreading it)
    written = json.loads(json.dumps(prof.to_dict()))
    assert written["schema_version"] == 3
    again = DeviceProfile.from_dict(written)
    assert estimate_total_ms(nets[0], again) == estimate_total_ms(nets[0], prof)
    assert again.to_dict()["schema_version"] == 3


def test_a_torch_calibration_counts_module_calls_in_its_network_correction() -> None:
    """End to end = layer sum x exp(-0.01 calls / S), a cost per module call (what the layer
    timing's hooks add): a torch profile's log form counts calls (a conv and its ReLU are two,
    the flatten one) and recovers the -0.01; held-out networks are priced within 1%."""
    import math

    from costmodel.modeldef import module_calls

    def e2e(n: list[LayerGeom]) -> float:
        s = sum(true_ms(g) for g in n)
        return s * math.exp(-0.01 * module_calls(n) / s)

    nets = synthetic_networks(150, 13)
    ratio = [module_calls(n) / len(n) for n in nets]
    assert max(ratio) > 1.3 * min(ratio)  # calls are not a multiple of the layers
    data = [(n, [true_ms(g) for g in n], e2e(n)) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"})
    assert prof.network["form"] == "log" and prof.network["count"] == "calls"
    assert prof.network["log_coef"][3] == pytest.approx(-0.01, rel=0.05)
    for n in synthetic_networks(15, 14):
        assert estimate_total_ms(n, prof) == pytest.approx(e2e(n), rel=0.01)


def test_the_log_form_learns_what_the_weights_take_off_the_layer_sum() -> None:
    """At batch 1 a network whose weights take much of its time ran faster end to end than its
    layers timed one by one (docs/benchmarks.md). Here end to end = layer sum x exp(-0.02 W / S),
    W the conv and dense weights in MiB and S the layer sum in ms: with the weights the log form
    recovers the -0.02 and cross-validates within 0.1%; without them it is 6.8% off."""
    from costmodel.modeldef import weight_mib
    from costmodel.netfit import fit_network

    nets = synthetic_networks(150, 11)
    layers = [[true_ms(g) for g in n] for n in nets]
    s = np.array([sum(v) for v in layers])
    w = np.array([weight_mib(n) for n in nets])
    assert np.percentile(w / s, 90) > 10 * np.percentile(w / s, 10)  # weights take very different shares
    e2e = s * np.exp(-0.02 * w / s)
    network, pred, cv = fit_network(layers, e2e, weights=w)
    assert network["form"] == "log" and len(network["log_coef"]) == 5 and len(network["log_bounds"]) == 3
    assert network["log_coef"] == pytest.approx([0, 0, 0, 0, -0.02], abs=1e-6)
    assert pred == pytest.approx(e2e, rel=1e-6)
    assert cv["log"] < 0.001
    without, _, cv0 = fit_network(layers, e2e)
    assert len(without["log_coef"]) == 4 and cv0["log"] > 0.05


def test_the_log_form_is_fitted_on_networks_whose_layers_were_priced_as_measured() -> None:
    """End to end = layer sum x exp(-0.01 n / S). For a fifth of the networks, the smallest,
    the out-of-fold layer times are 40% high (a layer error the table spares held-out networks):
    given the measured in-context sums, the log form leaves those out, recovers the -0.01 and
    prices the other networks' true layer sums exactly; fitted on all, it learns the error
    (coefficients off, true sums priced over 3% off); the cross-validated error counts every
    network either way."""
    from costmodel.netfit import LAYER_SUM_TOL, fit_network

    nets = synthetic_networks(150, 17)
    true = [[true_ms(g) for g in n] for n in nets]
    s = np.array([sum(v) for v in true])
    calls = np.array([float(len(n)) for n in nets])
    e2e = s * np.exp(-0.01 * calls / s)
    off = s <= np.percentile(s, 20)
    oof = [[1.4 * t for t in v] if o else v for v, o in zip(true, off)]
    assert np.log(1.4) > LAYER_SUM_TOL
    kept, _, cv = fit_network(oof, e2e, calls=calls, measured=s)
    assert kept["form"] == "log"
    assert kept["log_coef"] == pytest.approx([0, 0, 0, -0.01], abs=1e-6)
    clean = [i for i in range(len(nets)) if not off[i]]
    from costmodel.modeldef import network_factor

    def priced(net: dict[str, object], i: int) -> float:
        return s[i] * network_factor(net["log_coef"], net["log_bounds"], s[i], calls[i])  # type: ignore[arg-type]

    assert [priced(kept, i) for i in clean] == pytest.approx([e2e[i] for i in clean], rel=1e-6)
    every, _, cv_all = fit_network(oof, e2e, calls=calls)
    assert every["log_coef"] != pytest.approx([0, 0, 0, -0.01], abs=1e-3)
    assert max(abs(priced(every, i) / e2e[i] - 1) for i in clean) > 0.03
    assert cv["log"] > 0.02 and cv_all["log"] > 0.02  # the mispriced networks stay in the error
    # ... and each fold was fitted on its kept networks: the folds' errors are not the unfiltered ones
    assert abs(cv["log"] - cv_all["log"]) > 0.01
    # Leaving out half or more would leave too little: then every network counts. Measured sums
    # equal to the out-of-fold ones for k networks, half and twice them for the others in turn
    # (the median ratio stays 1): 70 of 150 kept is too few, 80 enough.
    s_oof = np.array([sum(v) for v in oof])
    for k, all_kept in ((70, True), (80, False)):
        spread = np.resize([0.5, 2.0], len(nets) - k)
        measured = s_oof * np.r_[np.ones(k), spread][np.random.default_rng(5).permutation(len(nets))]
        fitted, _, _ = fit_network(oof, e2e, calls=calls, measured=measured)
        assert (fitted["log_coef"] == pytest.approx(every["log_coef"])) == all_kept


def test_network_correction_keeps_the_linear_form_for_a_linear_device() -> None:
    """120 networks of a device whose end to end is 0.3 ms + 1.2 x the layer sum: the log form
    is tried and loses the cross-validation."""
    nets = synthetic_networks(120, 7)
    data = [(n, [true_ms(g) for g in n], 0.3 + 1.2 * sum(true_ms(g) for g in n)) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"})
    cv = prof.fit_quality["network_forms_cv_mape"]
    assert prof.network["form"] == "linear" and cv["linear"] < cv["log"]
    assert prof.network["c0_ms"] == pytest.approx(0.3, abs=0.05)


def test_network_correction_stays_linear_below_the_minimum_of_networks() -> None:
    """Fewer than MIN_LOG_NETWORKS calibration networks (a search's quick calibration has 44):
    the linear form, written as schema version 1 as before."""
    from costmodel.netfit import MIN_LOG_NETWORKS

    nets = synthetic_networks(MIN_LOG_NETWORKS - 1, 6)
    data = [(n, [true_ms(g) for g in n], sum(true_ms(g) for g in n) ** 1.3) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"})
    assert prof.network["form"] == "linear"
    assert "network_forms_cv_mape" not in prof.fit_quality
    assert prof.to_dict()["schema_version"] == 1


def test_the_table_pulls_a_configuration_seen_few_times_toward_the_model() -> None:
    """The table holds a configuration's median in-context time pulled toward the linear form
    and trees in log space, the median at weight n (times seen) and the model at
    TABLE_PRIOR_WEIGHT (2): one instance measured 2x slow enters at 2^(1/3) of the model's time,
    six at 1.5x at 1.5^(6/8); a fitted profile's table is built that way from its own model, and
    its estimates use the table's values."""
    from costmodel.fit import TABLE_PRIOR_WEIGHT, _layer_table

    assert TABLE_PRIOR_WEIGHT == 2.0
    nets = synthetic_networks(60, 2)
    data = [(n, [true_ms(g) for g in n], sum(true_ms(g) for g in n)) for n in nets]
    model = fit_profile(current_context("cpu", 1, 4), [], data, {"statistic": "min"}, use_table=False)
    raw = dataclasses.replace(model, network={"c0_ms": 0.0, "scale": 1.0})
    a, b = nets[0][0], nets[1][0]
    prior = {g.config_key(): estimate_total_ms([g], raw) for g in (a, b)}
    table = _layer_table([(a, 2.0 * true_ms(a))] + [(b, 1.5 * true_ms(b))] * 6, model)
    assert table[a.config_key()] == pytest.approx(
        (2.0 * true_ms(a)) ** (1 / 3) * prior[a.config_key()] ** (2 / 3), rel=1e-9)
    assert table[b.config_key()] == pytest.approx(
        (1.5 * true_ms(b)) ** 0.75 * prior[b.config_key()] ** 0.25, rel=1e-9)
    assert prior[a.config_key()] == pytest.approx(true_ms(a), rel=0.05)  # the model knows the device
    # fit_profile's own table: every layer measured with up to 25% of luck either way, each
    # configuration's entry is its median pulled toward the fitted profile's raw time
    rng = random.Random(5)
    noisy = [(n, [true_ms(g) * rng.uniform(0.8, 1.25) for g in n]) for n in nets]
    prof = fit_profile(current_context("cpu", 1, 4), [], [(n, t, sum(t)) for n, t in noisy],
                       {"statistic": "min"})
    seen: dict[str, list[float]] = {}
    first: dict[str, LayerGeom] = {}
    for n, times in noisy:
        for g, t in zip(n, times):
            seen.setdefault(g.config_key(), []).append(t)
            first.setdefault(g.config_key(), g)
    raw = dataclasses.replace(prof, table={}, use_table=False, network={"c0_ms": 0.0, "scale": 1.0})
    moved = 0
    for key, times in seen.items():
        med, m = float(np.median(times)), estimate_total_ms([first[key]], raw)
        want = float(np.exp((len(times) * np.log(med) + 2 * np.log(m)) / (len(times) + 2)))
        assert prof.table[key] == pytest.approx(want, rel=1e-9)
        moved += abs(prof.table[key] / med - 1) > 0.01
    assert moved > len(seen) / 4  # the pull is seen, not only computed
    assert estimate(nets[0], prof).table["est_ms"].tolist()[0] == pytest.approx(
        prof.table[a.config_key()] * prof.network["scale"] + prof.network["per_layer_ms"], rel=1e-9)


def test_exported_trees_predict_like_sklearn() -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    model = GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0).fit(x, y)
    f = compile_trees(json.loads(json.dumps(_export_gbr(model, x[:1]))))
    ours = np.array([f(list(row)) for row in x[:50]])
    assert np.allclose(ours, model.predict(x[:50]), atol=1e-9)


def test_bad_device() -> None:
    with pytest.raises(CostModelError, match="unknown device 'gpu0'"):
        calibrate(device="gpu0", quick=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda() -> None:
    with pytest.raises(CostModelError, match="CUDA is not available"):
        calibrate(device="cuda", quick=True)


def test_tiny_real_calibration_gives_a_usable_profile(tmp_path: Path) -> None:
    prof = calibrate(quick=True, batch_size=2, n_networks=4, repeats=2, seed=3)
    assert prof.context["device"] == "cpu" and prof.context["batch_size"] == 2
    assert prof.context["threads"] == 1 and prof.context["torch_version"] == torch.__version__
    assert prof.protocol["statistic"] == "min" and prof.protocol["repeats"] == 2
    assert {"conv", "dense", "pool_max"} <= set(prof.coeffs)
    assert prof.fit_quality["network_oof"]["n"] == 4
    noise = prof.fit_quality["noise_floor"]  # odd against even rounds of the same networks
    assert noise["n"] == 4 and 0 <= noise["within_5pct"] <= noise["within_10pct"] <= 1
    assert noise["median_abs_pct"] >= 0
    back = DeviceProfile.load(prof.save(tmp_path / "p.json"))
    assert back.fit_quality["noise_floor"] == noise
    back.check_context(batch_size=2)
    net = synthetic_networks(1, 9)[0]
    assert estimate(net, back).total_est_ms == pytest.approx(estimate_total_ms(net, prof))
    assert estimate_total_ms(net, back) > 0


@pytest.mark.cuda
@needs_cuda
def test_cuda_calibration() -> None:
    prof = calibrate(device="cuda", quick=True, batch_size=8, n_networks=4, repeats=3)
    assert prof.context["device"] == "cuda"
    assert prof.context["device_name"] == torch.cuda.get_device_name(0)
    assert estimate_total_ms(synthetic_networks(1, 5)[0], prof) > 0


def test_repeat_agreement_compares_odd_and_even_rounds() -> None:
    # network 1: rounds 1.0, 1.2, 1.0, 1.1 -> minima 1.0 and 1.1 (10% apart: not within 10%)
    # network 2: 2.0, 2.05, 2.1, 2.2 -> 2.0 and 2.05 (2.5%); network 3: 3.0, 3.2 -> 3.0, 3.2 (6.7%)
    # a network timed once says nothing and is left out
    floor = repeat_agreement([[1.0, 1.2, 1.0, 1.1], [2.0, 2.05, 2.1, 2.2], [3.0, 3.2], [5.0]])
    assert floor is not None and floor["n"] == 3
    assert floor["within_10pct"] == pytest.approx(2 / 3)
    assert floor["within_5pct"] == pytest.approx(1 / 3)
    assert floor["median_abs_pct"] == pytest.approx(100 * 0.2 / 3)
    assert repeat_agreement([[1.0]]) is None


def test_a_noisy_calibration_says_so_and_keeps_its_noise_floor(tmp_path: Path) -> None:
    nets = synthetic_networks(12, 6)
    data = [(n, [true_ms(g) for g in n], sum(true_ms(g) for g in n)) for n in nets]
    said: list[str] = []
    noisy = {"n": 12, "within_10pct": 0.5, "within_5pct": 0.25, "median_abs_pct": 9.5}
    measured = Measurements(context=current_context("cpu", 1, 8), protocol={"statistic": "min"},
                            networks=data, noise_floor=noisy)
    prof = fit_measurements(measured, progress=said.append)
    assert prof.fit_quality["noise_floor"] == noisy
    assert any("repeatability" in m and "within 10% for 50%" in m for m in said)
    assert any(m.startswith("warning: the machine was noisy") and "only 50%" in m for m in said)
    back = Measurements.load(measured.save(tmp_path / "m.json"))
    assert back.noise_floor == noisy
    quiet = dict(noisy, within_10pct=0.85)
    said.clear()
    fit_measurements(dataclasses.replace(measured, noise_floor=quiet), progress=said.append)
    assert not any("warning" in m for m in said)
    said.clear()
    assert "noise_floor" not in fit_measurements(dataclasses.replace(measured, noise_floor=None),
                                                 progress=said.append).fit_quality
    assert not any("repeatability" in m or "noisy" in m for m in said)


"""estimate(): columns, closed-form numbers with a hand-made profile, batch rules, fast path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from costmodel.device_profile import DeviceProfile, default_profile
from costmodel.errors import CostModelError
from costmodel.estimator import (
    COLUMNS,
    balance_summary,
    compile_trees,
    estimate,
    estimate_layers_ms,
    estimate_total_ms,
)
from costmodel.geometry import LayerGeom

GEOMS = [
    LayerGeom("s1.conv1", "conv", 1, 8, 28, 28, 28, 28, kernel=5, padding=2, activation="relu"),
    LayerGeom("s1.pool", "pool", 8, 8, 28, 28, 14, 14, 2, 2, bias=False),
    LayerGeom("s2.conv1", "conv", 8, 16, 14, 14, 14, 14, kernel=3, padding=1, activation="relu"),
    LayerGeom("s2.pool", "pool", 16, 16, 14, 14, 7, 7, 2, 2, bias=False),
    LayerGeom("fc1", "dense", 784, 64, 1, 1, 1, 1, activation="relu"),
    LayerGeom("classifier", "dense", 64, 10, 1, 1, 1, 1),
]


def hand_profile(batch_size: int = 4, **changes) -> DeviceProfile:
    fields = dict(
        context={"device": "cpu", "device_name": "test-cpu", "threads": 1,
                 "torch_version": "0", "dtype": "float32", "batch_size": batch_size},
        coeffs={"conv": {"c": 0.1, "a": 1e-6, "b": 1e-5}, "dense": {"c": 0.05, "a": 2e-6, "b": 0.0},
                "pool_max": {"c": 0.02, "a": 0.0, "b": 1e-6}},
        t_k_ms={"conv": 1e-4, "dense": 2e-4, "pool": 1e-5},
        act_elem_ms={"relu": 1e-6},
        network={"c0_ms": 0.5, "scale": 2.0},
    )
    fields.update(changes)
    return DeviceProfile(**fields)


def linear_ms(g: LayerGeom) -> float:
    c = {"conv": (0.1, 1e-6, 1e-5), "dense": (0.05, 2e-6, 0.0), "pool": (0.02, 0.0, 1e-6)}[g.op]
    act = g.acts * 1e-6 if g.activation else 0.0
    return c[0] + c[1] * g.macs + c[2] * g.bytes + act


def test_columns_and_closed_form_numbers() -> None:
    report = estimate(GEOMS, hand_profile())
    assert tuple(report.table.columns) == COLUMNS
    expected = [2.0 * linear_ms(g) for g in GEOMS]
    assert report.table["est_ms"].tolist() == pytest.approx(expected, rel=1e-12)
    assert report.total_est_ms == pytest.approx(sum(expected) + 0.5, rel=1e-12)
    assert report.overhead_ms == 0.5
    seed = report.table["t_c_seed_ms"].tolist()
    assert seed[0] == pytest.approx(784 * 8 * 1e-4)
    assert seed[1] == pytest.approx(196 * 8 * 1e-5)
    assert seed[4] == pytest.approx(64 * 2e-4)
    assert report.total_macs == sum(g.macs for g in GEOMS)
    assert report.total_params == sum(g.params for g in GEOMS)
    assert not report.is_default_profile and "test-cpu" in report.profile_note


def test_fast_path_equals_report() -> None:
    prof = hand_profile()
    report = estimate(GEOMS, prof)
    assert estimate_total_ms(GEOMS, prof) == pytest.approx(report.total_est_ms, rel=1e-12)
    per_layer, overhead = estimate_layers_ms(GEOMS, prof)
    assert per_layer == pytest.approx(report.table["est_ms"].tolist(), rel=1e-12)
    assert overhead == 0.5


def test_balance_over_conv_layers() -> None:
    est = [1.0, 5.0, 3.0, 5.0, 9.0, 9.0]  # conv layers are 1.0 and 3.0
    bal = balance_summary(GEOMS, est)
    assert bal["cv"] == pytest.approx(0.5)
    assert bal["max_over_mean"] == pytest.approx(1.5)
    assert balance_summary(GEOMS[4:], [1.0, 2.0]) == {"cv": 0.0, "max_over_mean": 1.0}


def test_calibrated_profile_refuses_other_batch_size() -> None:
    with pytest.raises(CostModelError, match="batch size 4, not 8"):
        estimate(GEOMS, hand_profile(), batch_size=8)
    assert estimate(GEOMS, hand_profile(), batch_size=4).batch_size == 4


def test_default_profile_scales_linearly_and_says_so() -> None:
    one = estimate(GEOMS)
    assert one.is_default_profile and "default" in one.profile_note and one.batch_size == 1
    two = estimate(GEOMS, None, batch_size=2)
    coeffs = default_profile().coeffs
    conv = coeffs["conv"]
    g = GEOMS[0]
    extra = g.acts * default_profile().act_elem_ms["relu"]
    per_sample = conv["a"] * g.macs + conv["b"] * g.bytes + extra
    assert two.table["est_ms"][0] - one.table["est_ms"][0] == pytest.approx(per_sample, rel=1e-9)


def test_table_hit_wins_over_regression() -> None:
    prof = hand_profile(table={GEOMS[0].config_key(): 7.0})
    assert estimate(GEOMS, prof).table["est_ms"][0] == pytest.approx(2.0 * 7.0)
    off = hand_profile(table={GEOMS[0].config_key(): 7.0}, use_table=False)
    assert estimate(GEOMS, off).table["est_ms"][0] == pytest.approx(2.0 * linear_ms(GEOMS[0]))


def test_compiled_trees_evaluate_like_the_arrays() -> None:
    # One stump on feature 1 (threshold 2.0 -> -1.0 / +1.0) and one leaf-only tree (0.5).
    model = {"init": 0.25, "lr": 0.1,
             "trees": [[[1, -2, -2], [2.0, -2.0, -2.0], [1, -1, -1], [2, -1, -1], [0.0, -1.0, 1.0]],
                       [[-2], [-2.0], [-1], [-1], [0.5]]]}
    f = compile_trees(model)
    assert f([0.0, 1.0]) == pytest.approx(0.25 + 0.1 * (-1.0 + 0.5))
    assert f([0.0, 3.0]) == pytest.approx(0.25 + 0.1 * (1.0 + 0.5))


def test_report_to_dict_is_json_and_measurements_attach() -> None:
    from costmodel.profile import ModelProfile

    report = estimate(GEOMS, hand_profile())
    meas = ModelProfile(tuple(GEOMS), tuple(1.0 for _ in GEOMS), tuple(0.1 for _ in GEOMS), 6.5,
                        0.2, 6.4, "cpu", 1, 4, 3)
    both = report.with_measurements(meas)
    assert list(both.table.columns) == list(COLUMNS) + ["meas_ms", "meas_iqr_ms"]
    d = json.loads(json.dumps(both.to_dict()))
    assert d["e2e_meas_ms"] == 6.5 and d["layers"][0]["meas_ms"] == 1.0
    assert d["balance"] == report.balance
    with pytest.raises(CostModelError, match="profiled 1 layers"):
        report.with_measurements(ModelProfile(tuple(GEOMS[:1]), (1.0,), (0.1,), 1.0, 0.1, 1.0,
                                              "cpu", 1, 4, 3))


def test_empty_network_is_an_error() -> None:
    with pytest.raises(CostModelError, match="no layers"):
        estimate([])


def test_pricing_modules_do_not_import_torch() -> None:
    code = (
        "import sys, costmodel.geometry, costmodel.estimator, costmodel.device_profile, "
        "costmodel.report; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_network_correction_never_prices_a_small_network_at_or_below_zero():
    """A calibration fit with a negative constant and per-layer term (seen on a quick profile)
    must not extrapolate to <= 0 ms for a network smaller than the calibration networks."""
    import dataclasses

    from costmodel.device_profile import default_profile
    from costmodel.estimator import estimate_layers_ms, estimate_total_ms
    from costmodel.geometry import LayerGeom
    from costmodel.modeldef import MIN_SHARE_OF_LAYER_SUM

    base = default_profile()
    bent = dataclasses.replace(base, network={"c0_ms": -5.0, "scale": 0.9, "per_layer_ms": -1.0})
    geoms = [LayerGeom("c", "conv", 1, 8, 8, 8, 8, 8, kernel=3, padding=1, activation="relu"),
             LayerGeom("fc", "dense", 512, 10, 1, 1, 1, 1)]
    neutral = dataclasses.replace(base, network={"c0_ms": 0.0, "scale": 1.0, "per_layer_ms": 0.0})
    layer_sum = estimate_total_ms(geoms, neutral, 1)
    total = estimate_total_ms(geoms, bent, 1)
    per_layer, overhead = estimate_layers_ms(geoms, bent, 1)
    assert total > 0 and all(t > 0 for t in per_layer)
    # floors: each layer >= share x scale x its raw time; the constant removes at most (1 - share)
    assert total >= MIN_SHARE_OF_LAYER_SUM**2 * 0.9 * layer_sum - 1e-12
    assert abs(sum(per_layer) + overhead - total) < 1e-12


def test_log_form_network_correction_multiplies_every_layer_by_one_factor():
    """network["form"] == "log": est_ms = raw x exp(clamp(w . (1, ln S, ln^2 S, n/S))), no constant;
    the features are clamped to the fitted bounds and the factor to exp(+-LOG_NETWORK_CLAMP)."""
    import dataclasses
    import math

    from costmodel.modeldef import LOG_NETWORK_CLAMP

    neutral = hand_profile(network={"c0_ms": 0.0, "scale": 1.0})
    raw = [linear_ms(g) for g in GEOMS]
    s, n = sum(raw), len(GEOMS)
    bounds = [[-10.0, 10.0], [0.0, 1000.0]]
    coef = [0.05, 0.02, -0.01, 0.003]
    prof = dataclasses.replace(neutral, network={"form": "log", "log_coef": coef, "log_bounds": bounds})
    k = math.exp(coef[0] + coef[1] * math.log(s) + coef[2] * math.log(s) ** 2 + coef[3] * n / s)
    per_layer, overhead = estimate_layers_ms(GEOMS, prof)
    assert overhead == 0.0
    assert per_layer == pytest.approx([k * t for t in raw], rel=1e-12)
    assert estimate_total_ms(GEOMS, prof) == pytest.approx(k * s, rel=1e-12)
    assert estimate(GEOMS, prof).total_est_ms == pytest.approx(k * s, rel=1e-12)
    # ln S outside the fitted range counts as its bound
    narrow = dataclasses.replace(neutral, network={"form": "log", "log_coef": [0.0, 0.1, 0.0, 0.0],
                                                   "log_bounds": [[-1.0, -0.5], [0.0, 1000.0]]})
    assert estimate_total_ms(GEOMS, narrow) == pytest.approx(s * math.exp(0.1 * -0.5), rel=1e-12)
    # and n / S too (here 6 layers / S ms, above the bound 1.0)
    assert n / s > 1.0
    per = dataclasses.replace(neutral, network={"form": "log", "log_coef": [0.0, 0.0, 0.0, 0.2],
                                                "log_bounds": [[-10.0, 10.0], [0.0, 1.0]]})
    assert estimate_total_ms(GEOMS, per) == pytest.approx(s * math.exp(0.2 * 1.0), rel=1e-12)
    # the factor never leaves exp(+-clamp)
    wild = dataclasses.replace(neutral, network={"form": "log", "log_coef": [40.0, 0.0, 0.0, 0.0],
                                                 "log_bounds": bounds})
    assert estimate_total_ms(GEOMS, wild) == pytest.approx(s * math.exp(LOG_NETWORK_CLAMP), rel=1e-12)


def test_log_form_counting_module_calls_and_weighing_the_weights():
    """``"count": "calls"``: n is the network's module calls (a conv and its ReLU are two, the
    flatten before the first dense layer one: 6 layers, 10 calls here); five coefficients: W / S
    is a feature, W the conv and dense weights in MiB. A profile of four coefficients and no
    count prices as before (n = layers, no W)."""
    import dataclasses
    import math

    from costmodel.modeldef import module_calls, weight_mib

    assert module_calls(GEOMS) == 10
    params = (1 * 8 * 25 + 8) + (8 * 16 * 9 + 16) + (784 * 64 + 64) + (64 * 10 + 10)
    assert weight_mib(GEOMS) == pytest.approx(4 * params / 2**20, rel=1e-12)
    neutral = hand_profile(network={"c0_ms": 0.0, "scale": 1.0})
    raw = [linear_ms(g) for g in GEOMS]
    s, w = sum(raw), 4 * params / 2**20
    wide = [[-10.0, 10.0], [0.0, 1000.0], [0.0, 1000.0]]
    coef = [0.05, 0.02, -0.01, -0.003, -0.04]
    prof = dataclasses.replace(neutral, network={"form": "log", "log_coef": coef, "log_bounds": wide,
                                                 "count": "calls"})
    k = math.exp(coef[0] + coef[1] * math.log(s) + coef[2] * math.log(s) ** 2 - 0.003 * 10 / s - 0.04 * w / s)
    assert estimate_total_ms(GEOMS, prof) == pytest.approx(k * s, rel=1e-12)
    per_layer, overhead = estimate_layers_ms(GEOMS, prof)
    assert per_layer == pytest.approx([k * t for t in raw], rel=1e-12) and overhead == 0.0
    # counting layers (no "count"), with the weights feature
    layers = dataclasses.replace(neutral, network={"form": "log", "log_coef": coef, "log_bounds": wide})
    k6 = math.exp(coef[0] + coef[1] * math.log(s) + coef[2] * math.log(s) ** 2 - 0.003 * 6 / s - 0.04 * w / s)
    assert estimate_total_ms(GEOMS, layers) == pytest.approx(k6 * s, rel=1e-12)
    # W / S is clamped to its fitted range like the others
    capped = dataclasses.replace(prof, network=dict(prof.network, log_bounds=wide[:2] + [[0.0, 0.01]]))
    assert w / s > 0.01
    k_cap = math.exp(coef[0] + coef[1] * math.log(s) + coef[2] * math.log(s) ** 2 - 0.003 * 10 / s - 0.04 * 0.01)
    assert estimate_total_ms(GEOMS, capped) == pytest.approx(k_cap * s, rel=1e-12)
    # written as schema version 3 (a reader of version 2 would count layers and drop W), read back
    for p in (prof, layers):
        d = json.loads(json.dumps(p.to_dict()))
        assert d["schema_version"] == 3
        assert estimate_total_ms(GEOMS, DeviceProfile.from_dict(d)) == estimate_total_ms(GEOMS, p)
    old = dataclasses.replace(neutral, network={"form": "log", "log_coef": coef[:4], "log_bounds": wide[:2]})
    assert old.to_dict()["schema_version"] == 2
    k_old = math.exp(coef[0] + coef[1] * math.log(s) + coef[2] * math.log(s) ** 2 - 0.003 * 6 / s)
    assert estimate_total_ms(GEOMS, old) == pytest.approx(k_old * s, rel=1e-12)


@pytest.mark.parametrize("network", [
    {"form": "log", "log_coef": [0.1, 0.2], "log_bounds": [[0, 1], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, "x"], "log_bounds": [[0, 1], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0], "log_bounds": [[0, float("nan")], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0], "log_bounds": [[1, 0], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0, 0.0], "log_bounds": [[0, 1], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0], "log_bounds": [[0, 1], [0, 1], [0, 1]]},
    {"form": "log", "log_coef": [0.1, 0.2, 0.0, 0.0], "log_bounds": [[0, 1], [0, 1]], "count": "leaves"},
    {"form": "cubic"},
])
def test_malformed_network_correction_is_a_clear_error(network):
    import dataclasses

    prof = dataclasses.replace(hand_profile(), network=network)
    with pytest.raises(CostModelError, match="network correction is malformed"):
        estimate_total_ms(GEOMS, prof)

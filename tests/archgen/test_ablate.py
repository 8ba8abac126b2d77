"""``archgen ablate``: matched arms, the JSON document, the statistics, the arms' networks."""

from __future__ import annotations

import json
import math

import pytest

from archgen.ablate import AblateSettings, drawn_configs, fit_all_arms, run_ablation
from archgen.ablate_factors import FACTORS, arm_spec, factor, strided, tapered
from archgen.ablate_report import mean_ci, render, summarize
from archgen.cli import main
from archgen.errors import UserError
from archgen.ops import ConvSpec, DenseSpec, PoolSpec
from archgen.space import default_space

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)


def _params(shape: tuple[int, int, int] = MNIST, **over: object) -> dict:
    return {**{n: p.default_value() for n, p in default_space(shape).items()}, **over}


def test_mean_ci_is_a_student_t_interval() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["hi"] - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([5.0]) == {"mean": 5.0, "lo": None, "hi": None, "n": 1}
    assert mean_ci([None, float("nan")])["n"] == 0


def test_r1_arms_grow_filters_by_4_by_2_and_not_at_all() -> None:
    params = FACTORS["R1"].prepare(_params(stages=1, base_filters=16, max_filters=256), 4)
    widths = {}
    for arm in FACTORS["R1"].arms:
        spec = arm_spec(arm, params, MNIST, 10)
        widths[arm.name] = [layer.filters for layer in spec.layers if isinstance(layer, ConvSpec)]
    assert widths == {"growth x4": [16, 64, 256], "growth x2": [16, 32, 64], "constant width": [16, 16, 16]}


def test_r4_alternative_subsamples_with_stride_2_convs_instead_of_pooling() -> None:
    spec = arm_spec(FACTORS["R4"].arms[0], _params(stages=3), MNIST, 10)
    alt = strided(spec)
    assert not any(isinstance(layer, PoolSpec) for layer in alt.layers)
    assert [c.stride for c in alt.layers if isinstance(c, ConvSpec)] == [2, 2, 2]
    assert alt.shapes()[-1] == spec.shapes()[-1] or alt.shapes()[-1][1] >= spec.shapes()[-1][1]


def test_r6_alternative_tapers_the_dense_head() -> None:
    prepared = FACTORS["R6"].prepare(_params(dense_units=256), 3)
    spec = arm_spec(FACTORS["R6"].arms[0], prepared, MNIST, 10)
    assert [d.units for d in spec.layers if isinstance(d, DenseSpec)] == [256, 256]
    assert [d.units for d in tapered(spec).layers if isinstance(d, DenseSpec)] == [256, 128]


def test_r2_arms_give_the_rule_kernel_then_3x3_then_5x5() -> None:
    fac = FACTORS["R2"]
    params = fac.prepare(_params(stages=3), 3)
    assert params["stages"] == 2
    kernels = [{c.kernel for c in arm_spec(a, params, MNIST, 10).layers if isinstance(c, ConvSpec)} for a in fac.arms]
    assert kernels == [{5}, {3}, {5}]  # 28 px, 2 stages: the rule says 5x5


def test_arms_stay_matched_when_one_cannot_build_the_drawn_depth() -> None:
    fac = FACTORS["R5"]
    params = fit_all_arms(fac, _params(DIGITS, stages=3), DIGITS, 10)
    assert params["stages"] == 1  # valid 3x3 convs leave an 8x8 input too small for a second stage
    specs = [arm_spec(a, params, DIGITS, 10) for a in fac.arms]
    assert [s.layers[0].padding for s in specs] == ["same", "valid"]


def test_draws_are_the_default_configuration_then_seeded_samples() -> None:
    space = default_space(DIGITS)
    a, b = drawn_configs(space, 3, seed=1), drawn_configs(space, 3, seed=1)
    assert a == b and a[0] == {n: p.default_value() for n, p in space.items()}
    assert drawn_configs(space, 3, seed=2)[1:] != a[1:]


def test_unknown_rule_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ablate", "--rule", "R9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "R9" in err and "R1" in err and "\n" not in err
    with pytest.raises(UserError):
        factor("nope")
    assert factor("r3").name == "R3" and factor("Early-Stopping").name == "early-stopping"


def test_ablate_cli_json_document(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "abl"
    code = main(["ablate", "--rule", "early-stopping", "--seeds", "2", "--networks", "1", "--epochs", "2",
                 "--no-measure", "--format", "json", "--out", str(out)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((out / "ablate.json").read_text())
    assert (out / "ablate.png").stat().st_size > 10_000 and (out / "runs.csv").read_text().count("\n") == 5
    assert doc["schema"] == 1 and doc["factor"] == "early-stopping"
    assert doc["arms"] == ["early stopping", "all epochs, last weights"]
    assert {(r["seed"], r["network"], r["arm"]) for r in doc["runs"]} == {
        (s, 0, a) for s in (0, 1) for a in doc["arms"]}
    for r in doc["runs"]:
        assert r["status"] == "ok" and 0.0 <= r["test_acc"] <= 1.0 and r["est_ms"] > 0 and r["meas_ms"] is None
    fixed = [r for r in doc["runs"] if r["arm"] == "all epochs, last weights"]
    assert all(r["epochs"] == 2 for r in fixed)
    # each seed's pair is the same network
    by_seed = {}
    for r in doc["runs"]:
        by_seed.setdefault(r["seed"], set()).add(r["spec_key"])
    assert all(len(keys) == 1 for keys in by_seed.values())
    assert [s["trained"] for s in doc["summary"]] == [2, 2]
    paired = doc["paired"][0]
    assert paired["pairs"] == 2 and paired["vs"] == "early stopping"
    diffs = [b["test_acc"] - a["test_acc"] for a, b in zip(doc["runs"][::2], doc["runs"][1::2])]
    assert paired["test_acc"]["mean"] == pytest.approx(sum(diffs) / 2)


def test_measured_ablation_reports_per_layer_balance() -> None:
    doc = run_ablation(AblateSettings(rule="R1", seeds=1, networks=1, epochs=1))
    assert len(doc["runs"]) == 3
    for r in doc["runs"]:
        assert r["meas_ms"] > 0 and r["conv_cv_est"] is not None and r["conv_cv_meas"] is not None
    x4, x2, flat = doc["runs"]
    assert x4["macs"] > x2["macs"] > flat["macs"]
    text = render(doc, "markdown")
    assert text.count("\n| growth") == 2 and "| constant width |" in text
    again = summarize(doc)
    assert again["summary"] == doc["summary"]


def test_rebalance_evens_out_the_convs_after_the_stem() -> None:
    """The balanceable convs (all but the stem) of drawn 3-stage networks end with an estimated
    time spread (CV) at or under 0.15 in the median, without costing more conv time."""
    import statistics

    from archgen.balance import conv_times, rebalance
    from costmodel.device_profile import default_profile

    profile = default_profile()
    fac = FACTORS["balance"]
    before, after = [], []
    for seed in range(12):
        params = fac.prepare(drawn_configs(default_space(MNIST), 2, seed)[1], 3)
        spec = arm_spec(fac.arms[0], params, MNIST, 10)
        bal = rebalance(spec, profile, 1)
        assert sum(conv_times(bal.spec, profile, 1)[0]) <= sum(conv_times(spec, profile, 1)[0]) * (1 + 1e-9)
        before.append(bal.cv_before)
        after.append(bal.cv_after)
    assert statistics.median(after) <= 0.15 < statistics.median(before)
    assert all(a <= b + 1e-12 for a, b in zip(after, before))

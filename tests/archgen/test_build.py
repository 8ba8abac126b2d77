from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from archgen.build import build_model, count_params
from archgen.costing import layer_names, spec_geoms
from archgen.generator import sample_specs
from archgen.rules import RuleSet
from archgen.spec import INIT_SCHEMES, ArchSpec, ConvSpec, DenseSpec, InitSpec, PoolSpec

CASES = [((1, 8, 8), 0), ((1, 28, 28), 1), ((3, 32, 32), 2), ((3, 224, 224), 3)]


@pytest.mark.parametrize("shape, seed", CASES)
def test_every_generated_spec_builds_runs_and_counts(shape, seed):
    n = 8 if shape[1] >= 224 else 25
    for spec in sample_specs(shape, 7, n, seed=seed, rules=RuleSet(stacking=seed % 2 == 1)):
        model = build_model(spec).eval()
        with torch.no_grad():
            y = model(torch.randn(3, *shape))
        assert y.shape == (3, 7)
        assert torch.isfinite(y).all()
        assert count_params(model) == spec.num_params() == sum(g.params for g in spec_geoms(spec))


def test_module_names_match_costing_names():
    spec = sample_specs((1, 28, 28), 10, 1, seed=5)[0]
    model = build_model(spec)
    module_names = {n for n, _ in model.named_modules()}
    assert set(layer_names(spec)) <= module_names
    assert "classifier" in module_names and "s1.conv1" in module_names


def _expected_r(scheme: str, fan_in: int, fan_out: int) -> float:
    # Written independently of archgen.spec.init_bound.
    return {
        "textbook_uniform": 1 / (fan_in * fan_in),
        "lecun_uniform": fan_in ** -0.5,
        "glorot_uniform": math.sqrt(6 / (fan_in + fan_out)),
        "kaiming_uniform": math.sqrt(6 / fan_in),
    }[scheme]


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_init_bias_zero_weights_within_r(scheme):
    spec = ArchSpec((1, 12, 12), 4, (ConvSpec(6, 3), PoolSpec(), ConvSpec(12, 5), DenseSpec(40)), InitSpec(scheme))
    model = build_model(spec, seed=0)
    fans = {
        "s1.conv1": (1 * 9, 6 * 9),
        "s2.conv1": (6 * 25, 12 * 25),
        "fc1": (12 * 6 * 6, 40),
        "classifier": (40, 4),
    }
    for name, (fan_in, fan_out) in fans.items():
        layer = model.get_submodule(name)
        r = _expected_r(scheme, fan_in, fan_out)
        assert torch.all(layer.bias == 0)
        w = layer.weight.abs().max().item()
        assert w <= r * (1 + 1e-6)
        assert w >= 0.8 * r, f"{name}: weights do not fill [-r, r]"  # really uses the range
    # the textbook example: 6 inputs -> [-1/36, 1/36]
    if scheme == "textbook_uniform":
        lin = nn.Linear(6, 3)
        from archgen.build import init_weights

        init_weights(nn.Sequential(lin), scheme, seed=0)
        assert lin.weight.abs().max() <= 1 / 36


def test_seeded_init_is_reproducible():
    spec = sample_specs((1, 28, 28), 10, 1, seed=0)[0]
    a, b = build_model(spec, seed=3), build_model(spec, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

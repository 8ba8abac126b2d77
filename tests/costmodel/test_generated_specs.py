"""Acceptance 1: for specs from archgen's generator, per-layer MACs equal fvcore's conv and
linear counts exactly and params equal the built module's count."""

from __future__ import annotations

import pytest
import torch
from costmodel_refnets import fvcore_conv_linear

from costmodel.geometry import geoms_from_module

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_generated_specs_match_fvcore_and_torch(shape: tuple[int, int, int]) -> None:
    from archgen.build import build_model
    from archgen.costing import spec_geoms
    from archgen.generator import Budget, sample_specs

    specs = sample_specs(shape, 10, 8, seed=7, budget=Budget(max_macs=200_000_000))
    assert len(specs) == 8
    for spec in specs:
        geoms = spec_geoms(spec)
        model = build_model(spec, seed=0)
        x = torch.randn(1, *shape)
        ours = {g.name: g.macs for g in geoms if g.op in ("conv", "dense") and g.macs}
        assert ours == fvcore_conv_linear(model, x), spec.short_name()
        assert sum(g.params for g in geoms) == sum(p.numel() for p in model.parameters())
        # The module walk sees the same layers as the spec adapter.
        walked = geoms_from_module(model, x)
        assert [(g.name, g.op, g.macs, g.params) for g in walked] == [
            (g.name, g.op, g.macs, g.params) for g in geoms
        ], spec.short_name()


def _leaves(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if next(iter(m.children()), None) is None)


def test_module_calls_are_the_leaf_modules_a_network_runs() -> None:
    """The log-form network correction counts a torch network's module calls (each hooked when
    layers are timed): ``module_calls`` equals the leaf modules of archgen's built networks, of
    the calibration's (``build_module``) and the calls traced from a module; ``weight_mib`` their
    conv and linear weights."""
    import random

    from archgen.build import build_model
    from archgen.costing import spec_geoms
    from archgen.generator import Budget, sample_specs
    from costmodel.activations import ACTIVATIONS
    from costmodel.measurements import geom_to_dict
    from costmodel.modeldef import module_calls, weight_mib
    from costmodel.netgen import random_plain_cnn
    from costmodel.timing import build_module

    specs = sample_specs((3, 32, 32), 10, 8, seed=3, budget=Budget(max_macs=50_000_000))
    for spec in specs:
        geoms, model = spec_geoms(spec), build_model(spec, seed=0)
        assert module_calls(geoms) == _leaves(model) > len(geoms), spec.short_name()
        walked = geoms_from_module(model, torch.randn(1, 3, 32, 32))
        assert module_calls(walked) == _leaves(model)
        weights = sum(m.weight.numel() + m.bias.numel() for m in model.modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert weight_mib(geoms) * 2**20 == 4 * weights
    rng = random.Random(5)
    for _ in range(20):
        geoms = random_plain_cnn(rng, max_macs=5_000_000)
        model, _ = build_module([geom_to_dict(g) for g in geoms], ACTIVATIONS)
        assert module_calls(geoms) == _leaves(model)

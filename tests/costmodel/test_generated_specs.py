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

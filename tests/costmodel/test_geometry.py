"""LayerGeom arithmetic against closed forms, and module walking against fvcore and torch."""

from __future__ import annotations

import pytest
from costmodel_refnets import fvcore_conv_linear

from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom, geoms_from_module


def test_conv_closed_form() -> None:
    g = LayerGeom("s1.conv1", "conv", 3, 16, 28, 28, 28, 28, kernel=5, padding=2)
    assert g.n_p == 784 and g.n_f == 16
    assert g.macs == 784 * 16 * 3 * 25 == 940_800
    assert g.params == 16 * 3 * 25 + 16 == 1216
    assert g.acts == 16 * 784
    assert g.bytes == (3 * 784 + 16 * 784 + 1216) * 4


def test_grouped_conv_and_dense_closed_form() -> None:
    g = LayerGeom("dw", "conv", 32, 32, 14, 14, 7, 7, kernel=3, stride=2, padding=1, groups=32,
                  bias=False)
    assert g.macs == 49 * 32 * 1 * 9
    assert g.params == 32 * 9
    d = LayerGeom("fc1", "dense", 400, 120, 1, 1, 1, 1)
    assert (d.macs, d.params, d.acts, d.bytes) == (48_000, 48_120, 120, (400 + 120 + 48_120) * 4)


def test_non_compute_ops_have_no_macs() -> None:
    pool = LayerGeom("p", "pool", 8, 8, 28, 28, 14, 14, 2, 2, bias=False)
    bn = LayerGeom("bn", "bn", 8, 8, 14, 14, 14, 14, bias=False)
    assert pool.macs == 0 and pool.params == 0 and pool.acts == 8 * 196
    assert bn.macs == 0 and bn.params == 16


def test_bad_geometry_is_named() -> None:
    with pytest.raises(CostModelError, match="c_in=0"):
        LayerGeom("x", "conv", 0, 8, 4, 4, 4, 4)
    with pytest.raises(CostModelError, match="unknown op 'lstm'"):
        LayerGeom("x", "lstm", 1, 8, 4, 4, 4, 4)
    with pytest.raises(CostModelError, match="groups=3"):
        LayerGeom("x", "conv", 4, 8, 4, 4, 4, 4, groups=3)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg"])
def test_macs_equal_fvcore_and_params_equal_torch(reference_nets, name: str) -> None:
    module, x = reference_nets[name]
    geoms = geoms_from_module(module, x)
    ours = {g.name: g.macs for g in geoms if g.op in ("conv", "dense")}
    assert ours == fvcore_conv_linear(module, x)
    assert sum(g.params for g in geoms) == sum(p.numel() for p in module.parameters())


def test_alexnet_geometry_and_fusion(reference_nets) -> None:
    module, x = reference_nets["alexnet"]
    geoms = geoms_from_module(module, x)
    first = geoms[0]
    assert (first.op, first.kernel, first.stride, first.padding) == ("conv", 11, 4, 2)
    assert (first.h_out, first.w_out, first.activation) == (55, 55, "relu")
    ops = [g.op for g in geoms]
    # ReLUs are fused (no "act" rows); dropout is kept as a free layer.
    assert "act" not in ops and ops.count("conv") == 5 and ops.count("dropout") == 2
    dense = [g for g in geoms if g.op == "dense"]
    assert dense[0].c_in == 256 * 6 * 6 and (dense[0].h_in, dense[0].w_in) == (1, 1)


def test_batchnorm_breaks_fusion_and_activation_stands_alone(reference_nets) -> None:
    module, x = reference_nets["vgg"]
    geoms = geoms_from_module(module, x)
    assert [g.op for g in geoms[:4]] == ["conv", "bn", "act", "conv"]
    assert geoms[0].activation is None and geoms[2].activation == "relu"
    gap = next(g for g in geoms if g.op == "gap")
    assert (gap.c_in, gap.h_in, gap.h_out) == (128, 4, 1)


def test_module_reused_twice_gets_two_rows() -> None:
    import torch
    from torch import nn

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(self.act(self.conv(x))))

    geoms = geoms_from_module(Twice(), torch.randn(2, 4, 8, 8))
    assert [g.name for g in geoms] == ["conv", "conv#2"]
    assert all(g.activation == "relu" for g in geoms)


def test_unsupported_module_is_named() -> None:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.Upsample(scale_factor=2)))
    with pytest.raises(CostModelError, match=r"'1\.0' of type Upsample"):
        geoms_from_module(model, torch.randn(1, 1, 8, 8))
    model = nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2))
    with pytest.raises(CostModelError, match="dilation"):
        geoms_from_module(model, torch.randn(1, 1, 8, 8))
    model = nn.Sequential(nn.Conv1d(1, 4, 3))
    with pytest.raises(CostModelError, match="Conv1d"):
        geoms_from_module(model, torch.randn(1, 1, 8))


def test_training_flag_restored() -> None:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()
    geoms_from_module(model, torch.randn(2, 1, 6, 6))
    assert model.training

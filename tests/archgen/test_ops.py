"""The layer-op registry: every op's analytic shape, parameter count, module path and LayerGeom
agree with the module it builds, with the torch-module trace of costmodel and with fvcore."""

from __future__ import annotations

import pytest

from archgen.costing import layer_names, spec_geoms, spec_macs
from archgen.errors import SpecError
from archgen.ops import OPS, ConvSpec, DenseSpec, GapSpec, PoolSpec
from archgen.spec import ArchSpec, BatchNormSpec, DropoutSpec, layer_from_dict, layer_to_dict

torch = pytest.importorskip("torch")
fvcore_nn = pytest.importorskip("fvcore.nn")


def _spec_with(op: str) -> ArchSpec:
    """A small network with one or more layers of ``op``, before and inside the head where the
    op may stand in both (batch norm and dropout build different modules there)."""
    conv = ConvSpec(8, 3, activation="tanh")
    stride2 = ConvSpec(6, 3, stride=2, padding="valid", activation="none")
    layers = {
        "conv": (conv, stride2, ConvSpec(4, 5, padding=1, activation="gelu")),
        "pool": (conv, PoolSpec("max", 2, 2), conv, PoolSpec("avg", 3, 1)),
        "dense": (conv, PoolSpec(), DenseSpec(20, "sigmoid"), DenseSpec(12, "none")),
        "batchnorm": (conv, BatchNormSpec(), PoolSpec(), DenseSpec(16), BatchNormSpec()),
        "dropout": (conv, DropoutSpec(0.25), PoolSpec(), DenseSpec(16, "leaky_relu"), DropoutSpec(0.5)),
        "gap": (conv, PoolSpec(), ConvSpec(12, 3), GapSpec(), DenseSpec(10)),
    }[op]
    return ArchSpec((3, 12, 12), 7, tuple(layers)).validate()


def _fvcore_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    analysis = fvcore_nn.FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()  # fvcore also counts batch norm and pooling; MACs are conv + dense
    return int(sum(by_op.get(name, 0) for name in ("conv", "linear", "addmm")))


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_agrees_with_its_module_with_the_trace_and_with_fvcore(op: str) -> None:
    from archgen.build import build_model, count_params
    from costmodel.geometry import geoms_from_module

    spec = _spec_with(op)
    assert any(layer.op == op for layer in spec.layers)
    model = build_model(spec, seed=0).eval()
    x = torch.zeros(2, *spec.input_shape)

    # Shapes: the analytic shape after each layer is what its modules produce.
    shapes, h = [], x
    named = dict(model.named_modules())
    for name, expect in zip(layer_names(spec), spec.shapes()):
        module = named[name]
        while True:  # a flatten that precedes the first dense layer is part of the input
            try:
                h = module(h)
                break
            except RuntimeError:
                h = h.flatten(1)
        act = named.get(name.replace("conv", "act")) if "conv" in name else named.get(f"{name}_act")
        if act is not None:
            h = act(h)
        got = tuple(h.shape[1:]) if h.dim() == 4 else (h.shape[1], 1, 1)
        shapes.append(got)
        assert got == expect, (name, got, expect)
    assert model(x).shape == (2, spec.num_classes)

    # Parameters, and the geometry of every priced layer.
    assert spec.num_params() == count_params(model) == sum(g.params for g in spec_geoms(spec))
    analytic = spec_geoms(spec)
    traced = geoms_from_module(model, x[:1])
    assert [(g.name, g.op, g.macs, g.params) for g in analytic] == [
        (g.name, g.op, g.macs, g.params) for g in traced
    ]
    # every field that prices a layer (config_tuple normalises fields an op ignores)
    assert [(g.name, g.config_tuple()) for g in analytic] == [(g.name, g.config_tuple()) for g in traced]

    # MACs: the registry's count, the geometries' and fvcore's (per image).
    assert spec_macs(spec) == sum(g.macs for g in analytic) == _fvcore_macs(model, x[:1])


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_round_trips_through_the_file_format_and_has_a_short_name(op: str) -> None:
    spec = _spec_with(op)
    for layer in spec.layers:
        assert layer_from_dict(0, layer_to_dict(layer)) == layer
        assert layer.short()
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert len(spec.short_name().split("-")) == len(spec.layers)


def test_module_paths_follow_the_stages_and_the_head() -> None:
    spec = _spec_with("batchnorm")
    assert layer_names(spec) == ["s1.conv1", "s1.bn1", "s1.pool", "fc1", "bn_fc1"]
    spec = _spec_with("dropout")
    assert layer_names(spec) == ["s1.conv1", "s1.drop1", "s1.pool", "fc1", "drop1"]
    assert layer_names(_spec_with("gap")) == ["s1.conv1", "s1.pool", "s2.conv1", "gap", "fc1"]


@pytest.mark.parametrize("op", ["conv", "pool", "gap"])
def test_spatial_ops_refuse_to_follow_a_dense_layer(op: str) -> None:
    layer = {"conv": ConvSpec(4, 3), "pool": PoolSpec(), "gap": GapSpec()}[op]
    with pytest.raises(SpecError, match=r"layer 1 \(\w+\): .* cannot follow a dense layer"):
        ArchSpec((1, 8, 8), 3, (DenseSpec(8), layer)).validate()

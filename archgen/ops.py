"""The layer-op registry: one definition per layer type of an ArchSpec.

Each op is a frozen dataclass (its fields are the spec file's keys) that knows, in one place,
everything archgen asks of a layer: its checks and output shape (``out_shape``), multiply-adds
and parameters, short name, module path in the built network (``local_name``), its cost-model
geometry (``geom``, the only contract with ``costmodel``) and its ``torch.nn`` modules
(``modules``; torch is imported there, lazily, so specs stay pure arithmetic).

Adding a layer type means one new class here, listed in ``OPS``; and, when its cost is of a
new kind, one handler in ``costmodel.geometry`` (the torch-module table) and one op class in
the cost model. Nothing else dispatches on layer types.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from archgen.errors import SpecError
from archgen.inputs import excerpt
from costmodel.geometry import LayerGeom

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, int, int]  # (C, H, W); a dense layer's output is (units, 1, 1)

MAX_WIDTH = 65_536  # filters of a conv, units of a dense layer
MAX_KERNEL = 64  # kernel size and stride

# The one activation table: spec name -> torch.nn class name (None: no activation module).
ACTIVATION_MODULES: dict[str, str | None] = {
    "relu": "ReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "gelu": "GELU",
    "leaky_relu": "LeakyReLU",
    "none": None,
}
ACTIVATIONS = tuple(ACTIVATION_MODULES)
POOL_MODES = ("max", "avg")


def activation_module(name: str) -> nn.Module | None:
    """A fresh activation module for the spec's activation name (None for ``"none"``)."""
    from torch import nn

    cls = ACTIVATION_MODULES.get(name)
    return None if cls is None else getattr(nn, cls)()


def _geom_activation(name: str) -> str | None:
    return None if name == "none" else name


def positive_int(where: str, name: str, value: object, limit: int) -> None:
    if type(value) is not int or value < 1:
        raise SpecError(f"{where}: {name} must be a positive integer, got {excerpt(value)}")
    if value > limit:
        raise SpecError(f"{where}: {name} {value:,} exceeds the limit of {limit:,}")


def check_activation(where: str, value: object) -> None:
    if value not in ACTIVATION_MODULES:
        raise SpecError(f"{where}: activation {excerpt(value)} must be one of {', '.join(ACTIVATIONS)}")


class Namer:
    """Module paths in the built network: layers before the first dense or global pooling
    layer live in stages ``s1, s2, ...`` (a stage ends with its pooling layer); the head has
    ``gap``, ``fc1, fc2, ...``, ``bn_fc1``, ``drop1``...; the classifier is ``classifier``."""

    def __init__(self) -> None:
        self.stage = 1
        self.in_stage: dict[str, int] = {}
        self.in_head: dict[str, int] = {}
        self.head = False

    def stage_layer(self, kind: str) -> str:
        self.in_stage[kind] = self.in_stage.get(kind, 0) + 1
        return f"s{self.stage}.{kind}{self.in_stage[kind]}"

    def end_stage(self, kind: str) -> str:
        name = f"s{self.stage}.{kind}"
        self.stage, self.in_stage = self.stage + 1, {}
        return name

    def head_layer(self, kind: str) -> str:
        self.in_head[kind] = self.in_head.get(kind, 0) + 1
        return f"{kind}{self.in_head[kind]}"


class LayerOp:
    """What every op defines (defaults: a layer that keeps the shape and costs nothing)."""

    op: ClassVar[str]
    after_dense: ClassVar[str | None] = None  # what a message calls it when it may not follow a dense layer
    starts_head: ClassVar[bool] = False  # a dense or global pooling layer ends the stages
    flattens: ClassVar[bool] = False  # a dense layer consumes the spatial map

    def out_shape(self, where: str, shape: Shape) -> Shape:
        return shape

    def macs(self, shape: Shape, out: Shape) -> int:
        return 0

    def num_params(self, shape: Shape) -> int:
        return 0

    def short(self) -> str:
        raise NotImplementedError

    def local_name(self, namer: Namer) -> str:
        raise NotImplementedError

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        raise NotImplementedError

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError


@dataclass(frozen=True)
class ConvSpec(LayerOp):
    """2-D convolution followed by its activation."""

    filters: int
    kernel: int
    stride: int = 1
    padding: str | int = "same"
    activation: str = "relu"
    op: ClassVar[str] = "conv"
    after_dense: ClassVar[str | None] = "a conv"

    def pad_amount(self) -> int:
        if self.padding == "same":
            return self.kernel // 2
        if self.padding == "valid":
            return 0
        return int(self.padding)

    def _check(self, where: str) -> None:
        positive_int(where, "filters", self.filters, MAX_WIDTH)
        positive_int(where, "kernel", self.kernel, MAX_KERNEL)
        positive_int(where, "stride", self.stride, MAX_KERNEL)
        check_activation(where, self.activation)
        if self.padding == "same":
            if self.kernel % 2 == 0:
                raise SpecError(f"{where}: kernel {self.kernel} is even; 'same' padding needs an odd kernel")
        elif self.padding != "valid" and not (
            isinstance(self.padding, int) and not isinstance(self.padding, bool) and 0 <= self.padding < self.kernel
        ):
            raise SpecError(
                f"{where}: padding {excerpt(self.padding)} must be 'same', 'valid' or an integer in [0, kernel)"
            )

    def out_shape(self, where: str, shape: Shape) -> Shape:
        self._check(where)
        _, h, w = shape
        p = self.pad_amount()
        h2 = (h + 2 * p - self.kernel) // self.stride + 1
        w2 = (w + 2 * p - self.kernel) // self.stride + 1
        if h2 < 1 or w2 < 1:
            raise SpecError(f"{where}: kernel {self.kernel} does not fit the {h}x{w} input map")
        return self.filters, h2, w2

    def macs(self, shape: Shape, out: Shape) -> int:
        return shape[0] * self.kernel * self.kernel * self.filters * out[1] * out[2]

    def num_params(self, shape: Shape) -> int:
        return shape[0] * self.filters * self.kernel**2 + self.filters

    def short(self) -> str:
        return f"c{self.kernel}x{self.filters}" + (f"s{self.stride}" if self.stride != 1 else "")

    def local_name(self, namer: Namer) -> str:
        return namer.stage_layer("conv")

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "conv", shape[0], out[0], shape[1], shape[2], out[1], out[2], self.kernel,
                         self.stride, self.pad_amount(), activation=_geom_activation(self.activation))

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        made: list[tuple[str, nn.Module]] = [(local, nn.Conv2d(shape[0], out[0], self.kernel, self.stride,
                                                               self.pad_amount()))]
        act = activation_module(self.activation)
        return made + ([(local.replace("conv", "act"), act)] if act is not None else [])


@dataclass(frozen=True)
class PoolSpec(LayerOp):
    """Max or average pooling (no padding, floor mode)."""

    mode: str = "max"
    kernel: int = 2
    stride: int = 2
    op: ClassVar[str] = "pool"
    after_dense: ClassVar[str | None] = "pooling"

    def out_shape(self, where: str, shape: Shape) -> Shape:
        if self.mode not in POOL_MODES:
            raise SpecError(f"{where}: mode {excerpt(self.mode)} must be one of {POOL_MODES}")
        positive_int(where, "kernel", self.kernel, MAX_KERNEL)
        positive_int(where, "stride", self.stride, MAX_KERNEL)
        c, h, w = shape
        h2 = (h - self.kernel) // self.stride + 1
        w2 = (w - self.kernel) // self.stride + 1
        if h2 < 1 or w2 < 1:
            raise SpecError(f"{where}: pooling {self.kernel}x{self.kernel} shrinks the {h}x{w} map below 1x1")
        return c, h2, w2

    def short(self) -> str:
        return ("p" if self.mode == "max" else "ap") + str(self.kernel)

    def local_name(self, namer: Namer) -> str:
        return namer.end_stage("pool")

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "pool", shape[0], out[0], shape[1], shape[2], out[1], out[2], self.kernel,
                         self.stride, mode=self.mode)

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        cls = nn.MaxPool2d if self.mode == "max" else nn.AvgPool2d
        return [(local, cls(self.kernel, self.stride))]


@dataclass(frozen=True)
class DenseSpec(LayerOp):
    """Hidden fully connected layer followed by its activation."""

    units: int
    activation: str = "relu"
    op: ClassVar[str] = "dense"
    starts_head: ClassVar[bool] = True
    flattens: ClassVar[bool] = True

    def out_shape(self, where: str, shape: Shape) -> Shape:
        positive_int(where, "units", self.units, MAX_WIDTH)
        check_activation(where, self.activation)
        return self.units, 1, 1

    def macs(self, shape: Shape, out: Shape) -> int:
        return shape[0] * shape[1] * shape[2] * self.units

    def num_params(self, shape: Shape) -> int:
        return shape[0] * shape[1] * shape[2] * self.units + self.units

    def short(self) -> str:
        return f"d{self.units}"

    def local_name(self, namer: Namer) -> str:
        return namer.head_layer("fc")

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "dense", shape[0] * shape[1] * shape[2], out[0], 1, 1, 1, 1,
                         activation=_geom_activation(self.activation))

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        made: list[tuple[str, nn.Module]] = [(local, nn.Linear(shape[0] * shape[1] * shape[2], out[0]))]
        act = activation_module(self.activation)
        return made + ([(f"{local}_act", act)] if act is not None else [])


@dataclass(frozen=True)
class BatchNormSpec(LayerOp):
    """Batch normalization over channels (2-D after convs, 1-D after dense layers)."""

    op: ClassVar[str] = "batchnorm"

    def num_params(self, shape: Shape) -> int:
        return 2 * shape[0]

    def short(self) -> str:
        return "bn"

    def local_name(self, namer: Namer) -> str:
        return namer.head_layer("bn_fc") if namer.head else namer.stage_layer("bn")

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "bn", shape[0], out[0], shape[1], shape[2], out[1], out[2])

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        return [(local, nn.BatchNorm1d(shape[0]) if flat else nn.BatchNorm2d(shape[0]))]


@dataclass(frozen=True)
class DropoutSpec(LayerOp):
    """Dropout of whole channels before the head, of units in it."""

    rate: float = 0.5
    op: ClassVar[str] = "dropout"

    def out_shape(self, where: str, shape: Shape) -> Shape:
        if not isinstance(self.rate, (int, float)) or not 0.0 <= self.rate < 1.0:
            raise SpecError(f"{where}: rate {excerpt(self.rate)} must be in [0, 1)")
        return shape

    def short(self) -> str:
        return f"do{self.rate:g}"

    def local_name(self, namer: Namer) -> str:
        return namer.head_layer("drop") if namer.head else namer.stage_layer("drop")

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "dropout", shape[0], out[0], shape[1], shape[2], out[1], out[2])

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        return [(local, nn.Dropout(self.rate) if flat else nn.Dropout2d(self.rate))]


@dataclass(frozen=True)
class GapSpec(LayerOp):
    """Global average pooling: (C, H, W) -> (C, 1, 1)."""

    op: ClassVar[str] = "gap"
    after_dense: ClassVar[str | None] = "global pooling"
    starts_head: ClassVar[bool] = True

    def out_shape(self, where: str, shape: Shape) -> Shape:
        return shape[0], 1, 1

    def short(self) -> str:
        return "gap"

    def local_name(self, namer: Namer) -> str:
        return "gap"

    def geom(self, name: str, shape: Shape, out: Shape) -> LayerGeom:
        return LayerGeom(name, "gap", shape[0], out[0], shape[1], shape[2], 1, 1, mode="avg")

    def modules(self, local: str, shape: Shape, out: Shape, flat: bool) -> list[tuple[str, nn.Module]]:
        from torch import nn

        return [(local, nn.AdaptiveAvgPool2d(1))]


LayerSpec = ConvSpec | PoolSpec | DenseSpec | BatchNormSpec | DropoutSpec | GapSpec
# The registry: spec-file op name -> its definition.
OPS: dict[str, type[LayerOp]] = {t.op: t for t in (ConvSpec, PoolSpec, DenseSpec, BatchNormSpec, DropoutSpec, GapSpec)}
OP_FIELDS: dict[str, tuple[str, ...]] = {op: tuple(f.name for f in fields(t)) for op, t in OPS.items()}


def layer_names(layers: tuple[LayerOp, ...] | list[LayerOp]) -> list[str]:
    """Module path of every layer in the built network (``s1.conv1``, ``fc1``, ...)."""
    namer = Namer()
    names = []
    for layer in layers:
        namer.head = namer.head or layer.starts_head
        names.append(layer.local_name(namer))
    return names


def classifier_geom(shape: Shape, num_classes: int) -> LayerGeom:
    """The implied classifier: a dense layer from the flattened features to the classes."""
    return LayerGeom("classifier", "dense", shape[0] * shape[1] * shape[2], num_classes, 1, 1, 1, 1)


"""Layer geometry: what the cost model needs to know about one layer, and how to get it.

``LayerGeom`` is pure arithmetic (no torch). ``geoms_from_module`` walks a ``torch.nn.Module``
with forward hooks on an example input; it imports torch inside the function so that importing
this module stays cheap for the search loop.

All derived quantities are PER SAMPLE (batch 1). MACs follow fvcore's convention (one
multiply-add = one flop; conv = n_p * c_out * (c_in / groups) * k * k, dense = c_in * c_out,
bias not counted; 0 for every other op).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from costmodel.errors import CostModelError

log = logging.getLogger(__name__)

OPS = ("conv", "pool", "dense", "bn", "gap", "act", "dropout")

# torch activation module class name -> the name stored in LayerGeom.activation.
_ACTIVATION_NAMES = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "GELU": "gelu",
    "LeakyReLU": "leaky_relu",
    "ELU": "elu",
    "SELU": "selu",
    "CELU": "celu",
    "SiLU": "silu",
    "Mish": "mish",
    "Hardswish": "hardswish",
    "Hardsigmoid": "hardsigmoid",
    "Hardtanh": "hardtanh",
    "Softplus": "softplus",
    "PReLU": "prelu",
}
# Not elementwise, so never fused into the preceding layer; priced as a standalone "act".
_STANDALONE_ACTIVATIONS = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
# Leaf modules that cost nothing worth pricing (views, no-ops).
_FREE_MODULES = ("Flatten", "Identity", "Unflatten")


@dataclass(frozen=True)
class LayerGeom:
    """One priced layer. Field names and meanings are a contract with ``archgen.costing``.

    ``op`` is one of ``conv | pool | dense | bn | gap | act | dropout``. Dense layers have
    ``h = w = 1`` and ``c_in`` equal to the flattened input size. ``activation`` is an
    elementwise activation fused after a conv/dense layer (its cost is part of the layer).
    """

    name: str
    op: str
    c_in: int
    c_out: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    mode: str = "max"
    activation: str | None = None
    dtype_bytes: int = 4
    # Leaf-module call indices covered by this layer when it came from a module walk
    # (used by costmodel.profile to attribute measured time); not part of equality.
    calls: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise CostModelError(
                f"layer {self.name!r}: unknown op {self.op!r}; use one of {', '.join(OPS)}"
            )
        for attr in ("c_in", "c_out", "h_in", "w_in", "h_out", "w_out", "kernel", "stride"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 1:
                raise CostModelError(
                    f"layer {self.name!r}: {attr}={value!r} must be a positive integer"
                )
        if self.groups < 1 or self.c_in % self.groups or self.c_out % self.groups:
            raise CostModelError(
                f"layer {self.name!r}: groups={self.groups} must divide c_in={self.c_in} "
                f"and c_out={self.c_out}"
            )

    @property
    def n_p(self) -> int:
        """Output pixels per feature map (h_out * w_out)."""
        return self.h_out * self.w_out

    @property
    def n_f(self) -> int:
        """Output feature maps (c_out)."""
        return self.c_out

    @property
    def macs(self) -> int:
        """Multiply-adds per sample, fvcore convention (bias excluded; 0 for non conv/dense)."""
        if self.op == "conv":
            return self.n_p * self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel
        if self.op == "dense":
            return self.c_in * self.c_out
        return 0

    @property
    def params(self) -> int:
        """Trainable parameters (weights + bias; batch norm: scale and shift, 2 per channel)."""
        if self.op == "conv":
            weights = self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel
            return weights + (self.c_out if self.bias else 0)
        if self.op == "dense":
            return self.c_in * self.c_out + (self.c_out if self.bias else 0)
        if self.op == "bn":
            return 2 * self.c_out
        return 0

    @property
    def acts(self) -> int:
        """Output activations per sample (elements)."""
        return self.c_out * self.h_out * self.w_out

    @property
    def bytes(self) -> int:
        """Bytes touched per sample: input + output activations + parameters."""
        return (self.c_in * self.h_in * self.w_in + self.acts + self.params) * self.dtype_bytes

    def config_tuple(self) -> tuple[Any, ...]:
        """Everything that determines run time, not the name (fields that do not apply to the
        op are normalised, so e.g. a bias flag on a pooling layer does not matter)."""
        op = self.op
        windowed = op == "conv" or op == "pool"
        return (
            op, self.c_in, self.c_out, self.h_in, self.w_in, self.h_out, self.w_out,
            self.kernel if windowed else 1, self.stride if windowed else 1,
            self.padding if windowed else 0, self.groups,
            int(self.bias and (op == "conv" or op == "dense")),
            self.mode if op == "pool" else "", self.activation or "", self.dtype_bytes,
        )

    def config_key(self) -> str:
        """``config_tuple`` as a string (the key of a profile's lookup table)."""
        return "|".join(str(v) for v in self.config_tuple())


def parse_config_key(key: str) -> tuple[Any, ...]:
    """Inverse of ``LayerGeom.config_key`` (integers back to int)."""
    return tuple(int(v) if v.isdigit() else v for v in key.split("|"))


def geoms_from_module(module: Any, example_input: Any) -> list[LayerGeom]:
    """Layer geometries of ``module`` found with forward hooks on one forward pass.

    ``example_input`` is a tensor (any batch size; geometry is per sample). The module is run
    once in eval mode under ``torch.no_grad`` (its training flag is restored). Supported leaf
    modules: Conv2d (dilation 1, square kernels), Linear (2-D input), MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d(1), BatchNorm1d/2d, Dropout*, Flatten/Identity and activation modules; an
    elementwise activation whose input is the output of the Conv2d/Linear just before it is fused
    into that layer. Any other leaf module raises ``CostModelError`` naming its path and type.
    Operations done with ``torch.nn.functional`` inside ``forward`` are invisible to hooks and
    not priced.
    """
    return trace_module(module, example_input)[0]


@dataclass(frozen=True)
class LeafCall:
    """One call of a leaf module during the traced forward pass."""

    path: str
    type_name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def trace_module(module: Any, example_input: Any) -> tuple[list[LayerGeom], list[LeafCall]]:
    """``geoms_from_module`` plus the leaf calls it saw (for per-layer profiling)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise CostModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise CostModelError(
            f"example_input must be a tensor, got {type(example_input).__name__}"
        )
    calls: list[LeafCall] = []
    modules: list[Any] = []
    tensor_ids: list[tuple[int, int]] = []  # (id of input tensor, id of output tensor)
    handles = []
    seen: dict[int, int] = {}

    def hook(mod: Any, inputs: tuple[Any, ...], output: Any) -> None:
        path = names[id(mod)]
        seen[id(mod)] = seen.get(id(mod), 0) + 1
        if seen[id(mod)] > 1:
            path = f"{path}#{seen[id(mod)]}"
        x = inputs[0] if inputs else None
        in_shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        calls.append(LeafCall(path, type(mod).__name__, in_shape, out_shape))
        modules.append(mod)
        tensor_ids.append((id(x), id(output)))

    names: dict[int, str] = {}
    for path, mod in module.named_modules():
        if next(iter(mod.children()), None) is None:  # leaf
            names[id(mod)] = path or type(mod).__name__.lower()
            handles.append(mod.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(example_input)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return _geoms_from_calls(calls, modules, tensor_ids), calls


def _square(value: Any, what: str, path: str, type_name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise CostModelError(
                f"module {path!r} ({type_name}): non-square {what} {tuple(value)} is not "
                "supported by the cost model; use a square one"
            )
        value = value[0]
    return int(value)


def _geoms_from_calls(
    calls: list[LeafCall], modules: list[Any], tensor_ids: list[tuple[int, int]]
) -> list[LayerGeom]:
    geoms: list[LayerGeom] = []
    pending_free: list[int] = []  # free calls (flatten, ...) attributed to the next layer

    def add(geom_kwargs: dict[str, Any], index: int) -> None:
        geoms.append(LayerGeom(calls=tuple(pending_free) + (index,), **geom_kwargs))
        pending_free.clear()

    for i, (call, mod) in enumerate(zip(calls, modules)):
        t, path = call.type_name, call.path
        ins, outs = call.in_shape, call.out_shape
        if t == "Conv2d":
            if tuple(mod.dilation) != (1, 1):
                raise CostModelError(
                    f"module {path!r} (Conv2d): dilation {tuple(mod.dilation)} is not "
                    "supported by the cost model; use dilation 1"
                )
            if len(ins) != 4:
                raise CostModelError(f"module {path!r} (Conv2d): expected a 4-D input, got {ins}")
            pad = mod.padding
            if isinstance(pad, str):  # "same" / "valid"
                k = _square(mod.kernel_size, "kernel", path, t)
                pad = (k - 1) // 2 if pad == "same" else 0
            add(
                dict(
                    name=path, op="conv", c_in=ins[1], c_out=outs[1], h_in=ins[2], w_in=ins[3],
                    h_out=outs[2], w_out=outs[3], kernel=_square(mod.kernel_size, "kernel", path, t),
                    stride=_square(mod.stride, "stride", path, t),
                    padding=_square(pad, "padding", path, t), groups=int(mod.groups),
                    bias=mod.bias is not None,
                ),
                i,
            )
        elif t == "Linear":
            if len(ins) != 2:
                raise CostModelError(
                    f"module {path!r} (Linear): expected a 2-D (batch, features) input, got "
                    f"shape {ins}; flatten before the dense layer"
                )
            add(
                dict(
                    name=path, op="dense", c_in=ins[1], c_out=outs[1], h_in=1, w_in=1, h_out=1,
                    w_out=1, bias=mod.bias is not None,
                ),
                i,
            )
        elif t in ("MaxPool2d", "AvgPool2d"):
            if len(ins) != 4:
                raise CostModelError(f"module {path!r} ({t}): expected a 4-D input, got {ins}")
            if t == "MaxPool2d" and _square(mod.dilation, "dilation", path, t) != 1:
                raise CostModelError(f"module {path!r} ({t}): dilation must be 1")
            add(
                dict(
                    name=path, op="pool", c_in=ins[1], c_out=outs[1], h_in=ins[2], w_in=ins[3],
                    h_out=outs[2], w_out=outs[3], kernel=_square(mod.kernel_size, "kernel", path, t),
                    stride=_square(mod.stride, "stride", path, t),
                    padding=_square(mod.padding, "padding", path, t), bias=False,
                    mode="max" if t == "MaxPool2d" else "avg",
                ),
                i,
            )
        elif t == "AdaptiveAvgPool2d":
            if len(outs) != 4 or outs[2:] != (1, 1):
                raise CostModelError(
                    f"module {path!r} (AdaptiveAvgPool2d): only output size 1 (global average "
                    f"pooling) is supported, got output shape {outs}"
                )
            add(
                dict(
                    name=path, op="gap", c_in=ins[1], c_out=outs[1], h_in=ins[2], w_in=ins[3],
                    h_out=1, w_out=1, bias=False, mode="avg",
                ),
                i,
            )
        elif t in ("BatchNorm2d", "BatchNorm1d"):
            h, w = (ins[2], ins[3]) if len(ins) == 4 else (1, 1)
            if len(ins) not in (2, 4):
                raise CostModelError(f"module {path!r} ({t}): unsupported input shape {ins}")
            add(
                dict(
                    name=path, op="bn", c_in=ins[1], c_out=ins[1], h_in=h, w_in=w, h_out=h,
                    w_out=w, bias=False,
                ),
                i,
            )
        elif t.startswith("Dropout"):
            c, h, w = _chw(ins)
            add(
                dict(name=path, op="dropout", c_in=c, c_out=c, h_in=h, w_in=w, h_out=h, w_out=w,
                     bias=False),
                i,
            )
        elif t in _ACTIVATION_NAMES or t in _STANDALONE_ACTIVATIONS:
            prev = geoms[-1] if geoms else None
            fusable = (
                t in _ACTIVATION_NAMES
                and prev is not None
                and prev.op in ("conv", "dense")
                and prev.activation is None
                and not pending_free
                and prev.calls[-1] == i - 1
                and tensor_ids[i - 1][1] == tensor_ids[i][0]
            )
            if fusable:
                name = _ACTIVATION_NAMES[t]
                geoms[-1] = _replace(prev, activation=name, calls=prev.calls + (i,))
            else:
                c, h, w = _chw(ins)
                name = _ACTIVATION_NAMES.get(t) or _STANDALONE_ACTIVATIONS[t]
                add(
                    dict(name=path, op="act", c_in=c, c_out=c, h_in=h, w_in=w, h_out=h, w_out=w,
                         bias=False, activation=name),
                    i,
                )
        elif t in _FREE_MODULES:
            pending_free.append(i)
        else:
            n_params = sum(p.numel() for p in mod.parameters(recurse=False))
            raise CostModelError(
                f"module {path!r} of type {t} ({n_params} parameters) cannot be priced by the "
                "cost model; supported: Conv2d, Linear, MaxPool2d, AvgPool2d, "
                "AdaptiveAvgPool2d(1), BatchNorm1d/2d, Dropout, Flatten, activations"
            )
    if pending_free and geoms:  # a trailing flatten belongs to the last layer
        geoms[-1] = _replace(geoms[-1], calls=geoms[-1].calls + tuple(pending_free))
    return geoms


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 2:
        return shape[1], 1, 1
    raise CostModelError(f"unsupported activation shape {shape}; expected (N, C) or (N, C, H, W)")


def _replace(geom: LayerGeom, **changes: Any) -> LayerGeom:
    from dataclasses import replace

    return replace(geom, **changes)

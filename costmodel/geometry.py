"""Layer geometry: what the cost model needs to know about one layer, and how to get it.

``LayerGeom`` is pure arithmetic (no torch). ``geoms_from_module`` walks a ``torch.nn.Module``
with forward hooks on an example input; it imports torch inside the function so that importing
this module stays cheap for the search loop. Each leaf module type has a handler
(``HANDLERS``, the way fvcore maps operator names to handlers) that turns its call into layers.

All derived quantities are PER SAMPLE (batch 1). MACs follow fvcore's convention (one
multiply-add = one flop; conv = n_p * c_out * (c_in / groups) * k * k, dense = c_in * c_out,
bias not counted; 0 for every other op).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from costmodel.activations import BY_TORCH_TYPE
from costmodel.errors import CostModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPS = ("conv", "pool", "dense", "bn", "gap", "act", "dropout")

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

    def config_tuple(self) -> tuple[str | int, ...]:
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


def parse_config_key(key: str) -> tuple[str | int, ...]:
    """Inverse of ``LayerGeom.config_key`` (integers back to int)."""
    return tuple(int(v) if v.isdigit() else v for v in key.split("|"))


def geoms_from_module(module: nn.Module, example_input: torch.Tensor) -> list[LayerGeom]:
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


def trace_module(
    module: nn.Module, example_input: torch.Tensor
) -> tuple[list[LayerGeom], list[LeafCall]]:
    """``geoms_from_module`` plus the leaf calls it saw (for per-layer profiling)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise CostModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise CostModelError(
            f"example_input must be a tensor, got {type(example_input).__name__}"
        )
    calls: list[LeafCall] = []
    modules: list[nn.Module] = []
    tensor_ids: list[tuple[int, int]] = []  # (id of input tensor, id of output tensor)
    handles = []
    seen: dict[int, int] = {}

    def hook(mod: nn.Module, inputs: tuple[object, ...], output: object) -> None:
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


def _square(value: int | str | tuple[int, ...] | list[int], what: str, call: LeafCall) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise CostModelError(
                f"module {call.path!r} ({call.type_name}): non-square {what} {tuple(value)} is "
                "not supported by the cost model; use a square one"
            )
        value = value[0]
    return int(value)


GeomFields = dict[str, int | str | bool | None]


@dataclass
class _Walk:
    """One pass over the traced leaf calls: the layers found so far, and the free calls
    (flatten, identity) waiting to be attributed to the next layer."""

    tensor_ids: list[tuple[int, int]]  # per call: (id of input tensor, id of output tensor)
    geoms: list[LayerGeom] = field(default_factory=list)
    pending_free: list[int] = field(default_factory=list)

    def add(self, index: int, **fields: int | str | bool | None) -> None:
        self.geoms.append(LayerGeom(calls=tuple(self.pending_free) + (index,), **fields))
        self.pending_free.clear()


# A handler turns the call of one leaf module type into layers of the walk (or raises
# ``CostModelError`` for a configuration the cost model does not price).
Handler = Callable[[_Walk, int, LeafCall, "nn.Module"], None]


def _spatial(call: LeafCall) -> GeomFields:
    """Name and channel/size fields of a layer mapping a 4-D input to a 4-D output."""
    ins, outs = call.in_shape, call.out_shape
    return dict(name=call.path, c_in=ins[1], c_out=outs[1], h_in=ins[2], w_in=ins[3],
                h_out=outs[2], w_out=outs[3])


def _window(mod: nn.Module, call: LeafCall, padding: int | tuple[int, ...]) -> GeomFields:
    """Kernel, stride and padding of a conv/pool module (square only)."""
    return dict(kernel=_square(mod.kernel_size, "kernel", call),
                stride=_square(mod.stride, "stride", call),
                padding=_square(padding, "padding", call))


def _same_shape(call: LeafCall, op: str) -> GeomFields:
    """Fields of a layer whose output has its input's shape ((N, C) or (N, C, H, W))."""
    shape = call.in_shape
    if len(shape) == 4:
        c, h, w = shape[1], shape[2], shape[3]
    elif len(shape) == 2:
        c, h, w = shape[1], 1, 1
    else:
        raise CostModelError(f"unsupported activation shape {shape}; expected (N, C) or (N, C, H, W)")
    return dict(name=call.path, op=op, c_in=c, c_out=c, h_in=h, w_in=w, h_out=h, w_out=w,
                bias=False)


def _need_4d(call: LeafCall) -> None:
    if len(call.in_shape) != 4:
        raise CostModelError(
            f"module {call.path!r} ({call.type_name}): expected a 4-D input, got {call.in_shape}"
        )


def _conv(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    if tuple(mod.dilation) != (1, 1):
        raise CostModelError(
            f"module {call.path!r} (Conv2d): dilation {tuple(mod.dilation)} is not "
            "supported by the cost model; use dilation 1"
        )
    _need_4d(call)
    pad = mod.padding
    if isinstance(pad, str):  # "same" / "valid"
        k = _square(mod.kernel_size, "kernel", call)
        pad = (k - 1) // 2 if pad == "same" else 0
    walk.add(i, op="conv", **_spatial(call), **_window(mod, call, pad), groups=int(mod.groups),
             bias=mod.bias is not None)


def _linear(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    ins, outs = call.in_shape, call.out_shape
    if len(ins) != 2:
        raise CostModelError(
            f"module {call.path!r} (Linear): expected a 2-D (batch, features) input, got "
            f"shape {ins}; flatten before the dense layer"
        )
    walk.add(i, name=call.path, op="dense", c_in=ins[1], c_out=outs[1], h_in=1, w_in=1,
             h_out=1, w_out=1, bias=mod.bias is not None)


def _pool(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    _need_4d(call)
    is_max = call.type_name == "MaxPool2d"
    if is_max and _square(mod.dilation, "dilation", call) != 1:
        raise CostModelError(f"module {call.path!r} ({call.type_name}): dilation must be 1")
    walk.add(i, op="pool", **_spatial(call), **_window(mod, call, mod.padding), bias=False,
             mode="max" if is_max else "avg")


def _global_pool(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    outs = call.out_shape
    if len(outs) != 4 or outs[2:] != (1, 1):
        raise CostModelError(
            f"module {call.path!r} (AdaptiveAvgPool2d): only output size 1 (global average "
            f"pooling) is supported, got output shape {outs}"
        )
    walk.add(i, op="gap", **_spatial(call), bias=False, mode="avg")


def _batchnorm(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    if len(call.in_shape) not in (2, 4):
        raise CostModelError(
            f"module {call.path!r} ({call.type_name}): unsupported input shape {call.in_shape}"
        )
    walk.add(i, **_same_shape(call, "bn"))


def _dropout(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    walk.add(i, **_same_shape(call, "dropout"))


def _activation(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    """Fused into the conv/dense layer whose output it takes directly, else a standalone act."""
    act = BY_TORCH_TYPE[call.type_name]
    prev = walk.geoms[-1] if walk.geoms else None
    fusable = (
        act.elementwise
        and prev is not None
        and prev.op in ("conv", "dense")
        and prev.activation is None
        and not walk.pending_free
        and prev.calls[-1] == i - 1
        and walk.tensor_ids[i - 1][1] == walk.tensor_ids[i][0]
    )
    if fusable:
        walk.geoms[-1] = replace(prev, activation=act.name, calls=prev.calls + (i,))
    else:
        walk.add(i, **_same_shape(call, "act"), activation=act.name)


def _free(walk: _Walk, i: int, call: LeafCall, mod: nn.Module) -> None:
    walk.pending_free.append(i)


# Leaf module type name -> handler. Dropout variants not listed (any type named Dropout*) are
# handled like Dropout, see ``_handler``.
HANDLERS: dict[str, Handler] = {
    "Conv2d": _conv,
    "Linear": _linear,
    "MaxPool2d": _pool,
    "AvgPool2d": _pool,
    "AdaptiveAvgPool2d": _global_pool,
    "BatchNorm1d": _batchnorm,
    "BatchNorm2d": _batchnorm,
    **{name: _dropout for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")},
    **{torch_type: _activation for torch_type in BY_TORCH_TYPE},
    # Leaf modules that cost nothing worth pricing (views, no-ops).
    **{name: _free for name in ("Flatten", "Identity", "Unflatten")},
}


def _handler(call: LeafCall, mod: nn.Module) -> Handler:
    handler = HANDLERS.get(call.type_name)
    if handler is not None:
        return handler
    if call.type_name.startswith("Dropout"):
        return _dropout
    n_params = sum(p.numel() for p in mod.parameters(recurse=False))
    raise CostModelError(
        f"module {call.path!r} of type {call.type_name} ({n_params} parameters) cannot be "
        "priced by the cost model; supported: Conv2d, Linear, MaxPool2d, AvgPool2d, "
        "AdaptiveAvgPool2d(1), BatchNorm1d/2d, Dropout, Flatten, activations"
    )


def _geoms_from_calls(
    calls: list[LeafCall], modules: list[nn.Module], tensor_ids: list[tuple[int, int]]
) -> list[LayerGeom]:
    walk = _Walk(tensor_ids)
    for i, (call, mod) in enumerate(zip(calls, modules)):
        _handler(call, mod)(walk, i, call, mod)
    geoms = walk.geoms
    if walk.pending_free and geoms:  # a trailing flatten belongs to the last layer
        geoms[-1] = replace(geoms[-1], calls=geoms[-1].calls + tuple(walk.pending_free))
    return geoms

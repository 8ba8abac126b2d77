"""ArchSpec: the description of a plain CNN, its file format, validation and shape inference.

Pure Python (no torch): generating and pricing thousands of candidates is arithmetic.

File format (``schema_version: 1``, JSON or YAML with the same keys)::

    {"schema_version": 1, "input_shape": [1, 28, 28], "num_classes": 10,
     "layers": [{"op": "conv", "filters": 32, "kernel": 5, "stride": 1,
                 "padding": "same", "activation": "relu"},
                {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
                {"op": "dense", "units": 128, "activation": "relu"}],
     "init": {"scheme": "kaiming_uniform"}}

A flatten before the first dense layer and the final classifier (``num_classes`` units, no
activation) are implied. ``padding`` is ``"same"`` (zero padding ``k // 2``, odd kernels only:
the output is ``ceil(H / stride)``), ``"valid"`` (no padding) or an explicit integer.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from archgen.errors import SpecError
from archgen.inputs import clip, excerpt, load_document
from archgen.ops import (  # noqa: F401 - the layer types are part of this module's interface
    ACTIVATIONS,
    MAX_KERNEL,
    MAX_WIDTH,
    OP_FIELDS,
    OPS,
    POOL_MODES,
    BatchNormSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    GapSpec,
    LayerOp,
    LayerSpec,
    PoolSpec,
)
from costmodel.atomic import atomic_write_text

SCHEMA_VERSION = 1
INIT_SCHEMES = ("textbook_uniform", "lecun_uniform", "glorot_uniform", "kaiming_uniform")
DEFAULT_INIT = "kaiming_uniform"

# Size limits: far above any network a CPU or one GPU trains, below what crashes an allocator
# (a spec with 10**12 filters must fail here, not in torch). Named in every message they cause.
# The per-layer limits (MAX_WIDTH, MAX_KERNEL) live with the ops in archgen.ops.
MAX_LAYERS = 256
MAX_INPUT_CHANNELS = 64
MAX_INPUT_SIDE = 4096
MAX_CLASSES = 100_000
MAX_MACS = 10**11  # multiply-adds per image (a ResNet-50 needs 4 * 10**9)
MAX_ACTIVATIONS = 2**28  # output values per image over all layers (1 GiB in float32)
MAX_PARAMS = 2**28  # trainable parameters (1 GiB in float32; 4 GiB while Adam trains them)


@dataclass(frozen=True)
class InitSpec:
    """Weight initialization (rule R7): biases 0, weights uniform in [-r, r].

    ``textbook_uniform``: r = 1 / n_in**2; ``lecun_uniform``: r = 1 / sqrt(n_in);
    ``glorot_uniform``: r = sqrt(6 / (n_in + n_out)); ``kaiming_uniform``: r = sqrt(6 / n_in).
    n_in (fan-in) is ``c_in * k * k`` for a conv and the input width for a dense layer.
    """

    scheme: str = DEFAULT_INIT


def init_bound(scheme: str, fan_in: int, fan_out: int) -> float:
    """The half-width r of the uniform init range for one layer."""
    if scheme == "textbook_uniform":
        return 1.0 / fan_in**2
    if scheme == "lecun_uniform":
        return 1.0 / math.sqrt(fan_in)
    if scheme == "glorot_uniform":
        return math.sqrt(6.0 / (fan_in + fan_out))
    if scheme == "kaiming_uniform":
        return math.sqrt(6.0 / fan_in)
    raise SpecError(f"init: unknown scheme {excerpt(scheme)}; expected one of {', '.join(INIT_SCHEMES)}")


@dataclass(frozen=True)
class ArchSpec:
    """A plain CNN: input shape, layers, implied flatten and classifier, init scheme."""

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    init: InitSpec = field(default_factory=InitSpec)

    # -- validation and shape inference -------------------------------------------------------
    def validate(self) -> ArchSpec:
        """Raise SpecError naming the layer index and the bad value; return self when valid."""
        self.shapes()
        params = self.num_params()
        if params > MAX_PARAMS:
            raise SpecError(
                f"{params:.3g} parameters ({params * 4 / 2**30:.1f} GiB in float32) exceed the "
                f"limit of {MAX_PARAMS:.3g}"
            )
        return self

    def shapes(self) -> list[tuple[int, int, int]]:
        """Output shape (C, H, W) after each layer; dense layers give (units, 1, 1)."""
        return list(self._shapes)

    @cached_property
    def _shapes(self) -> tuple[tuple[int, int, int], ...]:
        # Computed once per (immutable) spec: the generator and pricer ask many times.
        shape = self.input_shape
        if (
            not isinstance(shape, tuple)
            or len(shape) != 3
            or not all(isinstance(v, int) and v >= 1 for v in shape)
        ):
            raise SpecError(f"input_shape must be three positive integers C,H,W, got {excerpt(shape)}")
        if shape[0] > MAX_INPUT_CHANNELS or max(shape[1:]) > MAX_INPUT_SIDE:
            raise SpecError(
                f"input_shape {list(shape)} exceeds the limit of {MAX_INPUT_CHANNELS} channels and "
                f"{MAX_INPUT_SIDE} pixels a side"
            )
        if type(self.num_classes) is not int or not 2 <= self.num_classes <= MAX_CLASSES:
            raise SpecError(f"num_classes must be an integer in [2, {MAX_CLASSES:,}], got {excerpt(self.num_classes)}")
        if len(self.layers) > MAX_LAYERS:
            raise SpecError(f"{len(self.layers):,} layers exceed the limit of {MAX_LAYERS}")
        if self.init.scheme not in INIT_SCHEMES:
            raise SpecError(
                f"init: unknown scheme {excerpt(self.init.scheme)}; expected one of {', '.join(INIT_SCHEMES)}"
            )
        flat = False  # True once a dense layer has consumed the spatial map
        out: list[tuple[int, int, int]] = []
        macs = acts = 0  # per sample, for the size limits below
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerOp):
                raise SpecError(f"layer {i}: unknown layer type {type(layer).__name__}")
            where = f"layer {i} ({layer.op})"
            if flat and layer.after_dense:
                raise SpecError(f"{where}: {layer.after_dense} cannot follow a dense layer")
            new = layer.out_shape(where, shape)
            macs += layer.macs(shape, new)
            shape, flat = new, flat or layer.flattens
            acts += shape[0] * shape[1] * shape[2]
            out.append(shape)
        c, h, w = shape
        macs += c * h * w * self.num_classes
        if macs > MAX_MACS:
            raise SpecError(f"{macs:.3g} multiply-adds per image exceed the limit of {MAX_MACS:.0e}")
        if acts > MAX_ACTIVATIONS:
            raise SpecError(
                f"{acts:.3g} activations per image ({acts * 4 / 2**30:.1f} GiB in float32) exceed "
                f"the limit of {MAX_ACTIVATIONS:.3g} ({MAX_ACTIVATIONS * 4 / 2**30:.0f} GiB)"
            )
        return tuple(out)

    def feature_shape(self) -> tuple[int, int, int]:
        """Shape entering the classifier (before the implied flatten)."""
        shapes = self._shapes
        return shapes[-1] if shapes else self.input_shape

    # -- counting (analytic twin of the built module) -----------------------------------------
    def num_params(self) -> int:
        """Trainable parameters of the built module, by arithmetic (must equal build's count)."""
        shape = self.input_shape
        total = 0
        for layer, out in zip(self.layers, self._shapes):
            total += layer.num_params(shape)
            shape = out
        c, h, w = shape
        return total + c * h * w * self.num_classes + self.num_classes

    # -- identity -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [layer_to_dict(layer) for layer in self.layers],
            "init": {"scheme": self.init.scheme},
        }

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        """Parse and validate the file format; SpecError names the offending key or layer."""
        if not isinstance(data, dict):
            raise SpecError(f"spec must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"schema_version", "input_shape", "num_classes", "layers", "init"}
        if unknown:
            raise SpecError(f"unknown top-level key(s): {clip(', '.join(sorted(map(str, unknown))))}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(
                f"schema_version {excerpt(version)} is not supported; this archgen reads version {SCHEMA_VERSION}"
            )
        for key in ("input_shape", "num_classes", "layers"):
            if key not in data:
                raise SpecError(f"missing required key {excerpt(key)}")
        shape = data["input_shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise SpecError(f"input_shape must be a list [C, H, W], got {excerpt(shape)}")
        if not isinstance(data["layers"], list):
            raise SpecError(f"layers must be a list, got {type(data['layers']).__name__}")
        init = data.get("init") or {}
        if not isinstance(init, dict) or set(init) - {"scheme"}:
            raise SpecError(f"init must be a mapping with key 'scheme', got {excerpt(init)}")
        spec = cls(
            input_shape=tuple(shape),  # type: ignore[arg-type]
            num_classes=data["num_classes"],
            layers=tuple(layer_from_dict(i, d) for i, d in enumerate(data["layers"])),
            init=InitSpec(init.get("scheme", DEFAULT_INIT)),
        )
        return spec.validate()

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def key(self) -> str:
        """Stable 12-hex-digit hash of the canonical form (dedup, file names)."""
        # Byte-identical to json.dumps(self.to_dict(), separators=(",", ":")) (to_dict's key
        # order is fixed by the code), assembled from per-layer strings cached on the (frozen,
        # hashable, generator-shared) layer objects: the generator keys every candidate.
        canon = (
            f'{{"schema_version":{SCHEMA_VERSION},"input_shape":{json.dumps(list(self.input_shape), separators=(",", ":"))},'
            f'"num_classes":{json.dumps(self.num_classes)},'
            f'"layers":[{",".join(_layer_json(layer) for layer in self.layers)}],'
            f'"init":{{"scheme":{json.dumps(self.init.scheme)}}}}}'
        )
        return hashlib.sha1(canon.encode()).hexdigest()[:12]

    def short_name(self) -> str:
        """Compact readable name, e.g. ``c5x32-p2-c3x128-p2-d256``."""
        parts = [layer.short() for layer in self.layers]
        return "-".join(parts) or "linear"


def layer_to_dict(layer: LayerSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"op": layer.op}
    for name in OP_FIELDS[layer.op]:
        d[name] = getattr(layer, name)
    return d


@lru_cache(maxsize=8192)
def _layer_json(layer: LayerSpec) -> str:
    return json.dumps(layer_to_dict(layer), separators=(",", ":"))


def layer_from_dict(index: int, data: Any) -> LayerSpec:
    if not isinstance(data, dict):
        raise SpecError(f"layer {index}: must be a mapping, got {excerpt(data)}")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise SpecError(
            f"layer {index}: unknown op {excerpt(op)}; expected one of {', '.join(sorted(OPS))}"
        )
    allowed = OP_FIELDS[op]
    unknown = set(data) - set(allowed) - {"op"}
    if unknown:
        raise SpecError(
            f"layer {index} ({op}): unknown key(s) {clip(', '.join(sorted(map(str, unknown))))}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    kwargs = {k: v for k, v in data.items() if k != "op"}
    try:
        return OPS[op](**kwargs)
    except TypeError as exc:  # a missing required field
        raise SpecError(f"layer {index} ({op}): {exc}") from None


def load_spec(path: str | Path) -> ArchSpec:
    """Read a spec file (JSON or YAML, by suffix; unknown suffix: JSON, then YAML)."""
    data = load_document(path, "spec file", SpecError)
    try:
        return ArchSpec.from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def save_spec(spec: ArchSpec, path: str | Path) -> Path:
    """Write JSON or YAML by suffix (``.yaml``/``.yml`` give YAML, anything else JSON)."""
    path = Path(path)
    text = spec.to_yaml() if path.suffix.lower() in (".yaml", ".yml") else spec.to_json() + "\n"
    return atomic_write_text(path, text)

"""What a calibration measured, as data: the input of ``costmodel.fit``, the output of
``costmodel.measure`` (PyTorch), ``costmodel.ort`` (ONNX Runtime) and of a calibration
bundle's runner on another device (``costmodel.bundle``). No torch.

A measurements file is JSON::

    {"format": "archgen-measurements", "version": 1,
     "context": {"device": "cpu", "device_name": "...", "runtime": "torch", "threads": 1,
                 "batch_size": 1, "dtype": "float32", ...},
     "protocol": {...},
     "micro": [{"geom": {LayerGeom fields}, "ms": 0.012}, ...],
     "networks": [{"geoms": [{...}, ...], "layers_ms": [...], "e2e_ms": 0.41}, ...],
     "reference_ms": 0.85,
     "noise_floor": {"n": 244, "within_10pct": 0.97, "within_5pct": 0.9, "median_abs_pct": 1.2}}

``micro`` holds isolated layers of the cheap ops, ``networks`` the calibration networks with
their per-layer in-context times (aligned with ``geoms``) and end-to-end times;
``reference_ms`` the time of the drift reference workload when it was measured; ``noise_floor``
(optional) how closely the calibration networks agreed with themselves, each one's minimum over its
odd rounds against its minimum over its even rounds (``costmodel.timing.repeat_agreement``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from costmodel.atomic import atomic_write_text
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom

FORMAT = "archgen-measurements"
# What a network runs in: PyTorch eager, or its ONNX export in ONNX Runtime (CPU).
RUNTIMES = ("torch", "onnxruntime")
VERSION = 1
GEOM_FIELDS = tuple(f.name for f in dataclasses.fields(LayerGeom) if f.name != "calls")

# (layer geometry, measured ms) pairs.
Sample = tuple[LayerGeom, float]
# A profiled calibration network: (geoms, per-layer in-context ms, end-to-end ms).
Network = tuple[Sequence[LayerGeom], Sequence[float], float]


def geom_to_dict(g: LayerGeom) -> dict[str, object]:
    return {k: getattr(g, k) for k in GEOM_FIELDS}


def geom_from_dict(d: object, where: str) -> LayerGeom:
    if not isinstance(d, dict):
        raise CostModelError(f"{where}: a layer must be an object, not {type(d).__name__}")
    unknown = sorted(set(d) - set(GEOM_FIELDS))
    if unknown:
        raise CostModelError(f"{where}: unknown layer field(s) {', '.join(map(str, unknown))}")
    try:
        return LayerGeom(**d)
    except TypeError as exc:
        raise CostModelError(f"{where}: {exc}") from None


def _ms(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or value == float("inf"):
        raise CostModelError(f"{where}: a time must be a finite number >= 0, not {value!r}")
    return float(value)


@dataclass
class Measurements:
    """One calibration's measurements (see the module docstring for the file format)."""

    context: dict[str, object]
    protocol: dict[str, object] = field(default_factory=dict)
    micro: list[Sample] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    reference_ms: float | None = None
    noise_floor: dict[str, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT, "version": VERSION, "context": dict(self.context),
            "protocol": dict(self.protocol),
            "micro": [{"geom": geom_to_dict(g), "ms": t} for g, t in self.micro],
            "networks": [{"geoms": [geom_to_dict(g) for g in geoms], "layers_ms": list(ms),
                          "e2e_ms": e2e} for geoms, ms, e2e in self.networks],
            "reference_ms": self.reference_ms,
            **({"noise_floor": dict(self.noise_floor)} if self.noise_floor else {}),
        }

    @classmethod
    def from_dict(cls, d: object, source: str = "measurements") -> Measurements:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CostModelError(f"{source}: not an archgen measurements file (no \"format\": \"{FORMAT}\")")
        if d.get("version") != VERSION:
            raise CostModelError(f"{source}: measurements version {d.get('version')!r} is not {VERSION}")
        context = _context(d.get("context"), source)
        if not isinstance(d.get("protocol", {}), dict):
            raise CostModelError(f"{source}: \"protocol\" must be an object")
        micro = []
        for i, row in enumerate(_list(d, "micro", source)):
            where = f"{source}: micro[{i}]"
            if not isinstance(row, dict):
                raise CostModelError(f"{where} must be an object")
            micro.append((geom_from_dict(row.get("geom"), where), _ms(row.get("ms"), where)))
        networks: list[Network] = []
        for i, row in enumerate(_list(d, "networks", source)):
            where = f"{source}: networks[{i}]"
            if not isinstance(row, dict):
                raise CostModelError(f"{where} must be an object")
            geoms = [geom_from_dict(g, f"{where}.geoms[{j}]") for j, g in enumerate(_list(row, "geoms", where))]
            layers = [_ms(t, f"{where}.layers_ms[{j}]") for j, t in enumerate(_list(row, "layers_ms", where))]
            if len(layers) != len(geoms) or not geoms:
                raise CostModelError(f"{where}: {len(layers)} layer times for {len(geoms)} layers")
            e2e = _ms(row.get("e2e_ms"), f"{where}.e2e_ms")
            if not e2e > 0:  # no network runs in no time: a clock too coarse to time it
                raise CostModelError(f"{where}.e2e_ms is 0: the clock was too coarse to time it; measure again")
            networks.append((geoms, layers, e2e))
        ref = d.get("reference_ms")
        if ref is not None and not _ms(ref, f"{source}: reference_ms") > 0:
            raise CostModelError(f"{source}: reference_ms must be above 0")
        return cls(context=dict(context), protocol=dict(d.get("protocol") or {}), micro=micro,
                   networks=networks, reference_ms=None if ref is None else float(ref),
                   noise_floor=_noise_floor(d.get("noise_floor"), source))

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Measurements:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise CostModelError(f"measurements file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CostModelError(f"cannot read measurements file {str(path)!r}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CostModelError(f"measurements file {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))


def _context(ctx: object, source: str) -> dict[str, object]:
    """The context a measurements file names: where and how it was measured."""
    if not isinstance(ctx, dict):
        raise CostModelError(f"{source}: \"context\" must be an object")
    for key in ("batch_size", "threads"):
        value = ctx.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CostModelError(f"{source}: context.{key} must be a positive integer, not {value!r}")
    if ctx.get("device") not in ("cpu", "cuda"):
        raise CostModelError(f"{source}: context.device must be 'cpu' or 'cuda', not {ctx.get('device')!r}")
    if ctx.get("runtime", "torch") not in RUNTIMES:
        raise CostModelError(f"{source}: context.runtime must be one of {', '.join(RUNTIMES)}, "
                             f"not {ctx.get('runtime')!r}")
    if not isinstance(ctx.get("device_name"), str) or not ctx["device_name"]:
        raise CostModelError(f"{source}: context.device_name must name the device")
    return ctx


def _noise_floor(value: object, source: str) -> dict[str, float] | None:
    if value is None:
        return None
    keys = ("n", "within_10pct", "within_5pct", "median_abs_pct")
    if not isinstance(value, dict) or not set(keys) <= set(value):
        raise CostModelError(f"{source}: noise_floor must be an object with {', '.join(keys)}")
    for k in keys:
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise CostModelError(f"{source}: noise_floor.{k} must be a finite number >= 0, not {v!r}")
    if value["within_10pct"] > 1 or value["within_5pct"] > 1 or value["n"] < 1:
        raise CostModelError(f"{source}: noise_floor shares must lie in [0, 1] and n must be >= 1")
    return {"n": int(value["n"]), **{k: float(value[k]) for k in keys[1:]}}


def _list(d: dict[str, object], key: str, where: str) -> list[object]:
    value = d.get(key)
    if not isinstance(value, list):
        raise CostModelError(f"{where}: \"{key}\" must be a list")
    return value

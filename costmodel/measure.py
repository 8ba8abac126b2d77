"""Measure what calibration fits: layers built from geometries, timed on this machine.

What is measured (all at one batch size and thread count, protocol in ``costmodel.profile``):

1. Standalone activations, pooling, batch norm and global pooling of varied sizes (isolated
   micro-benchmarks, ``micro_benchmark_geoms``) -> per-element activation costs and the
   cheap-op classes.
2. Calibration networks: random plain CNNs covering the generator's space (``costmodel.netgen``:
   inputs 28-96 px, kernels 1-11, widths up to 384, pooling, batch norm, dense heads), or the
   networks a caller passes in. Each is profiled as a whole with per-layer boundary hooks, so
   every layer is measured *in context* (input just produced by the previous layer, weights as
   cold as they really are): in-context times of dense, global pooling and dropout layers differ
   from isolated ones too much for a table of isolated layers (docs/benchmarks.md, "Cost model accuracy").

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import costmodel.speed as speed
import costmodel.timing as timing
from costmodel.activations import ACTIVATIONS, CALIBRATED
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom
from costmodel.measurements import geom_to_dict
from costmodel.profile import Timing, profile_modules, resolve_device, time_fn

if TYPE_CHECKING:
    import torch
    from torch import nn

    from costmodel.measurements import Network, Sample

# Networks profiled interleaved at a time: bounds memory (all models and inputs stay alive) and
# fixes the cache regime (how many other models run between two runs of one model).
CHUNK = timing.CHUNK
# Interleaved warm-up per chunk (seconds): freshly built models run slower at first
# (docs/benchmarks.md, "Cost model accuracy").
WARMUP_S = timing.WARMUP_S
# Activations a quick calibration measures (a full one measures all of ``CALIBRATED``).
QUICK_ACTIVATIONS = CALIBRATED[:2]


def module_from_geoms(geoms: list[LayerGeom]) -> nn.Sequential:
    """A ``torch.nn.Sequential`` realising ``geoms`` in order (``costmodel.timing.build_module``:
    a flatten before the first dense layer, one nested ``Sequential`` per run of layers with the
    same dotted prefix, the way archgen builds its networks). Used to measure calibration
    layers and networks."""
    try:
        return timing.build_module([geom_to_dict(g) for g in geoms], ACTIVATIONS)[0]
    except timing.MeasureError as exc:
        raise CostModelError(str(exc)) from None


def module_paths(geoms: list[LayerGeom]) -> dict[str, int]:
    """Module path -> layer index for a network built by ``module_from_geoms``."""
    return timing.module_paths([g.name for g in geoms])


def input_for(geoms: list[LayerGeom], batch_size: int, device: str = "cpu") -> torch.Tensor:
    """A random input tensor matching the first layer of ``geoms``."""
    import torch

    g = geoms[0]
    if g.op == "dense":
        return torch.randn(batch_size, g.c_in, device=device)
    return torch.randn(batch_size, g.c_in, g.h_in, g.w_in, device=device)


def profile_layer(geom: LayerGeom, batch_size: int = 32, device: str = "cpu", threads: int = 1,
                  repeats: int = 15, warmup: int = 3, clock: str = "auto") -> Timing:
    """Time one layer in isolation (its own module, a fixed random input)."""
    import torch

    device = resolve_device(device)
    mod = module_from_geoms([geom]).to(device)
    x = input_for([geom], batch_size, device)
    with torch.no_grad():
        return time_fn(lambda: mod(x), device, threads, repeats, warmup, clock)


def micro_benchmark_geoms(quick: bool, seed: int = 0) -> list[LayerGeom]:
    """Isolated layers for the cheap ops: activations, pooling, batch norm, gap."""
    rng = random.Random(seed)
    shapes = [(c, h) for c in (8, 32, 64, 128, 256, 384) for h in (4, 8, 14, 28, 48, 96)
              if c * h * h <= 400_000]
    if quick:
        shapes = rng.sample(shapes, 8)
    out: list[LayerGeom] = []
    for c, h in shapes:
        for act in CALIBRATED if not quick else QUICK_ACTIVATIONS:
            out.append(LayerGeom(f"act_{act}_{c}x{h}", "act", c, c, h, h, h, h, bias=False,
                                 activation=act))
        for mode in ("max", "avg"):
            if h >= 2:
                out.append(LayerGeom(f"pool_{mode}_{c}x{h}", "pool", c, c, h, h, h // 2, h // 2,
                                     2, 2, bias=False, mode=mode))
        out.append(LayerGeom(f"bn_{c}x{h}", "bn", c, c, h, h, h, h, bias=False))
        out.append(LayerGeom(f"gap_{c}x{h}", "gap", c, c, h, h, 1, 1, bias=False, mode="avg"))
    return out


def measure_micro(geoms: Sequence[LayerGeom], batch_size: int, device: str, threads: int,
                  repeats: int, clock: str) -> list[Sample]:
    """Each micro-benchmark layer timed in isolation: ``(geom, minimum ms)``."""
    return [(g, profile_layer(g, batch_size, device, threads, repeats, 2, clock).min_ms)
            for g in geoms]


def measure_networks(networks: Sequence[list[LayerGeom]], batch_size: int, device: str,
                     threads: int, repeats: int, clock: str, seed: int,
                     say: Callable[[str], None], rounds_out: list[list[float]] | None = None,
                     speed_out: dict[str, object] | None = None) -> list[Network]:
    """Build and profile the calibration networks, interleaved in chunks of up to ``CHUNK`` (of
    even size: ``costmodel.speed.chunk_sizes``) after ``WARMUP_S`` seconds of interleaved
    warm-up: ``(geoms, per-layer ms, end-to-end ms)``, at the machine's median speed over the chunks (``costmodel.speed``: the ``ANCHOR_GEOMS`` networks
    are timed in every chunk). ``rounds_out`` receives each network's end-to-end times in round
    order (the noise floor); ``speed_out`` the speed record (``costmodel.speed.speed_record``)."""
    import torch

    torch.manual_seed(seed)
    ranges = speed.chunk_ranges(len(networks), CHUNK)
    anchors = [(module_from_geoms(list(g)).to(device), input_for(list(g), batch_size, device))
               for g in (ANCHOR_GEOMS if ranges else ())]
    timed: list = []
    anchor_ms: list[list[float]] = []
    for part in ranges:
        pairs = [(module_from_geoms(networks[i]).to(device), input_for(networks[i], batch_size, device)) for i in part]
        out = profile_modules(pairs + anchors, device, threads, repeats, 2, clock, warmup_s=WARMUP_S)
        timed += out[:len(part)]
        anchor_ms.append([mp.e2e_ms for mp in out[len(part):]])
        say(f"profiled {part.stop}/{len(networks)} networks")
    scaled, record = speed.normalize([(mp.meas_ms, mp.e2e_samples_ms) for mp in timed], anchor_ms,
                                     [len(r) for r in ranges])
    profiled: list[Network] = [(list(mp.geoms), layers, min(e2e)) for mp, (layers, e2e) in zip(timed, scaled)]
    if rounds_out is not None:
        rounds_out += [e2e for _, e2e in scaled]
    if speed_out is not None:
        speed_out.update(record)
    return profiled


# The drift reference workload: a small fixed network whose time the profile keeps, re-timed
# later to tell a model error from a machine in another state (load, frequency scaling).
REFERENCE_GEOMS = (
    LayerGeom("ref.conv1", "conv", 3, 32, 64, 64, 64, 64, 3, 1, 1, activation="relu"),
    LayerGeom("ref.pool1", "pool", 32, 32, 64, 64, 32, 32, 2, 2, bias=False),
    LayerGeom("ref.conv2", "conv", 32, 64, 32, 32, 32, 32, 3, 1, 1, activation="relu"),
    LayerGeom("ref.pool2", "pool", 64, 64, 32, 32, 16, 16, 2, 2, bias=False),
    LayerGeom("ref.gap", "gap", 64, 64, 16, 16, 1, 1, bias=False, mode="avg"),
    LayerGeom("ref.fc", "dense", 64, 10, 1, 1, 1, 1),
)
REFERENCE_REPEATS = 30
# The speed anchors (``costmodel.speed``), timed in every chunk of calibration networks at the
# calibration's batch size: the reference workload, a network whose time is mostly a dense layer
# reading its weights, and one of batch norm and pooling on small convolutions.
ANCHOR_GEOMS: tuple[tuple[LayerGeom, ...], ...] = (
    REFERENCE_GEOMS,
    (LayerGeom("a1.conv1", "conv", 1, 16, 28, 28, 28, 28, 3, 1, 1, activation="relu"),
     LayerGeom("a1.pool", "pool", 16, 16, 28, 28, 14, 14, 2, 2, bias=False),
     LayerGeom("fc1", "dense", 16 * 14 * 14, 128, 1, 1, 1, 1, activation="relu"),
     LayerGeom("fc2", "dense", 128, 10, 1, 1, 1, 1)),
    (LayerGeom("a2.conv1", "conv", 3, 16, 32, 32, 32, 32, 3, 1, 1, activation="relu"),
     LayerGeom("a2.bn1", "bn", 16, 16, 32, 32, 32, 32, bias=False),
     LayerGeom("a2.pool", "pool", 16, 16, 32, 32, 16, 16, 2, 2, bias=False),
     LayerGeom("a3.conv1", "conv", 16, 32, 16, 16, 16, 16, 3, 1, 1, activation="relu"),
     LayerGeom("a3.bn1", "bn", 32, 32, 16, 16, 16, 16, bias=False),
     LayerGeom("gap", "gap", 32, 32, 16, 16, 1, 1, bias=False, mode="avg"),
     LayerGeom("fc", "dense", 32, 10, 1, 1, 1, 1)),
)


def reference_ms(device: str = "cpu", threads: int = 1, clock: str = "auto") -> float:
    """The drift reference workload's time here and now (minimum of ``REFERENCE_REPEATS``
    calls at batch 1)."""
    import torch

    device = resolve_device(device)
    torch.manual_seed(0)
    mod = module_from_geoms(list(REFERENCE_GEOMS)).to(device)
    x = input_for(list(REFERENCE_GEOMS), 1, device)
    with torch.no_grad():
        return time_fn(lambda: mod(x), device, threads, REFERENCE_REPEATS, 5, clock).min_ms

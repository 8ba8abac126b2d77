"""archgen's one calibration recipe: ``costmodel``'s calibration networks plus samples of
archgen's own generator, so that the profile's lookup table holds the layer configurations the
search will price. ``archgen calibrate`` and the search's automatic calibration both use it, so
the per-device cache holds one kind of profile whoever wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmodel.device_profile import DeviceProfile
    from costmodel.geometry import LayerGeom

log = logging.getLogger(__name__)

# Generator networks added to the calibration networks (quick mode, full mode).
GENERATOR_NETWORKS = (12, 84)
# Their seeds start here (plus the calibration seed), apart from the calibration networks'.
GENERATOR_SEED = 10_000


# Generator networks added at the search's own input shape (quick mode: the search's calibration).
OWN_SHAPE_NETWORKS = 8


def generator_networks(n: int, seed: int, max_macs: int = 100_000_000,
                       shapes: tuple[tuple[int, int, int], ...] | None = None) -> list[list[LayerGeom]]:
    """Layer geometries of ``n`` specs from archgen's own generator over a few input shapes, so
    the profile's lookup table holds the layer configurations the search will price."""
    from archgen.costing import spec_geoms
    from archgen.generator import Budget, sample_specs

    # from digits-sized inputs (8x8, the default dataset) to the larger ones a search prices
    shapes = shapes or ((1, 8, 8), (3, 16, 16), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 96, 96))
    per_shape = max(1, n // len(shapes))
    out = []
    for i, shape in enumerate(shapes):
        specs = sample_specs(shape, 10, per_shape, seed=seed + i, budget=Budget(max_macs=max_macs))
        out.extend(spec_geoms(s) for s in specs)
    return out


def recipe_networks(quick: bool, seed: int = 0, input_shape: tuple[int, int, int] | None = None,
                    batch_size: int = 32) -> tuple[list[list[LayerGeom]], list[list[LayerGeom]]]:
    """The calibration networks of the one recipe: costmodel's random plain CNNs and samples of
    archgen's generator, both ``costmodel.calibration.networks_multiplier`` times as many for a
    full calibration at a small batch size (``input_shape``: also ``OWN_SHAPE_NETWORKS`` of that
    shape, the data a search will price)."""
    from costmodel.calibration import calibration_networks, networks_multiplier

    n_generator = GENERATOR_NETWORKS[0 if quick else 1] * networks_multiplier(quick, batch_size)
    extra = generator_networks(n_generator, seed=GENERATOR_SEED + seed)
    if input_shape is not None:
        extra += generator_networks(OWN_SHAPE_NETWORKS, seed=GENERATOR_SEED + 100 + seed,
                                    shapes=(tuple(input_shape),))
    return calibration_networks(quick, seed, batch_size=batch_size), extra


def calibrate_device(device: str = "cpu", threads: int = 1, batch_size: int = 32, quick: bool = False,
                     seed: int = 0, out: str | Path | None = None,
                     progress: Callable[[str], None] | None = None, runtime: str = "torch",
                     measurements_out: str | Path | None = None,
                     input_shape: tuple[int, int, int] | None = None) -> tuple[DeviceProfile, Path]:
    """Measure ``device`` in ``runtime`` at ``threads`` and ``batch_size``, fit its profile and
    save it to ``out``, else to the per-device cache. Returns the profile and where it was
    saved. ``measurements_out``: also keep the raw measurements (refit later with
    ``--measurements``). ``input_shape``: also generator networks of that input shape (the
    search's automatic calibration passes its data's). ``progress`` receives one line per step
    (default: logged)."""
    from costmodel.calibration import fit_measurements, measure_calibration
    from costmodel.device_profile import cache_path

    networks, extra = recipe_networks(quick, seed, input_shape, batch_size)
    measured = measure_calibration(device=device, threads=threads, batch_size=batch_size, quick=quick,
                                   networks=networks, extra_networks=extra, seed=seed, runtime=runtime,
                                   progress=progress)
    if measurements_out is not None:
        measured.save(measurements_out)
    profile = fit_measurements(measured, seed, progress)
    path = profile.save(out if out is not None else cache_path(profile.context))
    log.info("saved %s", path)
    return profile, path


def write_calibration_bundle(folder: str | Path, runtime: str = "onnxruntime", threads: int = 1,
                             batch_size: int = 1, quick: bool = False, seed: int = 0,
                             progress: Callable[[str], None] | None = None) -> Path:
    """A calibration bundle (``costmodel.bundle``) of the one recipe's networks, to run on the
    device the network will run on."""
    from costmodel.bundle import write_bundle
    from costmodel.calibration import default_repeats
    from costmodel.measure import micro_benchmark_geoms
    from costmodel.ort import PROTOCOL as ORT_PROTOCOL
    from costmodel.profile import PROTOCOL

    # The recipe's networks at their base count whatever the batch size: a bundle is copied to
    # the target device (a full one is hundreds of MB of ONNX files already).
    networks, extra = recipe_networks(quick, seed)
    protocol = dict(PROTOCOL, quick=quick, seed=seed, n_networks=len(networks) + len(extra))
    if runtime == "onnxruntime":
        protocol.update(ORT_PROTOCOL)
    return write_bundle(folder, networks + extra, micro_benchmark_geoms(quick, seed), runtime=runtime,
                        threads=threads, batch_size=batch_size, repeats=default_repeats(quick, batch_size),
                        protocol=protocol, progress=progress)


def fit_measurements_file(path: str | Path, out: str | Path | None = None,
                          progress: Callable[[str], None] | None = None) -> tuple[DeviceProfile, Path]:
    """Fit the profile of the device that produced the measurements file at ``path`` (a
    bundle's ``run.py`` output, or ``archgen calibrate --save-measurements``); save it to
    ``out``, by default next to the measurements (``<name>.profile.json``)."""
    from costmodel.calibration import fit_measurements
    from costmodel.measurements import Measurements

    measured = Measurements.load(path)
    profile = fit_measurements(measured, progress=progress)
    target = Path(out) if out is not None else Path(path).with_suffix(".profile.json")
    return profile, profile.save(target)

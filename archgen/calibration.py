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
GENERATOR_NETWORKS = (8, 80)
# Their seeds start here (plus the calibration seed), apart from the calibration networks'.
GENERATOR_SEED = 10_000


def generator_networks(n: int, seed: int, max_macs: int = 100_000_000) -> list[list[LayerGeom]]:
    """Layer geometries of ``n`` specs from archgen's own generator over a few input shapes, so
    the profile's lookup table holds the layer configurations the search will price."""
    from archgen.costing import spec_geoms
    from archgen.generator import Budget, sample_specs

    shapes = ((1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 96, 96))
    per_shape = max(1, n // len(shapes))
    out = []
    for i, shape in enumerate(shapes):
        specs = sample_specs(shape, 10, per_shape, seed=seed + i, budget=Budget(max_macs=max_macs))
        out.extend(spec_geoms(s) for s in specs)
    return out


def calibrate_device(device: str = "cpu", threads: int = 1, batch_size: int = 32, quick: bool = False,
                     seed: int = 0, out: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> tuple[DeviceProfile, Path]:
    """Measure ``device`` at ``threads`` and ``batch_size``, fit its profile and save it to
    ``out``, else to the per-device cache. Returns the profile and where it was saved.
    ``progress`` receives one line per step (default: logged)."""
    from costmodel.calibration import calibrate
    from costmodel.device_profile import cache_path

    extra = generator_networks(GENERATOR_NETWORKS[0 if quick else 1], seed=GENERATOR_SEED + seed)
    profile = calibrate(device=device, threads=threads, batch_size=batch_size, quick=quick, seed=seed,
                        extra_networks=extra, progress=progress)
    path = profile.save(out if out is not None else cache_path(profile.context))
    log.info("saved %s", path)
    return profile, path

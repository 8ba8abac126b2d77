"""``calibrate()``: measure this machine (``costmodel.measure``) and fit a device profile to the
measurements (``costmodel.fit``), optionally saving it to the per-device cache."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

from costmodel.device_profile import DeviceProfile, cache_path, current_context
from costmodel.errors import CostModelError
from costmodel.fit import fit_profile
from costmodel.geometry import LayerGeom
from costmodel.measure import measure_micro, measure_networks, micro_benchmark_geoms
from costmodel.netgen import random_plain_cnn
from costmodel.profile import PROTOCOL, resolve_clock, resolve_device

log = logging.getLogger(__name__)


def calibrate(
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 32,
    quick: bool = False,
    networks: Sequence[Sequence[LayerGeom]] | None = None,
    extra_networks: Sequence[Sequence[LayerGeom]] = (),
    n_networks: int | None = None,
    repeats: int | None = None,
    seed: int = 0,
    clock: str = "auto",
    save_to_cache: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Measure and fit a device profile for ``device`` at ``threads`` and ``batch_size``.

    ``quick``: 24 random calibration networks and 5 repeats (under a minute on a 2-core Xeon);
    otherwise 160 networks and 9 repeats (a few minutes). ``networks`` replaces the random
    calibration networks, ``extra_networks`` adds to them (e.g. samples of archgen's own
    generator, so the lookup table holds its layer configurations; never the networks the model
    is judged on). Networks are profiled interleaved, round by round, in chunks of
    ``costmodel.measure.CHUNK`` after ``costmodel.measure.WARMUP_S`` seconds of interleaved
    warm-up; ``clock`` as in ``costmodel.profile``. ``save_to_cache`` writes the profile to
    ``cache_path(context)``.
    Raises ``CostModelError`` for an unknown device or CUDA without CUDA.
    """
    context = current_context(device, threads, batch_size)
    dev = resolve_device(device)
    say = progress or (lambda msg: log.info("%s", msg))
    reps = repeats or (5 if quick else 9)
    if reps < 1:
        raise CostModelError(f"repeats={reps} must be >= 1")
    rng = random.Random(seed)
    if networks is None:
        count = n_networks or (24 if quick else 160)
        networks = [random_plain_cnn(rng) for _ in range(count)]
    networks = [list(n) for n in networks] + [list(n) for n in extra_networks]
    micro_geoms = micro_benchmark_geoms(quick, seed)
    say(f"calibrating {context['device']} ({context['device_name']}), {threads} thread(s), "
        f"batch {batch_size}: {len(micro_geoms)} micro-benchmarks, {len(networks)} networks, "
        f"{reps} repeats")
    micro = measure_micro(micro_geoms, batch_size, dev, threads, reps, clock)
    profiled = measure_networks(networks, batch_size, dev, threads, reps, clock, seed, say)
    protocol = dict(PROTOCOL, repeats=reps, quick=quick, n_networks=len(networks),
                    clock=resolve_clock(clock, threads) if dev == "cpu" else "cuda-events",
                    n_micro=len(micro_geoms), seed=seed)
    profile = fit_profile(context, micro, profiled, protocol, seed=seed)
    q = profile.fit_quality.get("network_oof", {})
    say(f"fit: calibration networks out of fold MAPE {100 * q.get('mape', math.nan):.1f}%, "
        f"within 10% {100 * q.get('within_10pct', math.nan):.0f}%")
    if save_to_cache:
        path = profile.save(cache_path(context))
        say(f"saved {path}")
    return profile

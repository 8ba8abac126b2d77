"""``calibrate()``: measure this machine (``costmodel.measure`` for PyTorch, ``costmodel.ort``
for ONNX Runtime) and fit a device profile to the measurements (``costmodel.fit``), optionally
saving it to the per-device cache. ``measure_calibration`` stops after measuring (the
measurements can be saved and fitted later, or come from another device's bundle run:
``fit_measurements``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable, Sequence

import costmodel.speed as speed
from costmodel.device_profile import RUNTIMES, DeviceProfile, cache_path, current_context
from costmodel.errors import CostModelError
from costmodel.fit import fit_profile
from costmodel.geometry import LayerGeom
from costmodel.measurements import Measurements
from costmodel.netgen import random_plain_cnn
from costmodel.profile import PROTOCOL, resolve_clock, resolve_device
from costmodel.timing import repeat_agreement, steady_allocator

log = logging.getLogger(__name__)


# A calibration whose networks agree with themselves (odd rounds against even rounds) within 10%
# for fewer than this share of them was measured on a noisy machine, and says so. Quiet runs on
# the 2-core machines gave 88-100% (docs/benchmarks.md, the noise floors of "Cost model accuracy");
# a shared host under load 50-77%.
NOISY_BELOW = 0.8
# Batch sizes up to this one count as small: a run is short there and its noise relatively large.
SMALL_BATCH = 4
# A full calibration at a small batch size measures this many times the networks (732 instead of
# 244): the per-layer model learns the in-context times of more layer configurations, for about
# 2.5 more minutes at batch 1 (docs/benchmarks.md, "Cost model accuracy": 240 -> 720 networks at
# batch 1, 87% -> 91% and 78% -> 87% of held-out networks within 10%). Bundles keep the base count.
SMALL_BATCH_NETWORKS = 3


def networks_multiplier(quick: bool, batch_size: int) -> int:
    """How many times its recipe's networks a calibration measures (``SMALL_BATCH_NETWORKS`` for
    a full calibration at a small batch size, else 1)."""
    return SMALL_BATCH_NETWORKS if not quick and batch_size <= SMALL_BATCH else 1


def calibration_networks(quick: bool, seed: int, n_networks: int | None = None,
                         batch_size: int = 32) -> list[list[LayerGeom]]:
    """The random plain CNNs a calibration measures (24 quick, 160 full; x
    ``networks_multiplier``)."""
    rng = random.Random(seed)
    count = n_networks or (24 if quick else 160) * networks_multiplier(quick, batch_size)
    return [random_plain_cnn(rng) for _ in range(count)]


def default_repeats(quick: bool, batch_size: int) -> int:
    """Timed rounds per network: more at small batch sizes, where a run is short and its noise
    relatively large (and more rounds cost little)."""
    if batch_size <= SMALL_BATCH:
        return 9 if quick else 21
    return 5 if quick else 9


def measure_calibration(
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
    runtime: str = "torch",
    progress: Callable[[str], None] | None = None,
) -> Measurements:
    """Measure what ``calibrate`` fits, here and now (see ``calibrate`` for the arguments)."""
    from costmodel.measure import micro_benchmark_geoms

    if runtime not in RUNTIMES:
        raise CostModelError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    context = current_context(device, threads, batch_size, runtime=runtime)
    dev = resolve_device(device)
    allocator = steady_allocator()  # before anything is measured (costmodel.timing)
    say = progress or (lambda msg: log.info("%s", msg))
    reps = repeats or default_repeats(quick, batch_size)
    if reps < 1:
        raise CostModelError(f"repeats={reps} must be >= 1")
    if networks is None:
        networks = calibration_networks(quick, seed, n_networks, batch_size)
    networks = [list(n) for n in networks] + [list(n) for n in extra_networks]
    micro_geoms = micro_benchmark_geoms(quick, seed)
    say(f"calibrating {context['device']} ({context['device_name']}), {runtime}, {threads} thread(s), "
        f"batch {batch_size}: {len(micro_geoms)} micro-benchmarks, {len(networks)} networks, "
        f"{reps} repeats")
    rounds: list[list[float]] = []  # each network's end-to-end times, for the noise floor
    moved: dict[str, object] = {}  # the machine's speed between chunks (costmodel.speed)
    if runtime == "onnxruntime":
        import costmodel.ort as ort

        micro = ort.measure_micro(micro_geoms, batch_size, threads, reps, clock)
        profiled = ort.measure_networks(networks, batch_size, threads, reps, clock, seed, say, rounds, moved)
        reference = ort.reference_ms(threads, clock)
        timer = resolve_clock(clock, threads)
    else:
        from costmodel.measure import measure_micro, measure_networks, reference_ms

        micro = measure_micro(micro_geoms, batch_size, dev, threads, reps, clock)
        profiled = measure_networks(networks, batch_size, dev, threads, reps, clock, seed, say, rounds, moved)
        reference = reference_ms(dev, threads, clock)
        timer = resolve_clock(clock, threads) if dev == "cpu" else "cuda-events"
    protocol = dict(PROTOCOL, repeats=reps, quick=quick, n_networks=len(networks), clock=timer,
                    n_micro=len(micro_geoms), seed=seed, allocator=allocator, **{speed.PROTOCOL_KEY: moved})
    if runtime == "onnxruntime":
        protocol.update(ort.PROTOCOL)
    return Measurements(context=context, protocol=protocol, micro=micro, networks=profiled,
                        reference_ms=reference, noise_floor=repeat_agreement(rounds))


def fit_measurements(measurements: Measurements, seed: int = 0,
                     progress: Callable[[str], None] | None = None) -> DeviceProfile:
    """Fit a device profile to ``measurements`` (made here or on another device) and say how
    good the fit is (out-of-fold over the calibration networks)."""
    say = progress or (lambda msg: log.info("%s", msg))
    if not measurements.networks:
        raise CostModelError("the measurements hold no calibration network; nothing to fit")
    profile = fit_profile(measurements.context, measurements.micro, measurements.networks,
                          measurements.protocol, seed=seed, reference_ms=measurements.reference_ms)
    q = profile.fit_quality.get("network_oof", {})
    noise = measurements.noise_floor
    say(f"fit: calibration networks out of fold MAPE {100 * q.get('mape', math.nan):.1f}%, "
        f"within 10% {100 * q.get('within_10pct', math.nan):.0f}%, "
        f"within 5% {100 * q.get('within_5pct', math.nan):.0f}%"
        + (f"; repeatability: their odd and even rounds agree within 10% for "
           f"{100 * noise['within_10pct']:.0f}%" if noise else ""))
    cv = profile.fit_quality.get("layer_context_cv_mape")
    if cv:  # type: ignore[truthy-bool]
        say(f"layer context: {profile.fit_quality['layer_context']} (out of fold MAPE " + ", ".join(
            f"{name} {100 * v:.2f}%" for name, v in cv.items()) + ")")  # type: ignore[union-attr]
    moved = speed.describe(measurements.protocol.get(speed.PROTOCOL_KEY))  # type: ignore[arg-type]
    if moved:  # here or in a bundle's run.py
        say(moved)
    if noise and noise["within_10pct"] < NOISY_BELOW:
        noisy = (f"the machine was noisy while calibrating: the same networks timed twice (odd rounds "
                 f"against even rounds) agree within 10% for only {100 * noise['within_10pct']:.0f}% of "
                 f"them (median {noise['median_abs_pct']:.1f}% apart); another process, a busy sibling "
                 "hyperthread or a shared host competed for the CPU, and this profile's estimates are "
                 "less certain than a quiet machine's; calibrate again when it is quieter")
        if progress:
            progress(f"warning: {noisy}")
        else:
            log.warning("%s", noisy)
    if noise:
        profile = dataclasses.replace(profile, fit_quality=dict(profile.fit_quality, noise_floor=dict(noise)))
    return profile


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
    runtime: str = "torch",
) -> DeviceProfile:
    """Measure and fit a device profile for ``device`` at ``threads`` and ``batch_size``.

    ``runtime``: ``torch`` (PyTorch eager) or ``onnxruntime`` (the calibration networks exported
    to ONNX and run in an ``onnxruntime.InferenceSession``; CPU only).
    ``quick``: 24 random calibration networks and 5 repeats (9 at batch sizes up to 4; under a
    minute on a 2-core Xeon); otherwise 160 networks and 9 repeats (21 at batch sizes up to 4; a
    few minutes). ``networks`` replaces the random
    calibration networks, ``extra_networks`` adds to them (e.g. samples of archgen's own
    generator, so the lookup table holds its layer configurations; never the networks the model
    is judged on). Networks are profiled interleaved, round by round, in chunks of up to
    ``costmodel.measure.CHUNK`` after ``costmodel.measure.WARMUP_S`` seconds of interleaved
    warm-up, with the speed anchors in every chunk and each chunk's times brought to the
    machine's median speed (``costmodel.speed``); ``clock`` as in ``costmodel.profile``.
    ``save_to_cache`` writes the profile to ``cache_path(context)``.
    Raises ``CostModelError`` for an unknown device or runtime, or CUDA without CUDA.
    """
    measurements = measure_calibration(device, threads, batch_size, quick, networks, extra_networks,
                                       n_networks, repeats, seed, clock, runtime, progress)
    profile = fit_measurements(measurements, seed, progress)
    if save_to_cache:
        path = profile.save(cache_path(profile.context))
        (progress or (lambda msg: log.info("%s", msg)))(f"saved {path}")
    return profile

"""Time functions and whole models on CPU or CUDA (layers built from geometries: ``measure``).

Timing protocol (recorded in every device profile, see ``PROTOCOL``):

* CPU: ``torch.set_num_threads(threads)`` fixed for the whole measurement (1 by default: on
  shared machines one thread repeats far better than two). The clock is ``time.perf_counter``
  at 2+ threads; at 1 thread (``clock="auto"``) it is the computing thread's CPU time
  (``time.thread_time``): with one torch thread all the work runs in the calling thread, so
  its CPU time equals its wall time on an idle core but excludes the time the core is lent to
  other processes, which on a shared machine keeps per-layer minima adding up to the end-to-end
  minimum (docs/benchmarks.md, "Cost model accuracy"). ``clock="wall"`` forces ``perf_counter``;
  CUDA: ``torch.cuda.Event`` pairs and ``torch.cuda.synchronize`` before reading them.
* Warm-up per shape (``warmup`` calls, at least 2) before any timed call, so one-time costs
  (allocator growth, oneDNN primitive creation, cuDNN autotuning) are excluded.
* The statistic is the **minimum** of ``repeats`` calls (noise on a busy machine only ever adds
  time), reported with the interquartile range of the calls as its spread. At batch sizes up to
  ``costmodel.timing.SETTLE_BATCH`` models timed together get more rounds while their minima are
  still falling (``costmodel.timing.run_rounds``, up to twice ``repeats``): on a noisy machine a
  minimum over a fixed number of calls did not repeat from one process to the next.
* Whole models: timed end-to-end without hooks and, interleaved call by call, with
  boundary hooks on every leaf module; a layer's time runs from its first leaf call's start to
  the next layer's first start, so per-layer times telescope to the hooked end-to-end time.
  Every timed call, hooked or not, directly follows a call of the same model (an untimed one,
  then the hooked one): the steady state of a model run again and again. Without it,
  interleaving many models leaves each one's weights cold: at batch 1 end-to-end times came out
  about 10% higher than calibration's, and the hooked layer times carried a cold-cache cost
  the network correction could not remove (docs/benchmarks.md, "Cost model accuracy").
* Freed memory stays in the process while measuring (``costmodel.timing.steady_allocator``:
  glibc's mmap and trim thresholds raised and mmap off, recorded as ``protocol["allocator"]``): otherwise a
  layer with a large output page-faults its buffers in again on every call, and one conv ran
  at 0.95 ms or 4.4 ms depending on what the process had allocated before.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import costmodel.timing as timing
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom, trace_module

if TYPE_CHECKING:
    import torch
    from torch import nn

    Stamp = float | torch.cuda.Event  # a CPU clock reading (seconds) or a recorded CUDA event

PROTOCOL = {
    "statistic": "min",
    "spread": "iqr",
    "cpu_timer": "time.thread_time at 1 thread (clock=auto), else time.perf_counter",
    "cuda_timer": "torch.cuda.Event + synchronize",
    "warmup_min": 2,
    "per_layer": "leaf-module boundary hooks, interleaved with unhooked end-to-end calls",
    "settle": (f"at batch <= {timing.SETTLE_BATCH}, blocks of half the rounds more while over "
               f"{timing.SETTLE_SHARE:.0%} of the minima still fall by over {timing.SETTLE_GAIN:.0%}, "
               f"up to {timing.SETTLE_MAX}x the rounds"),
}


@dataclass(frozen=True)
class Timing:
    """Summary of repeated calls of one function, in milliseconds."""

    min_ms: float
    median_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...] = field(repr=False, default=())

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Timing:
        if not samples_ms:
            raise CostModelError("no timing samples; use repeats >= 1")
        return cls(min(samples_ms), statistics.median(samples_ms), timing.iqr(samples_ms), tuple(samples_ms))


def resolve_device(device: str) -> str:
    """Validate a device string (``cpu``, ``cuda`` or ``cuda:N``) and return it normalised.

    Raises ``CostModelError`` for an unknown device or for CUDA on a machine without CUDA.
    """
    import torch

    if not isinstance(device, str):
        raise CostModelError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    dev = device.strip().lower()
    if dev == "cpu":
        return dev
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CostModelError(
                f"device {device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}); use --device cpu"
            )
        return dev
    raise CostModelError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


CLOCKS = ("auto", "wall", "thread")
resolve_clock = timing.resolve_clock  # ``auto`` is ``thread`` at one thread, else ``wall``


def cpu_timer(clock: str, threads: int) -> Callable[[], float]:
    """The CPU timer for ``clock``: ``wall`` is ``time.perf_counter``; ``thread`` is
    ``time.thread_time`` (CPU time of the calling thread: immune to the core being lent to other
    processes, valid only when torch computes in this one thread, i.e. ``threads == 1``);
    ``auto`` picks ``thread`` at one thread, else ``wall`` (``costmodel.runner``)."""
    try:
        return timing.cpu_timer(clock, threads)
    except timing.MeasureError as exc:
        raise CostModelError(str(exc)) from None


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count after."""
    if not isinstance(threads, int) or threads < 1:
        raise CostModelError(f"threads={threads!r} must be a positive integer")
    with timing.torch_threads(threads):
        yield


def time_fn(fn: Callable[[], object], device: str = "cpu", threads: int = 1, repeats: int = 15,
            warmup: int = 3, clock: str = "auto") -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    CPU: ``perf_counter`` (``clock="wall"``) or the calling thread's CPU time
    (``clock="thread"``, only with ``threads=1``) with ``threads`` torch threads. CUDA: events
    around each call and a synchronize before reading them.
    """
    device = resolve_device(device)
    timer = cpu_timer(clock, threads)
    if repeats < 1:
        raise CostModelError(f"repeats={repeats} must be >= 1")
    import torch

    timing.steady_allocator()

    with fixed_threads(threads), torch.no_grad():
        for _ in range(max(warmup, PROTOCOL["warmup_min"])):
            fn()
        samples: list[float] = []
        if device == "cpu":
            for _ in range(repeats):
                t0 = timer()
                fn()
                samples.append((timer() - t0) * 1e3)
        else:
            torch.cuda.synchronize()
            pairs = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize()
            samples = [s.elapsed_time(e) for s, e in pairs]
    return Timing.from_samples(samples)


@dataclass(frozen=True)
class ModelProfile:
    """Measured times of a whole model: per layer (aligned with ``geoms``) and end to end."""

    geoms: tuple[LayerGeom, ...]
    meas_ms: tuple[float, ...]
    meas_iqr_ms: tuple[float, ...]
    e2e_ms: float
    e2e_iqr_ms: float
    hooked_total_ms: float
    device: str
    threads: int
    batch_size: int
    repeats: int
    clock: str = ""
    e2e_samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def layer_sum_ms(self) -> float:
        """Sum of per-layer times; agrees with ``e2e_ms`` within a few percent."""
        return float(sum(self.meas_ms))

    def to_dict(self) -> dict[str, object]:
        return {
            "layers": [
                {"layer": g.name, "op": g.op, "meas_ms": m, "meas_iqr_ms": q}
                for g, m, q in zip(self.geoms, self.meas_ms, self.meas_iqr_ms)
            ],
            "e2e_ms": self.e2e_ms,
            "e2e_iqr_ms": self.e2e_iqr_ms,
            "layer_sum_ms": self.layer_sum_ms,
            "device": self.device,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "clock": self.clock,
            "protocol": dict(PROTOCOL),
        }


def profile_module(module: nn.Module, example_input: torch.Tensor, device: str = "cpu",
                   threads: int = 1, repeats: int = 15, warmup: int = 3,
                   clock: str = "auto") -> ModelProfile:
    """Profile ``module`` on ``example_input`` (its batch size is the profiled batch size).

    Per-layer times are the minimum over ``repeats`` hooked calls (up to twice as many at small
    batch sizes while the minima still fall: ``costmodel.timing.run_rounds``); ``e2e_ms`` is the
    minimum over as many unhooked calls, interleaved with the hooked ones. The module is put in
    eval mode and moved to ``device`` (left there).
    """
    return profile_modules([(module, example_input)], device, threads, repeats, warmup, clock)[0]


def profile_modules(pairs: list[tuple[nn.Module, torch.Tensor]], device: str = "cpu",
                    threads: int = 1, repeats: int = 15, warmup: int = 3, clock: str = "auto",
                    per_layer: bool = True, warmup_s: float = 0.0) -> list[ModelProfile]:
    """Profile several ``(module, example_input)`` pairs, interleaved round by round.

    Each round runs every model once hooked and once plain, so a burst of load from other
    processes lands on all models alike instead of biasing the ones measured during it.
    ``per_layer=False`` skips the hooked runs (end-to-end only; ``meas_ms`` is empty).
    Warm-up: at least ``warmup`` interleaved untimed rounds and at least ``warmup_s`` seconds.
    """
    import torch

    device = resolve_device(device)
    if repeats < 1:
        raise CostModelError(f"repeats={repeats} must be >= 1")
    timer = cpu_timer(clock, threads)
    with fixed_threads(threads), torch.no_grad():
        timers = [_model_timer(m, x, device, timer, per_layer) for m, x in pairs]
        try:
            timing.run_interleaved(timers, repeats, warmup, warmup_s,
                                   settle=max((int(t.x.shape[0]) for t in timers), default=0) <= timing.SETTLE_BATCH)
        except timing.MeasureError as exc:
            raise CostModelError(str(exc)) from None
    clock_name = resolve_clock(clock, threads) if device == "cpu" else "cuda-events"
    return [t.result(threads, repeats, clock_name) for t in timers]


def _model_timer(module: nn.Module, example_input: torch.Tensor, device: str,
                 timer: Callable[[], float], per_layer: bool = True) -> _ModelTimer:
    module = module.to(device).eval()
    x = example_input.to(device)
    geoms, _ = trace_module(module, x)
    if not geoms:
        raise CostModelError("the module has no layer the cost model can price")
    return _ModelTimer(module, x, geoms, device, timer, per_layer)


class _ModelTimer(timing.TorchTimer):
    """``costmodel.timing.TorchTimer`` for any module: its layers are those tracing finds."""

    def __init__(self, module: nn.Module, x: torch.Tensor, geoms: list[LayerGeom], device: str,
                 timer: Callable[[], float], per_layer: bool) -> None:
        super().__init__(module, x, [g.calls[0] for g in geoms], device, timer, per_layer,
                         last_call=max(c for g in geoms for c in g.calls))
        self.geoms = geoms
        self.device = device

    def result(self, threads: int, repeats: int, clock: str) -> ModelProfile:
        meas, iqr = (tuple(v) for v in self.layer_min_ms())
        e2e = Timing.from_samples(self.e2e)
        return ModelProfile(
            geoms=tuple(self.geoms), meas_ms=meas, meas_iqr_ms=iqr, e2e_ms=e2e.min_ms,
            e2e_iqr_ms=e2e.iqr_ms,
            hooked_total_ms=min((sum(r) for r in self.per_layer), default=float("nan")),
            device=self.device, threads=threads, batch_size=int(self.x.shape[0]),
            repeats=repeats, clock=clock, e2e_samples_ms=tuple(self.e2e),
        )

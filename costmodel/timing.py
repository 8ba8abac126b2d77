"""The timing protocol of the cost model, standalone: the Python standard library and torch
(imported inside the functions), nothing of archgen or costmodel, so that a calibration bundle
(``costmodel.bundle``) carries this very file to the target device (its ``run.py`` is
``costmodel.runner``). ``costmodel.profile`` and ``costmodel.measure`` time through it here.

Protocol: the CPU clock is the calling thread's CPU time at one thread (``time.thread_time``;
with one intra-op thread all work runs in the calling thread) and ``perf_counter`` otherwise;
the statistic is the minimum of repeated calls; networks are timed interleaved, round by round,
after interleaved warm-up; every timed call follows a call of the same network (the steady
state of a network run again and again). Per-layer times come from boundary hooks on the leaf
modules and telescope to the hooked end-to-end time. ONNX Runtime: ``costmodel.timing_ort``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

CHUNK = 40  # networks timed interleaved at a time (bounds memory, fixes the cache regime)
WARMUP_S = 5.0  # interleaved warm-up per chunk: freshly built networks run slower at first


class MeasureError(RuntimeError):
    """A measurement that cannot be made (bad clock, a network that does not trace, ...)."""


# -- the allocator ------------------------------------------------------------------------------
# glibc's malloc hands freed memory back to the system (it trims the heap and unmaps blocks above
# its mmap threshold, which moves as the process runs) and page-faults it in on the next call: a
# batch-1 conv with a large output paid 3-6x (3->64 channels, 5x5, 96x96: 4.4 ms against 0.95 ms),
# and a batch-32 network at 96x96 with 38 MB outputs, above any threshold glibc accepts, 2-4x
# (docs/benchmarks.md). Measurements keep freed memory in the process instead (thresholds raised,
# mmap off): what jemalloc and tcmalloc do, and what a long-running inference process gets with
# glibc when started with MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_MAX_=0.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30
MMAP_OFF = "mmap off"  # in the protocol's allocator: no buffer is mapped per call, however large
_allocator: str | None = None


def steady_allocator() -> str:
    """Keep freed memory in this process from now on (glibc: ``mallopt``), so that a network
    run again and again does not page-fault its buffers back in on every call (buffers of any
    size: mmap is off, so those above 32 MiB come from the heap too). Returns what is in force,
    as the protocol records it; idempotent, and for the rest of the process (memory freed later
    is not handed back to the system below the trim threshold either). Elsewhere (Windows,
    macOS, musl) nothing changes."""
    global _allocator
    if _allocator is None:
        _allocator = "system default"
        if not sys.platform.startswith("linux"):
            return _allocator
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version.restype = ctypes.c_char_p
            version = libc.gnu_get_libc_version().decode()
            mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            off = libc.mallopt(M_MMAP_MAX, 0) == 1
        except (OSError, AttributeError, ValueError, TypeError):
            return _allocator
        if mmap_ok or trim_ok or off:
            _allocator = (f"glibc {version} malloc"
                          + (f", mmap threshold {MMAP_THRESHOLD >> 20} MiB" if mmap_ok else "")
                          + (f", trim threshold {TRIM_THRESHOLD >> 20} MiB" if trim_ok else "")
                          + (f", {MMAP_OFF}" if off else ""))
    return _allocator


# -- clocks ---------------------------------------------------------------------------------------

def resolve_clock(clock: str, threads: int) -> str:
    """``auto`` is ``thread`` at one thread and ``wall`` otherwise."""
    return ("thread" if threads == 1 else "wall") if clock == "auto" else clock


def cpu_timer(clock: str, threads: int) -> Callable[[], float]:
    """``wall``: ``time.perf_counter``; ``thread``: the calling thread's CPU time (immune to
    the core being lent to other processes; valid only at one thread)."""
    clock = resolve_clock(clock, threads)
    if clock == "wall":
        return time.perf_counter
    if clock == "thread":
        if threads != 1:
            raise MeasureError(f"clock='thread' measures one thread's CPU time; it needs threads=1, not {threads}")
        return time.thread_time
    raise MeasureError(f"unknown clock {clock!r}; use one of auto, wall, thread")


def lower_half_mean(values: Sequence[float]) -> float:
    low = sorted(values)[: max(1, len(values) // 2)]
    return sum(low) / len(low)


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def repeat_agreement(rounds: Sequence[Sequence[float]]) -> dict[str, float] | None:
    """The noise floor of one measurement session: each network's minimum over its odd rounds
    against its minimum over its even rounds (``rounds``: each network's end-to-end times in round
    order). Returns the share of networks whose two minima agree within 10% and within 5%, and the
    median disagreement in percent, or None when no network has two rounds. It says how the machine
    behaved while measuring; each half holds half the rounds, so a model fitted to the minima over
    all of them can price networks more closely than this."""
    pairs = [(min(r[0::2]), min(r[1::2])) for r in rounds if len(r) >= 2]
    err = [abs(b - a) / a for a, b in pairs if a > 0]
    if not err:
        return None
    return {"n": len(err), "within_10pct": sum(e < 0.1 for e in err) / len(err),
            "within_5pct": sum(e < 0.05 for e in err) / len(err),
            "median_abs_pct": 100 * statistics.median(err)}


# -- PyTorch: networks from geometry records ---------------------------------------------------

def layout(names: Sequence[str]) -> list[tuple[str, str]]:
    """Per layer ``(container, local name)``: ``s1.conv1`` -> (``s1``, ``conv1``); an undotted
    name is top level (container ""). A prefix that comes back after another one gets a new
    container (``s1_5``), so every container holds consecutive layers."""
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    current = prefix_of_current = ""
    for i, name in enumerate(names):
        prefix, _, local = name.rpartition(".")
        prefix = prefix.replace(".", "_")
        local = local.replace(".", "_") or f"l{i}"
        if prefix and prefix != prefix_of_current:
            current = prefix if prefix not in used else f"{prefix}_{i}"
            used.add(current)
        prefix_of_current = prefix
        out.append((current if prefix else "", local))
    return out


def module_paths(names: Sequence[str]) -> dict[str, int]:
    """Module path -> layer index for a network built by ``build_module`` (the layer's module
    and its activation's)."""
    out: dict[str, int] = {}
    for i, (container, local) in enumerate(layout(names)):
        for name in (local, f"{local}_act"):
            out[f"{container}.{name}" if container else name] = i
    return out


def _activation(name: str | None, activations: Mapping[str, tuple[str, bool]]) -> Any:
    from torch import nn

    if (name or "relu") not in activations:
        raise MeasureError(f"unknown activation {name!r}")
    torch_type, elementwise = activations[name or "relu"]
    cls = getattr(nn, torch_type)
    return cls() if elementwise else cls(dim=1)


def _layer_module(g: Mapping[str, Any], flat: bool, activations: Mapping[str, tuple[str, bool]]) -> Any:
    from torch import nn

    op = g["op"]
    if op == "conv":
        return nn.Conv2d(g["c_in"], g["c_out"], g.get("kernel", 1), g.get("stride", 1), g.get("padding", 0),
                         groups=g.get("groups", 1), bias=g.get("bias", True))
    if op == "dense":
        return nn.Linear(g["c_in"], g["c_out"], bias=g.get("bias", True))
    if op == "pool":
        cls = nn.MaxPool2d if g.get("mode", "max") == "max" else nn.AvgPool2d
        return cls(g.get("kernel", 1), g.get("stride", 1), g.get("padding", 0))
    if op == "bn":
        return nn.BatchNorm2d(g["c_out"]) if not flat else nn.BatchNorm1d(g["c_out"])
    if op == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if op == "dropout":
        return nn.Dropout(0.5)
    return _activation(g.get("activation"), activations)


def build_module(geoms: Sequence[Mapping[str, Any]],
                 activations: Mapping[str, tuple[str, bool]]) -> tuple[Any, list[int]]:
    """A ``torch.nn.Sequential`` realising layer geometry records in order, and the index of
    each layer's first leaf-module call (a flatten's call counts in the layer after it, as
    ``costmodel.geometry.trace_module`` attributes it). A flatten goes before the first dense layer (or after
    a global pooling); consecutive layers with the same dotted prefix go into one nested
    ``Sequential`` per stage, the way archgen builds its networks, so that the networks
    measured pay the same per-container call costs as the networks they price. A conv/dense
    record's ``activation`` is its own module after it. ``activations``: name -> (torch.nn
    class name, elementwise)."""
    from torch import nn

    top: OrderedDict[str, Any] = OrderedDict()
    flat = False
    firsts: list[int] = []
    leaves = 0
    pending: int | None = None  # a flatten's call, counted in the next layer (as tracing does)
    for g, (container, local) in zip(geoms, layout([str(g.get("name", "")) for g in geoms])):
        target = top if not container else top.setdefault(container, OrderedDict())
        if g["op"] == "dense" and not flat:
            target[f"flatten{len(firsts)}"] = nn.Flatten()
            pending = leaves if pending is None else pending
            leaves += 1
            flat = True
        firsts.append(leaves if pending is None else pending)
        pending = None
        target[local] = _layer_module(g, flat, activations)
        leaves += 1
        if g["op"] in ("conv", "dense") and g.get("activation"):
            target[f"{local}_act"] = _activation(g["activation"], activations)
            leaves += 1
        if g["op"] == "gap" and not flat:
            target[f"flatten{len(firsts)}"] = nn.Flatten()
            pending = leaves
            leaves += 1
            flat = True
    model = nn.Sequential(OrderedDict(
        (name, nn.Sequential(m) if isinstance(m, OrderedDict) else m) for name, m in top.items()))
    return model.eval(), firsts


def random_input(first: Mapping[str, Any], batch_size: int, device: str = "cpu") -> Any:
    import torch

    if first["op"] == "dense":
        return torch.randn(batch_size, first["c_in"], device=device)
    return torch.randn(batch_size, first["c_in"], first["h_in"], first["w_in"], device=device)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TorchTimer:
    """Per-layer (boundary hooks) and end-to-end timing of one model. ``firsts``: each layer's
    first leaf-call index; a layer's time runs from its first call's start to the next layer's
    first start (the last one's to the end of ``last_call``, by default the last leaf's call:
    right for networks whose leaves are each called once, in order)."""

    def __init__(self, module: Any, x: Any, firsts: Sequence[int], device: str,
                 timer: Callable[[], float], per_layer: bool = True, last_call: int | None = None) -> None:
        import torch

        steady_allocator()

        self.torch = torch
        self.module = module.to(device).eval()
        self.x = x.to(device)
        self.cuda = device != "cpu"
        self.timer = timer
        self.with_layers = per_layer
        self.n_layers = len(firsts)
        self.boundaries = set(firsts)
        self.leaves = [m for m in module.modules() if next(iter(m.children()), None) is None]
        self.last_call = len(self.leaves) - 1 if last_call is None else last_call
        self.stamps: list[Any] = []
        self.counter = 0
        self.per_layer: list[list[float]] = []
        self.e2e: list[float] = []

    def _stamp(self) -> Any:
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return self.timer()

    def _pre_hook(self, mod: Any, inputs: Any) -> None:
        if self.counter in self.boundaries:
            self.stamps.append(self._stamp())

    def _post_hook(self, mod: Any, inputs: Any, output: Any) -> None:
        if self.counter == self.last_call:
            self.stamps.append(self._stamp())
        self.counter += 1

    def warm(self) -> None:
        self.module(self.x)
        if self.cuda:
            self.torch.cuda.synchronize()

    def _hooked(self) -> list[float]:
        handles = []
        try:
            for leaf in self.leaves:
                handles.append(leaf.register_forward_pre_hook(self._pre_hook))
                handles.append(leaf.register_forward_hook(self._post_hook))
            self.stamps, self.counter = [], 0
            self.module(self.x)
        finally:
            for h in handles:
                h.remove()
        st = self.stamps
        if self.cuda:
            self.torch.cuda.synchronize()
            durations = [a.elapsed_time(b) for a, b in zip(st, st[1:])]
        else:
            durations = [(b - a) * 1e3 for a, b in zip(st, st[1:])]
        if len(durations) != self.n_layers:
            raise MeasureError(f"profiling saw {len(durations)} layers but tracing found {self.n_layers}; "
                               "the module's forward is not deterministic")
        return durations

    def _plain(self) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            self.module(self.x)
            end.record()
            self.torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = self.timer()
        self.module(self.x)
        return (self.timer() - t0) * 1e3

    def run_round(self) -> None:
        # Every timed call follows a call of the same model: each time is of a model run again
        # right after itself (weights in cache), as a deployed model is. The hooked call after
        # another model's would pay for loading this one's weights, layer by layer.
        # The hooked call runs whether or not its layer times are kept: an end-to-end time
        # taken without it came out 8% higher at batch 1 (docs/benchmarks.md), so the two modes
        # would not measure the same thing.
        self.module(self.x)
        layers = self._hooked()
        if self.with_layers:
            self.per_layer.append(layers)
        self.e2e.append(self._plain())

    def layer_min_ms(self) -> tuple[list[float], list[float]]:
        columns = [list(col) for col in zip(*self.per_layer)]
        return [min(c) for c in columns], [iqr(c) for c in columns]


def run_interleaved(timers: Sequence[Any], repeats: int, warmup: int = 2, warmup_s: float = 0.0,
                    settle: bool = False) -> None:
    """Warm up (at least ``warmup`` interleaved rounds and ``warmup_s`` seconds), then
    ``repeats`` timed rounds over all timers, interleaved so that a burst of load from other
    processes lands on all networks alike; then, with ``settle``, more rounds while the minima
    are still falling (``run_rounds``)."""
    start, rounds = time.perf_counter(), 0
    while rounds < max(warmup, 2) or time.perf_counter() - start < warmup_s:
        for t in timers:
            t.warm()
        rounds += 1
    for t in timers:
        if getattr(t, "with_layers", False) and isinstance(t, TorchTimer):
            t._hooked()  # the hook path warms up too
    if repeats > 0:
        run_rounds(timers, repeats, settle)


# On a noisy machine a minimum over a fixed number of rounds is found only when a quiet moment fell
# among them. So the rounds go on while, for more than SETTLE_SHARE of the networks, the minimum
# over all rounds is more than SETTLE_GAIN below the minimum over their first half; at most
# SETTLE_MAX times the rounds asked for. Only at batch sizes up to SETTLE_BATCH: at batch 1 the
# minima of 80 networks in two processes agreed within 10% for 61-90% with 21 rounds, 91-95%
# settled; at batch 32 for 92-100% already (docs/benchmarks.md, "A noisy machine").
SETTLE_GAIN = 0.03
SETTLE_SHARE = 0.1
SETTLE_MAX = 2
SETTLE_BATCH = 4


def still_falling(samples: Sequence[Sequence[float]]) -> bool:
    """Whether the minima of these networks' times (each in round order) are still falling."""
    falling = sum(min(s) < (1 - SETTLE_GAIN) * min(s[: max(1, len(s) // 2)]) for s in samples if s)
    return falling > SETTLE_SHARE * len(samples)


def run_rounds(timers: Sequence[Any], repeats: int, settle: bool = False) -> int:
    """``repeats`` interleaved rounds of ``run_round`` over ``timers`` (each keeps its end-to-end
    times in ``e2e``), then, with ``settle``, blocks of half as many more while ``still_falling``,
    up to ``SETTLE_MAX`` times ``repeats`` in all. Returns the rounds run."""
    done, cap = 0, repeats * (SETTLE_MAX if settle else 1)
    block = repeats
    while done < cap and (done == 0 or still_falling([t.e2e for t in timers])):
        n = min(block, cap - done)
        for _ in range(n):
            for t in timers:
                t.run_round()
        done += n
        block = max(2, repeats // 2)
    return done

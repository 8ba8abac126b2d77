"""ONNX Runtime timing, standalone like ``costmodel.timing`` (numpy and onnxruntime, imported
inside the functions; no torch): sessions as the protocol fixes them (sequential executor,
``intra_op_num_threads`` fixed, graph optimizations on), end-to-end times around
``session.run``, per-layer times from ONNX Runtime's node profiling (whole microseconds; the
mean of the lower half of the runs), each node attributed to the layer its module path names
(a node ONNX Runtime made up to the next layer, its consumer).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__:
    from costmodel.timing import MeasureError, cpu_timer, iqr, lower_half_mean, run_interleaved
else:  # in a calibration bundle, next to timing.py
    from timing import MeasureError, cpu_timer, iqr, lower_half_mean, run_interleaved

GRAPH_OPTIMIZATION = "all"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MeasureError("the onnxruntime runtime needs the onnxruntime package (pip install onnxruntime)") from None
    return onnxruntime


def ort_session(path: str | os.PathLike[str], threads: int = 1, profile_prefix: str | None = None,
                optimization: str = GRAPH_OPTIMIZATION) -> Any:
    """An InferenceSession as the protocol fixes it (``profile_prefix``: node profiling on)."""
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def module_path(node_name: str) -> str | None:
    """The dotted module path an exported node came from (``/s1/conv1/Conv`` -> ``s1.conv1``;
    ``fused /fc1/Gemm`` -> ``fc1``), None for a node ONNX Runtime made up (``ReorderOutput``)."""
    name = node_name[len("fused "):] if node_name.startswith("fused ") else node_name
    if not name.startswith("/") or name.count("/") < 2:
        return None
    return ".".join(name[1:].rsplit("/", 1)[0].split("/"))


def node_layers(node_names: Sequence[str], layer_of_path: Mapping[str, int]) -> list[int]:
    """The layer each node (in execution order) is attributed to: its module's layer, else (a
    node ONNX Runtime made up: a layout reorder, a flatten) the layer of the next node that has
    one, the consumer it was made for (the last layer for nodes after every known one). A
    reorder to NCHW before a dense layer's flatten then counts on the dense layer, whose input
    size it scales with, not on whichever conv or pool came before it."""
    known = [layer_of_path.get(module_path(n) or "") for n in node_names]
    out: list[int] = []
    following = next((k for k in reversed(known) if k is not None), 0)
    for k in reversed(known):
        following = k if k is not None else following
        out.append(following)
    return out[::-1]


def parse_profile(path: str | os.PathLike[str]) -> list[list[tuple[str, float]]]:
    """ONNX Runtime's profile file -> per run, the ``(node name, ms)`` of its kernels in order."""
    events = json.loads(Path(path).read_text())
    # A run's node events come before its model_run event in the file: group them by time.
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs: list[list[tuple[str, float]]] = [[] for _ in spans]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        for i, (a, b) in enumerate(spans):
            if a <= e["ts"] <= b:
                runs[i].append((e["name"][: -len("_kernel_time")], e["dur"] / 1e3))
                break
    return runs


class OrtTimer:
    """End-to-end and per-layer timing of one exported network (the per-layer times from a
    second session with profiling on, run in the same rounds)."""

    def __init__(self, path: str | os.PathLike[str], x: Any, layer_of_path: Mapping[str, int],
                 n_layers: int, threads: int, timer: Callable[[], float], prefix: str | None,
                 node_cost: tuple[float, float] = (0.0, 0.0)) -> None:
        self.node_cost = node_cost
        self.plain = ort_session(path, threads)
        self.profiled = ort_session(path, threads, prefix) if prefix is not None else None
        self.feed = {self.plain.get_inputs()[0].name: x}
        self.layer_of_path = dict(layer_of_path)
        self.n_layers = n_layers
        self.timer = timer
        self.e2e: list[float] = []

    def warm(self) -> None:
        self.plain.run(None, self.feed)

    def run_round(self) -> None:
        if self.profiled is not None:  # in pairs: the second of each is recorded (warm weights)
            self.profiled.run(None, self.feed)
            self.profiled.run(None, self.feed)
        self.plain.run(None, self.feed)  # timed right after a run of itself
        t0 = self.timer()
        self.plain.run(None, self.feed)
        self.e2e.append((self.timer() - t0) * 1e3)

    def layer_ms(self, skip_runs: int = 1) -> tuple[list[float], list[float]]:
        """Per layer: the mean of the lower half of its per-run sums, and their IQR (of the
        recorded runs: the second of each pair, its weights warm from the first). Each node's
        duration less the profiler's own cost per node, and at least the least a node takes
        (``node_cost``, from ``profiler_cost_ms``)."""
        if self.profiled is None:
            return [], []
        runs = [r for r in parse_profile(self.profiled.end_profiling())[skip_runs:][1::2] if r]
        if not runs:
            raise MeasureError("onnxruntime's profile holds no run")
        per_layer = layer_runs(runs, self.layer_of_path, self.n_layers, self.node_cost)
        return [lower_half_mean(v) for v in per_layer], [iqr(v) for v in per_layer]


def layer_runs(runs: Sequence[Sequence[tuple[str, float]]], layer_of_path: Mapping[str, int], n_layers: int,
               node_cost: tuple[float, float] = (0.0, 0.0)) -> list[list[float]]:
    """Per layer, its time in each run (``parse_profile``'s runs): the sum of its nodes'
    durations, each less the profiler's cost per node and at least the least a node takes
    (``node_cost``)."""
    overhead, floor = node_cost
    per_layer: list[list[float]] = [[] for _ in range(n_layers)]
    for run in runs:
        sums = [0.0] * n_layers
        for k, (_, ms) in zip(node_layers([n for n, _ in run], layer_of_path), run):
            sums[k] += max(ms - overhead, floor)
        for k, v in enumerate(sums):
            per_layer[k].append(v)
    return per_layer


def time_ort_networks(items: Sequence[tuple[Any, Any, Mapping[str, int], int]], threads: int, repeats: int,
                      clock: str, per_layer: bool = True, warmup: int = 2, warmup_s: float = 0.0,
                      node_cost: tuple[float, float] = (0.0, 0.0),
                      ) -> list[tuple[list[float], list[float], list[float]]]:
    """Time exported networks interleaved: per network ``(per-layer ms, per-layer IQR ms,
    end-to-end samples ms)``. Each item: ``(onnx path, input array, layer index by module
    path, number of layers)``. ``node_cost``: the profiler's cost per node, taken off every
    node's duration, and the least a node takes, its floor (``profiler_cost_ms``)."""
    timer = cpu_timer(clock, threads)
    with tempfile.TemporaryDirectory() as tmp:
        timers = [OrtTimer(p, x, paths, n, threads, timer, os.path.join(tmp, f"prof{i}") if per_layer else None,
                           node_cost)
                  for i, (p, x, paths, n) in enumerate(items)]
        run_interleaved(timers, 0, warmup, warmup_s)
        for t in timers:  # the profiled session's own warm-up run, dropped from its profile
            if t.profiled is not None:
                t.profiled.run(None, t.feed)
        # Fixed rounds, no settling (costmodel.timing.run_rounds): a layer's time here is the mean
        # of the lower half of its runs, not their minimum, and more rounds in some chunks than in
        # others moved the end-to-end minima away from the layer sums: 88% -> 82% of held-out
        # networks within 10% at batch 1 (docs/benchmarks.md, "A noisy machine").
        for _ in range(repeats):
            for t in timers:
                t.run_round()
        return [(*t.layer_ms(), list(t.e2e)) for t in timers]


# The profiler probes: chains of PROBE_NODES[0] and PROBE_NODES[1] Relu nodes on a [batch, 4]
# input (``costmodel.ort.write_probes`` writes them; a bundle carries them).
PROBE_NODES = (1, 21)


def profiler_cost_ms(short: str | os.PathLike[str], long: str | os.PathLike[str], threads: int = 1,
                     clock: str = "auto", repeats: int = 30) -> tuple[float, float]:
    """What ONNX Runtime's profiler adds to each node's reported duration, and the least a node
    takes: per extra node of the long probe, its reported duration less what it adds to the
    end-to-end time, and what it adds (a Relu on four numbers costs about 0.2 us; the profiler
    reports 2 us). Without the floor, a layer of one small node (a 16-to-10 Gemm: 2-3 us
    reported) came out at 0 ms on a loaded machine."""
    import numpy as np

    x = np.zeros((1, 4), dtype=np.float32)
    paths = {"probe": 0}
    (s_layers, _, s_e2e), (l_layers, _, l_e2e) = time_ort_networks(
        [(short, x, paths, 1), (long, x, paths, 1)], threads, repeats, clock)
    extra = PROBE_NODES[1] - PROBE_NODES[0]
    reported = (l_layers[0] - s_layers[0]) / extra
    real = max((min(l_e2e) - min(s_e2e)) / extra, 0.0)
    return max(reported - real, 0.0), real

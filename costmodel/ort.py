"""ONNX Runtime as a runtime: networks exported to ONNX and timed in an
``onnxruntime.InferenceSession`` (CPU execution provider), per layer from ONNX Runtime's own
profiling. The timing itself is ``costmodel.timing_ort``'s (the code a calibration bundle runs on
the target device).

Protocol (recorded in the profile, ``PROTOCOL``): opset 17 with a dynamic batch axis (as
``archgen export`` writes ``model.onnx``); ``intra_op_num_threads`` fixed, the sequential
executor, graph optimizations at ``ORT_ENABLE_ALL`` (what a deployment gets by default: constant
folding, conv + activation fusion, NCHWc layouts). End to end: the clock around
``session.run``, minimum over the runs, runs interleaved across networks, each timed run right
after a run of the same network. Per layer: a second session with profiling on, run in the same
rounds; each node's duration (whole microseconds) goes to the layer whose module the node came
from, nodes ONNX Runtime added (layout reorders, a flatten) to the layer after them, the consumer
they were made for (a reorder to NCHW before a dense layer scales with that layer's input, and
had made the conv or pool before it look up to twice as slow as elsewhere). Which layers run
fused (a conv with its batch norm and activation) is the cost model's business
(``costmodel.modeldef.fusion_heads``): it prices a fused group as one layer, however ONNX
Runtime names the fused node.

onnxruntime and torch are imported inside the functions (torch only to export).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import costmodel.speed as speed
import costmodel.timing as timing
import costmodel.timing_ort as timing_ort
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom
from costmodel.modeldef import fusion_heads
from costmodel.profile import PROTOCOL as TORCH_PROTOCOL

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from costmodel.measurements import Network, Sample
    from costmodel.profile import ModelProfile

OPSET = 17
PROTOCOL = {
    "runtime": "onnxruntime",
    "opset": OPSET,
    "graph_optimization": timing_ort.GRAPH_OPTIMIZATION,
    "executor": "sequential",
    "per_layer": "onnxruntime node profiling (whole microseconds), less the profiler's cost per node, "
                 "each node at least a Relu node's time (both measured on chains of Relu nodes), mean of "
                 "the lower half of runs; nodes onnxruntime made up (reorders, flatten) on the layer after them",
    "statistic": TORCH_PROTOCOL["statistic"],
    "settle": "no: the rounds asked for",
}


def _checked(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except timing.MeasureError as exc:
        raise CostModelError(str(exc)) from None


def runtime_context() -> dict[str, str]:
    """What an onnxruntime profile's context adds to the device's."""
    ort = _checked(timing_ort._onnxruntime)
    return {"runtime": "onnxruntime", "runtime_version": ort.__version__,
            "graph_optimization": timing_ort.GRAPH_OPTIMIZATION, "executor": "sequential",
            "provider": "CPUExecutionProvider"}


def export(module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Export ``module`` as ``archgen export`` does (opset 17, dynamic batch axis)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=OPSET,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return Path(path)


def export_geoms(geoms: Sequence[LayerGeom], batch_size: int, path: str | os.PathLike[str]) -> np.ndarray:
    """Export the network of ``geoms`` (``costmodel.measure.module_from_geoms``) to ``path``;
    returns an input for it."""
    from costmodel.measure import input_for, module_from_geoms

    x = input_for(list(geoms), batch_size)
    export(module_from_geoms(list(geoms)), x, path)
    return x.numpy()


def write_probes(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The profiler probes (``timing_ort.PROBE_NODES``): chains of Relu nodes on a [batch, 4]
    input, named as one layer (``/probe/...``)."""
    from onnx import TensorProto, helper, save

    paths = []
    for n in timing_ort.PROBE_NODES:
        nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"/probe/Relu_{i}") for i in range(n)]
        graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["batch", 4])],
                                  [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, ["batch", 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        path = Path(folder) / f"probe{n}.onnx"
        save(model, str(path))
        paths.append(path)
    return paths[0], paths[1]


def node_cost_ms(threads: int = 1, clock: str = "auto") -> tuple[float, float]:
    """ONNX Runtime's profiler cost per node and the least a node takes, measured here and now
    on the probes (``costmodel.timing_ort.profiler_cost_ms``)."""
    with tempfile.TemporaryDirectory() as tmp:
        short, long = write_probes(tmp)
        return _checked(lambda: timing_ort.profiler_cost_ms(short, long, threads, clock))


def time_networks(items: Sequence[tuple[Path, np.ndarray, Mapping[str, int], int]], threads: int,
                  repeats: int, clock: str, per_layer: bool = True, warmup: int = 2,
                  warmup_s: float = 0.0, node_cost: tuple[float, float] | None = None,
                  ) -> list[tuple[list[float], list[float], list[float]]]:
    """``costmodel.timing_ort.time_ort_networks`` with costmodel's errors; per-layer times
    less the profiler's cost per node, each node at least the least a node takes
    (``node_cost``; by default ``node_cost_ms``, measured first)."""
    if not isinstance(threads, int) or threads < 1:
        raise CostModelError(f"threads={threads!r} must be a positive integer")
    timing.steady_allocator()  # ONNX Runtime's arena aside, inputs and outputs are malloc'd
    if node_cost is None:
        node_cost = node_cost_ms(threads, clock) if per_layer else (0.0, 0.0)
    return _checked(lambda: timing_ort.time_ort_networks(items, threads, repeats, clock, per_layer, warmup,
                                                         warmup_s, node_cost))


def export_items(networks: Sequence[Sequence[LayerGeom]], batch_size: int, folder: Path,
                 seed: int = 0) -> list[tuple[Path, np.ndarray, dict[str, int], int]]:
    """``networks`` exported into ``folder`` as ``time_networks`` takes them."""
    import torch

    from costmodel.measure import module_paths

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, geoms in enumerate(networks):
        path = folder / f"net{i}.onnx"
        x = export_geoms(geoms, batch_size, path)
        items.append((path, x, module_paths(list(geoms)), len(geoms)))
    return items


def time_geoms(networks: Sequence[Sequence[LayerGeom]], batch_size: int, threads: int, repeats: int,
               clock: str, per_layer: bool = True, warmup_s: float = 0.0, seed: int = 0,
               node_cost: tuple[float, float] | None = None) -> list[tuple[list[float], list[float], list[float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        items = export_items(networks, batch_size, Path(tmp), seed)
        return time_networks(items, threads, repeats, clock, per_layer, warmup_s=warmup_s, node_cost=node_cost)


def measure_networks(networks: Sequence[Sequence[LayerGeom]], batch_size: int, threads: int,
                     repeats: int, clock: str, seed: int, say: Callable[[str], None],
                     rounds_out: list[list[float]] | None = None,
                     speed_out: dict[str, object] | None = None) -> list[Network]:
    """The calibration networks in ONNX Runtime, in chunks as ``costmodel.measure`` does, with
    its speed anchors in every chunk (``rounds_out`` and ``speed_out`` as there)."""
    from costmodel.measure import ANCHOR_GEOMS

    node_cost = node_cost_ms(threads, clock)  # once for all chunks
    timed: list[tuple[list[float], list[float], list[float]]] = []
    anchor_ms: list[list[float]] = []
    ranges = speed.chunk_ranges(len(networks), timing.CHUNK)
    with tempfile.TemporaryDirectory() as tmp:
        # the same files (architectures and weights) in every chunk, each chunk its own sessions
        anchors = export_items(ANCHOR_GEOMS if ranges else (), batch_size, Path(tmp) / "anchors", seed)
        for part in ranges:
            folder = Path(tmp) / f"chunk{part.start}"
            items = export_items([networks[i] for i in part], batch_size, folder, seed + part.start)
            out = time_networks(items + anchors, threads, repeats, clock, warmup_s=timing.WARMUP_S,
                                node_cost=node_cost)
            shutil.rmtree(folder)
            timed += out[:len(part)]
            anchor_ms.append([min(e2e) for _, _, e2e in out[len(part):]])
            say(f"profiled {part.stop}/{len(networks)} networks (onnxruntime)")
    scaled, record = speed.normalize([(layers, e2e) for layers, _, e2e in timed], anchor_ms,
                                     [len(r) for r in ranges])
    out_networks: list[Network] = [(list(geoms), layers, min(e2e)) for geoms, (layers, e2e) in zip(networks, scaled)]
    if rounds_out is not None:
        rounds_out += [e2e for _, e2e in scaled]
    if speed_out is not None:
        speed_out.update(record)
    return out_networks


def measure_micro(geoms: Sequence[LayerGeom], batch_size: int, threads: int, repeats: int,
                  clock: str) -> list[Sample]:
    """Each micro-benchmark layer as a one-layer ONNX model: its node time (as in networks)."""
    out: list[Sample] = []
    node_cost = node_cost_ms(threads, clock)  # once for all chunks
    for start in range(0, len(geoms), timing.CHUNK):
        part = geoms[start:start + timing.CHUNK]
        timed = time_geoms([[g] for g in part], batch_size, threads, repeats, clock, node_cost=node_cost)
        out += [(g, layers[0]) for g, (layers, _, _) in zip(part, timed)]
    return out


def reference_ms(threads: int = 1, clock: str = "auto") -> float:
    """The drift reference workload (``costmodel.measure.REFERENCE_GEOMS``) in ONNX Runtime."""
    from costmodel.measure import REFERENCE_GEOMS, REFERENCE_REPEATS

    timed = time_geoms([list(REFERENCE_GEOMS)], 1, threads, REFERENCE_REPEATS, clock, per_layer=False)
    return min(timed[0][2])


def profile_module_onnx(module: nn.Module, example: torch.Tensor, threads: int = 1, repeats: int = 15,
                        clock: str = "auto", onnx_path: str | os.PathLike[str] | None = None,
                        warmup_s: float = 0.5) -> ModelProfile:
    """``costmodel.profile.profile_module`` in ONNX Runtime: ``module`` exported (or
    ``onnx_path``, an export of it) and timed end to end and per layer; the layers are those
    ``costmodel.geometry.trace_module`` finds, so they line up with ``estimate``'s."""
    from costmodel.geometry import trace_module
    from costmodel.profile import ModelProfile, Timing, resolve_clock

    geoms, calls = trace_module(module, example)
    if not geoms:
        raise CostModelError("the module has no layer the cost model can price")
    layer_of_path = {calls[c].path: i for i, g in enumerate(geoms) for c in g.calls}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(onnx_path) if onnx_path is not None else export(module, example, Path(tmp) / "m.onnx")
        item = (path, example.numpy(), layer_of_path, len(geoms))
        layers, layer_iqr, samples = time_networks([item], threads, repeats, clock, warmup_s=warmup_s)[0]
    # A fused group's time on its head, whichever member its node is named after: the rows of
    # the measurement line up with the estimate's (which prices the head, 0 for the members).
    heads = fusion_heads(geoms, "onnxruntime")
    grouped = [0.0] * len(geoms)
    for i, t in enumerate(layers):
        grouped[heads[i]] += t
    layers = grouped
    layer_iqr = [q if heads[i] == i else 0.0 for i, q in enumerate(layer_iqr)]
    e2e = Timing.from_samples(samples)
    return ModelProfile(
        geoms=tuple(geoms), meas_ms=tuple(layers), meas_iqr_ms=tuple(layer_iqr), e2e_ms=e2e.min_ms,
        e2e_iqr_ms=e2e.iqr_ms, hooked_total_ms=sum(layers), device="cpu", threads=threads,
        batch_size=int(example.shape[0]), repeats=repeats,
        clock=f"onnxruntime, {resolve_clock(clock, threads)}", e2e_samples_ms=tuple(samples))

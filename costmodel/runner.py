"""Measure a calibration bundle where the network will run: the bundle's ``run.py``.

``costmodel.bundle`` writes a bundle (the calibration networks' geometries, their ONNX exports
for onnxruntime, and this file with ``costmodel.speed``, ``costmodel.timing`` and
``costmodel.timing_ort`` next to it); on the target device::

    python run.py --out measurements.json        # in the bundle's directory

measures the bundle's networks with the timing protocol of a local calibration (the same code)
and writes the measurements file that ``archgen calibrate --measurements FILE`` fits a device
profile to. Standalone: the Python standard library, numpy, and torch *or* onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__:
    import costmodel.speed as speed
    import costmodel.timing as timing
    import costmodel.timing_ort as timing_ort
else:  # run.py in a calibration bundle, next to speed.py, timing.py and timing_ort.py
    try:
        import speed
        import timing
        import timing_ort
    except ImportError as exc:  # run.py copied without the rest of its folder
        sys.stderr.write(f"run.py: {exc.name}.py is missing next to run.py; copy the whole bundle folder\n")
        raise SystemExit(2) from None

BUNDLE_FORMAT = "archgen-bundle"
MEASUREMENTS_FORMAT = "archgen-measurements"
VERSION = 1
# The files of a bundle's runner: this one (as run.py) and what it imports.
FILES = ("speed.py", "timing.py", "timing_ort.py")


def device_name(cpuinfo: str | None = None) -> str:
    """The CPU's name: ``/proc/cpuinfo``'s 'model name', else its 'Hardware' or 'cpu model' (ARM
    boards, MIPS), else what ``platform`` knows. A local profile names its CPU the same way
    (``costmodel.device_profile.cpu_model_name``), so a bundle measured here is not foreign."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    lines = [line for line in cpuinfo.splitlines() if ":" in line]
    for keys in (("model name",), ("hardware", "cpu model")):
        for line in lines:
            if line.lower().startswith(keys) and line.split(":", 1)[1].strip():
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def thread_clock_is_fine(limit_s: float = 1e-4, probe_s: float = 0.05) -> bool:
    """Whether this thread's CPU clock (``time.thread_time``, the clock of a calibration at one
    thread) ticks in steps of ``limit_s`` or less: on Windows it moves in steps of about 15.6 ms,
    which would time a sub-millisecond network at 0 or 15.6 ms."""
    last, end, step = time.thread_time(), time.perf_counter() + probe_s, float("inf")
    while time.perf_counter() < end:
        now = time.thread_time()
        if now != last:
            step, last = min(step, now - last), now
    return step <= limit_s


def bundle_clock(threads: int) -> str:
    """The clock a bundle is timed with: a local calibration's (``timing.resolve_clock``: the
    thread's CPU time at one thread), unless that clock is too coarse here (wall time then)."""
    return "auto" if threads != 1 or thread_clock_is_fine() else "wall"


def target_context(bundle: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """The context of the measurements: this device, the bundle's runtime, threads, batch."""
    runtime = bundle["runtime"]
    ctx: dict[str, Any] = {"device": "cpu", "device_name": device_name(), "runtime": runtime,
                           "threads": threads, "dtype": "float32", "batch_size": int(bundle["batch_size"]),
                           "cpu_count": os.cpu_count(), "machine": platform.machine(),
                           "python": platform.python_version()}
    if runtime == "onnxruntime":
        ort = timing_ort._onnxruntime()
        ctx.update(runtime_version=ort.__version__, graph_optimization=timing_ort.GRAPH_OPTIMIZATION,
                   executor="sequential", provider="CPUExecutionProvider")
    else:
        import torch

        ctx.update(runtime_version=torch.__version__, torch_version=torch.__version__)
    return ctx


def _chunks(n: int) -> Iterator[range]:
    yield from speed.chunk_ranges(n, timing.CHUNK)


def measure_bundle(folder: str | os.PathLike[str], threads: int | None = None, repeats: int | None = None,
                   say: Callable[[str], None] = lambda m: None, warmup_s: float = timing.WARMUP_S) -> dict[str, Any]:
    """Measure a bundle's networks here; returns the measurements document."""
    folder = Path(folder)
    bundle = json.loads((folder / "bundle.json").read_text())
    if bundle.get("format") != BUNDLE_FORMAT or bundle.get("version") != VERSION:
        raise timing.MeasureError(f"{folder}: not an archgen calibration bundle of version {VERSION}")
    threads = threads or int(bundle["threads"])
    repeats = repeats or int(bundle["repeats"])
    allocator = timing.steady_allocator()
    batch = int(bundle["batch_size"])
    clock = bundle_clock(threads)
    if clock == "wall":
        say("this machine's thread CPU clock is too coarse to time these networks; timing wall-clock time")
    groups = {"micro": [[g] for g in bundle["micro"]], "networks": bundle["networks"],
              "reference": [bundle["reference"]]}
    node_cost = (0.0, 0.0)
    if bundle["runtime"] == "onnxruntime":  # the profiler's own cost per node, from the bundle's probes
        short, long = (folder / "models" / f"probe{n}.onnx" for n in timing_ort.PROBE_NODES)
        node_cost = timing_ort.profiler_cost_ms(short, long, threads, clock)
    anchors = bundle.get("anchors", [])  # timed in every chunk of networks (speed.py)
    anchor_ms: list[list[float]] = []
    timed: dict[str, list[tuple[list[float], list[float]]]] = {}
    for key, nets in groups.items():
        timed[key] = []
        for part in _chunks(len(nets)):
            entries = [(key, i, nets[i]) for i in part]
            entries += [("anchors", k, g) for k, g in enumerate(anchors)] if key == "networks" else []
            # the reference workload at batch 1, as a local profile times it (archgen.drift)
            out = _measure_part(folder, bundle, key, entries, batch if key != "reference" else 1, threads,
                                repeats if key != "reference" else 30, clock,
                                warmup_s if key == "networks" else 0.0, node_cost)
            if key == "networks":
                anchor_ms += [[min(e2e) for _, e2e in out[len(part):]]] if anchors else []
                say(f"measured {len(timed[key]) + len(part)}/{len(nets)} networks")
            timed[key] += out[:len(part)]
    timed["networks"], moved = speed.normalize(timed["networks"], anchor_ms,
                                               [len(r) for r in _chunks(len(groups["networks"]))])
    protocol = dict(bundle.get("protocol", {}), repeats=repeats, clock=timing.resolve_clock(clock, threads),
                    measured_by="bundle run.py", allocator=allocator)
    if anchors:
        protocol[speed.PROTOCOL_KEY] = moved
    return {
        "format": MEASUREMENTS_FORMAT, "version": VERSION, "context": target_context(bundle, threads),
        "protocol": protocol,
        "micro": [{"geom": g, "ms": layers[0]} for g, (layers, _) in zip(bundle["micro"], timed["micro"])],
        "networks": [{"geoms": n, "layers_ms": layers, "e2e_ms": min(e2e)}
                     for n, (layers, e2e) in zip(bundle["networks"], timed["networks"])],
        "reference_ms": min(timed["reference"][0][1]),
        **_noise_floor([e2e for _, e2e in timed["networks"]]),
    }


def _noise_floor(rounds: list[list[float]]) -> dict[str, Any]:
    floor = timing.repeat_agreement(rounds)
    return {"noise_floor": floor} if floor else {}


def _measure_part(folder: Path, bundle: Mapping[str, Any], key: str, entries: list[tuple[str, int, list[dict]]],
                  batch: int, threads: int, repeats: int, clock: str, warmup_s: float,
                  node_cost: tuple[float, float]) -> list[tuple[list[float], list[float]]]:
    """Time one chunk: per item its minimum times (networks: per layer; micro-benchmarks: in ONNX
    Runtime their node time, as in networks and as a local calibration takes it, in torch the whole
    one-layer module's time, as ``costmodel.measure.measure_micro``) and its end-to-end times in
    round order."""
    per_layer = key == "networks" or (key == "micro" and bundle["runtime"] == "onnxruntime")
    if bundle["runtime"] == "onnxruntime":
        import numpy as np

        rng = np.random.default_rng(0)
        items = []
        for group, i, geoms in entries:
            g0 = geoms[0]
            shape = (batch, g0["c_in"]) if g0["op"] == "dense" else (batch, g0["c_in"], g0["h_in"], g0["w_in"])
            items.append((folder / "models" / f"{group}{i}.onnx", rng.standard_normal(shape).astype(np.float32),
                          timing.module_paths([g.get("name", "") for g in geoms]), len(geoms)))
        out = timing_ort.time_ort_networks(items, threads, repeats, clock, per_layer=per_layer, warmup_s=warmup_s,
                                           node_cost=node_cost if per_layer else (0.0, 0.0))
        return [(layers, list(e2e)) for layers, _, e2e in out]
    import torch

    activations = {k: tuple(v) for k, v in bundle["activations"].items()}
    torch.manual_seed(0)
    with timing.torch_threads(threads), torch.no_grad():
        timers = []
        for _, _, geoms in entries:
            module, firsts = timing.build_module(geoms, activations)
            timers.append(timing.TorchTimer(module, timing.random_input(geoms[0], batch), firsts, "cpu",
                                     timing.cpu_timer(clock, threads), per_layer))
        # only the networks settle, as in a local calibration (micro-benchmarks and the reference
        # workload are timed there with fixed rounds)
        timing.run_interleaved(timers, repeats, 2, warmup_s, settle=key == "networks" and batch <= timing.SETTLE_BATCH)
    return [(t.layer_min_ms()[0] if per_layer else [min(t.e2e)], list(t.e2e)) for t in timers]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure an archgen calibration bundle on this device.")
    p.add_argument("--out", default="measurements.json", help="measurements file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--bundle", default=str(Path(__file__).resolve().parent), help="bundle directory")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the bundle's)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per network (default: the bundle's)")
    p.add_argument("--warmup-s", type=float, default=timing.WARMUP_S,
                   help=f"interleaved warm-up per chunk of networks, seconds (default {timing.WARMUP_S:g})")
    args = p.parse_args(argv)
    for name in ("threads", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    out = Path(args.out)
    bad = ""  # checked before minutes of measuring
    if out.is_dir():
        bad = "a folder; name a file"
    elif not out.parent.resolve().is_dir():
        bad = "its folder does not exist"
    elif out.exists() and not args.force:
        bad = "already exists; pass --force to replace it or choose another path"
    if bad:
        sys.stderr.write(f"run.py: --out {args.out}: {bad}\n")
        return 2
    start = time.perf_counter()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        doc = measure_bundle(args.bundle, args.threads, args.repeats, lambda m: sys.stderr.write(m + "\n"),
                             args.warmup_s)
        with open(tmp, "w") as f:  # then renamed: a killed run leaves no half-written file
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except ImportError as exc:
        sys.stderr.write(f"run.py: this bundle needs the Python package {exc.name or exc} (pip install it)\n")
        return 2
    except Exception as exc:  # one line for the user, whatever broke (a file, onnxruntime, torch)
        tmp.unlink(missing_ok=True)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(f"run.py: {type(exc).__name__}: {text}\n"[:500])
        return 2
    sys.stderr.write(f"measured {len(doc['networks'])} networks in {time.perf_counter() - start:.0f} s; wrote "
                     f"{args.out}; bring it back and run: archgen calibrate --measurements {Path(args.out).name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Benchmark the cost model on held-out networks (issue 3, acceptance 2 and 3).

For each configuration (batch size, threads): calibrate a device profile (random plain CNNs
plus samples of archgen's generator), then on held-out networks that calibration never saw
measure end-to-end latency twice (interleaved, minimum of R runs) and compare with

  (a) FLOPs proxy, one constant fitted on the calibration networks: T = k * MACs
  (b) textbook seed form, one T_k fitted on the calibration networks: T = T_k * sum(N_p * N_f)
  (c) per-op linear base only (c + a*MACs + b*bytes per op class, network correction)
  (d) the calibrated model (lookup table + boosted-tree residuals + network correction)

and the noise floor (the second measurement as a "predictor" of the first; with --interleaved
also the third instance against the geometric mean of the first two). Reports Kendall
tau, MAPE, P95 absolute error and the share within +-10%. Also: pricing throughput of
``estimate_total_ms`` / ``estimate`` next to fvcore's FlopCountAnalysis on the same networks,
and how per-layer profiled times add up to end-to-end times.

Run pinned to one core on a shared machine, e.g.
    taskset -c 1 python scripts/bench_costmodel.py --networks 120 --out docs/_bench_costmodel.md
(the 2-thread configuration needs two cores: the script re-pins itself to all allowed CPUs
plus core 0 for it when --two-core-threads is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import costmodel.speed as speed  # noqa: E402
from costmodel.calibration import fit_measurements, measure_calibration  # noqa: E402
from costmodel.estimator import compile_profile, estimate, estimate_total_ms  # noqa: E402
from costmodel.geometry import LayerGeom  # noqa: E402
from costmodel.measure import CHUNK, WARMUP_S  # noqa: E402
from costmodel.measurements import Measurements, geom_from_dict, geom_to_dict  # noqa: E402
from costmodel.modeldef import seed_units  # noqa: E402
from costmodel.netgen import random_plain_cnn  # noqa: E402

log = logging.getLogger("bench_costmodel")
SHAPES = ((1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 96, 96))
SMALL_SHAPES = ((1, 8, 8), (3, 16, 16))  # digits-sized inputs, with --small-inputs
MAX_MACS = 100_000_000
args_clock = "auto"


def metrics(pred: list[float], meas: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau

    p, m = np.asarray(pred, float), np.asarray(meas, float)
    err = np.abs(p - m) / m
    return {
        "kendall_tau": float(kendalltau(p, m)[0]),
        "mape_pct": float(100 * err.mean()),
        "p95_abs_err_pct": float(100 * np.percentile(err, 95)),
        "within_10pct": float(100 * (err <= 0.10).mean()),
        "within_5pct": float(100 * (err <= 0.05).mean()),
    }


def generator_specs(n: int, seed: int, exclude: set[str], rules_off_r2: bool = False) -> list:
    """Specs from archgen's generator over four input shapes."""
    from archgen.generator import Budget, sample_specs
    from archgen.rules import RuleSet

    rules = RuleSet(kernel_by_size=False) if rules_off_r2 else RuleSet()
    out = []
    per = max(1, n // len(SHAPES))
    for i, shape in enumerate(SHAPES):
        specs = sample_specs(shape, 10, per + 10, seed=seed + i, rules=rules,
                             budget=Budget(max_macs=MAX_MACS))
        out.extend([s for s in specs if s.key() not in exclude][:per])
    return out


def held_out_networks(n: int) -> tuple[list[list[LayerGeom]], list, list[str]]:
    """(geoms, modules-or-None, names): 3/4 from archgen's generator (half with R2 off, so
    kernels vary), 1/4 random plain CNNs from a seed disjoint from calibration's."""
    from costmodel.measure import module_from_geoms

    geoms, modules, names = [], [], []
    n_gen = (3 * n) // 4
    specs = generator_specs(n_gen // 2, 1000, set()) + generator_specs(
        n_gen - n_gen // 2, 2000, set(), rules_off_r2=True)
    if specs:
        from archgen.build import build_model
        from archgen.costing import spec_geoms

        seen: set[str] = set()
        for i, s in enumerate(specs):
            if s.key() in seen:
                continue
            seen.add(s.key())
            geoms.append(spec_geoms(s))
            modules.append(build_model(s, seed=i))
            names.append(s.key())
    rng = random.Random(12345)
    while len(geoms) < n:
        g = random_plain_cnn(rng, max_macs=MAX_MACS)
        geoms.append(g)
        modules.append(module_from_geoms(g))
        names.append("random")
    return geoms, modules, names


def calibration_extra(held_keys: set[str], quick: bool, n: int | None = None,
                      batch: int = 32) -> list[list[LayerGeom]]:
    """Generator samples for calibration (``n``, default 12 quick / 80 full times calibrate's
    ``networks_multiplier``, three quarters with the rules on), disjoint from the held-out specs."""
    from costmodel.calibration import networks_multiplier

    n = n if n is not None else (12 if quick else 80) * networks_multiplier(quick, batch)
    specs = generator_specs((3 * n) // 4, 10_000, held_keys) + generator_specs(
        n - (3 * n) // 4, 20_000, held_keys, rules_off_r2=True)
    if not specs:
        return []
    from archgen.costing import spec_geoms

    return [spec_geoms(s) for s in specs]


def measure(modules: list, geoms: list[list[LayerGeom]], batch: int, threads: int, device: str,
            repeats: int, runtime: str = "torch") -> tuple[list[float], list[float], list[float]]:
    """(reference, pass A, pass B): 2 x ``repeats`` rounds over all networks (up to twice as many at
    small batch sizes while the minima still fall), interleaved;
    A = minimum over odd rounds, B = over even rounds, reference = minimum over all."""
    import torch

    from costmodel.profile import profile_modules

    if runtime == "onnxruntime":
        return measure_ort(modules, geoms, batch, threads, repeats)

    torch.manual_seed(0)
    pairs = []
    for m, g in zip(modules, geoms):
        c, h, w = g[0].c_in, g[0].h_in, g[0].w_in
        pairs.append((m, torch.randn(batch, c, h, w)))
    out = []
    for start in range(0, len(pairs), CHUNK):  # the same interleaving regime as calibration
        out += profile_modules(pairs[start:start + CHUNK], device, threads, 2 * repeats, 2,
                               args_clock, per_layer=False, warmup_s=WARMUP_S)
    a = [min(p.e2e_samples_ms[0::2]) for p in out]
    b = [min(p.e2e_samples_ms[1::2]) for p in out]
    return [p.e2e_ms for p in out], a, b


def measure_ort(modules: list, geoms: list[list[LayerGeom]], batch: int, threads: int,
                repeats: int) -> tuple[list[float], list[float], list[float]]:
    """``measure`` in ONNX Runtime: each held-out module exported as ``archgen export`` does."""
    import tempfile

    import torch

    from costmodel import ort

    torch.manual_seed(0)
    samples: list[list[float]] = []
    for start in range(0, len(modules), CHUNK):
        with tempfile.TemporaryDirectory() as tmp:
            items = []
            for i, (m, g) in enumerate(zip(modules[start:start + CHUNK], geoms[start:start + CHUNK])):
                x = torch.randn(batch, g[0].c_in, g[0].h_in, g[0].w_in)
                items.append((ort.export(m, x, Path(tmp) / f"h{i}.onnx"), x.numpy(), {}, len(g)))
            samples += [s for _, _, s in ort.time_networks(items, threads, 2 * repeats, args_clock,
                                                           per_layer=False, warmup_s=WARMUP_S)]
    return [min(s) for s in samples], [min(s[0::2]) for s in samples], [min(s[1::2]) for s in samples]


def layer_sum_check(modules: list, geoms: list, batch: int, threads: int, device: str,
                    repeats: int, runtime: str = "torch") -> dict[str, float]:
    """How per-layer measured times add up to the end-to-end time (what ``archgen profile``
    prints), per network: |sum of layers / end-to-end - 1|."""
    import torch

    from costmodel.profile import profile_modules

    pairs = [(m, torch.randn(batch, g[0].c_in, g[0].h_in, g[0].w_in))
             for m, g in zip(modules, geoms)]
    if runtime == "onnxruntime":
        from costmodel.ort import profile_module_onnx

        out = [profile_module_onnx(m.eval(), x, threads=threads, repeats=repeats, clock=args_clock)
               for m, x in pairs]
    else:
        out = profile_modules(pairs, device, threads, repeats, 2, args_clock, warmup_s=WARMUP_S)
    dev = [abs(p.layer_sum_ms / p.e2e_ms - 1) * 100 for p in out]
    return {"runtime": runtime, "n": len(dev), "median_abs_pct": statistics.median(dev),
            "within_10pct": 100.0 * sum(d <= 10 for d in dev) / len(dev),
            "p90_abs_pct": float(np.percentile(dev, 90)),
            "within_5pct": 100.0 * sum(d <= 5 for d in dev) / len(dev)}


def throughput(geoms: list[list[LayerGeom]], modules: list, profile, n_fvcore: int) -> dict:
    import torch
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(1)
    estimate_total_ms(geoms[0], profile)  # compile the profile once (reported separately)

    def rate(fn, items, min_s: float = 1.0) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_s:
            for it in items:
                fn(it)
            count += len(items)
        return count / (time.perf_counter() - start)

    fast = rate(lambda g: estimate_total_ms(g, profile), geoms)
    fast_bare = None
    if "context" in profile.network:  # the same profile without its layer context, side by side
        bare = dataclasses.replace(profile, network={k: v for k, v in profile.network.items() if k != "context"})
        estimate_total_ms(geoms[0], bare)
        fast_bare = rate(lambda g: estimate_total_ms(g, bare), geoms)
    frame = rate(lambda g: estimate(g, profile), geoms[:30], 0.5)
    sample = list(zip(geoms, modules))[:n_fvcore]

    def fv(item) -> None:
        g, m = item
        x = torch.randn(1, g[0].c_in, g[0].h_in, g[0].w_in, device=next(m.parameters()).device)
        FlopCountAnalysis(m, x).unsupported_ops_warnings(False).uncalled_modules_warnings(
            False).total()

    fvc = rate(fv, sample, 2.0)
    t0 = time.perf_counter()
    compile_profile(profile)
    compile_ms = (time.perf_counter() - t0) * 1e3
    return {"estimate_total_ms_per_s": fast, "estimate_total_ms_no_context_per_s": fast_bare,
            "estimate_report_per_s": frame,
            "fvcore_per_s": fvc, "ratio_fast_vs_fvcore": fast / fvc,
            "ratio_report_vs_fvcore": frame / fvc, "profile_compile_ms": compile_ms}


# Instances of each held-out network measured with --interleaved, each in its own chunk: the
# first two make the reference the model is judged against (their geometric mean), the third is
# the noise floor judged against the same reference (a re-measurement as a predictor).
INSTANCES = 3


def _separated_order(n_calib: int, n_held: int, chunk: int, instances: int = INSTANCES) -> list[int]:
    """A seeded random order of ``n_calib`` calibration networks and ``instances`` instances of
    each of ``n_held`` held-out networks (instance k of network j: index ``n_calib + k * n_held +
    j``) in which the instances of a held-out network fall in different chunks
    (``speed.chunk_ranges``): a clashing instance swaps places with a calibration network of a
    chunk none of its network's other instances is in."""
    n = n_calib + instances * n_held
    order = list(range(n))
    rng = random.Random(4242)
    rng.shuffle(order)
    chunk_of = [0] * n
    for c, r in enumerate(speed.chunk_ranges(n, chunk)):
        for p in r:
            chunk_of[p] = c
    pos = {i: p for p, i in enumerate(order)}
    for j in range(n_held):
        used = {chunk_of[pos[n_calib + j]]}
        for k in range(1, instances):
            b = pos[n_calib + k * n_held + j]
            if chunk_of[b] in used:
                for p in rng.sample(range(n), n):
                    if order[p] < n_calib and chunk_of[p] not in used:
                        order[p], order[b] = order[b], order[p]
                        pos[order[p]], pos[order[b]] = p, b
                        b = p
                        break
            used.add(chunk_of[b])
    return order


def measure_interleaved(batch: int, threads: int, runtime: str, args: argparse.Namespace,
                        held: list[list[LayerGeom]], extra: list[list[LayerGeom]],
                        ) -> tuple[Measurements, dict[str, list]]:
    """Calibration and held-out networks measured in the same chunks (``--interleaved``).

    The calibration's micro-benchmarks first, then every network, calibration and held out (each
    held-out network ``INSTANCES`` times: separately built instances), in one seeded random order, measured
    as calibration measures its networks (``measure_networks``: chunks of ``CHUNK``,
    ``default_repeats`` interleaved rounds, per-layer times, the speed anchors timed in every
    chunk and every chunk's times brought to the machine's median speed). A change of the
    machine's state between chunks then lands on the calibration and the held-out networks alike.
    Returns the calibration's measurements and, for the held-out networks: ``ref`` (first
    instance, minimum over all rounds, at the median speed), ``a`` / ``b`` (over odd / even
    rounds), ``ref_raw`` (``ref`` as measured, before the speed normalization), ``second`` /
    ``second_raw`` (the second instance, in another chunk), ``third`` / ``third_raw`` (the third,
    in a third chunk) and ``layers`` (first instance)."""
    from costmodel.calibration import calibration_networks, default_repeats
    from costmodel.device_profile import current_context
    from costmodel.measure import (
        measure_micro,
        measure_networks,
        micro_benchmark_geoms,
        reference_ms,
    )
    from costmodel.profile import PROTOCOL, resolve_clock
    from costmodel.timing import repeat_agreement, steady_allocator

    calib = calibration_networks(args.quick, 0, args.calib_networks, batch) + [list(n) for n in extra]
    nets = calib + [list(n) for _ in range(INSTANCES) for n in held]
    order = _separated_order(len(calib), len(held), CHUNK)
    reps = default_repeats(args.quick, batch)
    micro_geoms = micro_benchmark_geoms(args.quick, 0)
    log.info("b%d t%d %s interleaved: %d calibration + %d x %d held-out networks, %d rounds", batch, threads,
             runtime, len(calib), INSTANCES, len(held), reps)
    rounds: list[list[float]] = []
    moved: dict[str, object] = {}
    ordered = [nets[i] for i in order]
    say = lambda m: log.info("%s", m)  # noqa: E731
    if runtime == "onnxruntime":
        from costmodel import ort

        micro = ort.measure_micro(micro_geoms, batch, threads, reps, args.clock)
        out = ort.measure_networks(ordered, batch, threads, reps, args.clock, 0, say, rounds, moved)
        ref = ort.reference_ms(threads, args.clock)
        protocol = dict(PROTOCOL, **ort.PROTOCOL)
    else:
        micro = measure_micro(micro_geoms, batch, args.device, threads, reps, args.clock)
        out = measure_networks(ordered, batch, args.device, threads, reps, args.clock, 0, say, rounds, moved)
        ref = reference_ms(args.device, threads, args.clock)
        protocol = dict(PROTOCOL)
        if args.no_settle:
            protocol["settle"] = "no: --no-settle"
    factors = speed.network_factors(moved)
    timed = {i: (*out[p], rounds[p], factors[p]) for p, i in enumerate(order)}
    protocol.update(repeats=reps, quick=args.quick, n_networks=len(calib), n_micro=len(micro_geoms),
                    clock=resolve_clock(args.clock, threads), seed=0, interleaved_with_held_out=len(held),
                    allocator=steady_allocator(), speed=moved)
    log.info("speed factors per chunk: %s", " ".join(f"{f:.3f}" for f in moved["factors"]))
    measured = Measurements(context=current_context(args.device, threads, batch, runtime=runtime),
                            protocol=protocol, micro=micro,
                            networks=[timed[i][:3] for i in range(len(calib))], reference_ms=ref,
                            noise_floor=repeat_agreement([timed[i][3] for i in range(len(calib))]))
    first, second, third = ([timed[len(calib) + k * len(held) + j] for j in range(len(held))]
                            for k in range(INSTANCES))
    return measured, {
        "ref": [t[2] for t in first], "a": [min(t[3][0::2]) for t in first], "b": [min(t[3][1::2]) for t in first],
        "ref_raw": [t[2] / t[4] for t in first], "second": [t[2] for t in second],
        "second_raw": [t[2] / t[4] for t in second], "third": [t[2] for t in third],
        "third_raw": [t[2] / t[4] for t in third], "layers": [t[1] for t in first]}


def run_config(batch: int, threads: int, runtime: str, args: argparse.Namespace, nets: tuple) -> dict:
    geoms, modules, names = nets
    t0 = time.perf_counter()
    held_keys = set(names)
    extra = [] if args.no_generator_calibration else calibration_extra(held_keys, args.quick, args.calib_generator, batch)
    held_configs = {tuple(g.config_key() for g in n) for n in geoms}
    overlap = sum(tuple(g.config_key() for g in n) in held_configs for n in extra)
    if overlap:
        raise SystemExit(f"{overlap} calibration networks equal held-out ones; fix the seeds")
    extra_truths: dict[str, list] = {}
    if args.interleaved:
        measured, extra_truths = measure_interleaved(batch, threads, runtime, args, geoms, extra)
        meas_ref, meas_a, meas_b = extra_truths.pop("ref"), extra_truths.pop("a"), extra_truths.pop("b")
        calib_s = time.perf_counter() - t0
    else:
        measured = measure_calibration(device=args.device, threads=threads, batch_size=batch,
                                       quick=args.quick, extra_networks=extra,
                                       n_networks=args.calib_networks, clock=args.clock, runtime=runtime,
                                       progress=lambda m: log.info("%s", m))
        calib_s = time.perf_counter() - t0
        log.info("b%d t%d %s: calibration measured in %.0f s; measuring %d held-out networks", batch,
                 threads, runtime, calib_s, len(geoms))
        meas_ref, meas_a, meas_b = measure(modules, geoms, batch, threads, args.device, args.repeats,
                                           runtime)
    # The machine's state after the held-out measurement against calibration's (archgen.drift)
    if runtime == "onnxruntime":
        from costmodel.ort import reference_ms
        ref_after = reference_ms(threads, args.clock)
    else:
        from costmodel.measure import reference_ms
        ref_after = reference_ms(args.device, threads, args.clock)
    log.info("reference workload: %.4f ms at calibration, %.4f ms after the held-out networks",
             measured.reference_ms or float("nan"), ref_after)
    if args.dump:
        dump = {"calibration": measured.to_dict(), "calibration_s": calib_s, "reference_after_ms": ref_after,
                "held_out": {"geoms": [[geom_to_dict(g) for g in n] for n in geoms], "names": names,
                             "ref": meas_ref, "a": meas_a, "b": meas_b, **extra_truths}}
        Path(f"{args.dump}.b{batch}t{threads}{'' if runtime == 'torch' else '-ort'}.json").write_text(
            json.dumps(dump))
    result = evaluate(measured, calib_s, geoms, meas_ref, meas_a, meas_b, extra_truths)
    if args.second_pass:  # the held-out set measured again, minutes later: drift between sessions
        meas_2, _, _ = measure(modules, geoms, batch, threads, args.device, args.repeats, runtime)
        result["metrics"]["noise floor across passes: second pass against the first"] = metrics(meas_2, meas_ref)
        result["metrics"]["(d) calibrated, against the second pass"] = metrics(
            result["pred"]["(d) calibrated (table + trees + network correction)"], meas_2)
    drift = ref_after / measured.reference_ms if measured.reference_ms else None
    result["reference_drift"] = drift
    if drift:  # the model prices the machine as it was at calibration; rescaled to its state now
        d = "(d) calibrated (table + trees + network correction)"
        result["metrics"]["(d) calibrated, x reference-workload drift"] = metrics(
            [p * drift for p in result["pred"][d]], meas_ref)
    return result


def replay(path: str, subset: int | None = None, seed: int = 0) -> dict:
    """``run_config`` from a ``--dump`` file: refit and evaluate without measuring (on a seeded
    random ``subset`` of the calibration networks when given: what fewer networks would give)."""
    d = json.loads(Path(path).read_text())
    held = d["held_out"]
    geoms = [[geom_from_dict(g, "held-out") for g in n] for n in held["geoms"]]
    measured = Measurements.from_dict(d["calibration"])
    if subset is not None and subset < len(measured.networks):
        measured = dataclasses.replace(
            measured, networks=random.Random(seed).sample(measured.networks, subset))
    extra = {k: held[k] for k in ("ref_raw", "second", "second_raw", "third", "third_raw") if held.get(k)}
    return evaluate(measured, d["calibration_s"], geoms, held["ref"], held["a"], held["b"], extra)


# Networks split at this many bytes of conv and dense parameters (float32): a core's L2 cache on
# the machines measured is 1-2 MiB.
WEIGHT_SPLIT_BYTES = 1 << 20


def by_weight_size(geoms: list, pred: list[float], meas: list[float], second: list[float] | None,
                   ) -> dict[str, dict[str, float]]:
    """The model's figures (and the cross-chunk floor's, with a second instance) for the networks
    above and at or below ``WEIGHT_SPLIT_BYTES`` of conv and dense parameters: at batch 1 PyTorch
    ran the larger ones at a speed of their own from chunk to chunk."""
    big = [4 * sum(g.params for g in n if g.op in ("conv", "dense")) > WEIGHT_SPLIT_BYTES for n in geoms]
    rows: dict[str, dict[str, float]] = {}
    for flag, label in ((True, "> 1 MiB"), (False, "<= 1 MiB")):
        idx = [i for i, b in enumerate(big) if b == flag]
        if len(idx) < 2:
            continue
        rows[f"(d) calibrated, the {len(idx)} networks with {label} of weights"] = metrics(
            [pred[i] for i in idx], [meas[i] for i in idx])
        if second:
            rows[f"noise floor: second instance, another chunk, the {len(idx)} networks with {label} of weights"] = (
                metrics([second[i] for i in idx], [meas[i] for i in idx]))
    return rows


def evaluate(measured: Measurements, calib_s: float, geoms: list, meas_ref: list, meas_a: list,
             meas_b: list, extra: dict[str, list] | None = None) -> dict:
    profile = fit_measurements(measured, progress=lambda m: log.info("%s", m))
    batch, threads = profile.batch_size, int(profile.context["threads"])
    base = profile.fit_quality["baselines"]
    macs = [sum(g.macs for g in n) for n in geoms]
    preds = {
        "(a) FLOPs proxy, one constant": [base["flops_ms_per_mac"] * m for m in macs],
        "(b) textbook N_p*N_f*T_k, one T_k": [base["seed_t_k_ms"] * seed_units(n) for n in geoms],
        "(c) per-op linear c+a*MACs+b*bytes": [
            estimate_total_ms(n, dataclasses.replace(profile, trees={}, residual={}, use_table=False, network={
                k: v for k, v in profile.network.items() if k != "context"})) for n in geoms],
        "(d) calibrated (table + trees + network correction)": [
            estimate_total_ms(n, profile) for n in geoms],
    }
    rows = {k: metrics(v, meas_ref) for k, v in preds.items()}
    rows["(d) calibrated, against pass A only"] = metrics(preds[
        "(d) calibrated (table + trees + network correction)"], meas_a)
    rows["noise floor: pass B against pass A"] = metrics(meas_b, meas_a)
    extra = extra or {}
    d = "(d) calibrated (table + trees + network correction)"
    if extra.get("second"):  # --interleaved: a second instance of each, in another chunk
        rows["noise floor: second instance, another chunk"] = metrics(extra["second"], meas_ref)
        # Two instances of a network, after speed normalization, can still run 30% or more apart
        # (PyTorch batch 1, networks with over 1 MiB of weights, docs/benchmarks.md): against the
        # two instances' geometric mean, a network's typical time, the model is judged less by
        # one instance's luck (a diagnostic row).
        both = [math.sqrt(a * b) for a, b in zip(meas_ref, extra["second"])]
        rows["(d) calibrated, against the geometric mean of both instances"] = metrics(preds[d], both)
        if extra.get("third"):  # a re-measurement judged against that same reference: its floor
            rows["noise floor: third instance, a third chunk, against the geometric mean of both instances"] = (
                metrics(extra["third"], both))
    rows.update(by_weight_size(geoms, preds[d], meas_ref, extra.get("second")))
    if extra.get("ref_raw"):  # the same, before the speed normalization
        rows["(d) calibrated, against the times before speed normalization"] = metrics(preds[d], extra["ref_raw"])
        if extra.get("second_raw"):
            rows["noise floor: second instance, another chunk, before speed normalization"] = metrics(
                extra["second_raw"], extra["ref_raw"])
    hits = sum(g.config_key() in profile.table for n in geoms for g in n)
    total_layers = sum(len(n) for n in geoms)
    return {
        "batch_size": batch, "threads": threads, "runtime": profile.runtime, "calibration_s": calib_s,
        "calibration_networks": profile.protocol.get("n_networks"),
        "calibration_oof": profile.fit_quality.get("network_oof"), "metrics": rows,
        "table_hit_share": hits / total_layers, "median_meas_ms": statistics.median(meas_ref),
        "profile": profile, "meas": meas_ref, "meas_a": meas_a, "meas_b": meas_b, "pred": preds,
        "network_correction": profile.network,
        "speed_spread": (measured.protocol.get("speed") or {}).get("spread"),
    }


def machine() -> dict[str, str]:
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    info = {"cpu": model, "cpus": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(),
            "affinity": ",".join(map(str, sorted(os.sched_getaffinity(0))))}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:,.1f}x"


def _context_line(ctx: dict | None) -> str:
    """The profile's layer context (``costmodel.layer_context``) in words, or nothing."""
    if not ctx:
        return "; no layer context"
    factors = sorted(((f, op, b) for op, by in ctx.get("after", {}).items() for b, f in by.items()),
                     key=lambda x: -abs(x[0]))[:4]
    return (f"; layer context: reference network {ctx['ref_ms']:.2f} ms, exponents "
            + ", ".join(f"{op} {b:+.3f}" for op, b in sorted(ctx["beta"].items()))
            + "".join(f"; {op} after {b} x{math.exp(f):.2f}" for f, op, b in factors))


def write_markdown(results: list[dict], tp: dict | None, sums: dict | None, args, info) -> str:
    lines = [f"## Cost model benchmark ({args.device})", "",
             f"* date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"* machine: {info['cpu']}, {info['cpus']} CPUs"
             + (f", GPU {info['gpu']}" if "gpu" in info else "")
             + f"; torch {info['torch']}, python {info['python']}",
             f"* command: `{' '.join(args.argv)}` (CPU affinity {info['affinity']})",
             f"* held-out networks: {args.networks} (3/4 archgen generator specs, half of them "
             f"with R2 off, inputs {', '.join('x'.join(map(str, sh)) for sh in SHAPES)}; 1/4 random plain "
             f"CNNs; <= {MAX_MACS / 1e6:.0f}M MACs per sample; "
             "none used in calibration)",
             f"* protocol: {'calibration' + chr(39) + 's' if args.interleaved else 2 * args.repeats} "
             "rounds over all networks, interleaved round by "
             f"round (in chunks of {CHUNK} networks after {WARMUP_S:.0f} s of interleaved "
             "warm-up, as in calibration); reference = minimum over all rounds; pass A = "
             "minimum over odd rounds, pass "
             f"B = over even rounds ({'half of them' if args.interleaved else f'{args.repeats} runs'} each; "
             "B against A = noise floor); "
             f"torch.set_num_threads fixed; CPU clock `{args.clock}` (auto: the computing "
             "thread's CPU time `time.thread_time` at 1 thread, `perf_counter` at 2 threads; "
             "CUDA: events); other load on the machine was not controlled "
             "(timings pinned with taskset)"
             + ("; **interleaved**: calibration and held-out networks measured in the same chunks, in "
                "one seeded random order, calibration's rounds (`default_repeats`), held-out networks "
                f"built from their geometries, each {INSTANCES} times ({INSTANCES} instances, each in its "
                "own chunk); passes A and B split those rounds; the speed anchors timed in every chunk "
                "and every chunk's times brought to the machine's median speed, as calibration does "
                "(`costmodel.speed`): the reference is the first instance at that speed; the geometric "
                "mean of the first two instances is the reference of the rows that say so, and the "
                "third instance judged against it their noise floor"
                if args.interleaved else ""), ""]
    for r in results:
        lines += [f"### {r['runtime']}, batch {r['batch_size']}, {r['threads']} thread(s)", "",
                  f"calibration: {r['calibration_s']:.0f} s, {r['calibration_networks']} "
                  f"networks; held-out median latency {r['median_meas_ms']:.2f} ms; "
                  f"layer-table hit share {100 * r['table_hit_share']:.0f}%"
                  + (f"; reference workload after the held-out networks / at calibration: "
                     f"{r['reference_drift']:.3f}" if r.get("reference_drift") else "")
                  + (f"; machine speed between chunks: {100 * (r['speed_spread'] - 1):.0f}% apart "
                     "(fastest / slowest chunk, from the anchors)" if r.get("speed_spread") else "")
                  + _context_line(r["network_correction"].get("context")), "",
                  "| predictor | Kendall tau | MAPE % | P95 abs err % | within +-10% | within +-5% |",
                  "|---|---|---|---|---|---|"]
        for name, m in r["metrics"].items():
            lines.append(f"| {name} | {m['kendall_tau']:.3f} | {m['mape_pct']:.1f} | "
                         f"{m['p95_abs_err_pct']:.1f} | {m['within_10pct']:.0f}% | "
                         f"{m['within_5pct']:.0f}% |")
        lines.append("")
    if tp:
        lines += ["### Pricing throughput (same held-out networks, 1 thread)", "",
                  "| method | networks/s | vs fvcore |", "|---|---|---|",
                  f"| `estimate_total_ms` (fast path) | {tp['estimate_total_ms_per_s']:,.0f} | "
                  f"{_ratio(tp['ratio_fast_vs_fvcore'])} |",
                  *([f"| `estimate_total_ms`, the same profile without its layer context | "
                     f"{tp['estimate_total_ms_no_context_per_s']:,.0f} | "
                     f"{_ratio(tp['estimate_total_ms_no_context_per_s'] / tp['fvcore_per_s'])} |"]
                    if tp.get("estimate_total_ms_no_context_per_s") else []),
                  f"| `estimate` (DataFrame report) | {tp['estimate_report_per_s']:,.0f} | "
                  f"{_ratio(tp['ratio_report_vs_fvcore'])} |",
                  f"| fvcore `FlopCountAnalysis(...).total()` | {tp['fvcore_per_s']:,.1f} | 1x |"
                  + (" (fvcore not installed)" if tp["fvcore_per_s"] != tp["fvcore_per_s"] else ""),
                  "", f"Compiling a profile for the fast path (once per profile): "
                  f"{tp['profile_compile_ms']:.0f} ms.", ""]
    if sums:
        lines += [f"### Per-layer profiled times vs end-to-end ({sums['runtime']})", "",
                  f"{sums['n']} held-out networks, batch {args.sum_batch}: |sum of per-layer "
                  f"minima / end-to-end minimum - 1| median {sums['median_abs_pct']:.1f}%, "
                  f"90th percentile {sums['p90_abs_pct']:.1f}%, within 10%: "
                  f"{sums['within_10pct']:.0f}%, within 5%: {sums['within_5pct']:.0f}% of networks.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--networks", type=int, default=120, help="held-out networks (default 120)")
    p.add_argument("--configs", default=None,
                   help="comma list of bBtT[-onnxruntime], default b32t1,b32t2,b1t1 (cpu) / b32t1,b1t1 (cuda)")
    p.add_argument("--repeats", type=int, default=9,
                   help="timed runs per network and pass (two interleaved passes)")
    p.add_argument("--quick", action="store_true", help="quick calibration")
    p.add_argument("--calib-networks", type=int, default=None,
                   help="random calibration networks (default: calibrate's, 160 full, 480 full at batch <= 4)")
    p.add_argument("--calib-generator", type=int, default=None,
                   help="generator calibration networks (default 12 quick, 80 full, 240 full at batch <= 4)")
    p.add_argument("--no-generator-calibration", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-layer-sum", action="store_true")
    p.add_argument("--sum-batch", type=int, default=32)
    p.add_argument("--sum-runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="runtime of the per-layer sum check (archgen profile --runtime)")
    p.add_argument("--sum-networks", type=int, default=30)
    p.add_argument("--clock", default="auto", choices=("auto", "wall", "thread"),
                   help="CPU clock: auto = thread CPU time at 1 thread, perf_counter otherwise")
    p.add_argument("--out", default=None,
                   help="write the markdown here too (measuring runs: default docs/_bench_costmodel.md, "
                        "not tracked; --replay: only when given)")
    p.add_argument("--json", default=None, help="also write raw figures as JSON")
    p.add_argument("--dump", default=None,
                   help="also write each configuration's raw measurements to DUMP.bBtT[-ort].json")
    p.add_argument("--small-inputs", action="store_true",
                   help="generator specs (held out and calibration) also at 8x8 and 16x16 inputs")
    p.add_argument("--second-pass", action="store_true",
                   help="measure the held-out networks a second time after the first pass, and report "
                        "their agreement (drift between measurement sessions)")
    p.add_argument("--interleaved", action="store_true",
                   help="measure calibration and held-out networks in the same chunks (held-out networks "
                        "built from their geometries, calibration's rounds): the model's error without "
                        "the machine's drift between measurement sessions")
    p.add_argument("--replay", default=None, nargs="+",
                   help="refit and evaluate --dump files instead of measuring")
    p.add_argument("--no-settle", action="store_true",
                   help="PyTorch: a fixed number of rounds at small batch sizes too (costmodel.timing.run_rounds)")
    p.add_argument("--replay-subset", type=int, default=None,
                   help="with --replay: refit on this many of the calibration networks (seeded sample)")
    p.add_argument("--replay-seed", type=int, default=0, help="seed of --replay-subset's sample")
    p.add_argument("--replay-throughput", action="store_true",
                   help="with --replay: also the pricing throughput, with the first dump's profile and "
                        "held-out networks, with and without its layer context")
    args = p.parse_args(argv)
    args.argv = ["python", "scripts/bench_costmodel.py", *(argv or sys.argv[1:])]
    global args_clock, SHAPES
    args_clock = args.clock
    if args.small_inputs:
        SHAPES = SMALL_SHAPES + SHAPES
    if args.no_settle:
        import costmodel.timing

        costmodel.timing.SETTLE_MAX = 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configs = args.configs or ("b32t1,b32t2,b1t1" if args.device == "cpu" else "b32t1,b1t1")
    info = machine()
    if args.replay:
        results = [replay(path, args.replay_subset, args.replay_seed) for path in args.replay]
        tp = None
        if args.replay_throughput:  # the first dump's held-out networks, built from their geometries
            from costmodel.measure import module_from_geoms

            held = [[geom_from_dict(g, "held-out") for g in n]
                    for n in json.loads(Path(args.replay[0]).read_text())["held_out"]["geoms"]]
            tp = throughput(held, [module_from_geoms(g) for g in held[:20]], results[0]["profile"], 20)
        text = write_markdown(results, tp, None, args, info)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        return 0
    args.out = args.out or "docs/_bench_costmodel.md"
    nets = held_out_networks(args.networks)
    log.info("%d held-out networks ready", len(nets[0]))
    results = []
    for cfg in filter(None, configs.split(",")):  # --configs none: only the checks below
        if cfg == "none":
            continue
        cfg, _, runtime = cfg.strip().partition("-")
        batch, threads = (int(v) for v in cfg[1:].split("t"))
        results.append(run_config(batch, threads, runtime or "torch", args, nets))
        text = write_markdown(results, None, None, args, info)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")  # partial results survive an interruption
    tp = None if args.no_throughput or not results else throughput(nets[0], nets[1], results[0]["profile"], 20)
    n_sum = min(args.sum_networks, len(nets[0]))
    sums = None if args.no_layer_sum else layer_sum_check(
        nets[1][:n_sum], nets[0][:n_sum], args.sum_batch, 1, args.device, args.repeats, args.sum_runtime)
    text = write_markdown(results, tp, sums, args, info)
    Path(args.out).write_text(text + "\n")
    print(text)
    if args.json:
        raw = [{k: v for k, v in r.items() if k != "profile"} for r in results]
        Path(args.json).write_text(json.dumps({"machine": info, "results": raw,
                                               "throughput": tp, "layer_sum": sums}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

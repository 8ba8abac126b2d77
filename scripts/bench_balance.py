"""Does ``archgen.balance.rebalance`` even out *measured* per-layer conv time?

    taskset -c 0 python scripts/bench_balance.py --n 30 --seed 0 --batch-size 1 \
        --repeats 15 --out-md /tmp/bench_balance.md

Takes ``n`` generated networks (``sample_specs((1, 28, 28), 10, n, seed)``) with conv-only
bodies (conv + pool; no batchnorm, no dropout) and at least three conv layers, rebalances each
with the cached CPU profile at 1 thread and the batch size (``load_cached``; the built-in
``default_profile()`` when none is cached, and the output says which), then measures the
original and the rebalanced network side by side (``costmodel.profile.profile_modules``:
interleaved round by round, 1 thread, minimum of ``repeats`` calls per layer, batch
``batch-size`` of random 1x28x28 inputs).

Reported per network and as medians: the estimated conv-time CV before/after (what rebalance
optimizes) and the measured conv-time CV before/after (population std / mean over the conv
layers rebalance evens out: all but the stem, ``archgen.balance.balanceable``), plus the share of
networks whose measured CV dropped (over all networks and over those rebalance changed).
Run it pinned (``taskset -c 0``) while nothing else runs on that core.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_balance")


def cv(values: list[float]) -> float:
    """Population coefficient of variation (0 for fewer than one value or a zero mean)."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean


def conv_only_body(spec: object) -> bool:
    """At least three convs and nothing but conv/pool before the head."""
    from archgen.spec import ConvSpec, PoolSpec

    body = [layer for layer in spec.layers if isinstance(layer, (ConvSpec, PoolSpec))]
    n_conv = sum(isinstance(layer, ConvSpec) for layer in spec.layers)
    head_start = next((i for i, l in enumerate(spec.layers) if not isinstance(l, (ConvSpec, PoolSpec))),
                      len(spec.layers))
    return n_conv >= 3 and len(body) == head_start


def widths(spec: object) -> list[int]:
    from archgen.spec import ConvSpec

    return [layer.filters for layer in spec.layers if isinstance(layer, ConvSpec)]


def machine() -> str:
    from costmodel.device_profile import cpu_model_name

    return f"{cpu_model_name()}, {os.cpu_count()} threads"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out-md", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    import torch

    from archgen.balance import balanceable, conv_times, rebalance
    from archgen.build import build_model
    from archgen.generator import GenSpace, sample_specs
    from costmodel.device_profile import default_profile, load_cached
    from costmodel.profile import profile_modules

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    profile = load_cached("cpu", 1, args.batch_size)
    profile_name = f"cached calibrated profile (cpu, 1 thread, batch {args.batch_size})"
    if profile is None:
        profile = default_profile()
        profile_name = f"built-in default_profile() (no cached CPU profile at 1 thread / batch {args.batch_size})"
    log.info("profile: %s", profile_name)
    space = GenSpace(batchnorm=(False,), dropout=(0.0,))
    specs = sample_specs((1, 28, 28), 10, args.n, seed=args.seed, space=space, accept=conv_only_body)
    shape = specs[0].input_shape
    rows = []
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        bal = rebalance(spec, profile, args.batch_size)
        changed = widths(bal.spec) != widths(spec)
        x = torch.randn(args.batch_size, *shape)
        pairs = [(build_model(spec, seed=0), x), (build_model(bal.spec, seed=0), x)]
        before, after = profile_modules(pairs, device="cpu", threads=1, repeats=args.repeats)
        meas = []
        for prof in (before, after):
            meas.append([m for g, m in zip(prof.geoms, prof.meas_ms) if g.op == "conv"])
        est_after, _ = conv_times(bal.spec, profile, args.batch_size)
        rows.append({
            "name": spec.short_name(), "widths_before": widths(spec), "widths_after": widths(bal.spec),
            "changed": changed, "est_cv_before": bal.cv_before, "est_cv_after": bal.cv_after,
            "meas_cv_before": cv(balanceable(meas[0])), "meas_cv_after": cv(balanceable(meas[1])),
            "meas_conv_ms_before": sum(meas[0]), "meas_conv_ms_after": sum(meas[1]),
            "est_conv_ms_before": bal.conv_ms_before, "est_conv_ms_after": sum(est_after),
            "meas_e2e_ms_before": before.e2e_ms, "meas_e2e_ms_after": after.e2e_ms,
            "meas_conv_ms_layers_before": meas[0], "meas_conv_ms_layers_after": meas[1],
        })
        r = rows[-1]
        log.info("%2d %-40s est cv %.3f->%.3f meas cv %.3f->%.3f %s", i, r["name"], r["est_cv_before"],
                 r["est_cv_after"], r["meas_cv_before"], r["meas_cv_after"], "" if changed else "(unchanged)")
    elapsed_s = time.perf_counter() - t0

    def med(key: str, sel: list[dict]) -> float:
        return statistics.median(r[key] for r in sel) if sel else float("nan")

    changed_rows = [r for r in rows if r["changed"]]
    dropped_all = sum(r["meas_cv_after"] < r["meas_cv_before"] for r in rows)
    dropped_changed = sum(r["meas_cv_after"] < r["meas_cv_before"] for r in changed_rows)
    est_dropped = sum(r["est_cv_after"] < r["est_cv_before"] - 1e-9 for r in rows)
    pinned = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    cmd = f"taskset -c {pinned} python " + " ".join(["scripts/bench_balance.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        f"Command: `{cmd}`", "",
        f"Date: {started}; machine: {machine()}; pinned to CPUs {sorted(os.sched_getaffinity(0))}, "
        f"torch {torch.__version__}, 1 thread, batch {args.batch_size}, {args.repeats} repeats "
        f"(minimum per layer), original and rebalanced network interleaved; {elapsed_s:.0f} s in all.", "",
        f"Profile used by rebalance: {profile_name}.", "",
        f"{len(rows)} networks (conv-only bodies, >= 3 conv layers); rebalance changed the widths of "
        f"{len(changed_rows)}.", "",
        "| networks | median est CV before | median est CV after | median meas CV before | "
        "median meas CV after | meas CV dropped | median meas conv ms before | median meas conv ms after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, sel, dropped in (("all", rows, dropped_all), ("changed by rebalance", changed_rows, dropped_changed)):
        lines.append(
            f"| {label} ({len(sel)}) | {med('est_cv_before', sel):.3f} | {med('est_cv_after', sel):.3f} | "
            f"{med('meas_cv_before', sel):.3f} | {med('meas_cv_after', sel):.3f} | "
            f"{dropped}/{len(sel)} ({100 * dropped / max(1, len(sel)):.0f}%) | "
            f"{med('meas_conv_ms_before', sel):.2f} | {med('meas_conv_ms_after', sel):.2f} |"
        )
    lines += ["", f"Estimated CV dropped for {est_dropped}/{len(rows)} networks.", "",
              "Per network:", "",
              "| network | conv widths before -> after | est CV before -> after | meas CV before -> after | "
              "meas conv ms before -> after |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['widths_before']} -> {r['widths_after']} | "
            f"{r['est_cv_before']:.3f} -> {r['est_cv_after']:.3f} | {r['meas_cv_before']:.3f} -> "
            f"{r['meas_cv_after']:.3f} | {r['meas_conv_ms_before']:.2f} -> {r['meas_conv_ms_after']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
        Path(args.out_md).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

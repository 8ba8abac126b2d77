#!/usr/bin/env python3
"""Re-measure held-out networks of one input shape in a fresh process and compare with a
profile's predictions: how much a network's batch-1 latency depends on the measurement session
(docs/benchmarks.md, "Cost model accuracy").

    taskset -c 1 python scripts/bench_context.py --dump /tmp/cmH.b1t1.json --side 28

The dump is a ``bench_costmodel.py --dump`` file; its calibration is refitted here. The held-out
generator specs of that side (seeds 1000 and 2000, as ``bench_costmodel.py`` draws them) are
built both as archgen builds them and from their geometries, timed side by side with the
calibration protocol, and compared with the refitted profile's estimates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dump", required=True, help="a bench_costmodel.py --dump file (batch 1, torch)")
    p.add_argument("--side", type=int, default=28, help="input side of the held-out specs (28, 32, 64, 96)")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)

    from bench_costmodel import generator_specs

    from archgen.build import build_model
    from archgen.costing import spec_geoms
    from costmodel.calibration import fit_measurements
    from costmodel.estimator import estimate_total_ms
    from costmodel.measure import input_for, module_from_geoms
    from costmodel.measurements import Measurements
    from costmodel.profile import profile_modules

    dump = json.loads(Path(args.dump).read_text())
    profile = fit_measurements(Measurements.from_dict(dump["calibration"]), progress=lambda m: None)
    specs = [s for s in generator_specs(40, 1000, set()) + generator_specs(40, 2000, set(), rules_off_r2=True)
             if s.input_shape[1] == args.side]
    pairs = []
    for i, spec in enumerate(specs):
        geoms = spec_geoms(spec)
        x = input_for(geoms, profile.batch_size)
        pairs += [(build_model(spec, seed=i), x), (module_from_geoms(geoms), x)]
    out = profile_modules(pairs, "cpu", 1, args.repeats, 2, "auto", per_layer=False, warmup_s=3)
    built = [out[2 * i].e2e_ms for i in range(len(specs))]
    from_geoms = [out[2 * i + 1].e2e_ms for i in range(len(specs))]
    pred = [estimate_total_ms(spec_geoms(s), profile) for s in specs]
    med = statistics.median
    print(f"{len(specs)} held-out specs at {args.side}x{args.side}, batch {profile.batch_size}: "
          f"estimate / measured (archgen-built) median {med(a / b for a, b in zip(pred, built)):.3f}; "
          f"estimate / measured (built from geometries) {med(a / b for a, b in zip(pred, from_geoms)):.3f}; "
          f"archgen-built / from geometries {med(a / b for a, b in zip(built, from_geoms)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

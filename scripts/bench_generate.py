"""Generator throughput: candidates per second of ``sample_specs`` (one core, pure Python).

    taskset -c 0 python scripts/bench_generate.py [--n 10000] [--repeats 5]

Prints a markdown table: median specs/s over repeats for several input shapes, with and
without a MAC/parameter budget (the budget adds pricing of every candidate).
"""

from __future__ import annotations

import argparse
import statistics
import time

from archgen.costing import spec_macs
from archgen.generator import Budget, sample_specs

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 224, 224)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print("| input | budget | specs | median specs/s | min specs/s |")
    print("|---|---|---:|---:|---:|")
    for shape in SHAPES:
        probe = sample_specs(shape, 10, 200, seed=99)
        macs = sorted(spec_macs(s) for s in probe)
        for label, budget in (("none", Budget()), ("max_macs=median", Budget(max_macs=macs[len(macs) // 2]))):
            rates = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                specs = sample_specs(shape, 10, args.n, seed=r, budget=budget, max_attempts=40 * args.n)
                rates.append(len(specs) / (time.perf_counter() - t0))
            print(f"| {'x'.join(map(str, shape))} | {label} | {len(specs)} | {statistics.median(rates):,.0f} | {min(rates):,.0f} |")


if __name__ == "__main__":
    main()

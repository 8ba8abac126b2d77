"""The same held-out networks timed in one process, for comparison across processes: does the
allocator change a network's batch-1 time from one process to the next? (docs/benchmarks.md,
"Calibration and held-out networks measured together, and a steady allocator").

Times ``bench_costmodel``'s 120 held-out networks at batch 1, 1 thread, in an order shuffled by
``--order-seed`` (10 interleaved rounds a pass, minimum of all rounds) and writes their times in
the held-out order as JSON. Run it twice per setting and compare the files with ``--compare``::

    taskset -c 0 python scripts/bench_allocator.py --out /tmp/x_plain1.json --order-seed 1
    taskset -c 0 python scripts/bench_allocator.py --out /tmp/x_plain2.json --order-seed 2
    python scripts/bench_allocator.py --compare /tmp/x_plain1.json /tmp/x_plain2.json

The measurement keeps freed memory in the process (``costmodel.timing.steady_allocator``); with
``--allocator default`` it does not (glibc's own thresholds), as before that change; with
``--allocator thresholds`` glibc's thresholds are raised but mmap stays on (buffers above 32 MiB
mapped per call), as before mmap was turned off. ``--batch-size 32`` times them at batch 32.
Comparing two files of different settings gives each network's time under the second against
the first.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_costmodel  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the held-out networks' times (ms) here")
    ap.add_argument("--order-seed", type=int, default=1)
    ap.add_argument("--networks", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--allocator", choices=("steady", "thresholds", "default"), default="steady",
                    help="steady: the measurement protocol's; thresholds: glibc's mmap and trim thresholds "
                         "raised, mmap on; default: glibc's own settings")
    ap.add_argument("--compare", nargs=2, metavar="FILE", help="agreement of two --out files")
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (np.array(json.loads(Path(f).read_text())) for f in args.compare)
        r = b / a - 1
        print(f"median ratio {np.median(b / a):.3f}, within 5% {np.mean(abs(r) <= .05):.0%}, "
              f"within 10% {np.mean(abs(r) <= .1):.0%}, largest disagreement {100 * np.max(abs(r)):.0f}%")
        return 0
    if not args.out:
        ap.error("--out FILE or --compare FILE FILE")
    if args.allocator != "steady":
        import ctypes

        import costmodel.timing as timing

        if args.allocator == "thresholds":
            libc = ctypes.CDLL(None)
            libc.mallopt(timing.M_MMAP_THRESHOLD, timing.MMAP_THRESHOLD)
            libc.mallopt(timing.M_TRIM_THRESHOLD, timing.TRIM_THRESHOLD)
        timing._allocator = f"{args.allocator} (set here)"  # steady_allocator() then does nothing
    geoms, modules, _ = bench_costmodel.held_out_networks(args.networks)
    order = list(range(len(geoms)))
    random.Random(args.order_seed).shuffle(order)
    ref, _, _ = bench_costmodel.measure([modules[i] for i in order], [geoms[i] for i in order], args.batch_size,
                                        1, "cpu", 10)
    times = [0.0] * len(geoms)
    for k, i in enumerate(order):
        times[i] = ref[k]
    Path(args.out).write_text(json.dumps(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

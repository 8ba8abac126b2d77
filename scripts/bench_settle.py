"""Do the minima repeat from one process to the next, with a fixed number of rounds and with the
rounds that settle (``costmodel.timing.run_rounds``)?

Times the same calibration-style networks (``costmodel.calibration.calibration_networks``, a seed
calibration never uses) in several fresh processes per mode, the modes alternating in time, and
reports for each mode the rounds run and how many networks two processes time within 10% and 5%
of each other (every pair of processes). Run it pinned to one core::

    taskset -c 0 python scripts/bench_settle.py --batch-size 1 --networks 40 --processes 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(batch: int, n: int, repeats: int, mode: str, out: str) -> None:
    """One process's measurement: each network's end-to-end times in round order."""
    sys.path.insert(0, str(REPO))
    import torch

    import costmodel.timing as timing
    from costmodel.calibration import calibration_networks
    from costmodel.measure import CHUNK, WARMUP_S, input_for, module_from_geoms
    from costmodel.profile import profile_modules

    if mode == "fixed":
        timing.SETTLE_MAX = 1
    else:  # settle at any batch size, to see what it would do at large ones too
        timing.SETTLE_BATCH = 1 << 30
    timing.steady_allocator()
    nets = calibration_networks(False, 77, n, batch)[:n]
    torch.manual_seed(0)
    samples = []
    for start in range(0, len(nets), CHUNK):
        pairs = [(module_from_geoms(g), input_for(g, batch, "cpu")) for g in nets[start:start + CHUNK]]
        samples += [list(mp.e2e_samples_ms) for mp in profile_modules(pairs, "cpu", 1, repeats, 2, "auto",
                                                                      warmup_s=WARMUP_S)]
    Path(out).write_text(json.dumps(samples))


def agreement(a: list[list[float]], b: list[list[float]]) -> tuple[float, float]:
    err = [abs(min(y) / min(x) - 1) for x, y in zip(a, b)]
    return (sum(e < 0.1 for e in err) / len(err), sum(e < 0.05 for e in err) / len(err))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--networks", type=int, default=40)
    p.add_argument("--repeats", type=int, default=None, help="rounds asked for (default: calibration's)")
    p.add_argument("--processes", type=int, default=3, help="processes per mode")
    p.add_argument("--measure", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from costmodel.calibration import default_repeats

    repeats = args.repeats or default_repeats(False, args.batch_size)
    if args.measure:
        measure(args.batch_size, args.networks, repeats, *args.measure)
        return 0
    runs: dict[str, list[list[list[float]]]] = {"fixed": [], "settle": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            for mode in runs:
                out = f"{tmp}/{mode}{i}.json"
                subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--networks",
                                str(args.networks), "--repeats", str(repeats), "--measure", mode, out], check=True)
                runs[mode].append(json.loads(Path(out).read_text()))
    print(f"batch {args.batch_size}, {args.networks} networks, {repeats} rounds asked for, "
          f"{args.processes} processes per mode")
    print("| mode | rounds run (mean) | two processes within 10% | within 5% |")
    print("|---|---:|---:|---:|")
    for mode, done in runs.items():
        pairs = [agreement(a, b) for a, b in itertools.combinations(done, 2)]
        rounds = statistics.mean(len(s) for run in done for s in run)
        print(f"| {mode} | {rounds:.1f} | {', '.join(f'{100 * w10:.0f}%' for w10, _ in pairs)} | "
              f"{', '.join(f'{100 * w5:.0f}%' for _, w5 in pairs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

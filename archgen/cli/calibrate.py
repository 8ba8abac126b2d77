"""``archgen calibrate``: fit this machine's device profile and cache it (or write --out)."""

from __future__ import annotations

import argparse
import sys
import time

from archgen.cli import argtypes as at


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure this device and fit its cost-model profile")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=at.threads_int, default=1, metavar="T", help="torch threads (default 1)")
    p.add_argument("--batch-size", type=at.batch_int, default=32, metavar="B")
    p.add_argument("--quick", action="store_true", help="fewer networks and repeats (< 1 min)")
    p.add_argument("--seed", type=at.seed_int, default=0, help="seed of the calibration networks")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the profile here instead of the per-device cache")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archgen.calibration import calibrate_device

    if args.out:
        from pathlib import Path

        from archgen.rundir import check_out_file

        check_out_file(Path(args.out), force=args.force)
    start = time.perf_counter()
    profile, path = calibrate_device(
        device=args.device, threads=args.threads, batch_size=args.batch_size, quick=args.quick,
        seed=args.seed, out=args.out or None, progress=lambda msg: sys.stderr.write(msg + "\n"),
    )
    q = profile.fit_quality.get("network_oof", {})
    sys.stderr.write(
        f"calibrated in {time.perf_counter() - start:.0f} s; calibration networks (out of fold): "
        f"MAPE {100 * q.get('mape', float('nan')):.1f}%, within 10% "
        f"{100 * q.get('within_10pct', float('nan')):.0f}%\n"
    )
    sys.stdout.write(f"{path}\n")
    return 0

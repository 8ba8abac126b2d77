"""``archgen cost SPEC``: price every layer of a spec with the cost model (no torch needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmodel.device_profile import DeviceProfile

import argparse
import sys

from archgen.cli import argtypes as at
from archgen.errors import UserError

FORMATS = ("table", "csv", "json", "markdown")



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="per-layer cost table of a spec (seed form and calibrated)")
    p.add_argument("spec", metavar="SPEC", help="spec file (JSON or YAML)")
    p.add_argument("--batch-size", type=at.batch_int, default=None, metavar="B",
                   help="batch size (default: the profile's; the built-in profile's is 1)")
    p.add_argument("--device-profile", default=None, metavar="FILE",
                   help="device profile JSON (default: the cached CPU profile for the batch "
                        "size, else the built-in uncalibrated profile)")
    p.add_argument("--threads", type=at.threads_int, default=1, metavar="T",
                   help="thread count of the cached profile to look up (default 1)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=run)


def resolve_profile(path: str | None, batch_size: int | None, threads: int = 1,
                    device: str = "cpu") -> DeviceProfile | None:
    """The profile for the cost/profile commands: ``--device-profile`` FILE (checked against
    this machine), else the cached one for (device, threads, batch size), else None (built-in)."""
    from costmodel.device_profile import DeviceProfile, load_cached

    if path:
        profile = DeviceProfile.load(path)
        profile.check_context(batch_size=batch_size)
        return profile
    if batch_size is None:
        return load_cached(device, threads, 32) or None
    return load_cached(device, threads, batch_size)


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be a positive integer")


def run(args: argparse.Namespace) -> int:
    from archgen.costing import spec_geoms
    from archgen.spec import load_spec
    from costmodel.estimator import estimate
    from costmodel.report import render

    check_batch_size(args.batch_size)
    spec = load_spec(args.spec)
    profile = resolve_profile(args.device_profile, args.batch_size, args.threads)
    report = estimate(spec_geoms(spec), profile, args.batch_size)
    sys.stdout.write(render(report, args.format) + "\n")
    if report.is_default_profile and args.format != "json":
        sys.stderr.write("note: built-in uncalibrated profile; run `archgen calibrate` for real "
                         "numbers\n")
    return 0

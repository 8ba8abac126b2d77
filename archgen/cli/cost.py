"""``archgen cost SPEC``: price every layer of a spec with the cost model (no torch needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archgen.profiles import ProfileChoice

import argparse
import sys

from archgen.cli import argtypes as at
from archgen.errors import UserError

FORMATS = ("table", "csv", "json", "markdown")
RUNTIMES = ("torch", "onnxruntime")  # costmodel.device_profile.RUNTIMES (no costmodel import here)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="per-layer cost table of a spec (seed form and calibrated)")
    p.add_argument("spec", metavar="SPEC", help="spec file (JSON or YAML)")
    p.add_argument("--batch-size", type=at.batch_int, default=None, metavar="B",
                   help="batch size (default: the profile's; the cached profile with the smallest "
                        "batch size when there are several)")
    add_profile_args(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=run)


def add_profile_args(p: argparse.ArgumentParser, threads_help: str = "thread count of the cached "
                     "profile to look up (default 1)") -> None:
    """--device-profile, --runtime and --threads: which profile prices the network."""
    p.add_argument("--device-profile", default=None, metavar="FILE",
                   help="device profile JSON, from this machine or another device (default: this "
                        "machine's cached profile, else the built-in uncalibrated one)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="what the network runs in: PyTorch eager or its ONNX export in ONNX "
                        "Runtime (default torch; a --device-profile names its own)")
    p.add_argument("--threads", type=at.threads_int, default=None, metavar="T", help=threads_help)


def resolve_profile(args: argparse.Namespace, batch_size: int | None, device: str = "cpu",
                    measure_on: str | None = None, say: bool = True) -> ProfileChoice:
    """The profile for cost/profile (``archgen.profiles.choose_profile``), its note written to
    stderr (unless ``say`` is false: the caller writes ``choice.note`` itself)."""
    from archgen.profiles import choose_profile

    choice = choose_profile(args.device_profile, device=device, runtime=args.runtime,
                            threads=args.threads or 1, batch_size=batch_size, measure_on=measure_on)
    if args.device_profile and choice.profile.runtime != args.runtime and args.runtime != "torch":
        raise UserError(f"--runtime {args.runtime}: the profile {args.device_profile} is a "
                        f"{choice.profile.runtime} profile")
    if say:
        sys.stderr.write(f"profile: {choice.note}\n")
    return choice


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
    choice = resolve_profile(args, args.batch_size)
    report = estimate(spec_geoms(spec), choice.profile, args.batch_size)
    sys.stdout.write(render(report, args.format) + "\n")
    return 0

"""``archgen profile SPEC``: measure each layer of a built spec and show it next to the estimate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archgen.cli import argtypes as at
from archgen.cli.cost import FORMATS, add_profile_args, check_batch_size
from archgen.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure per-layer latency, predicted next to measured")
    p.add_argument("spec", metavar="SPEC", help="spec file (JSON or YAML)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=at.batch_int, default=None, metavar="B",
                   help="batch size (default: the profile's; the cached profile with the smallest "
                        "batch size when there are several)")
    p.add_argument("--repeats", type=at.int_in(1, 100_000), default=15, metavar="R",
                   help="timed runs; the minimum is reported (default 15)")
    add_profile_args(p, "threads the network runs with (torch or onnxruntime intra-op; default: a "
                        "--device-profile's, else 1)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a per-layer bar chart")
    p.add_argument("--force", action="store_true", help="replace an existing --plot file")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archgen.cli.cost import resolve_profile
    from archgen.costing import check_fits_in_memory
    from archgen.pricing import estimate_and_measure
    from archgen.rundir import check_out_file
    from archgen.spec import load_spec
    from costmodel.profile import resolve_device
    from costmodel.report import plot_layers, render

    check_batch_size(args.batch_size)
    if args.plot:
        check_out_file(Path(args.plot), force=args.force, flag="--plot")
    device = resolve_device(args.device)
    spec = load_spec(args.spec)
    kind = "cpu" if device == "cpu" else "cuda"
    choice = resolve_profile(args, args.batch_size, kind, measure_on=kind, say=False)
    batch = args.batch_size or choice.profile.batch_size
    check_fits_in_memory(spec, batch, device)  # before any line on stderr: an error is one line
    sys.stderr.write(f"profile: {choice.note}\n")
    runtime = choice.profile.runtime if args.device_profile else args.runtime
    if runtime == "onnxruntime" and device != "cpu":
        raise UserError("--runtime onnxruntime measures on the CPU; use --device cpu")
    priced = int(choice.profile.context.get("threads") or 1)
    threads = args.threads or (priced if args.device_profile else 1)
    if choice.foreign:
        sys.stderr.write(f"note: the measured column is of this machine ({runtime}), the estimates "
                         "of the profile's device\n")
    elif threads != priced and not choice.is_default:
        sys.stderr.write(f"note: measured at {threads} thread(s), priced by a profile of {priced}\n")
    from archgen.drift import check_drift

    drift = check_drift(choice.profile, device)  # None for a profile of another machine or device kind
    if drift is not None and not drift.ok:
        sys.stderr.write(f"warning: {drift.line()}\n")
    report = estimate_and_measure(spec, choice.profile, batch, device=device,
                                  threads=threads, repeats=args.repeats, runtime=runtime)
    sys.stdout.write(render(report, args.format) + "\n")
    if args.plot:
        path = plot_layers(report, args.plot)
        sys.stderr.write(f"wrote {path}\n")
    return 0

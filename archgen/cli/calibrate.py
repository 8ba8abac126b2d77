"""``archgen calibrate``: fit this machine's device profile and cache it (or write --out); write
a calibration bundle for another device (--bundle); fit a profile from a bundle's measurements
(--measurements); check that the machine still runs as when its profile was fitted (--check)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from archgen.cli import argtypes as at
from archgen.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure this device and fit its cost-model profile")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default=None,
                   help="what networks run in: PyTorch eager or their ONNX export in ONNX Runtime "
                        "(CPU; default torch)")
    p.add_argument("--threads", type=at.threads_int, default=None, metavar="T",
                   help="intra-op threads (default 1)")
    p.add_argument("--batch-size", type=at.batch_int, default=None, metavar="B",
                   help="batch size (default 32; with --check: the cached profile with the smallest one)")
    p.add_argument("--quick", action="store_true",
                   help="fewer networks and repeats (< 1 min); without it: 244 networks, three times as "
                        "many at batch sizes <= 4 when measuring here (a few minutes on one core)")
    p.add_argument("--seed", type=at.seed_int, default=None, help="seed of the calibration networks (default 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the profile here instead of the per-device cache")
    p.add_argument("--force", action="store_true", help="replace an existing --out or --save-measurements file")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="do not measure here: write a calibration bundle to run on the target "
                        "device (python run.py --out measurements.json)")
    p.add_argument("--measurements", default=None, metavar="FILE",
                   help="do not measure here: fit the profile of the device that produced FILE "
                        "(a bundle's run.py output); written to --out, else next to FILE")
    p.add_argument("--save-measurements", default=None, metavar="FILE",
                   help="also keep the raw measurements (refit later with --measurements)")
    p.add_argument("--check", action="store_true",
                   help="re-time the reference workload and say whether this machine runs as when "
                        "its profile was fitted (no calibration)")
    p.add_argument("--device-profile", default=None, metavar="FILE",
                   help="with --check: the profile to check (default: the cached one)")
    p.set_defaults(func=run)


# Options that mean nothing in a mode, and would be silently ignored there: refused instead.
_NOT_WITH = {
    "bundle": ("out", "force", "save_measurements", "device", "device_profile"),  # measured on the target, as the bundle says
    "measurements": ("runtime", "threads", "batch_size", "quick", "save_measurements", "device", "seed",
                     "device_profile"),  # the file names its own context
    "check": ("out", "save_measurements", "quick", "seed", "force"),
    "": ("device_profile",),  # calibrating here
}


def _check_options(args: argparse.Namespace) -> None:
    modes = [m for m in ("bundle", "measurements", "check") if getattr(args, m)]
    if len(modes) > 1:
        raise UserError("give one of --bundle, --measurements and --check")
    mode = modes[0] if modes else ""
    named = _NOT_WITH[mode] + (("runtime", "threads", "batch_size") if mode == "check" and args.device_profile else ())
    given = [o for o in named if getattr(args, o) is not None and getattr(args, o) is not False]
    if given:
        what = f"with --{mode}" if mode else "without --check"
        why = {"bundle": "the bundle is measured on the target device", "measurements": "the measurements "
               "file names its own device, runtime, threads and batch size", "check": "--check calibrates "
               "nothing; a --device-profile names its own runtime, threads and batch size",
               "": "it is the profile --check checks"}[mode]
        raise UserError(f"{', '.join('--' + o.replace('_', '-') for o in given)}: not used {what} ({why})")


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    given_device = args.device
    args.device, args.runtime, args.threads = args.device or "cpu", args.runtime or "torch", args.threads or 1
    args.seed = args.seed or 0
    if args.check:
        return _check(args, given_device)
    args.batch_size = args.batch_size or 32
    from archgen.rundir import check_out_file

    if args.out:
        check_out_file(Path(args.out), force=args.force)
    if args.save_measurements:
        check_out_file(Path(args.save_measurements), force=args.force, flag="--save-measurements")
    say = lambda msg: sys.stderr.write(msg + "\n")  # noqa: E731
    start = time.perf_counter()
    if args.bundle:
        from archgen.calibration import write_calibration_bundle

        if Path(args.bundle).exists():
            raise UserError(f"--bundle {args.bundle}: exists; give a new folder")
        folder = write_calibration_bundle(args.bundle, args.runtime, args.threads, args.batch_size, args.quick,
                                          args.seed, progress=say)
        say(f"wrote the calibration bundle ({args.runtime}, {args.threads} thread(s), batch {args.batch_size}) "
            f"in {time.perf_counter() - start:.0f} s; copy {folder} to the "
            "target device and run there: python run.py --out measurements.json")
        sys.stdout.write(f"{folder}\n")
        return 0
    if args.measurements:
        from archgen.calibration import fit_measurements_file

        if not args.out:
            check_out_file(Path(args.measurements).with_suffix(".profile.json"), force=args.force)
        profile, path = fit_measurements_file(args.measurements, args.out, progress=say)
    else:
        from archgen.calibration import calibrate_device

        if args.runtime == "onnxruntime" and args.device != "cpu":
            raise UserError("--runtime onnxruntime calibrates the CPU; use --device cpu")
        profile, path = calibrate_device(
            device=args.device, threads=args.threads, batch_size=args.batch_size, quick=args.quick,
            seed=args.seed, out=args.out or None, progress=say, runtime=args.runtime,
            measurements_out=args.save_measurements)
    q = profile.fit_quality.get("network_oof", {})
    say(f"{'fitted' if args.measurements else 'calibrated'} in {time.perf_counter() - start:.0f} s: "
        f"{profile.describe()}; calibration networks (out of fold): MAPE "
        f"{100 * q.get('mape', float('nan')):.1f}%, within 10% {100 * q.get('within_10pct', float('nan')):.0f}%, "
        f"within 5% {100 * q.get('within_5pct', float('nan')):.0f}%"
        + _noise_text(profile.fit_quality.get("noise_floor")))
    sys.stdout.write(f"{path}\n")
    return 0


def _noise_text(noise: dict | None) -> str:
    """The calibration's noise floor beside its fit: how closely the machine repeated itself."""
    if not noise:
        return ""
    return (f"; repeatability (the same networks, odd rounds against even rounds): within 10% "
            f"{100 * noise['within_10pct']:.0f}%, within 5% {100 * noise['within_5pct']:.0f}%")


def _check(args: argparse.Namespace, given_device: str | None) -> int:
    from archgen.drift import check_drift
    from archgen.profiles import choose_profile

    choice = choose_profile(args.device_profile, device=given_device or "cpu", runtime=args.runtime,
                            threads=args.threads, batch_size=args.batch_size, measure_on=given_device)
    if choice.profile.is_default:
        raise UserError(f"no device profile to check: {choice.note}")
    # re-timed where the profile was made, unless --device says where
    report = check_drift(choice.profile, given_device or str(choice.profile.context["device"]))
    if report is None:
        sys.stdout.write(f"nothing to compare: {choice.note} holds no reference time of this machine\n")
        return 0
    sys.stdout.write(report.line() + "\n")
    return 0

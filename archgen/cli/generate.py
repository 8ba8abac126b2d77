"""``archgen generate``: sample rule-following CNN specs for an input shape and class count."""

from __future__ import annotations

import argparse
import json
import sys

from archgen.cli import argtypes as at
from archgen.errors import ConstraintError, UserError
from archgen.spec import MAX_INPUT_CHANNELS, MAX_INPUT_SIDE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample CNN specs that follow the design rules")
    p.add_argument("--input", required=True, metavar="C,H,W", help="input shape, e.g. 1,28,28")
    p.add_argument("--classes", required=True, type=at.int_in(2, 100_000), metavar="K")
    p.add_argument("-n", type=at.int_in(1, 1_000_000), default=10, metavar="N", help="number of specs (default 10)")
    p.add_argument("--seed", type=at.seed_int, default=0)
    p.add_argument("--growth", type=int, choices=(2, 4), default=2, help="R1 filter growth per pooling")
    p.add_argument("--stacking", action="store_true", help="R3: stack 3x3 convs instead of larger kernels")
    p.add_argument("--disable", default="", metavar="RULES", help="comma list of rules to switch off, e.g. R2,R5")
    p.add_argument("--init", default=None, help="R7 init scheme (default kaiming_uniform)")
    p.add_argument("--max-macs", type=at.positive_float, default=None, metavar="X")
    p.add_argument("--max-params", type=at.positive_float, default=None, metavar="X")
    p.add_argument("--max-latency-ms", type=at.positive_float, default=None, metavar="X",
                   help="calibrated estimate budget (this machine's cached device profile, or "
                        "--device-profile FILE from the device the network will run on)")
    p.add_argument("--batch-size", type=at.batch_int, default=None,
                   help="batch size for --max-latency-ms (default: the profile's, else 1)")
    p.add_argument("--device-profile", default=None, metavar="FILE",
                   help="device profile JSON for --max-latency-ms, e.g. one fitted from a "
                        "calibration bundle run on the target device")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="runtime of the cached profile to look up (default torch)")
    p.add_argument("--format", choices=("table", "json", "jsonl"), default="table")
    p.add_argument("--out", default=None, metavar="PATH", help="write to PATH instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input {text[:40]!r} must be three integers C,H,W, e.g. 1,28,28") from None
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"--input {text[:40]!r} must be three positive integers C,H,W, e.g. 1,28,28")
    if parts[0] > MAX_INPUT_CHANNELS or max(parts[1:]) > MAX_INPUT_SIDE:
        raise UserError(f"--input {text[:40]!r} exceeds the limit of {MAX_INPUT_CHANNELS} channels and "
                        f"{MAX_INPUT_SIDE} pixels a side")
    return parts  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from archgen.api import cached_profile, generate, latency_estimator
    from archgen.costing import spec_macs
    from archgen.rules import RuleSet

    shape = parse_shape(args.input)
    if args.out:
        from pathlib import Path

        from archgen.rundir import check_out_file

        check_out_file(Path(args.out), force=args.force)
    try:
        rules = RuleSet.with_rules_off(args.disable, growth=args.growth, stacking=args.stacking, init=args.init)
    except ConstraintError as exc:
        raise UserError(f"--disable: {exc}") from None
    profile = None
    batch_size = args.batch_size or 1
    if args.max_latency_ms is not None:  # read once
        from archgen.profiles import choose_profile

        # the profile file, else the cached one (the smallest batch size without --batch-size)
        choice = choose_profile(args.device_profile, runtime=args.runtime, batch_size=args.batch_size)
        # a budget is not checked against the uncalibrated guess: cached_profile says how to calibrate
        profile = cached_profile(batch_size, runtime=args.runtime) if choice.is_default else choice.profile
        sys.stderr.write(f"profile: {choice.note}\n")
        batch_size = args.batch_size or profile.batch_size
    elif args.device_profile:
        raise UserError("--device-profile prices candidates for --max-latency-ms; give --max-latency-ms too")
    latency = None if profile is None else latency_estimator(batch_size, profile)
    specs = generate(shape, args.classes, args.n, args.seed, rules=rules, max_macs=args.max_macs,
                     max_params=args.max_params, max_latency_ms=args.max_latency_ms,
                     batch_size=batch_size, profile=profile)
    if len(specs) < args.n:
        sys.stderr.write(f"archgen generate: note: only {len(specs)} distinct candidates meet the constraints\n")
    rows = []
    for spec in specs:
        row = {"key": spec.key(), "name": spec.short_name(), "macs": spec_macs(spec), "params": spec.num_params()}
        if latency is not None:
            row["est_ms"] = round(latency(spec), 4)
        row["spec"] = spec.to_dict()
        rows.append(row)
    text = _render(rows, args.format)
    if args.out:
        from archgen.fsio import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def _render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    has_ms = rows and "est_ms" in rows[0]
    header = f"{'#':>3}  {'key':12}  {'MACs':>13}  {'params':>10}" + ("  est_ms" if has_ms else "") + "  name"
    lines = [header]
    for i, r in enumerate(rows):
        ms = f"  {r['est_ms']:6.3f}" if has_ms else ""
        lines.append(f"{i:>3}  {r['key']}  {r['macs']:>13,}  {r['params']:>10,}{ms}  {r['name']}")
    return "\n".join(lines) + "\n"

"""``archgen ablate``: a design rule or training hyperparameter measured on your data and machine.

Matched networks with the rule and with its alternatives, trained from the same seeds under the
same limits, side by side: validation and test accuracy, estimated and measured latency,
parameters, MACs, per-layer time balance, 95% confidence intervals (archgen.ablate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archgen.cli import argtypes as at

RULE_HELP = ("R1 (filter growth) | R2 (kernel size) | R3 (stacked 3x3) | R4 (stride 1 + pooling) | "
             "R5 (same padding) | R6 (equal dense widths) | R7 or init (init scheme) | balance | lr | loss | "
             "reg | batch | early-stopping")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="measure a design rule or hyperparameter against its alternatives",
                       description="Measure a design rule or training hyperparameter against its alternatives "
                                   "on your data and machine (docs/rules.md).")
    p.add_argument("--rule", required=True, metavar="RULE", help=RULE_HELP)
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits | idx:DIR (MNIST-format files) | npz:FILE | folder:DIR (default digits)")
    p.add_argument("--seeds", type=at.int_in(1, 1000), default=3, metavar="N",
                   help="split and training seeds 0..N-1 (default 3)")
    p.add_argument("--networks", type=at.int_in(1, 1000), default=2, metavar="K",
                   help="configurations drawn per seed: the default one, then random ones (default 2)")
    p.add_argument("--epochs", type=at.int_in(1, 10_000), default=20, metavar="E", help="epoch cap (default 20)")
    p.add_argument("--time-budget", type=at.positive_float, default=None, metavar="S",
                   help="training time limit per network, seconds (default: none, the epoch cap)")
    p.add_argument("--no-measure", action="store_true",
                   help="estimate latency only; do not time every layer of every trained network")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.add_argument("--out", default=None, metavar="DIR", help="write ablate.json, runs.csv and ablate.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archgen.ablate import AblateSettings, run_ablation
    from archgen.ablate_factors import factor
    from archgen.ablate_report import render, write_outputs

    factor(args.rule)  # an unknown rule is a one-line error before any data is read
    settings = AblateSettings(rule=args.rule, data=args.data, seeds=args.seeds, networks=args.networks,
                              epochs=args.epochs, time_budget_s=args.time_budget, measure=not args.no_measure)
    doc = run_ablation(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.out:
        write_outputs(doc, Path(args.out))
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.format == "json" else render(doc, args.format))
    return 0


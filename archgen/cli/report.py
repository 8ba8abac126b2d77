"""``archgen report RUN_DIR``: (re)write a search run's report.html and plots, print its path."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write the HTML report (plots, tables) of a search run directory"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of `archgen search`")
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="other run directories whose best-so-far curves go on the progress plot",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archgen.report import write_report

    extra = [Path(p) for p in args.compare] if args.compare else None
    print(write_report(Path(args.run_dir), extra_runs=extra))
    return 0

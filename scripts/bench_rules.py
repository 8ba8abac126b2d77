"""Every rule and hyperparameter through ``archgen ablate`` on one dataset: the evidence of docs/rules.md.

For each factor (default: all of them; ``init`` is R7's arms again and is left out) runs
``archgen.ablate(factor, data, seeds, networks, epochs, time_budget_s)`` in this process, writes
``<out-root>/<factor>/`` (``ablate.json``, ``runs.csv``, ``ablate.png``) and prints each factor's
markdown table. A factor whose ``ablate.json`` exists is not run again. Run it pinned to one
core (it trains and times on one thread) and say what ran on the other core.

    taskset -c 0 python scripts/bench_rules.py --data digits --seeds 3 --networks 2 --out-root /tmp/rules_digits
    taskset -c 1 python scripts/bench_rules.py --data idx:../shared/data/mnist10k --seeds 3 --networks 1 \\
        --epochs 6 --time-budget 25 --out-root /tmp/rules_mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from archgen.ablate_factors import FACTORS
from archgen.ablate_report import render, write_outputs
from archgen.api import ablate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--factors", default=",".join(f for f in FACTORS if f != "init"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--networks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--out-root", required=True)
    args = ap.parse_args(argv)
    root = Path(args.out_root)
    for name in args.factors.split(","):
        out = root / name
        if (out / "ablate.json").exists():
            doc = json.loads((out / "ablate.json").read_text())
        else:
            t0 = time.perf_counter()
            doc = ablate(name, data=args.data, seeds=args.seeds, networks=args.networks, epochs=args.epochs,
                         time_budget_s=args.time_budget)
            write_outputs(doc, out)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        sys.stdout.write(render(doc, "markdown") + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

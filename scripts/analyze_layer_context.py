"""The layer context (``costmodel.layer_context``) on ``bench_costmodel.py --dump`` files: each
dump refitted (as ``--replay`` does) once with the calibration's own choice and once with each
of its choices forced (no context, the network's time alone, the network's time and the
neighbour), the held-out figures beside the out-of-fold error the choice is made by; then the
chosen context's exponents and its largest neighbour factors::

    python scripts/analyze_layer_context.py /tmp/cm/A1.b32t1.json /tmp/cm/A2.b1t1.json

``--no-padding`` refits without the trees' channel-padding features (the first
``modeldef.V3_TREE_FEATURES`` features only), as before 2026-12-08.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_costmodel import replay  # noqa: E402

import costmodel.estimator as estimator  # noqa: E402
import costmodel.fit as fit  # noqa: E402
import costmodel.trees as trees  # noqa: E402
from costmodel.layer_context import context_variants  # noqa: E402
from costmodel.modeldef import V3_TREE_FEATURES, tree_features  # noqa: E402

MODEL = "(d) calibrated (table + trees + network correction)"
FLOOR = "noise floor: second instance, another chunk"


def forced(name: str | None) -> Callable:
    """``context_variants`` that offers only ``name`` (None: all, the calibration's choice)."""
    def variants(full: dict | None) -> list:
        offered = context_variants(full)
        return offered if name is None else [v for v in offered if v[0] == name]
    return variants


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dumps", nargs="+")
    p.add_argument("--no-padding", action="store_true")
    args = p.parse_args(argv)
    logging.disable(logging.INFO)
    if args.no_padding:
        trees.tree_features = estimator.tree_features = lambda g: tree_features(g)[:V3_TREE_FEATURES]
    for path in args.dumps:
        print(f"{Path(path).name}")
        chosen = None
        for name in (None, "none", "network", "network and neighbour", "neighbour"):
            fit.context_variants = forced(name)
            try:
                r = replay(path)
            except (KeyError, ValueError):  # a variant the calibration did not have
                continue
            m, q = r["metrics"][MODEL], r["profile"].fit_quality
            label = "chosen" if name is None else name
            print(f"  {label:>22}: within 10% {m['within_10pct']:5.1f}%, within 5% {m['within_5pct']:5.1f}%, "
                  f"MAPE {m['mape_pct']:.2f}%, tau {m['kendall_tau']:.3f}; out of fold MAPE "
                  f"{100 * q['network_oof']['mape']:.2f}%")
            if name is None:
                chosen = r
                floor = r["metrics"].get(FLOOR, {}).get("within_10pct", math.nan)
                cv = q.get("layer_context_cv_mape", {})
                print(f"  {'':>22}  noise floor {floor:.1f}% within 10%; out-of-fold MAPE by choice: "
                      + ", ".join(f"{k} {100 * v:.2f}%" for k, v in cv.items()))
        ctx = chosen["network_correction"].get("context") if chosen else None
        if ctx:
            print("  exponents: " + ", ".join(f"{op} {b:+.3f}" for op, b in sorted(ctx["beta"].items())))
            factors = sorted(((f, op, before) for op, by in ctx["after"].items() for before, f in by.items()),
                             key=lambda x: -abs(x[0]))[:8]
            print("  neighbours: " + ", ".join(f"{op} after {before} x{math.exp(f):.2f}" for f, op, before in factors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The README's main job against a hand-written CNN, split by split.

For each seed ``s``: ``archgen search --data digits --seed s`` (the README command with another
seed; its split is drawn with seed ``s``) and the hand-written digits CNN of
``scripts/bench_train.py`` trained with ``archgen train --split-seed s --seed s`` on the same
split (Adam 1e-3, batch 64, <= 20 epochs, early stopping on validation). Both open that split's
test data once; the table puts the two test accuracies side by side.

    python scripts/bench_digits.py --seeds 0,1,2 --cpu 1 --out-root /tmp/bench_digits

A seed whose search run directory already holds ``test_metrics.json`` is not searched again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DIGITS_CNN  # noqa: E402


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cpu", default="0", help="taskset CPU list")
    ap.add_argument("--out-root", default="/tmp/bench_digits")
    ap.add_argument("--out-md", default=None)
    args = ap.parse_args(argv)
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "hand_digits_cnn.json"
    spec.write_text(json.dumps(DIGITS_CNN, indent=1))
    pin = ["taskset", "-c", args.cpu]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s):
        run_dir = root / f"search_s{seed}"
        if not (run_dir / "test_metrics.json").exists():
            run([*pin, sys.executable, "-m", "archgen", "search", "--data", "digits", "--seed", str(seed), "--out", str(run_dir), "-q"])
        found = json.loads((run_dir / "test_metrics.json").read_text())
        hand = json.loads(run([*pin, sys.executable, "-m", "archgen", "train", str(spec), "--data", "digits", "--split-seed", str(seed),
                               "--seed", str(seed), "--threads", "1", "--out", str(root / f"hand_s{seed}"),
                               "--force", "--quiet", "--format", "json"]))
        rows.append({"seed": seed, "search_spec": found["spec_name"], "search_val": found["val_acc"],
                     "search_test": found["test_acc"], "refit": found.get("refit"), "hand_val": hand["best_val_acc"],
                     "hand_test": hand["test_acc"], "n_test": found["n"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| split seed | selected by the search | its val_acc | **its test_acc** | hand-written CNN val_acc | **hand-written test_acc** | n test |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | `{r['search_spec']}` | {r['search_val']:.4f} | **{r['search_test']:.4f}** | "
                     f"{r['hand_val']:.4f} | **{r['hand_test']:.4f}** | {r['n_test']} |")
    lines.append(f"| mean | | {statistics.mean(r['search_val'] for r in rows):.4f} | "
                 f"**{statistics.mean(r['search_test'] for r in rows):.4f}** | "
                 f"{statistics.mean(r['hand_val'] for r in rows):.4f} | "
                 f"**{statistics.mean(r['hand_test'] for r in rows):.4f}** | |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

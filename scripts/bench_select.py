"""Which selection rule survives a small validation split? Measured over many split seeds.

For each split seed ``s``, the README command with that seed (``archgen search --data digits
--seed s``: default workers, default time budget) is run once. Its trials are then looked at
afterwards: every trained trial's own weights (``checkpoints/trial_N.pt``, the model the search
would export had it selected that trial) are evaluated on validation and on that split's test
data. Each selection rule picks a trial from what the search knew (validation scores, estimated
latency, k-fold scores on train + validation), and the table reports the test accuracy of each
rule's pick, side by side on the same trials. Test accuracies here measure the rules across
splits; nothing is selected on them. The hand-written CNN of ``scripts/bench_train.py`` is
trained on each split too (``archgen train --split-seed s``).

Rules:

* ``val``: highest validation accuracy, ties to the lower validation loss (archgen's rule before).
* ``loss``: the lowest validation loss.
* ``cheap-k``: among trials within k validation images of the best, the lowest estimated latency.
* ``cv``: the best ``--top`` trials by ``val`` re-scored by ``--folds``-fold cross-validation on
  train + validation (``archgen.rescore``), the highest mean fold accuracy.
* ``cv-cheap``: ``cv``, ties within one fold-averaged image to the lower estimated latency.
* ``se1``: the one-standard-error rule: the lowest estimated latency among trials within one
  binomial standard error (sqrt(p (1 - p) / n_val)) of the best validation accuracy.
* ``se1-loss``: among the same near-best trials, the lowest validation loss.
* ``cv-se1``: the one-standard-error rule on the k-fold accuracies of the re-scored trials (n = train + validation).

    python scripts/bench_select.py --seeds 0-9 --out-root /tmp/bench_select --json /tmp/bench_select.json

A seed whose run directory already holds ``test_metrics.json`` is not searched again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DIGITS_CNN  # noqa: E402

from archgen.build import build_model  # noqa: E402
from archgen.evaluation import evaluate_split  # noqa: E402
from archgen.losses import LOSS_FNS  # noqa: E402
from archgen.rescore import rescore_best  # noqa: E402
from archgen.selection import selectable  # noqa: E402
from archgen.settings import settings_from  # noqa: E402
from archgen.spec import ArchSpec  # noqa: E402
from archgen.storage import open_storage  # noqa: E402
from archgen.trial_record import EST_MS, SPEC, VAL_ACC, VAL_LOSS  # noqa: E402
from archgen.worker import load_data  # noqa: E402


def seeds_of(text: str) -> list[int]:
    if "-" in text and "," not in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s]


ARCHGEN = [sys.executable, "-m", "archgen"]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def pick_val(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["val_acc"], -r["val_loss"], -r["est_ms"]))


def pick_cheap(rows: list[dict], images: int, n_val: int) -> dict:
    best = max(r["val_acc"] for r in rows)
    near = [r for r in rows if r["val_acc"] >= best - (images + 0.5) / n_val]
    return min(near, key=lambda r: (r["est_ms"], -r["val_acc"], r["val_loss"]))


def pick_se(rows: list[dict], key: str, n: int, by: str = "est_ms") -> dict:
    """The one-standard-error rule: among trials whose ``key`` accuracy is within one binomial
    standard error sqrt(p (1 - p) / n) of the best, the lowest ``by`` (estimated latency, or
    validation loss)."""
    scored = [r for r in rows if r.get(key) is not None]
    best = max(r[key] for r in scored)
    se = (best * (1 - best) / n) ** 0.5
    near = [r for r in scored if r[key] >= best - se - 1e-12]
    return min(near, key=lambda r: (r[by], -r[key]))


def pick_cv(rows: list[dict], cheap: bool, n_all: int) -> dict:
    scored = [r for r in rows if r.get("cv_acc") is not None]
    best = max(r["cv_acc"] for r in scored)
    if not cheap:
        return next(r for r in scored if r["cv_acc"] == best)  # first of equals: the val ranking's
    near = [r for r in scored if r["cv_acc"] >= best - 1.5 / n_all]
    return min(near, key=lambda r: (r["est_ms"], -r["cv_acc"]))


def study_of(run_dir: Path) -> optuna.Study:
    storage = open_storage(None, run_dir)
    name = optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage)


def one_seed(seed: int, root: Path, args: argparse.Namespace) -> dict:
    run_dir = root / f"search_s{seed}"
    if not (run_dir / "test_metrics.json").exists():
        t0 = time.perf_counter()
        run([*ARCHGEN, "search", "--data", args.data, "--seed", str(seed), "--out", str(run_dir), "-q",
             *args.search_args.split()])
        (run_dir / "bench_wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    found = json.loads((run_dir / "test_metrics.json").read_text())
    settings = settings_from({"rescore_folds": args.folds, "rescore_top": args.top}, str(run_dir / "config.yaml"))
    data = load_data(settings)
    study = study_of(run_dir)
    done = selectable(study, settings)
    test = data.test.open(f"bench_select: every trial of split seed {seed}, to score the selection rules")
    loss_fn = LOSS_FNS["ce"]
    rows = []
    for t in done:
        spec = ArchSpec.from_dict(t.user_attrs[SPEC])
        model = build_model(spec, seed=0)
        model.load_state_dict(torch.load(run_dir / "checkpoints" / f"trial_{t.number}.pt", weights_only=True))
        rows.append({"trial": t.number, "val_acc": t.user_attrs[VAL_ACC], "val_loss": t.user_attrs.get(VAL_LOSS, 0.0),
                     "est_ms": t.user_attrs.get(EST_MS, 0.0), "test_acc": evaluate_split(model, test, loss_fn, torch.device("cpu"))[1]})
    t0 = time.perf_counter()
    rescored = [] if args.no_cv else rescore_best(study, settings, data, done)[1]
    cv_s = time.perf_counter() - t0
    for r in rescored:
        next(x for x in rows if x["trial"] == r["trial"])["cv_acc"] = r["cv_acc"]
    n_val, n_all = len(data.val.y), len(data.val.y) + len(data.train.y)
    picks = {"val": pick_val(rows), "loss": min(rows, key=lambda r: r["val_loss"]), "cheap-0": pick_cheap(rows, 0, n_val), "cheap-1": pick_cheap(rows, 1, n_val),
             "cheap-2": pick_cheap(rows, 2, n_val), "se1": pick_se(rows, "val_acc", n_val),
             "se1-loss": pick_se(rows, "val_acc", n_val, "val_loss")}
    if not args.no_cv:
        picks.update({"cv": pick_cv(rows, False, n_all), "cv-cheap": pick_cv(rows, True, n_all),
                      "cv-se1": pick_se(rows, "cv_acc", n_all)})
    searched = "se1" if settings.selection == "se1" else "val"
    assert picks[searched]["trial"] == found["trial_number"], f"the search selected another trial than {searched}"
    hand = {"test_acc": float("nan")}
    if not args.no_hand:
        spec_path = root / "hand_digits_cnn.json"
        spec_path.write_text(json.dumps(DIGITS_CNN, indent=1))
        hand = json.loads(run([*ARCHGEN, "train", str(spec_path), "--data", args.data, "--split-seed", str(seed),
                               "--seed", str(seed), "--threads", "1", "--out", str(root / f"hand_s{seed}"),
                               "--force", "--quiet", "--format", "json"]))
    return {"seed": seed, "trained": len(rows), "n_val": n_val, "n_test": len(test.y),
            "cv_s": round(cv_s, 1), "search_test": found["test_acc"], "hand_test": hand["test_acc"],
            "oracle_test": max(r["test_acc"] for r in rows), "rows": rows,
            "picks": {k: {"trial": v["trial"], "val_acc": v["val_acc"], "est_ms": v["est_ms"], "test_acc": v["test_acc"]}
                      for k, v in picks.items()}}


def table(results: list[dict]) -> str:
    rules = list(results[0]["picks"])
    lines = ["| split seed | trained | " + " | ".join(rules) + " | hand-written CNN | best trial (oracle) | k-fold s |",
             "|---:|---:|" + "---:|" * (len(rules) + 3)]
    for r in results:
        cells = [f"{r['picks'][k]['test_acc']:.4f}" for k in rules]
        lines.append(f"| {r['seed']} | {r['trained']} | " + " | ".join(cells) +
                     f" | {r['hand_test']:.4f} | {r['oracle_test']:.4f} | {r['cv_s']:.0f} |")
    means = [statistics.fmean(r["picks"][k]["test_acc"] for r in results) for k in rules]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.4f}**" for m in means) +
                 f" | **{statistics.fmean(r['hand_test'] for r in results):.4f}** | "
                 f"{statistics.fmean(r['oracle_test'] for r in results):.4f} | |")
    ms = [statistics.fmean(r["picks"][k]["est_ms"] for r in results) for k in rules]
    lines.append("| est. ms of the pick (mean) | | " + " | ".join(f"{m:.3f}" for m in ms) + " | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out-root", default="/tmp/bench_select")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("--no-cv", action="store_true", help="skip the k-fold re-scoring (cv rules)")
    ap.add_argument("--no-hand", action="store_true", help="skip the hand-written digits CNN (other data)")
    ap.add_argument("--search-args", default="", help="more flags for archgen search, e.g. '--time-budget 60'")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds_of(args.seeds):
        results.append(one_seed(seed, root, args))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "rows"}), file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

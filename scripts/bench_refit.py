"""Does refitting the selected configuration on train + validation help on held-out data?

For each split seed the dataset is split afresh (70/15/15, stratified) and each network of the
search space (its default configuration and ``--configs - 1`` seeded random samples) is trained
twice from the same initial weights:

* **selected**: what the search keeps: early stopping on validation loss (patience 6, at most
  20 epochs), the best epoch's weights restored;
* **refit**: the same configuration trained on train + validation for exactly that best epoch
  count, last weights kept (``archgen.training.train_fixed``).

Both are then evaluated on that split's test data (opened once per split for this comparison;
this is a benchmark of the method across many splits, nothing is selected on it). Reports the
paired difference in test accuracy: mean, median, wins/ties/losses.

    taskset -c 0 python scripts/bench_refit.py digits --splits 10 --configs 3
    taskset -c 0 python scripts/bench_refit.py idx:../shared/data/mnist10k --splits 3 --configs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import optuna

from archgen.build import build_model
from archgen.data import load_dataset
from archgen.errors import SpecError
from archgen.evaluation import evaluate_split as _evaluate
from archgen.losses import LOSS_FNS
from archgen.space import default_space, spec_from_params, suggest, train_kwargs
from archgen.training import TrainConfig, seed_everything, train, train_fixed


def configs(space: dict, n: int) -> list[dict]:
    """The space's default configuration, then seeded random samples."""
    out = [{name: p.default_value() for name, p in space.items()}]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while len(out) < n:
        out.append(suggest(study.ask(), space))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="digits")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--configs", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for split in range(args.splits):
        data = load_dataset(args.source, seed=split)
        test = data.test.open(f"bench_refit: selected vs refit, split seed {split}")
        merged = data.with_val_in_train()
        for i, params in enumerate(configs(default_space(data.input_shape), args.configs)):
            try:
                spec = spec_from_params(params, data.input_shape, data.num_classes)
            except SpecError as exc:  # a sampled head that fits no rule: the search rejects it too
                print(f"split {split} config {i}: {exc}, skipped", file=sys.stderr)
                continue
            config = TrainConfig(epochs=20, patience=6, seed=split, threads=1, **train_kwargs(params))
            loss_fn = LOSS_FNS[config.loss]
            seed_everything(split)
            model = build_model(spec, seed=split)
            t0 = time.perf_counter()
            res = train(model, data, config)
            if res.status != "ok":
                print(f"split {split} config {i}: {res.status}, skipped", file=sys.stderr)
                continue
            acc_sel = _evaluate(model, test, loss_fn, "cpu")[1]
            seed_everything(split)
            refit = build_model(spec, seed=split)
            res2 = train_fixed(refit, merged, config, res.best_epoch)
            acc_refit = _evaluate(refit, test, loss_fn, "cpu")[1] if res2.status == "ok" else float("nan")
            rows.append({"split": split, "config": i, "spec": spec.short_name(), "best_epoch": res.best_epoch,
                         "val_acc": res.best_val_acc, "test_selected": acc_sel, "test_refit": acc_refit,
                         "n_test": len(test), "s": time.perf_counter() - t0})
            print(f"split {split} config {i} {spec.short_name()}: best epoch {res.best_epoch}, "
                  f"test {acc_sel:.4f} -> refit {acc_refit:.4f} ({rows[-1]['s']:.0f} s)", flush=True)
    pairs = [r for r in rows if r["test_refit"] == r["test_refit"]]  # a diverged refit has no pair
    if not pairs:
        print("no pair to compare", file=sys.stderr)
        return 1
    diffs = [r["test_refit"] - r["test_selected"] for r in pairs]
    summary = {
        "source": args.source, "pairs": len(diffs), "diverged_refits": len(rows) - len(pairs),
        "mean_test_selected": statistics.mean(r["test_selected"] for r in pairs),
        "mean_test_refit": statistics.mean(r["test_refit"] for r in pairs),
        "mean_diff": statistics.mean(diffs), "median_diff": statistics.median(diffs),
        "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

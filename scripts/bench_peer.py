"""archgen's default search against what a user would do without it, at equal wall clock and cores.

Arms (each run alone, one after another, on the same CPUs):

* ``archgen``: ``archgen search --data D --seed s --time-budget B`` (the defaults: bohb, workers auto).
* ``archgen-w1``: the same with ``--workers 1`` (one trial at a time, one thread).
* ``peer``: Optuna's TPE sampler with its median pruner over a hand-written CNN family (1-3 conv
  blocks of 3x3 convolutions + ReLU + 2x2 max pooling with widths 16-64 doubling per block,
  optional batch norm, a dense layer of 64-256 units, dropout; Adam with lr 1e-4..1e-2, batch 32-128,
  up to 15 epochs with the best validation epoch kept) trained by a plain PyTorch loop written
  here, ``study.optimize(timeout=B)`` in one process with PyTorch's default threads (every core);
  a trial running at the budget's end stops after its current epoch (since 2026-12-01; before,
  the last trial ran on to its epoch cap and the peer took 366-422 s of a 300 s budget).
  Same train/validation/test split as archgen's seed ``s``; the best trial on validation is
  evaluated on test once.

Reported per run: trials, epochs trained (and per minute of budget), validation and test accuracy
of the selection, wall clock.

    python scripts/bench_peer.py --data digits --seeds 0,1,2 --arms archgen,peer --budget-s 300 \\
        --out-root /tmp/bench_peer --out-md /tmp/bench_peer.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEER_MAX_EPOCHS = 15


def run_archgen(data: str, seed: int, budget: float, out: Path, cpus: str, workers: str | None) -> dict:
    import pandas as pd

    if not (out / "test_metrics.json").exists():
        cmd = ["taskset", "-c", cpus, sys.executable, "-m", "archgen", "search", "--data", data, "--seed", str(seed),
               "--time-budget", str(budget), "--out", str(out), "-q"]
        if workers:
            cmd += ["--workers", workers]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        (out / "bench_wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    metrics = json.loads((out / "test_metrics.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    trained = trials[trials["epochs"] > 0]
    return {"trials": int(len(trained)), "epochs": int(trained["epochs"].sum()),
            "val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"], "n_test": metrics["n"],
            "wall_s": float((out / "bench_wall_s.txt").read_text()), "selected": metrics["spec_name"]}


# -- the peer: a hand-written CNN family, a plain loop, Optuna's TPE ----------------------------


def _peer_model(trial, in_ch: int, size: int, classes: int):
    from torch import nn

    blocks = trial.suggest_int("blocks", 1, 3)
    width = trial.suggest_categorical("width", [16, 32, 64])
    bn = trial.suggest_categorical("batchnorm", [False, True])
    layers: list[nn.Module] = []
    c = in_ch
    for b in range(blocks):
        out = width * 2**b
        layers += [nn.Conv2d(c, out, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU()]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c = out
    units = trial.suggest_categorical("units", [64, 128, 256])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    layers += [nn.Flatten(), nn.Linear(c * size * size, units), nn.ReLU(), nn.Dropout(dropout),
               nn.Linear(units, classes)]
    return nn.Sequential(*layers)


def run_peer(data: str, seed: int, budget: float, out: Path) -> dict:
    import optuna
    import torch
    from torch import nn

    from archgen.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    ds = load_dataset(data, seed=seed)  # archgen's split for this seed: the same images as its search
    xtr, ytr, xva, yva = ds.train.x, ds.train.y, ds.val.x, ds.val.y
    in_ch, size = ds.input_shape[0], ds.input_shape[1]
    best_state: dict[int, dict] = {}
    epochs_total = [0]

    def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 1024]).argmax(1) for i in range(0, len(x), 1024)])
        return float((pred == y).float().mean())

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(seed * 1000 + trial.number)
        model = _peer_model(trial, in_ch, size, ds.num_classes)
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        batch = trial.suggest_categorical("batch_size", [32, 64, 128])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        best = 0.0
        for epoch in range(PEER_MAX_EPOCHS):
            if epoch and time.time() > deadline:  # equal wall clock: the last trial stops at the budget
                break
            model.train()
            order = torch.randperm(len(ytr))
            for i in range(0, len(ytr), batch):
                idx = order[i:i + batch]
                opt.zero_grad()
                loss_fn(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
            epochs_total[0] += 1
            acc = accuracy(model, xva, yva)
            if acc > best:
                best = acc
                best_state[trial.number] = {k: v.clone() for k, v in model.state_dict().items()}
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    t0 = time.time()
    deadline = t0 + budget
    study.optimize(objective, timeout=budget)
    best = study.best_trial
    model = _peer_model(optuna.trial.FixedTrial(best.params), in_ch, size, ds.num_classes)
    model.load_state_dict(best_state[best.number])
    test = ds.test.open("peer baseline: final evaluation of its best trial")
    result = {"trials": len(study.trials), "epochs": epochs_total[0], "val_acc": best.value,
              "test_acc": accuracy(model, test.x, test.y), "n_test": len(test.y), "wall_s": time.time() - t0,
              "selected": json.dumps(best.params, sort_keys=True)}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def peer_main(args: argparse.Namespace) -> None:
    """Child mode: one peer run, pinned by the parent."""
    print(json.dumps(run_peer(args.data, args.seed, args.budget_s, Path(args.out))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="archgen,archgen-w1,peer")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--cpu", default="0,1", help="taskset CPU list for every run (equal cores for all arms)")
    ap.add_argument("--out-root", default="/tmp/bench_peer")
    ap.add_argument("--out-md", default=None)
    ap.add_argument("--peer-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_child:
        peer_main(args)
        return 0
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    tag = args.data.replace(":", "_").replace("/", "_")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s):
        for arm in args.arms.split(","):
            out = root / f"{tag}_{arm}_s{seed}"
            if arm == "peer":
                cmd = ["taskset", "-c", args.cpu, sys.executable, __file__, "--peer-child", "--data", args.data,
                       "--seed", str(seed), "--budget-s", str(args.budget_s), "--out", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"peer run failed: {proc.stderr.strip()[-2000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                r = run_archgen(args.data, seed, args.budget_s, out, args.cpu, "1" if arm == "archgen-w1" else None)
            r.update(arm=arm, seed=seed, epochs_per_min=r["epochs"] / (args.budget_s / 60))
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    lines = ["| arm | seed | trials trained | epochs | epochs/min | val_acc | **test_acc** (n) | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['trials']} | {r['epochs']} | {r['epochs_per_min']:.1f} | "
                     f"{r['val_acc']:.4f} | **{r['test_acc']:.4f}** ({r['n_test']}) | {r['wall_s']:.0f} |")
    lines += ["", "| arm | median test_acc | mean test_acc | median epochs/min |", "|---|---:|---:|---:|"]
    for arm in args.arms.split(","):
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            lines.append(f"| {arm} | {statistics.median(r['test_acc'] for r in rs):.4f} | "
                         f"{statistics.fmean(r['test_acc'] for r in rs):.4f} | "
                         f"{statistics.median(r['epochs_per_min'] for r in rs):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    return 0 if all(math.isfinite(r["test_acc"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

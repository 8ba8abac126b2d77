"""Trained epochs per minute with N workers against one, on the same trials.

A default search with two workers and one with ``--workers 1`` do not train the same networks:
the sampler follows what has finished, and two workers can afford larger candidates in the same
budget. Their epoch counts therefore mix machine use with network choice. This benchmark holds
the work fixed: the same list of configurations (the trained trials of an earlier search's
``trials.csv``, or a seeded random draw from the default space), each trained for exactly
``--epochs`` epochs (no pruning, no early stopping, no time budget), run as ``archgen search
--strategy manual`` once per worker count, one run at a time. Reported per arm:

* epochs per minute over the pool's span (first trial start to last trial end, from
  ``trials.csv``): the search's own machinery (trial hand-out, storage, per-trial set-up) is
  inside, calibration and finalize are not;
* the median per-epoch time of a configuration in that arm (``duration_s / epochs``), and its
  ratio to the one-worker arm: what sharing the machine's memory bandwidth and caches costs each
  worker;
* how busy the workers were (sum of trial durations / (workers x span)).

    python scripts/bench_workers.py --data idx:DIR --from-run runs/search --epochs 2 \\
        --workers 1,2 --out-root /tmp/bench_workers --json /tmp/bench_workers.json
    python scripts/bench_workers.py --data digits --sample 60 --epochs 10 --workers 1,2 \\
        --out-root /tmp/bench_workers_digits

Run it alone on the machine (it uses every core the workers ask for).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml


def data_space(data: str) -> dict:
    """The default search space of ``data`` (what a default search draws from)."""
    from archgen.data import load_dataset
    from archgen.space import space_from_config

    return space_from_config(load_dataset(data).input_shape, None)


def _typed(param, value):
    """A value read back from ``trials.csv`` as the space holds it (CSV columns with gaps come back
    as floats: 16.0 for the choice 16)."""
    if param.kind == "int":
        return int(value)
    if param.kind == "float":
        return float(value)
    same_type = [c for c in param.choices if type(c) is type(value) and c == value]
    return (same_type or [c for c in param.choices if c == value] or [value])[0]


def configs_from_run(run_dir: Path, space: dict) -> list[dict]:
    """The parameters of every trial of ``run_dir/trials.csv`` that trained at least one epoch."""
    trials = pd.read_csv(run_dir / "trials.csv")
    trained = trials[pd.to_numeric(trials["epochs"], errors="coerce").fillna(0) > 0]
    out = []
    for _, row in trained.iterrows():
        cfg = {}
        for name, param in space.items():
            v = row.get(f"params_{name}")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            cfg[name] = _typed(param, v.item() if hasattr(v, "item") else v)
        out.append(cfg)
    return out


def configs_sampled(space: dict, n: int, seed: int) -> list[dict]:
    """``n`` configurations drawn by Optuna's random sampler from ``space``."""
    import optuna

    from archgen.space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [suggest(study.ask(), space) for _ in range(n)]


def run_arm(data: str, configs: list[dict], epochs: int, workers: int, seed: int, out: Path) -> dict:
    """One ``archgen search --strategy manual`` over ``configs`` with ``workers`` workers."""
    cfg = {"strategy": "manual", "manual": configs, "trials": len(configs),
           "max_epochs": epochs, "min_epochs": epochs, "patience": epochs, "seed": seed, "workers": workers,
           "selection": "best", "data": data}
    text = yaml.safe_dump(cfg, sort_keys=False)
    done = (out / "trials.csv").exists() and (out / "bench_wall_s.txt").exists()
    if not done or (out / "bench_config.yaml").read_text() != text:  # resume only the same run
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "bench_config.yaml").write_text(text)
        search_cfg = {k: v for k, v in cfg.items() if k != "data"}
        (out / "search_config.yaml").write_text(yaml.safe_dump(search_cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "archgen", "search", "--data", data, "--config", str(out / "search_config.yaml"),
               "--out", str(out / "run"), "-q"]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        shutil.copy(out / "run" / "trials.csv", out / "trials.csv")
        (out / "bench_wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    return summarise(pd.read_csv(out / "trials.csv"), workers, float((out / "bench_wall_s.txt").read_text()))


def summarise(trials: pd.DataFrame, workers: int, wall_s: float) -> dict:
    trained = trials[pd.to_numeric(trials["epochs"], errors="coerce").fillna(0) > 0].copy()
    start = pd.to_datetime(trained["datetime_start"])
    end = pd.to_datetime(trained["datetime_complete"])
    span = (end.max() - start.min()).total_seconds()
    if not span > 0:
        raise SystemExit("the trials took no measurable time; train more epochs (--epochs)")
    per_epoch = (trained["duration_s"] / trained["epochs"]).tolist()
    epochs = int(trained["epochs"].sum())
    return {"workers": workers, "trials": int(len(trained)), "epochs": epochs, "span_s": round(span, 2),
            "epochs_per_min": round(epochs / span * 60, 2), "wall_s": wall_s,
            "busy": round(float(trained["duration_s"].sum()) / (workers * span), 3),
            "per_epoch_s": dict(zip(trained["number"].astype(int).tolist(), per_epoch))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-run", type=Path, help="replay the trained trials of this run directory")
    src.add_argument("--sample", type=int, help="draw this many configurations from the default space")
    ap.add_argument("--epochs", type=int, default=2, help="epochs every configuration trains (default 2)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare, one run each (default 1,2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-root", type=Path, default=Path("/tmp/bench_workers"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    space = data_space(args.data)
    configs = configs_from_run(args.from_run, space) if args.from_run else configs_sampled(space, args.sample, args.seed)
    if not configs:
        raise SystemExit("no configurations to run (the run directory has no trained trial)")
    arms = [int(w) for w in args.workers.split(",")]
    results = []
    for w in arms:
        r = run_arm(args.data, configs, args.epochs, w, args.seed, args.out_root / f"w{w}")
        results.append(r)
        print(f"workers {w}: {r['trials']} trials, {r['epochs']} epochs in {r['span_s']:.1f} s "
              f"= {r['epochs_per_min']:.1f} epochs/min, busy {r['busy']:.0%}, wall {r['wall_s']:.0f} s", flush=True)
    base = results[0]
    print(f"\n{len(configs)} configurations x {args.epochs} epochs, data {args.data}; machine {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores\n")
    print("| workers | trials | epochs | span s | epochs/min | ratio to first | busy | median per-epoch slowdown |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        common = sorted(set(r["per_epoch_s"]) & set(base["per_epoch_s"]))
        slow = statistics.median(r["per_epoch_s"][n] / base["per_epoch_s"][n] for n in common) if common else float("nan")
        r["ratio"] = round(r["epochs_per_min"] / base["epochs_per_min"], 3)
        r["median_slowdown"] = round(slow, 3)
        print(f"| {r['workers']} | {r['trials']} | {r['epochs']} | {r['span_s']:.1f} | {r['epochs_per_min']:.1f} | "
              f"{r['ratio']:.2f}x | {r['busy']:.0%} | {slow:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "epochs": args.epochs, "configs": configs,
                                         "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()

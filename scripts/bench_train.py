"""Benchmark the trainer: throughput against a minimal hand-written PyTorch loop, and the
accuracy runs of issue 4's acceptance 1 (through ``archgen train``).

Throughput: the same model (one initialization, copied), the same training split, batch size and
thread count; one epoch per timed run, alternating which loop goes first, median over repeats.
The hand-written loop is the textbook one (randperm, index the in-memory tensors, forward,
cross-entropy, zero_grad, backward, step). It is timed twice: with the validation pass that our
trainer runs after every epoch (the like-for-like comparison) and without it.

Run pinned to one core, e.g.::

    taskset -c 0 python scripts/bench_train.py --threads 1 --md docs/_bench_train.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from archgen.build import build_model
from archgen.data import Dataset, load_dataset
from archgen.spec import ArchSpec
from archgen.training import TrainConfig, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
MNIST = "idx:" + str(REPO.parent / "shared" / "data" / "mnist10k")

# The reference specs, shared with the tests (tests/archgen/test_cli_train.py).
LENET5 = json.loads((REPO / "examples" / "lenet5.json").read_text())
DIGITS_CNN = json.loads((REPO / "examples" / "digits_cnn.json").read_text())


# ---------------------------------------------------------------------------------------------
# throughput


def hand_epoch(model: torch.nn.Module, data: Dataset, batch_size: int, opt: torch.optim.Optimizer,
               gen: torch.Generator, validate: bool) -> None:
    """The minimal loop we compare against."""
    x, y = data.train.x, data.train.y
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    for start in range(0, len(y), batch_size):
        idx = perm[start : start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if validate:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(data.val), 1024):
                F.cross_entropy(model(data.val.x[start : start + 1024]), data.val.y[start : start + 1024])


def bench_throughput(spec: ArchSpec, data: Dataset, *, batch_size: int, threads: int,
                     repeats: int) -> dict:
    """Time one epoch of each loop per repeat, in rotated order. Each run records wall time and
    the process's CPU time: on a shared core, wall time also counts time spent waiting for other
    processes, CPU time only the work done (with 1 thread the two agree on an idle core)."""
    torch.set_num_threads(threads)
    base = build_model(spec, seed=0)
    n = len(data.train)

    def timed(fn) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w0, time.process_time() - c0

    def ours() -> tuple[float, float]:
        model = copy.deepcopy(base)
        trainer = Trainer(model, data, TrainConfig(batch_size=batch_size, threads=threads, epochs=1))
        return timed(lambda: trainer.run_epochs(1))

    def hand(validate: bool) -> tuple[float, float]:
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        return timed(lambda: hand_epoch(model, data, batch_size, opt, gen, validate))

    runners = {"archgen Trainer": ours, "hand loop + val": lambda: hand(True),
               "hand loop, no val": lambda: hand(False)}
    for run in runners.values():  # warm-up: allocator, oneDNN primitive caches
        run()
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            w, c = runners[name]()
            wall[name].append(w)
            cpu[name].append(c)
    ref = "hand loop + val"
    rows = {}
    for name in names:
        paired = [h / o for h, o in zip(wall[ref], wall[name])]  # >1: faster than the hand loop
        rows[name] = {
            "wall_median_s": statistics.median(wall[name]), "wall_min_s": min(wall[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "images_per_s_wall": n / statistics.median(wall[name]),
            "images_per_s_cpu": n / statistics.median(cpu[name]),
            "ratio_wall_medians": statistics.median(wall[ref]) / statistics.median(wall[name]),
            "ratio_cpu_medians": statistics.median(cpu[ref]) / statistics.median(cpu[name]),
            "ratio_paired_median": statistics.median(paired),
            "wall_s": wall[name], "cpu_s": cpu[name],
        }
    return {"n_train": n, "batch_size": batch_size, "threads": threads, "repeats": repeats, "rows": rows}


# ---------------------------------------------------------------------------------------------
# accuracy (through the CLI, exactly as a user runs it)


def cli_run(spec_path: Path, data: str, out: Path, seed: int, threads: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "archgen", "train", str(spec_path), "--data", data, "--seed", str(seed),
           "--threads", str(threads), "--out", str(out), "--quiet", "--format", "json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def hand_accuracy(spec: ArchSpec, data: Dataset, *, seed: int, epochs: int, batch_size: int) -> float:
    """The plain loop trained for ``epochs`` epochs (no early stopping), test accuracy at the end."""
    seed_everything(seed)
    model = build_model(spec, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        hand_epoch(model, data, batch_size, opt, gen, validate=False)
    split = data.test.open("benchmark: plain-loop reference accuracy")
    model.eval()
    with torch.no_grad():
        return float((model(split.x).argmax(1) == split.y).float().mean())


def bench_accuracy(workdir: Path, seeds: list[int], threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for label, spec_dict, data, bound in (
        ("LeNet-5 on mnist10k", LENET5, MNIST, 0.975),
        ("small CNN on digits", DIGITS_CNN, "digits", 0.97),
    ):
        spec_path = workdir / f"{label.split()[0].lower()}-{data.split(':')[0]}.json"
        spec_path.write_text(json.dumps(spec_dict, indent=1))
        spec = ArchSpec.from_dict(spec_dict)
        for seed in seeds:
            out = cli_run(spec_path, data, workdir / f"run-{spec_path.stem}-s{seed}", seed, threads, [])
            ref = hand_accuracy(spec, load_dataset(data, input_shape=spec.input_shape), seed=seed,
                                epochs=20, batch_size=64)
            rows.append({"run": label, "spec": spec.short_name(), "seed": seed,
                         "epochs_run": out["epochs_run"], "best_epoch": out["best_epoch"],
                         "val_acc": out["best_val_acc"], "test_acc": out["test_acc"],
                         "n_test": out["n_test"], "hand_test_acc": ref, "target": bound,
                         "duration_s": out["duration_s"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# report


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}; {os.cpu_count()} logical CPUs, this process pinned to {affinity}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def markdown(tp: dict | None, acc: list[dict] | None, argv: list[str]) -> str:
    lines = ["# Training benchmark (issue 4)", "",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             f"Machine: {machine()}  ",
             f"Command: `taskset -c 0 python scripts/bench_train.py {' '.join(argv)}`", ""]
    if tp:
        lines += [
            "## Throughput: archgen Trainer vs a minimal hand-written loop", "",
            f"LeNet-5 spec (`{ArchSpec.from_dict(LENET5).short_name()}`), MNIST 10k train split "
            f"({tp['n_train']} images), batch {tp['batch_size']}, {tp['threads']} thread(s), Adam; "
            f"one epoch per timed run, {tp['repeats']} repeats, order rotated. Ratios are "
            "throughput relative to \"hand loop + val\" (1.0 = as fast, > 1 faster).", "",
            "| loop | wall median s | wall min s | CPU median s | images/s (wall) | images/s (CPU) "
            "| ratio, wall medians | ratio, CPU medians | ratio, median of paired runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in tp["rows"].items():
            lines.append(
                f"| {name} | {r['wall_median_s']:.3f} | {r['wall_min_s']:.3f} | {r['cpu_median_s']:.3f} "
                f"| {r['images_per_s_wall']:.0f} | {r['images_per_s_cpu']:.0f} | "
                f"{r['ratio_wall_medians']:.3f} | {r['ratio_cpu_medians']:.3f} | "
                f"{r['ratio_paired_median']:.3f} |")
        lines += ["", "Our epoch includes the validation pass that early stopping needs; "
                  "\"hand loop + val\" does the same forward pass over the validation split, "
                  "\"hand loop, no val\" skips it. CPU time is the process's own CPU time: on a "
                  "core shared with other jobs it is the steadier measure of the work done.", ""]
    if acc:
        lines += [
            "## Accuracy (`archgen train`, defaults: Adam lr 1e-3, batch 64, <= 20 epochs, "
            "patience 5 on val_loss, best epoch restored)", "",
            "| run | spec | seed | epochs run | best epoch | val acc | test acc (n) | "
            "plain loop, 20 epochs | target |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in acc:
            lines.append(
                f"| {r['run']} | `{r['spec']}` | {r['seed']} | {r['epochs_run']} | {r['best_epoch']} | "
                f"{r['val_acc']:.4f} | {r['test_acc']:.4f} ({r['n_test']}) | {r['hand_test_acc']:.4f} | "
                f">= {r['target']:.3f} |")
        lines += ["", "Spec files (written by the script next to the runs):", "",
                  "```json", json.dumps(LENET5), json.dumps(DIGITS_CNN), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the accuracy runs")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--workdir", default=None, help="where specs and run dirs go (default: a temp dir)")
    p.add_argument("--md", default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv

    tp = None
    if not args.skip_throughput:
        spec = ArchSpec.from_dict(LENET5)
        data = load_dataset(MNIST, input_shape=spec.input_shape, num_classes=spec.num_classes)
        tp = bench_throughput(spec, data, batch_size=args.batch_size, threads=args.threads,
                              repeats=args.repeats)
        print(json.dumps(tp, indent=1), file=sys.stderr)
    acc = None
    if not args.skip_accuracy:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(args.workdir) if args.workdir else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            acc = bench_accuracy(workdir, seeds, args.threads)
    report = markdown(tp, acc, raw_argv)
    print(report)
    if args.md:
        Path(args.md).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

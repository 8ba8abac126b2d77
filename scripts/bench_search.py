"""Search strategies at equal wall-clock budget: who reaches random search's accuracy first?

    python scripts/bench_search.py --budget-s 150 --seeds 0,1,2 \
        --strategies random,bayes,bohb,hyperband,pbt --data idx:/work/shared/data/mnist10k \
        --out-root /tmp/bench_search --out-md /tmp/bench_search.md --plot docs/bench_search.png

Each (strategy, seed) is one ``archgen search`` process, pinned with ``taskset -c CPU`` and
``--threads 1`` so that every strategy gets the same single core for the same wall time.
From each run directory it reads ``trials.csv`` (best validation accuracy over time: the
completion time of every COMPLETE trial relative to the run's first trial start, running max
of ``val_acc``) and ``test_metrics.json`` (the test accuracy of the selected model; the run
opens the test split once, this script only reads the number).

The table reports, per strategy, medians over seeds of the final best val_acc, the test
accuracy and the time needed to reach *random search's final best val_acc of the same seed*,
and the ratio of that time to random's own time (per seed, then the median). A run that never
reaches the target counts as infinitely slow (shown as "not reached").

Runs are skipped when their run directory already holds ``test_metrics.json`` (so a killed
benchmark resumes); ``--analyze-only`` only reads existing run directories.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from archgen.rundata import best_so_far as best_val_acc_so_far
from archgen.rundata import completed_trials, completion_times_s, read_trials_csv
from archgen.trial_record import EPOCHS, MACS, TEST_ACC, VAL_ACC

log = logging.getLogger("bench_search")

STRATEGIES = ("random", "bayes", "bohb", "hyperband", "pbt")
COLOURS = {"random": "tab:gray", "bayes": "tab:blue", "bohb": "tab:red", "hyperband": "tab:orange",
           "pbt": "tab:green"}


@dataclass
class RunResult:
    """What one (strategy, seed) search produced; ``curve`` is [(t_s, best_val_acc)]."""

    strategy: str
    seed: int
    run_dir: Path
    rc: int | None = None
    wall_s: float | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)
    compute_curve: list[tuple[float, float]] = field(default_factory=list)
    final_val_acc: float | None = None
    test_acc: float | None = None
    n_trials: int = 0
    n_complete: int = 0
    n_pruned: int = 0
    search_span_s: float | None = None
    error: str | None = None


def best_so_far(trials: pd.DataFrame) -> tuple[list[tuple[float, float]], float | None]:
    """The steps of :func:`archgen.rundata.best_so_far` (running max of ``val_acc`` over
    completed trials, against seconds since the first trial started, any state): the points
    where the best rose. Returns the curve and the span from first start to last completion."""
    if trials.empty:
        return [], None
    times = completion_times_s(trials)
    span_s = float(times.max()) if times.notna().any() else None
    steps = best_val_acc_so_far(trials)
    curve, best = [], -math.inf
    for t_s, acc in zip(steps["time_s"], steps["best_val_acc"]):
        if acc > best:
            best = float(acc)
            curve.append((float(t_s), best))
    return curve, span_s


def compute_so_far(trials: pd.DataFrame) -> list[tuple[float, float]]:
    """Like ``best_so_far`` but against training compute instead of wall time: the sum of
    ``epochs x macs`` (G MAC per training sample, forward) of every trial *started* by the time a
    trial completes, pruned or complete. With one worker a trial starts only after the previous
    one ended, so that is the work done so far; for PBT, whose members train side by side and all
    complete at the end, it counts the whole population. Unlike wall time it does not depend on
    what else ran on the core."""
    df = trials.copy()
    df["start"] = pd.to_datetime(df["datetime_start"])
    df["end"] = pd.to_datetime(df["datetime_complete"])
    df["work_g"] = df[EPOCHS].fillna(0).astype(float) * df[MACS].fillna(0).astype(float) / 1e9
    done = completed_trials(df)
    done = done[done[VAL_ACC].notna()].sort_values("end")
    curve, best = [], -math.inf
    for end, acc in zip(done["end"], done[VAL_ACC]):
        if acc > best:
            best = float(acc)
            curve.append((float(df.loc[df["start"] < end, "work_g"].sum()), best))
    return curve


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """First time the best-so-far reaches ``target`` (inf when it never does)."""
    for t_s, acc in curve:
        if acc >= target - 1e-12:
            return t_s
    return math.inf


def read_run(res: RunResult) -> RunResult:
    trials_csv = res.run_dir / "trials.csv"
    if trials_csv.exists():
        df = read_trials_csv(trials_csv)
        res.n_trials = len(df)
        res.n_complete = int((df["state"] == "COMPLETE").sum())
        res.n_pruned = int((df["state"] == "PRUNED").sum())
        res.curve, res.search_span_s = best_so_far(df)
        res.compute_curve = compute_so_far(df)
        res.final_val_acc = res.curve[-1][1] if res.curve else None
    bench = res.run_dir / "bench_run.json"
    if bench.exists() and res.wall_s is None:
        d = json.loads(bench.read_text())
        res.wall_s, res.rc = d["wall_s"], d["rc"]
    metrics = res.run_dir / "test_metrics.json"
    if metrics.exists():
        res.test_acc = float(json.loads(metrics.read_text())[TEST_ACC])
    return res


def run_one(args: argparse.Namespace, strategy: str, seed: int) -> RunResult:
    run_dir = Path(args.out_root) / f"{strategy}_s{seed}"
    res = RunResult(strategy, seed, run_dir)
    if (run_dir / "test_metrics.json").exists():
        log.info("%s seed %d: already done, reading %s", strategy, seed, run_dir)
        return read_run(res)
    if args.analyze_only:
        return read_run(res)
    if run_dir.exists():  # a half-finished run of an earlier benchmark: start it afresh
        shutil.rmtree(run_dir)
    cmd = ["taskset", "-c", args.cpu, sys.executable, "-m", "archgen", "search", "--data", args.data,
           "--strategy", strategy, "--time-budget", str(args.budget_s), "--out", str(run_dir),
           "--seed", str(seed), "--threads", "1", "-q"]
    if args.config_path is not None:
        cmd += ["--config", str(args.config_path)]
    log.info("run: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    res.wall_s = time.perf_counter() - t0
    res.rc = proc.returncode
    (run_dir / "bench_run.json").write_text(json.dumps({"wall_s": res.wall_s, "rc": res.rc, "cmd": cmd}))
    if proc.returncode != 0:
        res.error = proc.stderr.strip()[-3000:]
        log.error("%s seed %d failed (rc %d):\n%s", strategy, seed, proc.returncode, res.error)
    read_run(res)
    log.info("%s seed %d: rc %s wall %.0f s, %d trials (%d complete), best val %s, test %s",
             strategy, seed, res.rc, res.wall_s, res.n_trials, res.n_complete, res.final_val_acc, res.test_acc)
    return res


def run_parallel(args: argparse.Namespace, jobs: list[tuple[str, int]]) -> list[RunResult]:
    """One search per CPU of ``--cpu`` at a time, each pinned to its own CPU."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    # One calibration up front: searches that start together would each calibrate the same cache
    # entry while measuring each other's load.
    from costmodel.device_profile import load_cached

    if load_cached("cpu", 1, 1) is None:
        subprocess.run(["taskset", "-c", args.cpu.split(",")[0], sys.executable, "-m", "archgen", "calibrate",
                        "--quick", "--batch-size", "1"], check=True, capture_output=True)
    cpus: queue.Queue[str] = queue.Queue()
    for cpu in args.cpu.split(","):
        cpus.put(cpu)

    def one(job: tuple[str, int]) -> RunResult:
        cpu = cpus.get()
        try:
            return run_one(argparse.Namespace(**{**vars(args), "cpu": cpu}), *job)
        finally:
            cpus.put(cpu)

    with ThreadPoolExecutor(max_workers=cpus.qsize()) as pool:
        return list(pool.map(one, jobs))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "not reached"
    return format(x, spec)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(results: list[RunResult], budget_s: float) -> tuple[str, dict]:
    """Markdown tables (per run, per strategy) and the numbers behind them."""
    by = {(r.strategy, r.seed): r for r in results}
    strategies = list(dict.fromkeys(r.strategy for r in results))
    seeds = sorted({r.seed for r in results})
    lines = ["| strategy | seed | trials (complete/pruned) | final best val_acc | test_acc | "
             "t to random's final val (s) | t / random's t | compute to it (G epoch-MAC) | compute / random's | "
             "search span (s) | process wall (s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    per_strategy: dict[str, dict] = {}
    for s in strategies:
        reach, ratios, creach, cratios = [], [], [], []
        for seed in seeds:
            r = by.get((s, seed))
            rnd = by.get(("random", seed))
            if r is None:
                continue
            t = ratio = c = cratio = None
            if rnd is not None and rnd.final_val_acc is not None:
                target = rnd.final_val_acc
                t = time_to_reach(r.curve, target)
                t_rnd = time_to_reach(rnd.curve, target)
                ratio = t / t_rnd if t_rnd > 0 else None
                reach.append(t)
                ratios.append(ratio)
                c = time_to_reach(r.compute_curve, target)
                c_rnd = time_to_reach(rnd.compute_curve, target)
                cratio = c / c_rnd if c_rnd > 0 else None
                creach.append(c)
                cratios.append(cratio)
            lines.append(
                f"| {s} | {seed} | {r.n_trials} ({r.n_complete}/{r.n_pruned}) | {_fmt(r.final_val_acc)} | "
                f"{_fmt(r.test_acc)} | {_fmt(t, '.0f')} | {_fmt(ratio, '.2f')} | {_fmt(c, '.3f')} | "
                f"{_fmt(cratio, '.2f')} | {_fmt(r.search_span_s, '.0f')} | "
                f"{_fmt(r.wall_s, '.0f')} |" + (f" **failed rc {r.rc}**" if r.error else "")
            )
        rs = [by[(s, seed)] for seed in seeds if (s, seed) in by]
        per_strategy[s] = {
            "n_seeds": len(rs),
            "median_final_val_acc": _median([r.final_val_acc for r in rs]),
            "median_test_acc": _median([r.test_acc for r in rs]),
            "median_t_reach_s": _median(reach),
            "median_ratio_vs_random": _median(ratios),
            "t_reach_s": reach,
            "ratios": ratios,
            "median_compute_ratio_vs_random": _median(cratios),
            "compute_ratios": cratios,
        }
    summary = ["| strategy | seeds | median final best val_acc | median test_acc | "
               "median t to random's final val (s) | median of per-seed t / random's t | "
               "median of per-seed compute / random's | reached (seeds) |",
               "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s, d in per_strategy.items():
        reached = sum(1 for t in d["t_reach_s"] if not math.isinf(t))
        summary.append(
            f"| {s} | {d['n_seeds']} | {_fmt(d['median_final_val_acc'])} | {_fmt(d['median_test_acc'])} | "
            f"{_fmt(d['median_t_reach_s'], '.0f')} | {_fmt(d['median_ratio_vs_random'], '.2f')} | "
            f"{_fmt(d['median_compute_ratio_vs_random'], '.2f')} | "
            f"{reached}/{len(d['t_reach_s'])} |"
        )
    text = (f"Budget per run: {budget_s:g} s of search (`--time-budget`), then the run's own finalize "
            "(selection, one test evaluation, export, report), which is not part of the curves.\n\n"
            + "\n".join(summary) + "\n\nPer run:\n\n" + "\n".join(lines) + "\n")
    return text, per_strategy


def targets_table(results: list[RunResult], targets: list[float]) -> str:
    """Per strategy and fixed validation accuracy: the median over seeds of the time to reach it
    (a seed that never does counts as infinitely slow) and how many seeds reached it. Unlike the
    time to random's final accuracy, the target does not depend on when random got lucky."""
    strategies = list(dict.fromkeys(r.strategy for r in results))
    head = "| strategy | " + " | ".join(f"t to val >= {t:g} (s), reached" for t in targets) + " |"
    lines = [head, "|---|" + "---:|" * len(targets)]
    for s in strategies:
        rs = [r for r in results if r.strategy == s]
        cells = []
        for target in targets:
            times = [time_to_reach(r.curve, target) for r in rs]
            reached = sum(1 for t in times if not math.isinf(t))
            cells.append(f"{_fmt(statistics.median(times), '.0f')}, {reached}/{len(times)}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[RunResult], budget_s: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    labelled: set[str] = set()
    # Every curve runs on to the latest end of any run, so flat stretches stay visible.
    x_end = max([budget_s] + [r.search_span_s or 0.0 for r in results] + [t for r in results for t, _ in r.curve])
    for r in results:
        if not r.curve:
            continue
        xs = [t for t, _ in r.curve] + [x_end]
        ys = [a for _, a in r.curve] + [r.curve[-1][1]]
        label = r.strategy if r.strategy not in labelled else None
        labelled.add(r.strategy)
        colour = COLOURS.get(r.strategy)
        ax.step(xs, ys, where="post", color=colour, label=label, alpha=0.8)
        ax.plot(xs[:-1], ys[:-1], "o", color=colour, ms=3, alpha=0.8)
    ax.axvline(budget_s, color="black", lw=0.8, ls=":")
    ax.set_xlim(left=0)
    ax.set_xlabel("wall time since the first trial started (s)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"archgen search on MNIST-10k, {budget_s:g} s per run, one core (one line per seed)")
    finals = [r.curve[-1][1] for r in results if r.curve]
    if finals:
        ax.set_ylim(max(0.0, min(a for r in results for _, a in r.curve[:1]) - 0.01), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_config(args: argparse.Namespace) -> Path | None:
    """The search YAML shared by every run (only the settings given on this command line)."""
    import yaml

    cfg = {k: v for k, v in (("max_macs", args.max_macs), ("max_epochs", args.max_epochs)) if v is not None}
    if args.no_warm_start:  # compare the samplers alone, not the shared practitioner default
        cfg["warm_start"] = False
    if args.seeded_pruning:
        cfg["seeded_pruning"] = True
    if args.uniform_startup:
        cfg["prior_startup"] = False
    if not cfg:
        return None
    path = Path(args.out_root) / "search_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def machine() -> str:
    from costmodel.device_profile import cpu_model_name

    return f"{cpu_model_name()}, {os.cpu_count()} threads, {platform.python_implementation()} {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--data", default="idx:/work/shared/data/mnist10k")
    ap.add_argument("--out-root", default="/tmp/bench_search")
    ap.add_argument("--out-md", default=None, help="write the markdown section here")
    ap.add_argument("--plot", default=None, metavar="PNG")
    ap.add_argument("--cpu", default="0", help="taskset CPU list for every run")
    ap.add_argument("--parallel", action="store_true",
                    help="run as many searches at once as --cpu names CPUs (a comma list, e.g. 0,1), each "
                         "pinned to one of them "
                         "(runs are ordered seed by seed, so the strategies of a seed run side by side)")
    ap.add_argument("--max-macs", type=int, default=None,
                    help="screen out candidates above this many MACs (keeps one epoch to seconds on one core)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--analyze-only", action="store_true")
    ap.add_argument("--targets", default="0.98,0.985,0.99",
                    help="fixed validation accuracies for the time-to-target table (comma list; empty: none)")
    ap.add_argument("--no-warm-start", action="store_true", help="start every strategy without the default config")
    ap.add_argument("--seeded-pruning", action="store_true",
                    help="Hyperband/BOHB with archgen's seeded rule (seeded_pruning: true)")
    ap.add_argument("--uniform-startup", action="store_true",
                    help="bayes/bohb start-up trials drawn uniformly, as random search's (prior_startup: false)")
    args = ap.parse_args(argv)
    args.config_path = write_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    strategies = [s for s in args.strategies.split(",") if s]
    if "random" not in strategies:
        log.warning("random is not among the strategies: no time-to-target column")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    jobs = [(s, seed) for seed in seeds for s in strategies]
    if args.parallel:
        results = run_parallel(args, jobs)
    else:
        results = [run_one(args, s, seed) for s, seed in jobs]
    text, per_strategy = summarize(results, args.budget_s)
    targets = [float(t) for t in args.targets.split(",") if t]
    if targets:
        text += "\nTime to fixed validation accuracies (median over seeds):\n\n" + targets_table(results, targets)
    cmd = "python " + " ".join(["scripts/bench_search.py"] + (argv if argv is not None else sys.argv[1:]))
    pinning = (f"`taskset` to one of CPUs {args.cpu}, {len(args.cpu.split(','))} runs side by side"
               if args.parallel else f"`taskset -c {args.cpu}`")
    header = (f"Command: `{cmd}`\n\nDate: {started}; machine: {machine()}; each run pinned with "
              f"{pinning} and `--threads 1`; search config: "
              f"{args.config_path.read_text().strip().replace(chr(10), ', ') if args.config_path else 'defaults'}.\n\n")
    failures = [r for r in results if r.error]
    for r in failures:
        text += f"\n{r.strategy} seed {r.seed} failed (rc {r.rc}); stderr tail:\n\n```\n{r.error[-1500:]}\n```\n"
    sys.stdout.write(header + text)
    if args.out_md:
        Path(args.out_md).write_text(header + text)
        Path(args.out_md).with_suffix(".json").write_text(json.dumps(
            {"per_strategy": per_strategy,
             "runs": [{"strategy": r.strategy, "seed": r.seed, "rc": r.rc, "wall_s": r.wall_s,
                       "final_val_acc": r.final_val_acc, "test_acc": r.test_acc, "curve": r.curve,
                       "n_trials": r.n_trials, "n_complete": r.n_complete} for r in results]},
            indent=1, default=str))
    if args.plot:
        plot(results, args.budget_s, args.plot)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

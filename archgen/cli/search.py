"""``archgen search``: architecture + hyperparameter search, selection on validation, one test
evaluation, export and report."""

from __future__ import annotations

import argparse
import sys
import time

from archgen.cli import argtypes as at


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search architectures and hyperparameters, export the best")
    p.add_argument("--data", default=None, help="digits (default) | idx:DIR | npz:FILE | folder:DIR")
    p.add_argument("--strategy", default=None,
                   help="manual | grid | random | bayes | hyperband | bohb (default) | pbt")
    p.add_argument("--trials", type=at.int_in(1, 1_000_000), default=None, metavar="N")
    p.add_argument("--time-budget", type=at.float_in(1e-3, 3.2e7), default=None, metavar="SECONDS", dest="time_budget_s")
    p.add_argument("--max-latency-ms", type=at.positive_float, default=None, metavar="X")
    p.add_argument("--latency-batch", type=at.batch_int, default=None, metavar="B",
                   help="batch size the latency budget and estimates refer to (default 1)")
    p.add_argument("--device-profile", default=None, metavar="FILE",
                   help="price candidates with this device profile, e.g. one fitted from a "
                        "calibration bundle run on the device the network will run on "
                        "(its batch size and runtime become the search's)")
    p.add_argument("--runtime", default=None, choices=("torch", "onnxruntime"),
                   help="what the exported network runs in: torch (default) or onnxruntime "
                        "(latency screen and measurement of model.onnx in ONNX Runtime)")
    p.add_argument("--objective", default=None, help="accuracy (default) | pareto")
    p.add_argument("--max-epochs", type=at.int_in(1, 10_000), default=None, metavar="E")
    p.add_argument("--storage", default=None, metavar="URL", help="e.g. postgresql://user@host:5432/db")
    p.add_argument("--study", default=None, metavar="NAME")
    p.add_argument("--workers", type=at.workers_count, default=None, metavar="N|auto",
                   help="parallel trials: auto (default) = one single-threaded worker per usable "
                        "core (several per GPU with --device cuda); 1 = one at a time, in this process")
    p.add_argument("--seed", type=at.seed_int, default=None)
    p.add_argument("--threads", type=at.threads_int, default=None, help="torch threads per worker")
    p.add_argument("--device", default=None, help="cpu (default) | cuda[:N] | cuda:all: where trials "
                   "train and where latency is calibrated and measured (cuda:all spreads the workers "
                   "over every GPU; latency on cuda:0)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML with any of these settings, "
                   "plus space:, grid:, manual: sections")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/search)")
    p.add_argument("--no-finalize", action="store_false", dest="finalize", default=None,
                   help="join a shared study without selecting/testing/exporting in this process")
    p.add_argument("--no-calibrate", action="store_false", dest="calibrate", default=None,
                   help="use the built-in latency profile when this machine has none cached")
    p.add_argument("--refit", action="store_true", default=None,
                   help="retrain the selected configuration on train + validation for its trial's "
                        "best epoch count before the test evaluation and export (off by default)")
    p.add_argument("--selection", choices=("se1", "best"), default=None,
                   help="se1 (default): the fastest trial (estimated latency) within one standard error of "
                        "the best validation accuracy; best: the best validation accuracy")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from archgen.api import search

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    cli = {
        k: getattr(args, k)
        for k in ("data", "strategy", "trials", "time_budget_s", "max_latency_ms", "objective",
                  "storage", "study", "workers", "seed", "threads", "out", "finalize", "calibrate", "refit",
                  "selection", "device", "device_profile", "runtime")
    }
    cli["latency_batch"] = args.latency_batch
    cli["max_epochs"] = args.max_epochs
    progress = None if args.quiet else _ProgressLine()
    result = search(**cli, config=args.config, progress=progress)
    if progress is not None:
        progress.close()
    summary, out = result.summary, result.run_dir
    if "test_acc" in summary:
        print(
            f"best: {summary['spec_name']}  val_acc {summary['val_acc']:.4f}  "
            f"test_acc {summary['test_acc']:.4f} (n={summary['n']}, "
            + _openings_text(summary)
            + (f"; refit on train+val, {summary['refit']['epochs']} epochs" if summary.get("refit") else "")
            + ")  "
            + _latency_text(summary)
        )
        print(f"results: {out}/  (trials.csv, best/spec.json, best/model.onnx, test_metrics.json, report.html)")
    else:
        print(f"trials recorded in the study; run directory {out}/")
    return 0


def _latency_text(summary: dict) -> str:
    est, meas, batch = summary.get("est_ms"), summary.get("meas_ms"), summary["latency_batch"]
    est_text = "-" if est is None else f"{est:.3f} ms"
    meas_text = "-" if meas is None else f"{meas:.3f} ms"
    if summary.get("meas_is_target", True):
        return f"latency est {est_text} / measured {meas_text} at batch {batch}"
    return (f"latency est {est_text} at batch {batch} on the profile's device; measured here "
            f"{meas_text} ({summary.get('meas_on')}: not the target)")


def _openings_text(summary: dict) -> str:
    if summary.get("reused"):
        return "recorded earlier; the test split was not opened again"
    n = summary.get("test_opened", 1)
    return "opened once" if n == 1 else f"test split opened {n} times in this run's life, see test_metrics.json"


class _ProgressLine:
    """One updating line on a terminal; a line per update (at most every 10 s) otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, st: dict) -> None:
        now = time.time()
        if not self.tty and now - self.last < 10:
            return
        self.last = now
        total = f"/{st['trials']}" if st.get("trials") else ""
        best = f"{st['best_val_acc']:.4f}" if st.get("best_val_acc") is not None else "-"
        est = f"{st['best_est_ms']:.3f} ms" if st.get("best_est_ms") is not None else "-"
        rem = f"  remaining {st['remaining_s']:.0f}s" if st.get("remaining_s") is not None else ""
        line = f"trials {st['done']}{total}  best val_acc {best}  est {est}  elapsed {st['elapsed_s']:.0f}s{rem}"
        sys.stderr.write(("\r" + line.ljust(100)) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")

"""``archgen train``: train one spec on one dataset and write a run directory.

Run directory (``--out DIR``; default ``runs/train-<UTC time>-<spec key>``)::

    spec.json          the spec trained
    config.yaml        resolved settings: training config, data (sizes, normalization), versions
    metrics.csv        one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, duration_s
    weights.pt         the best validation epoch's state_dict (load with ``weights_only=True``)
    test_metrics.json  test accuracy/loss of those weights; ``test_opened`` records the one opening
    status.json        written last: status, reason, best epoch; its presence marks the run complete

Everything is written into a hidden sibling ``.DIR.tmp-*`` first (each file atomically) and
renamed to ``DIR`` at the end, so a failure (bad input, crash, Ctrl-C, a full disk) never leaves a
directory at ``DIR``. Bad input is detected before anything is written. ``DIR`` must be new, empty
or an earlier ``archgen train`` run; ``--force`` replaces only such a run, never a folder of other
files (``archgen.rundir``).

Exit codes: 0 trained; 2 bad input; 1 internal error **or a diverged run**. A diverged run is a
cleanly failed run: it prints ``archgen train: diverged: <where>`` on stderr and still writes
``spec.json``, ``config.yaml``, ``metrics.csv`` and ``status.json`` (``"status": "diverged"``),
but no weights and no test metrics (the test split stays sealed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from archgen.cli import argtypes as at
from archgen.errors import UserError
from archgen.fsio import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    fsync_path,
)
from archgen.rundir import check_out_dir, mark

EXIT_DIVERGED = 1
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "duration_s")



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one spec with train/validation/test discipline")
    p.add_argument("spec", metavar="SPEC", help="spec file (JSON or YAML)")
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits | idx:DIR | npz:FILE | folder:DIR (default digits)")
    p.add_argument("--epochs", type=at.int_in(1, 10_000), default=20, metavar="E", help="maximum epochs (default 20)")
    p.add_argument("--lr", type=at.positive_float, default=1e-3, metavar="X", help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=at.batch_int, default=64, metavar="B", help="default 64")
    p.add_argument("--loss", choices=("ce", "mse"), default="ce",
                   help="ce: cross-entropy; mse: squared error of softmax vs one-hot (default ce)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="adam")
    p.add_argument("--momentum", type=at.float_in(0.0, 1.0, high_open=True), default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=at.float_in(0.0, 1.0), default=0.0, metavar="X", help="L2 lambda on weights")
    p.add_argument("--l1", type=at.float_in(0.0, 1.0), default=0.0, metavar="X", help="L1 lambda on weights")
    p.add_argument("--augment-shift", type=at.int_in(0, 16), default=0, metavar="PX",
                   help="random translation of training images by up to PX pixels (default 0: off)")
    p.add_argument("--patience", type=at.int_in(1, 10_000), default=5, metavar="P",
                   help="early stopping: epochs without validation improvement (default 5)")
    p.add_argument("--min-delta", type=at.non_negative_float, default=0.0, metavar="D",
                   help="smallest change that counts as an improvement (default 0)")
    p.add_argument("--monitor", choices=("val_loss", "val_acc"), default="val_loss",
                   help="validation metric for early stopping and best epoch (default val_loss)")
    p.add_argument("--seed", type=at.seed_int, default=0, help="seed for initialization, shuffling, dropout")
    p.add_argument("--split-seed", type=at.seed_int, default=0,
                   help="seed of the train/val/test split (kept fixed across training seeds)")
    p.add_argument("--val-frac", type=at.fraction, default=0.15, help="validation fraction (default 0.15)")
    p.add_argument("--test-frac", type=at.fraction, default=0.15,
                   help="test fraction when the data has no test split of its own (default 0.15)")
    p.add_argument("--threads", type=at.threads_int, default=None, metavar="T", help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--format", choices=("text", "json"), default="text", help="summary format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from archgen.build import build_model
    from archgen.costing import check_fits_in_memory
    from archgen.data import load_dataset
    from archgen.spec import load_spec
    from archgen.train import TrainConfig, evaluate_test, seed_everything, train

    # Everything a user can get wrong is checked before anything is written.
    config = TrainConfig(
        lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, loss=args.loss,
        weight_decay=args.weight_decay, l1=args.l1, augment_shift=args.augment_shift, batch_size=args.batch_size,
        epochs=args.epochs, patience=args.patience, min_delta=args.min_delta,
        monitor=args.monitor, seed=args.seed, threads=args.threads,
        progress=not args.quiet, device=args.device,
    )
    if args.split_seed < 0:
        raise UserError(f"--split-seed {args.split_seed} is invalid: use a non-negative integer")
    spec = load_spec(args.spec)
    check_fits_in_memory(spec, args.batch_size, args.device, training=True)
    out = Path(args.out) if args.out else Path("runs") / (
        f"train-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{spec.key()}"
    )
    _check_out_dir(out, args.force)
    data = load_dataset(
        args.data, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.split_seed,
        input_shape=tuple(spec.input_shape), num_classes=spec.num_classes,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    model = build_model(spec, seed=args.seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        mark(tmp, "train")
        atomic_write_text(tmp / "spec.json", spec.to_json() + "\n")
        resolved = {
            "spec_file": str(args.spec),
            "spec_key": spec.key(),
            "spec_name": spec.short_name(),
            "data": data.describe(),
            "split_seed": args.split_seed,
            "train": asdict(config),
            "torch_version": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_yaml(tmp / "config.yaml", resolved)
        result = train(model, data, config)
        _write_metrics(tmp / "metrics.csv", result.history)
        status = {
            "status": result.status,
            "reason": result.reason,
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc,
            "best_val_loss": _finite_or_none(result.best_val_loss),
            "epochs_run": result.epochs_run,
            "early_stopped": result.early_stopped,
            "duration_s": result.duration_s,
        }
        test_metrics = None
        if result.status != "diverged":
            atomic_torch_save(model.state_dict(), tmp / "weights.pt")
            test_metrics = evaluate_test(
                model, data, reason=f"final evaluation of the best epoch ({result.best_epoch}) "
                f"of archgen train {spec.short_name()}", loss="ce",
            )
            test_metrics["best_epoch"] = result.best_epoch
            _write_json(tmp / "test_metrics.json", test_metrics)
        status["test_opened"] = data.test.opened
        _write_json(tmp / "status.json", status)  # last: marks the directory complete
        _publish(tmp, out, args.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    summary = {"run_dir": str(out), **status}
    if test_metrics is not None:
        summary.update(test_acc=test_metrics["test_acc"], test_loss=test_metrics["test_loss"],
                       n_test=test_metrics["n"])
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        line = (f"{out}: {result.status}, {result.epochs_run} epochs, best epoch "
                f"{result.best_epoch} val_acc {result.best_val_acc:.4f}")
        if test_metrics is not None:
            line += f", test_acc {test_metrics['test_acc']:.4f} (n={test_metrics['n']})"
        print(line)
    if result.status == "diverged":
        sys.stderr.write(f"archgen train: {result.reason}\n")
        return EXIT_DIVERGED
    return 0


def _check_out_dir(out: Path, force: bool) -> None:
    """A new or empty directory, or (with ``--force``) a previous ``archgen train`` run."""
    if check_out_dir(out, "train", force=force) == "existing" and not force:
        raise UserError(
            f"--out {str(out)!r} holds an earlier archgen train run; pass --force to replace it "
            "or choose another --out"
        )


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished run into place. An existing ``out`` is checked again (it may have
    changed during training): an empty directory is replaced, a previous train run only with
    ``--force``, anything else never."""
    old = None
    if out.exists():
        _check_out_dir(out, force)
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_metrics(path: Path, history: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(METRIC_COLUMNS)
    for m in history:
        writer.writerow([getattr(m, c) for c in METRIC_COLUMNS])
    atomic_write_text(path, buf.getvalue())


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj, allow_nan=False)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

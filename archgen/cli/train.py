"""``archgen train``: train one spec on one dataset and write a run directory
(:func:`archgen.train_run.train_run` describes the directory and its guarantees).

Exit codes: 0 trained; 2 bad input; 1 internal error **or a diverged run**. A diverged run is a
cleanly failed run: it prints ``archgen train: diverged: <where>`` on stderr and still writes
``spec.json``, ``config.yaml``, ``metrics.csv`` and ``status.json`` (``"status": "diverged"``),
but no weights and no test metrics (the test split stays sealed).
"""

from __future__ import annotations

import argparse
import json
import sys

from archgen.cli import argtypes as at

EXIT_DIVERGED = 1


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
    from archgen.train_run import train_run

    result = train_run(
        args.spec, args.data, out=args.out, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, loss=args.loss, optimizer=args.optimizer,
        momentum=args.momentum, weight_decay=args.weight_decay, l1=args.l1,
        augment_shift=args.augment_shift, patience=args.patience, min_delta=args.min_delta,
        monitor=args.monitor, seed=args.seed, split_seed=args.split_seed,
        val_frac=args.val_frac, test_frac=args.test_frac, threads=args.threads,
        device=args.device, progress=not args.quiet, force=args.force,
    )
    if args.format == "json":
        print(json.dumps(result.summary(), indent=2))
    else:
        line = (f"{result.run_dir}: {result.status}, {result.epochs_run} epochs, best epoch "
                f"{result.best_epoch} val_acc {result.best_val_acc:.4f}")
        if result.test_acc is not None:
            line += f", test_acc {result.test_acc:.4f} (n={result.n_test})"
        print(line)
    if result.status == "diverged":
        sys.stderr.write(f"archgen train: {result.reason}\n")
        return EXIT_DIVERGED
    return 0

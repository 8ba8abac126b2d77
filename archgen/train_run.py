"""Train one spec on one dataset and write a run directory (what ``archgen train`` does).

Run directory (``out``; default ``runs/train-<UTC time>-<spec key>``)::

    spec.json          the spec trained
    config.yaml        resolved settings: training config, data (sizes, normalization), versions
    metrics.csv        one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, duration_s
    weights.pt         the best validation epoch's state_dict (load with ``weights_only=True``)
    test_metrics.json  test accuracy/loss of those weights; ``test_opened`` records the one opening
    status.json        written last: status, reason, best epoch; its presence marks the run complete

Everything is written into a hidden sibling ``.DIR.tmp-*`` first (each file atomically) and
renamed to ``DIR`` at the end, so a failure (bad input, crash, Ctrl-C, a full disk) never leaves a
directory at ``DIR``. Bad input is detected before anything is written. ``DIR`` must be new, empty
or an earlier ``archgen train`` run; ``force`` replaces only such a run, never a folder of other
files (:mod:`archgen.rundir`).

A diverged run is a cleanly failed run: it still writes ``spec.json``, ``config.yaml``,
``metrics.csv`` and ``status.json`` (``"status": "diverged"``), but no weights and no test metrics
(the test split stays sealed).
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from archgen.errors import UserError
from archgen.fsio import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    fsync_path,
)
from archgen.rundir import check_out_dir, mark
from archgen.spec import ArchSpec, load_spec

if TYPE_CHECKING:
    from torch import nn

    from archgen.data import Dataset
    from archgen.training import EpochMetrics, TrainConfig, TrainResult

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "duration_s")


@dataclass
class TrainRunResult:
    """What :func:`train_run` did. The fields up to ``test_opened`` are ``status.json``;
    ``best_val_loss`` is None when no epoch finished. ``test_acc``, ``test_loss`` and ``n_test``
    are None when the run diverged (the test split stays sealed). ``files`` maps each file name
    written into ``run_dir`` to its path; ``history`` holds one entry per finished epoch."""

    run_dir: Path
    status: str
    reason: str | None
    best_epoch: int
    best_val_acc: float
    best_val_loss: float | None
    epochs_run: int
    early_stopped: bool
    duration_s: float
    test_opened: int
    test_acc: float | None = None
    test_loss: float | None = None
    n_test: int | None = None
    files: dict[str, Path] = field(default_factory=dict)
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def final_val_acc(self) -> float | None:
        """Validation accuracy of the last finished epoch (None when none finished)."""
        return self.history[-1].val_acc if self.history else None

    def summary(self) -> dict[str, object]:
        """``run_dir`` and ``status.json``, plus the test figures when the test split was opened
        (what ``archgen train --format json`` prints)."""
        out: dict[str, object] = {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "reason": self.reason,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "best_val_loss": self.best_val_loss,
            "epochs_run": self.epochs_run,
            "early_stopped": self.early_stopped,
            "duration_s": self.duration_s,
            "test_opened": self.test_opened,
        }
        if self.test_acc is not None:
            out.update(test_acc=self.test_acc, test_loss=self.test_loss, n_test=self.n_test)
        return out


def train_run(
    spec: ArchSpec | str | Path,
    data: str = "digits",
    *,
    out: str | Path | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    loss: str = "ce",
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    augment_shift: int = 0,
    patience: int = 5,
    min_delta: float = 0.0,
    monitor: str = "val_loss",
    seed: int = 0,
    split_seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    force: bool = False,
) -> TrainRunResult:
    """Train ``spec`` on ``data`` with early stopping on the validation split, evaluate the best
    epoch's weights once on the sealed test split, and write everything to a run directory.

    ``spec`` is an :class:`~archgen.spec.ArchSpec` or the path of a spec file (JSON or YAML).
    ``data`` is ``"digits"``, ``"idx:DIR"``, ``"npz:FILE"`` or ``"folder:DIR"``; ``split_seed``,
    ``val_frac`` and ``test_frac`` choose the train/validation/test split (``test_frac`` only when
    the data has no test split of its own). ``out`` is the run directory (default
    ``runs/train-<UTC time>-<spec key>``); ``force=True`` replaces an earlier train run there.
    The training keywords are those of :class:`archgen.training.TrainConfig`: ``seed`` seeds
    initialization, shuffling and dropout; ``progress`` shows a bar per epoch on a terminal.

    Returns a :class:`TrainRunResult`: ``run_dir``, ``status`` (``"ok"`` or ``"diverged"``),
    ``best_val_acc``, ``test_acc`` (None when diverged), ``files`` and ``history``. A diverged
    run is not an error: check ``result.status`` and ``result.reason``.

    Raises :class:`~archgen.errors.UserError` for bad input (a setting, the spec, the data, a
    run directory that cannot be used, a model too large for ``device``) before anything is
    written; on any failure no directory is left at ``out``.

    Example::

        result = train_run("spec.json", "digits", epochs=10, out="runs/first")
        result.status, result.best_val_acc, result.test_acc, result.files["weights.pt"]
    """
    from archgen.training import TrainConfig

    config = TrainConfig(
        lr=lr, optimizer=optimizer, momentum=momentum, loss=loss,
        weight_decay=weight_decay, l1=l1, augment_shift=augment_shift, batch_size=batch_size,
        epochs=epochs, patience=patience, min_delta=min_delta,
        monitor=monitor, seed=seed, threads=threads,
        progress=progress, device=device,
    )
    if split_seed < 0:
        raise UserError(f"--split-seed {split_seed} is invalid: use a non-negative integer")
    arch = spec.validate() if isinstance(spec, ArchSpec) else load_spec(spec)
    run_dir, dataset, model = _prepare(arch, data, out, config, force, split_seed, val_frac, test_frac)
    settings = {
        "spec_file": None if isinstance(spec, ArchSpec) else str(spec),
        "spec_key": arch.key(),
        "spec_name": arch.short_name(),
        "data": dataset.describe(),
        "split_seed": split_seed,
        "train": asdict(config),
    }
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    try:
        result = _write_run(tmp, run_dir, arch, model, dataset, config, settings)
        _publish(tmp, run_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _prepare(
    arch: ArchSpec, data: str, out: str | Path | None, config: TrainConfig, force: bool,
    split_seed: int, val_frac: float, test_frac: float,
) -> tuple[Path, Dataset, nn.Module]:
    """Check everything a user can get wrong, then load the data and build the seeded model.
    Returns the run directory, the dataset and the model."""
    import torch

    from archgen.build import build_model
    from archgen.costing import check_fits_in_memory
    from archgen.data import load_dataset
    from archgen.training import seed_everything

    check_fits_in_memory(arch, config.batch_size, config.device, training=True)
    run_dir = Path(out) if out else Path("runs") / (
        f"train-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{arch.key()}"
    )
    _check_out_dir(run_dir, force)
    dataset = load_dataset(
        data, val_frac=val_frac, test_frac=test_frac, seed=split_seed,
        input_shape=tuple(arch.input_shape), num_classes=arch.num_classes,
    )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    return run_dir, dataset, build_model(arch, seed=config.seed)


def _write_run(
    tmp: Path, run_dir: Path, arch: ArchSpec, model: nn.Module, data: Dataset, config: TrainConfig,
    settings: dict[str, object],
) -> TrainRunResult:
    """Train and write the run's files into ``tmp`` (``status.json`` last); the result names
    them at their final place in ``run_dir``."""
    import torch

    from archgen.training import evaluate_test, train

    mark(tmp, "train")
    atomic_write_text(tmp / "spec.json", arch.to_json() + "\n")
    resolved = {
        **settings,
        "torch_version": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_yaml(tmp / "config.yaml", resolved)
    result = train(model, data, config)
    _write_metrics(tmp / "metrics.csv", result.history)
    status = _status(result)
    test_metrics = None
    if result.status != "diverged":
        atomic_torch_save(model.state_dict(), tmp / "weights.pt")
        test_metrics = evaluate_test(
            model, data, reason=f"final evaluation of the best epoch ({result.best_epoch}) "
            f"of archgen train {arch.short_name()}", loss="ce",
        )
        test_metrics["best_epoch"] = result.best_epoch
        _write_json(tmp / "test_metrics.json", test_metrics)
    status["test_opened"] = data.test.opened
    _write_json(tmp / "status.json", status)
    files = {p.name: run_dir / p.name for p in sorted(tmp.iterdir()) if not p.name.startswith(".")}
    run = TrainRunResult(run_dir=run_dir, **status, files=files, history=list(result.history))
    if test_metrics is not None:
        run.test_acc = test_metrics["test_acc"]
        run.test_loss = test_metrics["test_loss"]
        run.n_test = test_metrics["n"]
    return run


def _status(result: TrainResult) -> dict[str, object]:
    """``status.json`` without ``test_opened`` (added once the test split had its chance)."""
    return {
        "status": result.status,
        "reason": result.reason,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "best_val_loss": _finite_or_none(result.best_val_loss),
        "epochs_run": result.epochs_run,
        "early_stopped": result.early_stopped,
        "duration_s": result.duration_s,
    }


def _check_out_dir(out: Path, force: bool) -> None:
    """A new or empty directory, or (with ``force``) a previous ``archgen train`` run."""
    if check_out_dir(out, "train", force=force) == "existing" and not force:
        raise UserError(
            f"--out {str(out)!r} holds an earlier archgen train run; pass --force to replace it "
            "or choose another --out"
        )


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished run into place. An existing ``out`` is checked again (it may have
    changed during training): an empty directory is replaced, a previous train run only with
    ``force``, anything else never."""
    old = None
    if out.exists():
        _check_out_dir(out, force)
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_metrics(path: Path, history: list[EpochMetrics]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(METRIC_COLUMNS)
    for m in history:
        writer.writerow([getattr(m, c) for c in METRIC_COLUMNS])
    atomic_write_text(path, buf.getvalue())


def _write_json(path: Path, obj: dict[str, object]) -> None:
    atomic_write_json(path, obj, allow_nan=False)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

"""Train one model honestly: train split fits weights, validation split drives early stopping and
selection, the sealed test split is opened once, by :func:`evaluate_test`, at the very end.

Contracts:

* **Losses** (:mod:`archgen.losses`): ``ce`` cross-entropy on the logits; ``mse`` squared error
  between the softmax probabilities and one-hot targets, summed over classes.
* **Regularization.** Both penalties apply to *weights* (parameters with two or more dimensions:
  conv kernels, dense matrices), never to biases or normalization parameters. ``weight_decay`` is
  the optimizer's L2 term (coupled for ``sgd``/``adam``: the gradient gains ``λ·w``, i.e. the loss
  gains ``λ/2·‖w‖²``; decoupled for ``adamw``). ``l1`` adds ``λ·Σ|w|`` to the loss; it is applied
  as its subgradient ``λ·sign(w)`` added to the weight gradients after ``backward`` (same update,
  no extra autograd graph). Reported losses are the *data* loss, without penalties, so they stay
  comparable across λ.
* **Early stopping** watches ``monitor`` (``val_loss`` by default, or ``val_acc``); an epoch
  improves when it beats the best so far by more than ``min_delta``. Training stops once
  ``patience`` epochs in a row have not improved, and the best epoch's weights are restored into
  the model. ``TrainResult.best_val_acc`` is the validation accuracy *of that epoch*.
* **Divergence.** A non-finite training loss (checked every batch) or validation loss, or a
  training loss above ``diverge_factor`` times the loss of the very first batch (an exploding
  loss often stays finite for a long time: dead ReLUs after a huge step give losses of 1e30),
  stops training cleanly: ``status="diverged"`` with a reason such as
  ``"diverged: loss became nan at epoch 3 batch 12"``. Nothing is raised.
* **Determinism.** On CPU, the same seed, model initialization, data and config give identical
  metrics. Shuffling uses a ``torch.Generator`` seeded from ``(seed, epoch)`` and dropout draws
  from the global RNG re-seeded from ``(seed, epoch)`` inside ``torch.random.fork_rng``, so
  results do not depend on what else ran in the process, and a trainer restored from
  ``state_dict`` continues exactly as the original would have. Seed the model's initialization
  yourself (:func:`seed_everything` before building it).
* **Threads.** ``threads`` calls ``torch.set_num_threads``, which is process-wide.
* **The test split** is never touched by :class:`Trainer` or :func:`train`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from archgen.augment import random_shift
from archgen.data import Dataset, Split
from archgen.errors import UserError
from archgen.losses import LOSS_FNS, LOSSES, LossFn

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
MONITORS = ("val_loss", "val_acc")
EVAL_BATCH = 1024  # evaluation holds no activations for backward, so larger batches are cheap


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. Every field is validated on construction (``UserError`` naming
    the bad value). Override with ``dataclasses.replace``."""

    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # used by sgd only
    loss: str = "ce"
    weight_decay: float = 0.0
    l1: float = 0.0
    batch_size: int = 64
    epochs: int = 20
    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    diverge_factor: float = 1e3
    augment_shift: int = 0  # random translation of each training image by up to this many pixels
    seed: int = 0
    threads: int | None = None
    progress: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(name: str, hint: str) -> UserError:
            return UserError(f"{name}={getattr(self, name)!r} is invalid: {hint}")

        if not _finite_number(self.lr) or self.lr <= 0:
            raise bad("lr", "use a positive learning rate such as 1e-3")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        if not _finite_number(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "use a value in [0, 1), e.g. 0.9")
        if self.loss not in LOSSES:
            raise bad("loss", f"choose one of {', '.join(LOSSES)}")
        for name in ("weight_decay", "l1", "min_delta"):
            value = getattr(self, name)
            if not _finite_number(value) or value < 0:
                raise bad(name, "use a non-negative number (0 disables it)")
        if not _finite_number(self.diverge_factor) or self.diverge_factor <= 1:
            raise bad("diverge_factor", "use a number above 1, e.g. 1000")
        if not isinstance(self.augment_shift, int) or isinstance(self.augment_shift, bool) or self.augment_shift < 0:
            raise bad("augment_shift", "use a non-negative integer number of pixels (0 disables it)")
        for name in ("batch_size", "epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "use a positive integer")
        if self.monitor not in MONITORS:
            raise bad("monitor", f"choose one of {', '.join(MONITORS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise bad("seed", "use a non-negative integer")
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1
        ):
            raise bad("threads", "use a positive integer, or None for torch's default")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("device", "use 'cpu' or 'cuda[:N]'")


@dataclass
class EpochMetrics:
    """Metrics of one finished epoch (epochs count from 1). Losses are data losses."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    duration_s: float


@dataclass
class TrainResult:
    """Outcome of :func:`train`. ``status`` is ``"ok"`` (finished or early-stopped),
    ``"diverged"`` (``reason`` says where) or ``"stopped"`` (the callback asked to stop, or the
    deadline passed; ``reason`` says which).
    ``best_*`` describe the epoch whose weights the model holds afterwards; with no finished
    epoch, ``best_epoch`` is 0, ``best_val_acc`` 0.0 and ``best_val_loss`` infinity."""

    status: str
    reason: str | None
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    epochs_run: int
    history: list[EpochMetrics] = field(default_factory=list)
    duration_s: float = 0.0
    early_stopped: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); call before building a model so that its
    initialization is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """An incremental trainer: :meth:`run_epochs` trains ``n`` more epochs, so population-based
    training can run members in rounds, swap hyperparameters (:meth:`set_hparams`) and copy
    weights between members (:meth:`state_dict` / :meth:`load_state_dict`).

    It reads ``data.train`` and ``data.val`` only. Divergence sets ``diverged`` and ``reason``
    and makes further :meth:`run_epochs` calls no-ops until a state is loaded.
    """

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig) -> None:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={config.device!r} but CUDA is not available; use device='cpu'")
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.data = data
        self.config = config
        self._train_x = data.train.x.to(self.device)
        self._train_y = data.train.y.to(self.device)
        if len(self._train_y) == 0:
            raise UserError(
                "the training split is empty; use a larger dataset or smaller val/test fractions"
            )
        self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.diverged = False
        self.reason: str | None = None
        self.stopped = False
        # Wall-clock deadline (``time.time()``), checked before every batch: past it the running
        # epoch is abandoned, so a search's time budget holds to a batch, not to an epoch. The
        # abandoned epoch is not in ``history`` and ``epoch`` does not advance, but its updates
        # so far stay in the weights (train() then restores its best finished epoch).
        self.deadline: float | None = None
        self.lr = config.lr
        self.weight_decay = config.weight_decay
        self.l1 = config.l1
        self.first_loss: float | None = None  # reference for the exploding-loss check
        weights = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        others = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self._weights = weights
        groups = [{"params": weights, "weight_decay": config.weight_decay}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=config.momentum
            )
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=config.lr)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        self._loss_fn = LOSS_FNS[config.loss]

    # -- hyperparameters and state ---------------------------------------------------------

    def set_hparams(
        self, *, lr: float | None = None, weight_decay: float | None = None, l1: float | None = None
    ) -> None:
        """Change hyperparameters between epochs (optimizer state is kept)."""
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("l1", l1)):
            if value is None:
                continue
            if not _finite_number(value) or value < 0 or (name == "lr" and value == 0):
                kind = "positive" if name == "lr" else "non-negative"
                raise UserError(f"{name}={value!r} is invalid: use a {kind} number")
        if lr is not None:
            self.lr = float(lr)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
        if weight_decay is not None:
            self.weight_decay = float(weight_decay)
            self.optimizer.param_groups[0]["weight_decay"] = self.weight_decay
        if l1 is not None:
            self.l1 = float(l1)

    def state_dict(self) -> dict:
        """A deep copy of model weights, optimizer state, epoch counter and hyperparameters."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "first_loss": self.first_loss,
                "hparams": {"lr": self.lr, "weight_decay": self.weight_decay, "l1": self.l1},
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (possibly another trainer's, same architecture); clears
        a divergence."""
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.first_loss = state.get("first_loss")
        self.set_hparams(**state["hparams"])
        self.diverged = False
        self.reason = None

    # -- training ----------------------------------------------------------------------------

    def run_epochs(
        self, n: int, on_epoch: Callable[[EpochMetrics], bool | None] | None = None
    ) -> list[EpochMetrics]:
        """Train up to ``n`` more epochs; return the metrics of the epochs that finished.

        Stops early (without raising) when the loss diverges (``self.diverged``, ``self.reason``),
        when ``on_epoch`` returns ``True`` (``self.stopped``), or when ``self.deadline`` passes
        during an epoch (``self.reason``; that epoch is not returned).
        """
        self.stopped = False
        done: list[EpochMetrics] = []
        for _ in range(n):
            if self.diverged:
                break
            metrics = self._one_epoch()
            if metrics is None:
                break
            self.history.append(metrics)
            done.append(metrics)
            if on_epoch is not None and on_epoch(metrics) is True:
                self.stopped = True
                break
        return done

    def evaluate(self, split: Split) -> tuple[float, float]:
        """``(loss, accuracy)`` of the model on ``split``, in eval mode and without gradients."""
        return _evaluate(self.model, split, self._loss_fn, self.device)

    def _one_epoch(self) -> EpochMetrics | None:
        cfg = self.config
        t0 = time.perf_counter()
        epoch = self.epoch + 1
        x, y = self._train_x, self._train_y
        n = len(y)
        gen = torch.Generator().manual_seed(_mix_seed(cfg.seed, epoch, 0))
        order = torch.randperm(n, generator=gen).to(self.device)
        starts = list(range(0, n, cfg.batch_size))
        # A one-sample tail batch breaks BatchNorm in training mode; fold it into the epoch's
        # next shuffle instead (it is a different sample every epoch).
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        batches = _progress(starts, cfg.progress, f"epoch {epoch}/{cfg.epochs}")
        model, opt, loss_fn, l1 = self.model, self.optimizer, self._loss_fn, self.l1
        loss_sum = 0.0
        correct = 0
        seen = 0
        fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), _closing(batches):
            torch.manual_seed(_mix_seed(cfg.seed, epoch, 1))
            model.train()
            for b, start in enumerate(batches, start=1):
                if self.deadline is not None and time.time() > self.deadline:
                    self.reason = f"time budget reached in epoch {epoch} before batch {b}"
                    return None
                idx = order[start : start + cfg.batch_size]
                xb = x.index_select(0, idx)
                yb = y.index_select(0, idx)
                if cfg.augment_shift:
                    xb = random_shift(xb, cfg.augment_shift)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    self._diverge(f"diverged: loss became {loss_value} at epoch {epoch} batch {b}")
                    return None
                if self.first_loss is None:
                    self.first_loss = loss_value
                elif loss_value > cfg.diverge_factor * max(self.first_loss, 1e-8):
                    self._diverge(
                        f"diverged: loss {loss_value:.3g} exceeded {cfg.diverge_factor:g}x the "
                        f"first batch's loss ({self.first_loss:.3g}) at epoch {epoch} batch {b}"
                    )
                    return None
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if l1 > 0:
                    for p in self._weights:
                        if p.grad is not None:
                            p.grad.add_(torch.sign(p.detach()), alpha=l1)
                opt.step()
                k = len(yb)
                loss_sum += loss_value * k
                correct += int((logits.detach().argmax(dim=1) == yb).sum())
                seen += k
        val_loss, val_acc = self.evaluate(self.data.val)
        self.epoch = epoch
        if not math.isfinite(val_loss):
            self._diverge(f"diverged: validation loss became {val_loss} after epoch {epoch}")
            return None
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_acc=correct / seen,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=self.lr,
            duration_s=time.perf_counter() - t0,
        )
        log.debug("epoch %d: %s", epoch, metrics)
        return metrics

    def _diverge(self, reason: str) -> None:
        self.diverged = True
        self.reason = reason
        log.info(reason)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    deadline: float | None = None,
) -> TrainResult:
    """Train ``model`` for up to ``config.epochs`` epochs with early stopping on validation.

    Afterwards ``model`` holds the weights of the best validation epoch (by ``config.monitor``).
    ``on_epoch`` is called after every finished epoch with its metrics; returning ``True`` stops
    training with status ``"stopped"`` (the search prunes through it). Past ``deadline``
    (``time.time()``) the running epoch is abandoned before its next batch and training stops
    with status ``"stopped"``. Never opens the test split.
    """
    t0 = time.perf_counter()
    trainer = Trainer(model, data, config)
    trainer.deadline = deadline
    best_state: dict | None = None
    best: EpochMetrics | None = None
    since_best = 0
    status, reason, early = "ok", None, False
    for _ in range(config.epochs):
        finished = trainer.run_epochs(1)
        if trainer.diverged:
            status, reason = "diverged", trainer.reason
            break
        if not finished:  # the deadline passed during the epoch
            status, reason = "stopped", trainer.reason
            break
        m = finished[0]
        log.info(
            "epoch %d/%d: train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.1f s)",
            m.epoch, config.epochs, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.duration_s,
        )
        if best is None or _improves(m, best, config):
            best, since_best = m, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if on_epoch is not None and on_epoch(m) is True:
            status, reason = "stopped", f"stopped by callback after epoch {m.epoch}"
            break
        if since_best >= config.patience:
            early = True
            log.info(
                "early stopping after epoch %d: no %s improvement since epoch %d",
                m.epoch, config.monitor, best.epoch,
            )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return _result(trainer, status, reason, best, t0, early)


def train_fixed(model: nn.Module, data: Dataset, config: TrainConfig, epochs: int) -> TrainResult:
    """Train exactly ``epochs`` epochs and keep the last weights: no early stopping and no
    restore, because ``data.val`` may be part of the training data (a refit on train +
    validation after selection). ``status`` is ``"diverged"`` when the loss blew up."""
    t0 = time.perf_counter()
    trainer = Trainer(model, data, config)
    trainer.run_epochs(epochs)
    last = trainer.history[-1] if trainer.history else None
    return _result(trainer, "diverged" if trainer.diverged else "ok", trainer.reason, last, t0, False)


def _result(trainer: Trainer, status: str, reason: str | None, kept: EpochMetrics | None, t0: float,
            early: bool) -> TrainResult:
    """The result of a training run whose model now holds the weights of epoch ``kept``."""
    return TrainResult(
        status=status,
        reason=reason,
        best_epoch=kept.epoch if kept else 0,
        best_val_acc=kept.val_acc if kept else 0.0,
        best_val_loss=kept.val_loss if kept else math.inf,
        epochs_run=len(trainer.history),
        history=list(trainer.history),
        duration_s=time.perf_counter() - t0,
        early_stopped=early,
    )


def evaluate_test(model: nn.Module, data: Dataset, *, reason: str, loss: str = "ce") -> dict:
    """Open the sealed test split (allowed once per dataset object; a second call raises
    ``RuntimeError``) and evaluate ``model`` on it.

    Returns ``{"test_acc", "test_loss", "n", "loss", "test_opened", "reason"}``;
    ``test_opened`` is how often the split has been opened (1 after this call).
    """
    if loss not in LOSSES:
        raise UserError(f"loss={loss!r} is invalid: choose one of {', '.join(LOSSES)}")
    split = data.test.open(reason)
    device = next(iter(model.parameters()), torch.empty(0)).device
    test_loss, test_acc = _evaluate(model, split, LOSS_FNS[loss], device)
    return {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "n": len(split),
        "loss": loss,
        "test_opened": data.test.opened,
        "reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# helpers

@torch.no_grad()
def _evaluate(
    model: nn.Module,
    split: Split,
    loss_fn: LossFn,
    device: torch.device,
) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    n = len(split)
    try:
        for start in range(0, n, EVAL_BATCH):
            xb = split.x[start : start + EVAL_BATCH].to(device)
            yb = split.y[start : start + EVAL_BATCH].to(device)
            logits = model(xb)
            loss_sum += float(loss_fn(logits, yb)) * len(yb)
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, correct / n


def _improves(m: EpochMetrics, best: EpochMetrics, config: TrainConfig) -> bool:
    if config.monitor == "val_acc":
        return m.val_acc > best.val_acc + config.min_delta
    return m.val_loss < best.val_loss - config.min_delta


def _mix_seed(seed: int, epoch: int, stream: int) -> int:
    # Distinct, reproducible seeds per (seed, epoch, stream); stays below 2**63.
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def _closing(bar: object):
    """Close a tqdm bar however the epoch ends (a plain list needs nothing)."""
    try:
        yield bar
    finally:
        close = getattr(bar, "close", None)
        if close is not None:
            close()


def _progress(items: list[int], enabled: bool, desc: str):
    """A tqdm bar on a terminal when asked for; the plain list otherwise (no overhead)."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="batch", file=sys.stderr)

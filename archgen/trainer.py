"""The incremental trainer (:class:`Trainer`): trains a model epoch by epoch on ``data.train``
and measures each epoch on ``data.val``. Losses, regularization, divergence and determinism
follow the contracts in :mod:`archgen.training`."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import nn

from archgen.augment import random_shift
from archgen.data import Dataset, Split
from archgen.errors import UserError
from archgen.evaluation import evaluate_split
from archgen.losses import LOSS_FNS
from archgen.train_config import TrainConfig, is_finite_number

log = logging.getLogger("archgen.train")  # the logger name users see with ``archgen -v``


class TrainerState(TypedDict):
    """What :meth:`Trainer.state_dict` returns and :meth:`Trainer.load_state_dict` takes."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, object]
    epoch: int
    first_loss: float | None
    hparams: dict[str, float]


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
        self.channels_last = uses_channels_last(config, self._train_x)
        if self.channels_last:
            # Before the optimizer is built, so that its state follows the weights' layout. The
            # training set stays as it is (a copy would double its memory): each batch is laid
            # out as it is drawn (index_select on the CPU writes the default layout anyway).
            self.model.to(memory_format=torch.channels_last)
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

    def set_hparams(
        self, *, lr: float | None = None, weight_decay: float | None = None, l1: float | None = None
    ) -> None:
        """Change hyperparameters between epochs (optimizer state is kept)."""
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("l1", l1)):
            if value is None:
                continue
            if not is_finite_number(value) or value < 0 or (name == "lr" and value == 0):
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

    def state_dict(self) -> TrainerState:
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

    def load_state_dict(self, state: TrainerState) -> None:
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
        return evaluate_split(self.model, split, self._loss_fn, self.device, self.channels_last)

    def release(self) -> nn.Module:
        """The model in PyTorch's default memory layout, as the rest of archgen (latency
        measurement, export, checkpoints) expects it; training may go on afterwards (the
        layout is restored by the next epoch)."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        return self.model

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
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # a no-op unless release() ran
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
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
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


def uses_channels_last(config: TrainConfig, x: torch.Tensor) -> bool:
    """Whether a trainer lays out images and conv weights channels-last (``config.memory_format``;
    ``auto``: on the CPU, for image batches)."""
    if x.dim() != 4 or config.memory_format == "contiguous":
        return False
    return config.memory_format == "channels_last" or torch.device(config.device).type == "cpu"


def _mix_seed(seed: int, epoch: int, stream: int) -> int:
    """Distinct, reproducible seeds per ``(seed, epoch, stream)``; stays below 2**63."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


@contextlib.contextmanager
def _closing(bar: Iterable[int]) -> Iterator[Iterable[int]]:
    """Close a tqdm bar however the epoch ends (a plain list needs nothing)."""
    try:
        yield bar
    finally:
        close = getattr(bar, "close", None)
        if close is not None:
            close()


def _progress(items: list[int], enabled: bool, desc: str) -> Iterable[int]:
    """A tqdm bar on a terminal when asked for; the plain list otherwise (no overhead)."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="batch", file=sys.stderr)

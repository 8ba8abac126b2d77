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

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from archgen.data import Dataset
from archgen.evaluation import evaluate_test
from archgen.train_config import TrainConfig
from archgen.trainer import EpochMetrics, Trainer

__all__ = [
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate_test",
    "seed_everything",
    "train",
    "train_fixed",
]

log = logging.getLogger("archgen.train")  # the logger name users see with ``archgen -v``


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


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    deadline: float | None = None,
    grace_epochs: int = 0,
) -> TrainResult:
    """Train ``model`` for up to ``config.epochs`` epochs with early stopping on validation.

    Afterwards ``model`` holds the weights of the best validation epoch (by ``config.monitor``).
    ``on_epoch`` is called after every finished epoch with its metrics; returning ``True`` stops
    training with status ``"stopped"`` (the search prunes through it). Past ``deadline``
    (``time.time()``) the running epoch is abandoned before its next batch and training stops
    with status ``"stopped"``; the first ``grace_epochs`` epochs finish even past it. Never
    opens the test split.
    """
    t0 = time.perf_counter()
    trainer = Trainer(model, data, config)
    trainer.deadline = deadline
    best_state: dict[str, torch.Tensor] | None = None
    best: EpochMetrics | None = None
    since_best = 0
    status, reason, early = "ok", None, False
    for i in range(config.epochs):
        trainer.deadline = None if i < grace_epochs else deadline
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
    trainer.release()
    return _result(trainer, status, reason, best, t0, early)


def train_fixed(model: nn.Module, data: Dataset, config: TrainConfig, epochs: int) -> TrainResult:
    """Train exactly ``epochs`` epochs and keep the last weights: no early stopping and no
    restore, because ``data.val`` may be part of the training data (a refit on train +
    validation after selection). ``status`` is ``"diverged"`` when the loss blew up."""
    t0 = time.perf_counter()
    trainer = Trainer(model, data, config)
    trainer.run_epochs(epochs)
    trainer.release()
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


def _improves(m: EpochMetrics, best: EpochMetrics, config: TrainConfig) -> bool:
    if config.monitor == "val_acc":
        return m.val_acc > best.val_acc + config.min_delta
    return m.val_loss < best.val_loss - config.min_delta

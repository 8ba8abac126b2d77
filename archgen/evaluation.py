"""Evaluating a model: on any split (:func:`evaluate_split`), and the one opening of the sealed
test split at the very end (:func:`evaluate_test`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from archgen.data import Dataset, Split
from archgen.errors import UserError
from archgen.losses import LOSS_FNS, LOSSES, LossFn

EVAL_BATCH = 1024  # evaluation holds no activations for backward, so larger batches are cheap


def evaluate_test(
    model: nn.Module, data: Dataset, *, reason: str, loss: str = "ce"
) -> dict[str, float | int | str]:
    """Open the sealed test split (allowed once per dataset object; a second call raises
    ``RuntimeError``) and evaluate ``model`` on it.

    Returns ``{"test_acc", "test_loss", "n", "loss", "test_opened", "reason"}``;
    ``test_opened`` is how often the split has been opened (1 after this call).
    """
    if loss not in LOSSES:
        raise UserError(f"loss={loss!r} is invalid: choose one of {', '.join(LOSSES)}")
    split = data.test.open(reason)
    device = next(iter(model.parameters()), torch.empty(0)).device
    test_loss, test_acc = evaluate_split(model, split, LOSS_FNS[loss], device)
    return {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "n": len(split),
        "loss": loss,
        "test_opened": data.test.opened,
        "reason": reason,
    }


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Split,
    loss_fn: LossFn,
    device: torch.device,
    channels_last: bool = False,
) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` on ``split`` in eval mode (NaN for an empty split);
    the model's training mode is restored afterwards. ``channels_last``: image batches go in
    channels-last, as a trainer that trains that way holds the model."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    n = len(split)
    try:
        for start in range(0, n, EVAL_BATCH):
            xb = split.x[start : start + EVAL_BATCH].to(device)
            if channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = split.y[start : start + EVAL_BATCH].to(device)
            logits = model(xb)
            loss_sum += float(loss_fn(logits, yb)) * len(yb)
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, correct / n

"""Training losses, by name. Both take raw logits ``[N, K]`` and class indices ``[N]`` and return
the batch mean.

* ``ce``: cross-entropy of the softmax of the logits.
* ``mse``: squared error between the *softmax probabilities* and one-hot targets, summed over
  classes and averaged over the batch: ``mean_i sum_k (softmax(z_i)_k - t_ik)^2``. Softmax outputs
  keep the loss bounded (between 0 and 2), the textbook "MSE cost on sigmoid/softmax outputs";
  MSE on raw logits fights the argmax decision and needs a different learning rate.

Regularization penalties (L1, L2) are not part of these losses; see :mod:`archgen.training`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def mse_softmax(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, dim=1)
    target = F.one_hot(y, num_classes=logits.shape[1]).to(probs.dtype)
    return (probs - target).pow(2).sum(dim=1).mean()


LOSS_FNS: dict[str, LossFn] = {"ce": cross_entropy, "mse": mse_softmax}
LOSSES = tuple(LOSS_FNS)

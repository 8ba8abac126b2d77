"""Training-time data augmentation (on in-memory batches, no per-sample Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image of a batch by its own random offset in [-max_shift, max_shift]
    pixels in both axes, filling the uncovered border with zeros (as the convs' "same"
    padding does). Draws from the global RNG, which the trainer seeds per epoch, so a seeded
    run stays deterministic."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * s + 1, (b,), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]

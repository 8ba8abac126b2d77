"""The training hyperparameters (:class:`TrainConfig`), validated on construction. What each field
means for training is in :mod:`archgen.training`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from archgen.errors import UserError
from archgen.losses import LOSSES

OPTIMIZERS = ("sgd", "adam", "adamw")
MONITORS = ("val_loss", "val_acc")
# How image batches and conv weights are laid out in memory while training: ``auto`` is
# channels-last on the CPU (epochs 0.69-0.82x as long on MNIST-10k, 0.76-1.03x on digits,
# docs/benchmarks.md "Where an epoch goes") and PyTorch's default layout on CUDA (not measured).
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


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
    memory_format: str = "auto"

    def __post_init__(self) -> None:
        def bad(name: str, hint: str) -> UserError:
            return UserError(f"{name}={getattr(self, name)!r} is invalid: {hint}")

        if not is_finite_number(self.lr) or self.lr <= 0:
            raise bad("lr", "use a positive learning rate such as 1e-3")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        if not is_finite_number(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "use a value in [0, 1), e.g. 0.9")
        if self.loss not in LOSSES:
            raise bad("loss", f"choose one of {', '.join(LOSSES)}")
        for name in ("weight_decay", "l1", "min_delta"):
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0:
                raise bad(name, "use a non-negative number (0 disables it)")
        if not is_finite_number(self.diverge_factor) or self.diverge_factor <= 1:
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
        if self.memory_format not in MEMORY_FORMATS:
            raise bad("memory_format", f"choose one of {', '.join(MEMORY_FORMATS)}")


def is_finite_number(value: object) -> bool:
    """A real ``int`` or ``float`` (not ``bool``) that is neither infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

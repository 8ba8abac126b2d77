"""What ``archgen ablate`` can measure: each practitioner's rule (R1-R7, docs/design.md) and
textbook hyperparameter as a *factor* with *arms*: the rule (or archgen's default), first, then
its alternatives. An arm changes a drawn configuration in one of four ways: search-space
parameters (``params``), RuleSet switches (``rules``), a rewrite of the built spec
(``transform``) or the trainer (``train``). Everything else about a matched set of networks
(the drawn configuration, the split, the seed, the budget) is the same.

Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from archgen.errors import SpecError, UserError
from archgen.ops import ConvSpec, DenseSpec, PoolSpec
from archgen.spec import INIT_SCHEMES, ArchSpec


@dataclass(frozen=True)
class Arm:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    transform: str | None = None
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Factor:
    name: str
    claim: str
    arms: tuple[Arm, ...]
    # Fixes a drawn configuration so that the factor can matter (e.g. R6 needs two hidden
    # dense layers); given the configuration and the input's pooling depth.
    prepare: Callable[[dict[str, Any], int], dict[str, Any]] | None = None


def strided(spec: ArchSpec) -> ArchSpec:
    """R4's alternative: every 2x2 pooling replaced by stride 2 in the last conv before it."""
    layers = list(spec.layers)
    out: list = []
    last_conv = None
    for layer in layers:
        if isinstance(layer, PoolSpec):
            if last_conv is None:
                out.append(layer)
                continue
            out[last_conv] = replace(out[last_conv], stride=2)
            last_conv = None
            continue
        if isinstance(layer, ConvSpec):
            last_conv = len(out)
        out.append(layer)
    return replace(spec, layers=tuple(out)).validate()


def tapered(spec: ArchSpec) -> ArchSpec:
    """R6's alternative: each hidden dense layer half as wide as the one before (min 16)."""
    out, width = [], None
    for layer in spec.layers:
        if isinstance(layer, DenseSpec):
            width = layer.units if width is None else max(16, width // 2)
            layer = replace(layer, units=width)
        out.append(layer)
    return replace(spec, layers=tuple(out)).validate()


TRANSFORMS: dict[str, Callable[[ArchSpec], ArchSpec]] = {"strided": strided, "tapered": tapered}


def _stages_at_least(n: int) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    return lambda p, depth: {**p, "stages": max(p["stages"], min(n, depth))}


def _two_stages_at_most(p: dict[str, Any], depth: int) -> dict[str, Any]:
    # R2 and R3 differ only where R2 asks for a kernel above 3: small inputs, at most 2 stages.
    return {**p, "stages": min(p["stages"], 2), "stacking": False}


def _two_dense(p: dict[str, Any], depth: int) -> dict[str, Any]:
    return {**p, "dense_layers": 2, "dense_units": max(p["dense_units"], 128)}


def _init_arms() -> tuple[Arm, ...]:
    first = "kaiming_uniform"
    return tuple(Arm(s, params={"init": s}) for s in (first, *[x for x in INIT_SCHEMES if x != first]))


FACTORS: dict[str, Factor] = {f.name: f for f in (
    Factor("R1", "x4 filters after each 2x2 pooling keeps N_p x N_f constant, so every layer costs about "
                 "the same; x2 keeps MACs per layer constant",
           (Arm("growth x4", params={"growth": 4}), Arm("growth x2", params={"growth": 2}),
            Arm("constant width", params={"growth": 1})), _stages_at_least(3)),
    Factor("R2", "kernel size by input size and depth: 5x5 for 28-32 px inputs, 3x3 with 3+ stages",
           (Arm("by size (rule)"), Arm("3x3", rules={"kernel_by_size": False}, params={"kernel": 3}),
            Arm("5x5", rules={"kernel_by_size": False}, params={"kernel": 5})), _two_stages_at_most),
    # R3 rewrites kernels above 3, which R2 gives only to small inputs: both arms start from 5x5
    # so that stacking matters on every input size.
    Factor("R3", "stacked 3x3 convolutions instead of one large kernel (two 3x3 see as far as one 5x5)",
           (Arm("one 5x5", rules={"kernel_by_size": False}, params={"kernel": 5}),
            Arm("two stacked 3x3", rules={"kernel_by_size": False}, params={"kernel": 5, "stacking": True})),
           _two_stages_at_most),
    Factor("R4", "stride 1 with 2x2 pooling for subsampling, not strided convolutions",
           (Arm("stride 1 + pooling"), Arm("stride-2 convs", transform="strided")), _stages_at_least(2)),
    Factor("R5", "zero ('same') padding keeps the spatial size and the border information",
           (Arm("same padding"), Arm("valid padding", rules={"same_padding": False}))),
    Factor("R6", "all hidden dense layers the same width, the first wider than its input",
           (Arm("equal width"), Arm("tapered", transform="tapered")), _two_dense),
    Factor("R7", "weights uniform in [-r, r], biases 0; which r (textbook 1/n_in^2, LeCun, Glorot, Kaiming)",
           _init_arms()),
    Factor("balance", "rebalancing widths evens out per-layer time and buys accuracy per millisecond",
           (Arm("rule widths"), Arm("rebalanced", params={"rebalance": True})), _stages_at_least(3)),
    Factor("lr", "Adam's learning rate 1e-3 is a safe default",
           tuple(Arm(f"lr {v:g}", params={"lr": v}) for v in (1e-3, 3e-4, 3e-3, 1e-2))),
    Factor("loss", "cross-entropy trains classifiers better than squared error",
           (Arm("cross-entropy", params={"loss": "ce"}), Arm("MSE", params={"loss": "mse"}))),
    Factor("reg", "a little L2 regularization helps; L1 is rarely worth it",
           (Arm("L2 1e-5", params={"weight_decay": 1e-5, "l1": 0.0}),
            Arm("none", params={"weight_decay": 0.0, "l1": 0.0}),
            Arm("L2 1e-3", params={"weight_decay": 1e-3, "l1": 0.0}),
            Arm("L1 1e-5", params={"weight_decay": 0.0, "l1": 1e-5}))),
    Factor("batch", "batch size 64 is a good trade of speed and accuracy",
           tuple(Arm(f"batch {b}", params={"batch_size": b}) for b in (64, 32, 128, 256))),
    Factor("early-stopping", "stop when validation loss stops improving and keep the best epoch's weights",
           (Arm("early stopping", train={"patience": 5}), Arm("all epochs, last weights", train={"fixed": True}))),
)}
FACTORS["init"] = replace(FACTORS["R7"], name="init")


def factor(name: str) -> Factor:
    """The factor called ``name`` (case-insensitive for R1-R7); UserError naming the choices."""
    key = name.strip()
    key = key.upper() if key.lower() in {f"r{i}" for i in range(1, 8)} else key.lower()
    if key not in FACTORS:
        raise UserError(f"--rule {name!r}: choose one of {', '.join(FACTORS)}")
    return FACTORS[key]


def arm_spec(arm: Arm, params: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> ArchSpec:
    """The network of ``arm`` for the drawn ``params`` (SpecError when the arm cannot build it,
    e.g. valid padding on an 8x8 input)."""
    from archgen.space import spec_from_params

    spec = spec_from_params({**params, **arm.params}, input_shape, num_classes, rules=arm.rules)
    if arm.transform is not None:
        try:
            spec = TRANSFORMS[arm.transform](spec)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    return spec

"""Generate CNN specs that follow a RuleSet: seeded sampling and exhaustive enumeration.

Pure arithmetic (no torch). The loop is pycls's: *sample genes -> build spec -> structural check
-> budget check -> dedup by key*. A ``Genes`` tuple holds the free choices; ``spec_from_genes``
turns genes into a spec by applying the rules, so every spec produced follows the active rules
by construction (tests verify it with the rule checkers).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from archgen.errors import ConstraintError, SpecError
from archgen.rules import RuleSet, kernel_for, size_class, stack_kernel, stem_for
from archgen.spec import (
    ArchSpec,
    BatchNormSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    GapSpec,
    InitSpec,
    LayerSpec,
    PoolSpec,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenSpace:
    """The free choices the generator samples from (the rules fix everything else)."""

    stages: tuple[int, ...] = (1, 2, 3, 4)
    convs_per_stage: tuple[int, ...] = (1, 2, 3)
    base_filters: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    dense_layers: tuple[int, ...] = (0, 1, 2)
    dense_units: tuple[int, ...] = (64, 128, 256, 512, 1024)
    batchnorm: tuple[bool, ...] = (False, True)
    dropout: tuple[float, ...] = (0.0, 0.25, 0.5)
    pool_last: tuple[bool, ...] = (True, False)
    gap: tuple[bool, ...] = (False, True)
    free_kernels: tuple[int, ...] = (3, 5, 7)  # only when R2 is off

    def __post_init__(self) -> None:
        for name in ("stages", "convs_per_stage", "base_filters", "dense_units"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ConstraintError(f"{name} must be a non-empty list of positive integers, got {values!r}")
        if not self.dense_layers or any(v < 0 for v in self.dense_layers):
            raise ConstraintError(f"dense_layers must be non-negative integers, got {self.dense_layers!r}")


@dataclass(frozen=True)
class Genes:
    stages: int
    convs_per_stage: int
    base_filters: int
    dense_layers: int
    dense_units: int
    batchnorm: bool
    dropout: float
    pool_last: bool
    gap: bool
    kernel: int  # used only when R2 is off


@dataclass(frozen=True)
class Budget:
    """Hard limits a candidate must meet; None means unlimited."""

    max_macs: int | None = None
    max_params: int | None = None

    def violations(self, macs: int, params: int) -> list[str]:
        out = []
        if self.max_macs is not None and macs > self.max_macs:
            out.append("max_macs")
        if self.max_params is not None and params > self.max_params:
            out.append("max_params")
        return out


def max_pools(input_shape: tuple[int, int, int], rules: RuleSet) -> int:
    """How many 2x2 poolings the map survives after the stem."""
    stem = stem_for(input_shape, rules)
    px = min(input_shape[1], input_shape[2])
    if stem is not None:
        px = -(-px // stem[1])
    n = 0
    while px >= 2:
        px //= 2
        n += 1
    return n


def spec_from_genes(
    input_shape: tuple[int, int, int], num_classes: int, rules: RuleSet, g: Genes
) -> ArchSpec:
    """Apply the rules to one set of free choices. Raises SpecError if the genes do not fit."""
    n_pools = g.stages if g.pool_last else g.stages - 1
    if n_pools > max_pools(input_shape, rules):
        raise SpecError(f"{g.stages} stages need {n_pools} poolings; the input allows fewer")
    stem = stem_for(input_shape, rules)
    kernel = kernel_for(input_shape, g.stages, rules) if rules.kernel_by_size else g.kernel
    kernels = stack_kernel(kernel) if rules.stacking else [kernel]
    padding = "same" if rules.same_padding else "valid"
    # Arithmetic first (widths, final map size, the R6 check), objects only for survivors.
    widths = [min(g.base_filters, rules.max_filters)]
    for _ in range(1, g.stages):
        widths.append(min(widths[-1] * (rules.growth if rules.balance else 2), rules.max_filters))
    h, w = input_shape[1], input_shape[2]
    if stem is not None:
        h, w = -(-h // stem[1]), -(-w // stem[1])
    if padding == "valid":
        shrink = sum(k - 1 for k in kernels) * g.convs_per_stage
        for _ in range(g.stages):
            h, w = h - shrink, w - shrink
            if h < 2 or w < 2:
                raise SpecError("'valid' convs shrink the feature map below 2x2")
            h, w = h // 2, w // 2
        h, w = input_shape[1], input_shape[2]  # recomputed exactly by validate() below
    else:
        h, w = h >> n_pools, w >> n_pools
    use_gap = g.dense_layers > 0 and (g.gap or h * w == 1)
    n_in = widths[-1] if use_gap else widths[-1] * h * w
    if g.dense_layers and rules.equal_dense and g.dense_units <= n_in:
        raise SpecError(f"R6: {g.dense_units} dense units are not wider than the head input {n_in}")
    layers: list[LayerSpec] = []
    for s, width in enumerate(widths):
        for c in range(g.convs_per_stage):
            if s == 0 and c == 0 and stem is not None:
                layers.append(_conv(width, stem[0], stem[1], padding))
                if g.batchnorm:
                    layers.append(_BN)
                continue
            for k in kernels:
                layers.append(_conv(width, k, 1, padding))
                if g.batchnorm:
                    layers.append(_BN)
        if s < g.stages - 1 or g.pool_last:
            layers.append(_POOL)
    if (g.gap or use_gap) and h * w > 1:
        layers.append(_GAP)
    if g.dense_layers:
        layers.extend([DenseSpec(g.dense_units)] * g.dense_layers)
    if g.dropout > 0:
        layers.append(DropoutSpec(g.dropout))
    return ArchSpec(input_shape, num_classes, tuple(layers), InitSpec(rules.init)).validate()


_BN = BatchNormSpec()
_POOL = PoolSpec("max", 2, 2)
_GAP = GapSpec()


@functools.lru_cache(maxsize=4096)
def _conv(filters: int, kernel: int, stride: int, padding: str) -> ConvSpec:
    return ConvSpec(filters, kernel, stride, padding)


def canonical_genes(g: Genes, rules: RuleSet) -> Genes:
    """Genes with the choices that cannot matter zeroed, so equal networks share one key."""
    return Genes(
        g.stages,
        g.convs_per_stage,
        g.base_filters,
        g.dense_layers,
        g.dense_units if g.dense_layers else 0,
        g.batchnorm,
        g.dropout,
        g.pool_last,
        g.gap,
        0 if rules.kernel_by_size else g.kernel,
    )


def _sample_genes(rng: random.Random, space: GenSpace, allowed_stages: list[int]) -> Genes:
    r = rng.random  # indexing by one uniform draw is ~3x cheaper than rng.choice

    def pick(seq: tuple | list) -> object:
        return seq[int(r() * len(seq))]

    return Genes(
        stages=pick(allowed_stages),
        convs_per_stage=pick(space.convs_per_stage),
        base_filters=pick(space.base_filters),
        dense_layers=pick(space.dense_layers),
        dense_units=pick(space.dense_units),
        batchnorm=pick(space.batchnorm),
        dropout=pick(space.dropout),
        pool_last=pick(space.pool_last),
        gap=pick(space.gap),
        kernel=pick(space.free_kernels),
    )


def _allowed_stages(input_shape: tuple[int, int, int], rules: RuleSet, space: GenSpace) -> list[int]:
    limit = max_pools(input_shape, rules)
    # A network whose last stage ends without pooling has one stage more than poolings.
    extra = 1 if False in space.pool_last else 0
    allowed = [s for s in space.stages if s <= limit + extra]
    if not allowed:
        raise ConstraintError(
            f"input {input_shape[1]}x{input_shape[2]} allows at most {limit} poolings; "
            f"stages {list(space.stages)} do not fit"
        )
    return allowed


def sample_specs(
    input_shape: tuple[int, int, int],
    num_classes: int,
    n: int,
    seed: int = 0,
    rules: RuleSet | None = None,
    space: GenSpace | None = None,
    budget: Budget | None = None,
    accept: Callable[[ArchSpec], bool] | None = None,
    max_attempts: int | None = None,
) -> list[ArchSpec]:
    """Up to ``n`` distinct specs, the same for the same arguments.

    ``accept`` is an extra screen (e.g. a latency budget from the cost model). Raises
    ConstraintError naming the constraint when no candidate at all passes; returns fewer than
    ``n`` (with a log warning) when the space holds fewer distinct passing candidates.
    """
    from archgen.costing import spec_macs

    if n < 1:
        raise ConstraintError(f"n must be >= 1, got {n}")
    rules = rules or RuleSet()
    space = space or GenSpace()
    budget = budget or Budget()
    _check_input(input_shape, num_classes)
    rng = random.Random(seed)
    allowed = _allowed_stages(input_shape, rules, space)
    attempts = max_attempts or max(2000, 40 * n)
    seen: set[str] = set()
    out: list[ArchSpec] = []
    rejected = {"max_macs": 0, "max_params": 0, "accept": 0}
    smallest = {"max_macs": None, "max_params": None}
    tried: set[Genes] = set()
    screening = budget.max_macs is not None or budget.max_params is not None
    for _ in range(attempts):
        genes = canonical_genes(_sample_genes(rng, space, allowed), rules)
        if genes in tried:
            continue
        tried.add(genes)
        try:
            spec = spec_from_genes(input_shape, num_classes, rules, genes)
        except SpecError:
            continue
        if screening:
            macs, params = spec_macs(spec), spec.num_params()
            for name, value in (("max_macs", macs), ("max_params", params)):
                if smallest[name] is None or value < smallest[name]:
                    smallest[name] = value
            bad = budget.violations(macs, params)
            if bad:
                for b in bad:
                    rejected[b] += 1
                continue
        key = spec.key()
        if key in seen:
            continue
        seen.add(key)
        if accept is not None and not accept(spec):
            rejected["accept"] += 1
            continue
        out.append(spec)
        if len(out) == n:
            return out
    if not out:
        raise ConstraintError(_impossible_message(budget, rejected, smallest, len(tried)))
    log.warning("only %d distinct candidates pass the constraints (asked for %d)", len(out), n)
    return out


def _impossible_message(budget: Budget, rejected: dict, smallest: dict, n_seen: int) -> str:
    if n_seen == 0 or not any(rejected.values()):
        return "no candidate fits the input shape under the active rules; relax the rules or the search space"
    parts = []
    if rejected["max_macs"]:
        parts.append(f"max_macs={budget.max_macs:,} is below the smallest candidate's {smallest['max_macs']:,} MACs")
    if rejected["max_params"]:
        parts.append(
            f"max_params={budget.max_params:,} is below the smallest candidate's {smallest['max_params']:,} parameters"
        )
    if rejected["accept"]:
        parts.append(f"all {rejected['accept']} candidates exceed the latency budget")
    return "no candidate meets the constraints: " + "; ".join(parts) + f" (over {n_seen} distinct candidates)"


def enumerate_specs(
    input_shape: tuple[int, int, int],
    num_classes: int,
    rules: RuleSet | None = None,
    space: GenSpace | None = None,
    budget: Budget | None = None,
) -> Iterator[ArchSpec]:
    """Every distinct spec of the space that follows the rules and the budget, in a fixed order."""
    from archgen.costing import spec_macs

    rules = rules or RuleSet()
    space = space or GenSpace()
    budget = budget or Budget()
    _check_input(input_shape, num_classes)
    kernels = space.free_kernels if not rules.kernel_by_size else space.free_kernels[:1]
    seen: set[str] = set()
    for combo in itertools.product(
        space.stages,
        space.convs_per_stage,
        space.base_filters,
        space.dense_layers,
        space.dense_units,
        space.batchnorm,
        space.dropout,
        space.pool_last,
        space.gap,
        kernels,
    ):
        try:
            spec = spec_from_genes(input_shape, num_classes, rules, Genes(*combo))
        except SpecError:
            continue
        key = spec.key()
        if key in seen:
            continue
        seen.add(key)
        if budget.violations(spec_macs(spec), spec.num_params()):
            continue
        yield spec


def _check_input(input_shape: tuple[int, int, int], num_classes: int) -> None:
    if len(input_shape) != 3 or any(not isinstance(v, int) or v < 1 for v in input_shape):
        raise ConstraintError(f"input shape must be three positive integers C,H,W, got {input_shape!r}")
    if num_classes < 2:
        raise ConstraintError(f"classes must be >= 2, got {num_classes}")


__all__ = [
    "Budget",
    "GenSpace",
    "Genes",
    "enumerate_specs",
    "max_pools",
    "sample_specs",
    "size_class",
    "spec_from_genes",
]

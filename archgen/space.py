"""The search space: architecture genes (through the rule-based generator) and training
hyperparameters, as Optuna distributions; and the trial config they turn into.

Pure Python plus Optuna's distributions; no torch. ``suggest(trial, space)`` asks Optuna for one
value per parameter (all parameters are always suggested, so Grid and manual configs can fix
any of them), and ``TrialConfig`` turns those values into an ``ArchSpec`` and a ``TrainConfig``
argument dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from archgen.errors import SearchConfigError, SpecError
from archgen.generator import Genes, max_pools, spec_from_genes
from archgen.inputs import clip, excerpt
from archgen.rules import RuleSet
from archgen.spec import DEFAULT_INIT, INIT_SCHEMES, MAX_WIDTH, ArchSpec

MAX_CHOICES = 64


@dataclass(frozen=True)
class Param:
    """One searchable parameter: a float/int range (optionally log-scaled) or a choice list."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    default: Any = None  # the value a grid or manual config uses when it does not name this parameter

    def __post_init__(self) -> None:
        if self.kind == "choice":
            if not self.choices:
                raise SearchConfigError(f"space.{self.name}: needs at least one choice")
        elif self.kind in ("float", "int"):
            if not (_is_number(self.low) and _is_number(self.high)) or not self.low <= self.high:
                raise SearchConfigError(
                    f"space.{self.name}: needs finite numbers low <= high, got {excerpt(self.low)}..{excerpt(self.high)}"
                )
            hard = HARD_RANGES.get(self.name)
            if hard is not None and not hard[0] <= self.low <= self.high <= hard[1]:
                raise SearchConfigError(
                    f"space.{self.name}: range {self.low:g}..{self.high:g} is outside the usable {hard[0]:g}..{hard[1]:g}"
                )
            if self.log and self.low <= 0:
                raise SearchConfigError(f"space.{self.name}: a log range needs low > 0, got {self.low!r}")
        else:
            raise SearchConfigError(f"space.{self.name}: unknown kind {excerpt(self.kind)}")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def check(self, value: Any, where: str) -> Any:
        """Validate one value (from a grid or manual config) against this parameter."""
        if self.kind == "choice":
            if not _is_member(value, self.choices):
                raise SearchConfigError(
                    f"{where}: {self.name}={excerpt(value)} is not one of {excerpt(list(self.choices), 80)}"
                )
            return value
        if not _is_number(value):
            raise SearchConfigError(f"{where}: {self.name}={excerpt(value)} must be a finite number")
        if not self.low <= value <= self.high:
            raise SearchConfigError(f"{where}: {self.name}={excerpt(value)} is outside [{self.low:g}, {self.high:g}]")
        return int(value) if self.kind == "int" else float(value)

    def default_value(self) -> Any:
        if self.default is not None and (self.kind != "choice" or self.default in self.choices):
            return self.default
        if self.kind == "choice":
            return self.choices[0]
        return self.grid_values(1)[0]

    def grid_values(self, n: int) -> list[Any]:
        """n evenly spaced values (log-spaced for log ranges); all choices for choice params."""
        if self.kind == "choice":
            return list(self.choices)
        if n <= 1 or self.low == self.high:
            mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
            return [int(round(mid)) if self.kind == "int" else mid]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            vals = [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
        else:
            vals = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        if self.kind == "int":
            return sorted({int(round(v)) for v in vals})
        return [float(f"{v:.3g}") for v in vals]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_member(value: Any, choices: tuple[Any, ...]) -> bool:
    """``value in choices`` with types kept apart (YAML's ``1`` is not ``True``, ``0`` not ``0.0``
    for a bool switch)."""
    return any(type(value) is type(c) and value == c for c in choices) or (
        _is_number(value) and any(_is_number(c) and not isinstance(c, bool) and value == c for c in choices)
    )


# What a user may put in a ``space:`` section: ranges stay inside these (int and float params),
# choice lists hold values of this domain: a tuple of allowed values, or (type, low, high).
HARD_RANGES: dict[str, tuple[float, float]] = {
    "stages": (1, 8), "convs_per_stage": (1, 8), "dense_layers": (0, 8), "augment_shift": (0, 16),
    "lr": (1e-8, 10.0), "weight_decay": (0.0, 1.0), "l1": (0.0, 1.0),
}
CHOICE_DOMAINS: dict[str, tuple[Any, ...]] = {
    "base_filters": (int, 1, MAX_WIDTH), "max_filters": (int, 1, MAX_WIDTH),
    "dense_units": (int, 1, MAX_WIDTH), "batch_size": (int, 1, 65_536), "dropout": (float, 0.0, 0.95),
    "growth": (2, 4), "stacking": (False, True), "batchnorm": (False, True), "gap": (False, True),
    "rebalance": (False, True), "init": INIT_SCHEMES, "optimizer": ("adam", "adamw", "sgd"),
    "loss": ("ce", "mse"),
}


def _check_choice(name: str, value: Any) -> Any:
    domain = CHOICE_DOMAINS.get(name)
    if domain is None:
        return value
    if isinstance(domain[0], type):
        kind, low, high = domain
        if not _is_number(value) or (kind is int and value != int(value)) or not low <= value <= high:
            raise SearchConfigError(
                f"space.{name}: {excerpt(value)} must be {'an integer' if kind is int else 'a number'} "
                f"in [{low:g}, {high:g}]"
            )
        return kind(value)
    if not _is_member(value, domain):
        raise SearchConfigError(f"space.{name}: {excerpt(value)} is not one of {list(domain)}")
    return value


def default_space(input_shape: tuple[int, int, int]) -> dict[str, Param]:
    """The default space; depth is capped by how many poolings the input survives.

    Widths and convs per stage stop where a single trial would eat a few-minute budget on a
    2-core CPU (48 base filters x 2 convs x 3 stages trains ~10 s/epoch on 7,000 MNIST images);
    widen them with a ``space:`` section for bigger machines or budgets.
    """
    depth = max(1, min(4, max_pools(input_shape, RuleSet())))
    tiny = min(input_shape[1], input_shape[2]) < 16
    # Defaults (the warm-start trial and what grid/manual configs leave out) by input size,
    # measured on validation accuracy (docs/benchmarks.md, "Augmentation"): 8x8 digits like a wide
    # two-stage net without augmentation (c3x32-p2-c3x64: 98.5% vs 97.4% for three stages);
    # 28x28 MNIST likes three cheap 3x3 stages with 2-pixel shifts (c3x16-c3x32-c3x64: 98.3%
    # in 20 epochs at a fifth of the MACs of c5x32-c5x64).
    shift = 0 if tiny else 2
    stages = min(2 if tiny else 3, depth)
    base = 32 if tiny else 16
    params = [
        Param("stages", "int", 1, depth, default=stages),
        Param("convs_per_stage", "int", 1, 2, default=1),
        Param("base_filters", "choice", choices=(8, 16, 24, 32, 48), default=base),
        Param("growth", "choice", choices=(2, 4), default=2),
        Param("max_filters", "choice", choices=(64, 128, 256), default=128),
        Param("stacking", "choice", choices=(False, True), default=False),
        Param("batchnorm", "choice", choices=(False, True), default=True),
        Param("dense_layers", "int", 0, 2, default=1),
        Param("dense_units", "choice", choices=(64, 128, 256, 512), default=256),
        Param("dropout", "choice", choices=(0.0, 0.25, 0.5), default=0.25),
        Param("gap", "choice", choices=(False, True), default=False),
        # textbook_uniform (r = 1/n_in^2) is offered by R7 but left out of the default search:
        # it trains deep nets to chance level (scripts/bench_init.py, docs/benchmarks.md).
        Param("init", "choice", choices=tuple(s for s in INIT_SCHEMES if s != "textbook_uniform"),
              default=DEFAULT_INIT),
        Param("rebalance", "choice", choices=(False, True), default=False),
        Param("lr", "float", 1e-4, 3e-2, log=True, default=1e-3),
        Param("optimizer", "choice", choices=("adam", "adamw", "sgd"), default="adam"),
        Param("batch_size", "choice", choices=(32, 64, 128, 256), default=64),
        Param("loss", "choice", choices=("ce", "mse"), default="ce"),
        Param("weight_decay", "float", 1e-7, 1e-2, log=True, default=1e-5),
        Param("l1", "float", 1e-9, 1e-4, log=True, default=1e-9),
        Param("augment_shift", "int", 0, 2, default=shift),
    ]
    return {p.name: p for p in params}


def space_from_config(input_shape: tuple[int, int, int], overrides: dict | None) -> dict[str, Param]:
    """Default space with the YAML ``space:`` section applied. Each entry is a list (choices),
    a scalar (fixed value) or ``{low, high, log}`` (a range)."""
    space = default_space(input_shape)
    if not isinstance(overrides or {}, dict):
        raise SearchConfigError(f"space: must be a mapping of parameter: values, got {excerpt(overrides)}")
    for name, value in (overrides or {}).items():
        if name not in space:
            raise SearchConfigError(f"space: unknown parameter {excerpt(name)}; known: {', '.join(space)}")
        base = space[name]
        if isinstance(value, dict):
            unknown = set(value) - {"low", "high", "log"}
            if unknown:
                raise SearchConfigError(f"space.{name}: unknown key(s) {clip(', '.join(sorted(map(str, unknown))))}")
            if base.kind == "choice":
                raise SearchConfigError(f"space.{name}: is a choice; give a list of values, not a range")
            if not isinstance(value.get("log", base.log), bool):
                raise SearchConfigError(f"space.{name}.log: must be true or false")
            space[name] = Param(name, base.kind, value.get("low"), value.get("high"), value.get("log", base.log),
                                default=base.default)
        elif isinstance(value, list):
            if not value or len(value) > MAX_CHOICES:
                raise SearchConfigError(f"space.{name}: give 1 to {MAX_CHOICES} values, got {len(value)}")
            if base.kind != "choice":
                value = [base.check(v, f"space.{name}") for v in value]
            else:
                value = [_check_choice(name, v) for v in value]
            space[name] = Param(name, "choice", choices=tuple(value), default=base.default)
        else:
            value = base.check(value, f"space.{name}") if base.kind != "choice" else _check_choice(name, value)
            space[name] = Param(name, "choice", choices=(value,))
    return space


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    return {name: p.suggest(trial) for name, p in space.items()}


TRAIN_KEYS = ("lr", "optimizer", "batch_size", "loss", "weight_decay", "l1", "augment_shift")


def spec_from_params(
    params: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int,
    rules: dict[str, Any] | None = None,
) -> ArchSpec:
    """The architecture a parameter set describes, through the rule-based generator.

    When the sampled head violates R6 (dense units not wider than the flattened map), the head
    switches to global average pooling first, as a practitioner would; if it still does not
    fit, the network drops its hidden dense layers. SpecError if nothing fits. ``rules``
    overrides RuleSet fields (``archgen ablate`` switches R2, R5, R6 this way); ``params`` may
    hold ``kernel``, the conv kernel when R2 is off (default 3).
    """
    rules = RuleSet(**{"growth": params["growth"], "stacking": params["stacking"], "init": params["init"],
                       "max_filters": params.get("max_filters", RuleSet.max_filters), **(rules or {})})
    genes = Genes(
        stages=params["stages"],
        convs_per_stage=params["convs_per_stage"],
        base_filters=params["base_filters"],
        dense_layers=params["dense_layers"],
        dense_units=params["dense_units"],
        batchnorm=params["batchnorm"],
        dropout=params["dropout"],
        pool_last=params["stages"] <= max_pools(input_shape, rules),
        gap=params["gap"],
        kernel=params.get("kernel", 3),
    )
    for attempt in (genes, replace(genes, gap=True), replace(genes, dense_layers=0)):
        try:
            return spec_from_genes(input_shape, num_classes, rules, attempt)
        except SpecError as exc:
            last = exc
    raise last


def train_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in TRAIN_KEYS if k in params}

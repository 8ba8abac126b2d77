"""The practitioner's rules R1-R7 (docs/design.md, "The rules"), each a documented, switchable rule.

Pure Python, no torch. A ``RuleSet`` says which rules are active and with which parameters;
each rule is also a *checker* (``check_<rule>(spec, rules) -> list[str]`` of violations) so
tests and users can verify any spec, generated or hand-written, against the active rules.

Terms used below:

* a **stage** is a run of conv layers ended by a pooling layer (the last stage may end without
  one); stage 1 starts at the input;
* the **stem** is the first conv layer;
* the **head input** (for R6) is the feature count entering the first hidden dense layer:
  the channel count after global average pooling when the head starts with ``gap``, otherwise the
  flattened ``C x H x W`` of the last feature map;
* **input size** is ``min(H, W)`` of the input: *tiny* below 16 px (e.g. the 8x8 ``digits``),
  *small* 16-48 px (MNIST's 28, CIFAR's 32), *medium* 49-127 px, *large* 128 px and above.

Precedence where rules collide (documented choices):

1. R4 + R2 on a *large* input: the stem gets the large kernel (11, or 15 from 384 px) with
   stride 4, whatever the number of stages; the 3+-stages 3x3 rule governs every later conv.
2. R2 on a *tiny* input: 3x3 (a 5x5 would see most of an 8x8 image at once; the textbook rule
   names 28-32 px as the small case). Documented extension, switchable with ``kernel_by_size``.
3. R3 (stacking) rewrites R2's result: a conv with kernel k > 3 outside a large-input stem
   becomes (k - 1) / 2 stacked 3x3 convs with the same receptive field.
4. R1 counts growth per *pooling*, so a strided stem does not multiply filters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from archgen.errors import ConstraintError
from archgen.spec import INIT_SCHEMES, ArchSpec, ConvSpec, DenseSpec, PoolSpec

RULE_IDS = ("R1", "R2", "R3", "R4", "R5", "R6", "R7")
# The rules a user can switch off, and the RuleSet field that switches each (R7, the init
# scheme, is always applied: choose the scheme instead).
RULE_SWITCHES = {
    "R1": "balance",
    "R2": "kernel_by_size",
    "R3": "stacking",
    "R4": "stride_rule",
    "R5": "same_padding",
    "R6": "equal_dense",
}
TINY_MAX_PX = 15
SMALL_MAX_PX = 48
LARGE_MIN_PX = 128
HUGE_MIN_PX = 384


@dataclass(frozen=True)
class RuleSet:
    """Which rules are active. Every field is one rule's switch or parameter.

    * R1 ``balance`` / ``growth``: filters multiply by ``growth`` (2: constant MACs per layer,
      VGG/ResNet; 4: the textbook constant ``N_p x N_f``; 1: constant width, the alternative
      ``archgen ablate --rule R1`` measures) after each 2x2 pooling, capped at ``max_filters``;
      all convs of a stage have the same width.
    * R2 ``kernel_by_size``: kernel size from input size and depth (see module docstring).
    * R3 ``stacking``: replace each kernel k > 3 (except a large-input stem) by (k-1)/2 3x3 convs.
    * R4 ``stride_rule``: stride 1 with pooling; stride > 1 only in the stem of a large input.
    * R5 ``same_padding``: every conv uses zero "same" padding.
    * R6 ``equal_dense``: all hidden dense layers have the same width, and the first one is
      wider than the head input.
    * R7 ``init``: the weight-init scheme written into every spec.
    """

    balance: bool = True
    growth: int = 2
    max_filters: int = 512
    kernel_by_size: bool = True
    stacking: bool = False
    stride_rule: bool = True
    same_padding: bool = True
    equal_dense: bool = True
    init: str = "kaiming_uniform"

    def __post_init__(self) -> None:
        if self.growth not in (1, 2, 4):
            raise ConstraintError(f"growth must be 1, 2 or 4, got {self.growth!r}")
        if not isinstance(self.max_filters, int) or self.max_filters < 1:
            raise ConstraintError(f"max_filters must be a positive integer, got {self.max_filters!r}")
        if self.init not in INIT_SCHEMES:
            raise ConstraintError(
                f"init {self.init!r} is not one of {', '.join(INIT_SCHEMES)}"
            )

    def active(self) -> tuple[str, ...]:
        return tuple(rid for rid in RULE_IDS if rid not in RULE_SWITCHES or getattr(self, RULE_SWITCHES[rid]))

    @classmethod
    def with_rules_off(cls, disable: str | Iterable[str] = (), *, growth: int = 2, stacking: bool = False,
                       init: str | None = None) -> RuleSet:
        """The default rules with the ones named in ``disable`` ("R2,R5" or ["R2", "R5"]) off;
        ``stacking`` turns R3 on (unless disabled). Raises ConstraintError on an unknown rule."""
        names = disable.split(",") if isinstance(disable, str) else list(disable)
        off = {str(r).strip().upper() for r in names if str(r).strip()}
        unknown = off - set(RULE_SWITCHES)
        if unknown:
            raise ConstraintError(
                f"unknown rule(s) {', '.join(sorted(unknown))}; switchable: {', '.join(RULE_SWITCHES)}"
            )
        switches: dict[str, bool | int | str] = {field: rid not in off for rid, field in RULE_SWITCHES.items()}
        switches["stacking"] = stacking and "R3" not in off
        switches["growth"] = growth
        if init:
            switches["init"] = init
        return cls(**switches)  # type: ignore[arg-type]


def size_class(input_shape: tuple[int, int, int]) -> str:
    px = min(input_shape[1], input_shape[2])
    if px <= TINY_MAX_PX:
        return "tiny"
    if px <= SMALL_MAX_PX:
        return "small"
    if px < LARGE_MIN_PX:
        return "medium"
    return "large"


# -- R2 + R4: the stem and the kernel for each position --------------------------------------


def stem_for(input_shape: tuple[int, int, int], rules: RuleSet) -> tuple[int, int] | None:
    """(kernel, stride) of a large-input stem (R2 + R4), or None when the input is not large."""
    if size_class(input_shape) != "large" or not (rules.kernel_by_size and rules.stride_rule):
        return None
    px = min(input_shape[1], input_shape[2])
    return (15 if px >= HUGE_MIN_PX else 11), 4


def kernel_for(input_shape: tuple[int, int, int], n_stages: int, rules: RuleSet) -> int:
    """R2: the kernel of every non-stem conv, by input size and number of stages."""
    if n_stages >= 3:
        return 3
    cls = size_class(input_shape)
    if cls == "tiny":
        return 3
    if cls in ("small", "medium"):
        return 5
    return 3  # after a large-input stem the map is medium-sized; later layers use 3x3


def stack_kernel(kernel: int) -> list[int]:
    """R3: the stack of 3x3 kernels with the receptive field of one k x k (k odd)."""
    if kernel <= 3:
        return [kernel]
    return [3] * ((kernel - 1) // 2)


# -- checkers: one per rule, each returns the violations it finds ------------------------------


def _stages(spec: ArchSpec) -> list[list[ConvSpec]]:
    stages: list[list[ConvSpec]] = [[]]
    for layer in spec.layers:
        if isinstance(layer, ConvSpec):
            stages[-1].append(layer)
        elif isinstance(layer, PoolSpec):
            stages.append([])
    return [s for s in stages if s]


def _convs(spec: ArchSpec) -> list[ConvSpec]:
    return [layer for layer in spec.layers if isinstance(layer, ConvSpec)]


def check_balance(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R1: equal widths in a stage; x growth per pooling (capped at max_filters)."""
    out = []
    stages = _stages(spec)
    for s, convs in enumerate(stages, 1):
        widths = {c.filters for c in convs}
        if len(widths) > 1:
            out.append(f"R1: stage {s} mixes widths {sorted(widths)}")
    for s in range(1, len(stages)):
        prev, cur = stages[s - 1][-1].filters, stages[s][0].filters
        want = min(prev * rules.growth, rules.max_filters)
        if cur != want:
            out.append(f"R1: stage {s + 1} has {cur} filters, expected {want} (= {prev} x {rules.growth})")
    return out


def check_kernel(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R2 (with R3's rewrite when stacking is on): kernel sizes by input size and depth."""
    convs = _convs(spec)
    if not convs:
        return []
    n_stages = len(_stages(spec))
    stem = stem_for(spec.input_shape, rules)
    out = []
    start = 0
    if stem is not None:
        if convs[0].kernel != stem[0]:
            out.append(f"R2: stem kernel {convs[0].kernel} on a large input, expected {stem[0]}")
        start = 1
    want = kernel_for(spec.input_shape, n_stages, rules)
    allowed = set(stack_kernel(want)) if rules.stacking else {want}
    for i, conv in enumerate(convs[start:], start):
        if conv.kernel not in allowed:
            out.append(f"R2: conv {i} kernel {conv.kernel}, expected {sorted(allowed)}")
    return out


def check_stacking(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R3: no kernel above 3 except a large-input stem."""
    stem = stem_for(spec.input_shape, rules)
    return [
        f"R3: conv {i} has kernel {c.kernel} > 3; stack 3x3 convs instead"
        for i, c in enumerate(_convs(spec))
        if c.kernel > 3 and not (i == 0 and stem is not None)
    ]


def check_stride(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R4: stride 1 everywhere except the stem of a large input."""
    large = size_class(spec.input_shape) == "large"
    return [
        f"R4: conv {i} has stride {c.stride}; only a large input's first conv may stride"
        for i, c in enumerate(_convs(spec))
        if c.stride != 1 and not (i == 0 and large)
    ]


def check_padding(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R5: zero 'same' padding on every conv."""
    return [
        f"R5: conv {i} has padding {c.padding!r}, expected 'same'"
        for i, c in enumerate(_convs(spec))
        if c.padding != "same"
    ]


def head_input(spec: ArchSpec) -> int:
    """Feature count entering the first hidden dense layer (see module docstring)."""
    shapes = spec.shapes()
    prev = spec.input_shape
    for layer, shape in zip(spec.layers, shapes):
        if isinstance(layer, DenseSpec):
            return prev[0] * prev[1] * prev[2]
        prev = shape
    return prev[0] * prev[1] * prev[2]


def check_dense(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R6: equal hidden widths; the first hidden layer wider than the head input."""
    dense = [layer for layer in spec.layers if isinstance(layer, DenseSpec)]
    if not dense:
        return []
    out = []
    widths = {d.units for d in dense}
    if len(widths) > 1:
        out.append(f"R6: hidden dense widths differ: {sorted(widths)}")
    n_in = head_input(spec)
    if dense[0].units <= n_in:
        out.append(f"R6: first hidden dense layer has {dense[0].units} units, not wider than its input {n_in}")
    return out


def check_init(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """R7: the spec carries the rule set's init scheme."""
    if spec.init.scheme != rules.init:
        return [f"R7: init {spec.init.scheme!r}, expected {rules.init!r}"]
    return []


CHECKS = {
    "R1": check_balance,
    "R2": check_kernel,
    "R3": check_stacking,
    "R4": check_stride,
    "R5": check_padding,
    "R6": check_dense,
    "R7": check_init,
}


def check(spec: ArchSpec, rules: RuleSet) -> list[str]:
    """All violations of the active rules (empty list: the spec follows them)."""
    out: list[str] = []
    for rid in rules.active():
        out.extend(CHECKS[rid](spec, rules))
    return out


__all__ = [
    "RULE_IDS",
    "RuleSet",
    "check",
    "head_input",
    "kernel_for",
    "size_class",
    "stack_kernel",
    "stem_for",
]

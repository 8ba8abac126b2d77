"""Each rule checked on generated output, table-driven (acceptance: every spec follows the rules)."""

from __future__ import annotations

import pytest

from archgen.generator import sample_specs
from archgen.rules import CHECKS, RuleSet, check, head_input, kernel_for, size_class, stem_for
from archgen.spec import ArchSpec, ConvSpec, DenseSpec, PoolSpec

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 96, 96), (3, 224, 224), (3, 400, 400)]
RULESETS = [
    RuleSet(),
    RuleSet(growth=4),
    RuleSet(stacking=True),
    RuleSet(init="textbook_uniform"),
    RuleSet(growth=4, stacking=True, max_filters=256),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rules", RULESETS, ids=lambda r: f"g{r.growth}-st{int(r.stacking)}-{r.init}")
def test_generated_specs_follow_every_active_rule(shape, rules):
    specs = sample_specs(shape, 10, 60, seed=1, rules=rules)
    assert len(specs) == 60
    for spec in specs:
        assert check(spec, rules) == [], spec.short_name()


@pytest.mark.parametrize(
    "rid, bad_spec",
    [
        ("R1", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5), PoolSpec(), ConvSpec(64, 5)))),  # x4 with growth 2
        ("R2", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 7),))),
        ("R3", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5),))),
        ("R4", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5, 2),))),
        ("R5", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5, 1, "valid"),))),
        ("R6", ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5), PoolSpec(), DenseSpec(128)))),  # 3136 -> 128
    ],
)
def test_each_checker_catches_its_violation(rid, bad_spec):
    rules = RuleSet(stacking=(rid == "R3"))
    assert CHECKS[rid](bad_spec, rules), f"{rid} missed a violation"


def test_r1_growth_4_keeps_np_nf_constant():
    spec = sample_specs((1, 32, 32), 10, 1, seed=3, rules=RuleSet(growth=4))[0]
    convs = [l for l in spec.layers if isinstance(l, ConvSpec)]
    widths = sorted({c.filters for c in convs})
    assert all(b == 4 * a for a, b in zip(widths, widths[1:]) if b < 512)


@pytest.mark.parametrize(
    "shape, stages, want",
    [((1, 28, 28), 2, 5), ((3, 32, 32), 1, 5), ((1, 28, 28), 3, 3), ((1, 8, 8), 1, 3), ((3, 96, 96), 2, 5)],
)
def test_r2_kernel_table(shape, stages, want):
    assert kernel_for(shape, stages, RuleSet()) == want


def test_r2_r4_large_input_stem():
    assert stem_for((3, 224, 224), RuleSet()) == (11, 4)
    assert stem_for((3, 512, 512), RuleSet()) == (15, 4)
    assert stem_for((3, 96, 96), RuleSet()) is None
    assert size_class((3, 224, 224)) == "large" and size_class((1, 8, 8)) == "tiny"
    for spec in sample_specs((3, 224, 224), 10, 40, seed=0):
        convs = [l for l in spec.layers if isinstance(l, ConvSpec)]
        assert (convs[0].kernel, convs[0].stride) == (11, 4)
        assert all(c.stride == 1 and c.kernel == 3 for c in convs[1:])


def test_r6_head_input_definition():
    spec = ArchSpec((1, 28, 28), 10, (ConvSpec(16, 5), PoolSpec(), DenseSpec(4000)))
    assert head_input(spec) == 16 * 14 * 14
    assert check(spec, RuleSet()) == []


def test_switching_a_rule_off_allows_its_violation():
    rules = RuleSet(same_padding=False, kernel_by_size=False)
    specs = sample_specs((1, 28, 28), 10, 80, seed=0, rules=rules)
    assert any(c.padding == "valid" for s in specs for c in s.layers if isinstance(c, ConvSpec))
    assert {c.kernel for s in specs for c in s.layers if isinstance(c, ConvSpec)} >= {3, 5, 7}
    assert all(check(s, rules) == [] for s in specs)

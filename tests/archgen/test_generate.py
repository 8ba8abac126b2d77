from __future__ import annotations

import pytest

from archgen.costing import spec_macs
from archgen.errors import ConstraintError
from archgen.generator import Budget, GenSpace, enumerate_specs, sample_specs


def test_same_seed_same_candidates_distinct_keys():
    a = sample_specs((1, 28, 28), 10, 50, seed=0)
    b = sample_specs((1, 28, 28), 10, 50, seed=0)
    c = sample_specs((1, 28, 28), 10, 50, seed=1)
    assert [s.key() for s in a] == [s.key() for s in b]
    assert len({s.key() for s in a}) == 50
    assert [s.key() for s in a] != [s.key() for s in c]


def test_budget_is_respected_and_binding():
    free = sample_specs((1, 28, 28), 10, 100, seed=0)
    limit = sorted(spec_macs(s) for s in free)[30]
    capped = sample_specs((1, 28, 28), 10, 40, seed=0, budget=Budget(max_macs=limit, max_params=500_000))
    assert capped and all(spec_macs(s) <= limit and s.num_params() <= 500_000 for s in capped)


def test_impossible_budget_names_the_constraint():
    with pytest.raises(ConstraintError, match="max_macs=10 is below the smallest candidate"):
        sample_specs((1, 28, 28), 10, 5, budget=Budget(max_macs=10))
    with pytest.raises(ConstraintError, match="max_params=5 is below"):
        sample_specs((1, 28, 28), 10, 5, budget=Budget(max_params=5))


def test_accept_screen_applies():
    specs = sample_specs((1, 28, 28), 10, 20, seed=2, accept=lambda s: s.num_params() < 100_000)
    assert specs and all(s.num_params() < 100_000 for s in specs)
    with pytest.raises(ConstraintError, match="exceed the latency budget"):
        sample_specs((1, 28, 28), 10, 5, accept=lambda s: False)


def test_small_space_returns_all_distinct_and_enumeration_matches():
    space = GenSpace(stages=(1, 2), convs_per_stage=(1,), base_filters=(8, 16), dense_layers=(0,),
                     batchnorm=(False,), dropout=(0.0,), pool_last=(True,), gap=(False,))
    listed = list(enumerate_specs((1, 28, 28), 10, space=space))
    assert len(listed) == 4
    sampled = sample_specs((1, 28, 28), 10, 50, seed=0, space=space)
    assert {s.key() for s in sampled} == {s.key() for s in listed}


def test_tiny_input_limits_depth():
    for spec in sample_specs((1, 8, 8), 10, 100, seed=0):
        assert min(spec.feature_shape()[1:]) >= 1


def test_spec_macs_fast_path_equals_geometry_sum():
    from archgen.costing import spec_geoms

    for spec in sample_specs((3, 64, 64), 10, 40, seed=8):
        assert spec_macs(spec) == sum(g.macs for g in spec_geoms(spec))

"""The one calibration recipe: random plain CNNs, archgen's generator over input sizes from
digits-sized up, and (for a search) networks at the search's own input shape."""

from __future__ import annotations

from archgen.calibration import GENERATOR_NETWORKS, OWN_SHAPE_NETWORKS, recipe_networks


def _sides(networks: list) -> list[tuple[int, int]]:
    return [(n[0].c_in, n[0].h_in) for n in networks]


def test_quick_recipe_covers_digits_sized_inputs() -> None:
    random_nets, generator = recipe_networks(quick=True)
    assert len(random_nets) == 24 and len(generator) == GENERATOR_NETWORKS[0]
    assert {(1, 8), (3, 16), (1, 28), (3, 32), (3, 64), (3, 96)} <= set(_sides(generator))


def test_a_search_adds_networks_of_its_own_input_shape() -> None:
    _, plain = recipe_networks(quick=True)
    _, own = recipe_networks(quick=True, input_shape=(3, 40, 40))
    added = own[len(plain):]
    assert own[:len(plain)] == plain
    assert len(added) == OWN_SHAPE_NETWORKS and set(_sides(added)) == {(3, 40)}
    assert all(n[-1].name == "classifier" for n in added)


def test_a_full_calibration_at_a_small_batch_measures_three_times_the_networks() -> None:
    """Batch <= 4, full mode: 480 random + 3 x 84 generator networks (the first 160 random ones
    those of batch 32, the same input sizes); quick mode and batch 32 unchanged."""
    from costmodel.calibration import SMALL_BATCH_NETWORKS

    big_random, big_gen = recipe_networks(quick=False, batch_size=1)
    random_nets, generator = recipe_networks(quick=False, batch_size=32)
    assert SMALL_BATCH_NETWORKS == 3
    assert (len(random_nets), len(generator)) == (160, GENERATOR_NETWORKS[1])
    assert (len(big_random), len(big_gen)) == (480, 3 * GENERATOR_NETWORKS[1])
    assert big_random[:160] == random_nets
    assert set(_sides(big_gen)) == set(_sides(generator))
    assert [len(n) for n in recipe_networks(quick=True, batch_size=1)] == [24, GENERATOR_NETWORKS[0]]
    assert recipe_networks(quick=False, batch_size=4)[0] == big_random
    assert len(recipe_networks(quick=False, batch_size=5)[0]) == 160

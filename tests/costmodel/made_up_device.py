"""A made-up device for the fitting tests: layer times linear per op, exactly, and random plain
CNNs to calibrate it on."""

from __future__ import annotations

import random

from costmodel.geometry import LayerGeom
from costmodel.netgen import random_plain_cnn


def true_ms(g: LayerGeom) -> float:
    """The device's time of a layer: linear per op, exactly."""
    if g.op == "conv":
        return 0.05 + 2e-8 * g.macs * 4 + 3e-8 * g.bytes * 4
    if g.op == "dense":
        return 0.02 + 1e-8 * g.macs * 4 + 5e-9 * g.bytes * 4
    return 0.01 + 1e-8 * g.bytes * 4


def synthetic_networks(n: int, seed: int) -> list[list[LayerGeom]]:
    rng = random.Random(seed)
    return [random_plain_cnn(rng, max_macs=20_000_000) for _ in range(n)]

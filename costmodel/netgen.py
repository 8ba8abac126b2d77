"""Random plain-CNN geometries covering the space archgen's generator produces.

Used by calibration (its calibration networks) and by the benchmark when ``archgen.generator``
is not available. Pure arithmetic, no torch. Everything is driven by an explicit
``random.Random`` so a seed reproduces the same networks.
"""

from __future__ import annotations

import random

from costmodel.geometry import LayerGeom

INPUTS = ((1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 48, 48), (3, 64, 64), (3, 96, 96))
WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128)
HEAD_UNITS = (64, 128, 256, 512)


def _same_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def random_plain_cnn(
    rng: random.Random,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int = 10,
    max_macs: int = 150_000_000,
    max_width: int = 384,
) -> list[LayerGeom]:
    """One random plain CNN (conv/pool stages, optional batch norm, dense head) under
    ``max_macs`` multiply-adds per sample. Kernels 1-11, widths up to ``max_width``."""
    for _ in range(1000):
        geoms = _attempt(rng, input_shape or rng.choice(INPUTS), num_classes, max_width)
        if geoms is not None and sum(g.macs for g in geoms) <= max_macs:
            return geoms
    raise RuntimeError("could not sample a network under the MAC budget")  # pragma: no cover


def _attempt(
    rng: random.Random, shape: tuple[int, int, int], num_classes: int, max_width: int
) -> list[LayerGeom] | None:
    c, h, w = shape
    geoms: list[LayerGeom] = []
    n_stages = rng.randint(1, 4)
    width = rng.choice(WIDTHS)
    growth = rng.choice((2, 2, 4))
    use_bn = rng.random() < 0.25
    act = rng.choice(("relu", "relu", "relu", "tanh"))
    for s in range(1, n_stages + 1):
        n_convs = rng.randint(1, 3)
        for j in range(1, n_convs + 1):
            first = s == 1 and j == 1
            if first and h >= 64 and rng.random() < 0.5:
                k, stride = rng.choice(((11, 4), (7, 2), (5, 2), (11, 2)))
            elif first:
                k, stride = rng.choice((3, 5, 5, 7, 11)), 1
            else:
                k, stride = rng.choice((1, 3, 3, 3, 5, 5, 7)), 1
            pad = (k - 1) // 2
            ho = _same_out(h, k, stride, pad)
            if ho < 1:
                return None
            geoms.append(LayerGeom(f"s{s}.conv{j}", "conv", c, width, h, w, ho, ho, k, stride, pad,
                                   activation=None if use_bn else act))
            c, h, w = width, ho, ho
            if use_bn:
                geoms.append(LayerGeom(f"s{s}.bn{j}", "bn", c, c, h, w, h, w, bias=False))
                geoms.append(LayerGeom(f"s{s}.act{j}", "act", c, c, h, w, h, w, bias=False,
                                       activation=act))
        if h >= 2:
            mode = "max" if rng.random() < 0.85 else "avg"
            geoms.append(LayerGeom(f"s{s}.pool", "pool", c, c, h, w, h // 2, w // 2, 2, 2, 0,
                                   bias=False, mode=mode))
            h, w = h // 2, w // 2
        width = min(max_width, width * growth)
    if rng.random() < 0.3 and h > 1:
        geoms.append(LayerGeom("gap", "gap", c, c, h, w, 1, 1, bias=False, mode="avg"))
        h = w = 1
    flat = c * h * w
    for i in range(1, rng.choice((0, 1, 1, 2)) + 1):
        units = rng.choice(HEAD_UNITS)
        geoms.append(LayerGeom(f"fc{i}", "dense", flat, units, 1, 1, 1, 1, activation=act))
        if rng.random() < 0.3:
            geoms.append(LayerGeom(f"drop{i}", "dropout", units, units, 1, 1, 1, 1, bias=False))
        flat = units
    geoms.append(LayerGeom("classifier", "dense", flat, num_classes, 1, 1, 1, 1))
    return geoms

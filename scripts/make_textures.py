"""A synthetic RGB dataset, built offline: 10 classes of 32x32 colour textures, as ``npz:FILE``.

Each class is a kind of pattern; colours, scale, phase and position are random per image, and
pixel noise is added, so that no single colour or pixel tells the class:

0 horizontal stripes, 1 vertical stripes, 2 diagonal stripes (/), 3 diagonal stripes (\\),
4 checkerboard, 5 concentric rings, 6 dots on a grid, 7 one filled disc, 8 one cross,
9 smooth blobs (low-frequency noise).

    python scripts/make_textures.py --n-per-class 300 --seed 0 --out /tmp/textures.npz
    archgen ablate --rule R1 --data npz:/tmp/textures.npz

Arrays: ``x`` float32 (N, 3, 32, 32) in [0, 1], ``y`` int64, ``class_names``.
"""

from __future__ import annotations

import argparse

import numpy as np

SIZE = 32
NAMES = ("stripes-h", "stripes-v", "stripes-d1", "stripes-d2", "checker", "rings", "dots", "disc", "cross",
         "blobs")


def _pattern(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A (32, 32) pattern in [0, 1] of class ``kind``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = rng.uniform(4.0, 9.0)
    phase = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(8, 24, size=2)
    if kind < 4:
        u = (yy, xx, xx + yy, xx - yy)[kind]
        return (np.sin(2 * np.pi * u / period + phase) > 0).astype(np.float32)
    if kind == 4:
        return (((xx + phase) // (period / 2) + (yy + phase) // (period / 2)) % 2).astype(np.float32)
    r = np.hypot(yy - cy, xx - cx)
    if kind == 5:
        return (np.sin(2 * np.pi * r / period + phase) > 0).astype(np.float32)
    if kind == 6:
        gy, gx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        return (np.hypot(gy, gx) < period / 4).astype(np.float32)
    if kind == 7:
        return (r < rng.uniform(5, 10)).astype(np.float32)
    if kind == 8:
        w = rng.uniform(1.5, 3.5)
        return ((np.abs(yy - cy) < w) | (np.abs(xx - cx) < w)).astype(np.float32)
    low = rng.normal(size=(4, 4)).astype(np.float32)
    up = np.kron(low, np.ones((SIZE // 4, SIZE // 4), np.float32))
    k = np.ones(5, np.float32) / 5
    up = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0, up)
    up = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, up)
    return (up > 0).astype(np.float32)


def make(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for kind in range(len(NAMES)):
        for _ in range(n_per_class):
            p = _pattern(kind, rng)
            fg, bg = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
            while np.abs(fg - bg).sum() < 0.4:  # some contrast, any hue
                fg, bg = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
            img = p[None] * fg[:, None, None] + (1 - p[None]) * bg[:, None, None]
            img += rng.normal(0, 0.12, size=img.shape)
            xs.append(np.clip(img, 0, 1).astype(np.float32))
            ys.append(kind)
    order = rng.permutation(len(ys))
    return np.stack(xs)[order], np.asarray(ys, dtype=np.int64)[order]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    x, y = make(args.n_per_class, args.seed)
    np.savez(args.out, x=x, y=y, class_names=np.asarray(NAMES))
    print(f"{args.out}: {len(y)} images {x.shape[1:]}, {len(NAMES)} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Readers for the dataset sources of :mod:`archgen.data`: raw arrays in, no splitting.

Each ``read_*`` function returns ``(name, (x, y), own_test, class_names)``: ``x`` is
``[N, C, H, W]`` (uint8 or float), ``y`` int64 ``[N]``, ``own_test`` the source's own test pair or
``None``. Every problem a user can cause raises :class:`archgen.errors.DataError` naming the file
and the bad value. IDX is the MNIST file format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic
``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data, big-endian.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from archgen.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"}
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_Arrays = tuple[np.ndarray, np.ndarray]


def read_digits() -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # values 0..16
    y = bunch.target.astype(np.int64)
    return "digits", (x, y), None, [str(c) for c in bunch.target_names]


def _require_dir(path: Path, source: str) -> None:
    if not path.exists():
        raise DataError(f"{source}: directory {str(path)!r} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{source}: {str(path)!r} is not a directory")


def read_idx_dir(path: Path) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    source = f"idx:{path}"
    _require_dir(path, source)
    found: dict[tuple[str, str], Path] = {}
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        lower = f.name.lower()
        kind = "images" if ("idx3" in lower or "images" in lower or "imgs" in lower) else (
            "labels" if ("idx1" in lower or "labels" in lower) else None
        )
        role = "test" if ("t10k" in lower or "test" in lower) else (
            "train" if "train" in lower else None
        )
        if kind is None or role is None:
            continue
        if (role, kind) in found:
            raise DataError(
                f"{source}: two {role} {kind} files ({found[(role, kind)].name}, {f.name}); "
                "keep one of each"
            )
        found[(role, kind)] = f

    pairs: dict[str, _Arrays] = {}
    for role in ("train", "test"):
        img, lab = found.get((role, "images")), found.get((role, "labels"))
        if img is None and lab is None:
            continue
        if img is None or lab is None:
            missing = "images" if img is None else "labels"
            raise DataError(f"{source}: {role} {missing} file missing (have {(img or lab).name})")
        x = _read_idx_file(img, source)
        y = _read_idx_file(lab, source)
        if x.ndim != 3:
            raise DataError(f"{source}: {img.name} holds {x.ndim}-d data; expected N x H x W images")
        if y.ndim != 1:
            raise DataError(f"{source}: {lab.name} holds {y.ndim}-d data; expected N labels")
        if len(x) != len(y):
            raise DataError(
                f"{source}: {img.name} has {len(x)} images but {lab.name} has {len(y)} labels"
            )
        if len(y) == 0:
            raise DataError(f"{source}: {img.name} holds no images")
        pairs[role] = (x[:, None, :, :], y.astype(np.int64))
    if not pairs:
        raise DataError(
            f"{source}: no IDX files found (expected e.g. train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz, or t10k-*)"
        )
    name = path.name or str(path)
    if "train" in pairs and "test" in pairs:
        return name, pairs["train"], pairs["test"], []
    return name, pairs.get("train") or pairs["test"], None, []


def _read_idx_file(path: Path, source: str) -> np.ndarray:
    """Parse one IDX file (gzip detected by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{source}: cannot read {path.name}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{source}: corrupt IDX header in {path.name} (magic bytes {raw[:4].hex() or 'none'}; "
            "expected 0000 <type 08..0e> <ndim>)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: corrupt IDX header in {path.name} (truncated dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{source}: corrupt IDX header in {path.name}: dimensions {list(dims)} need "
            f"{expected} data bytes but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_npz(
    path: Path, input_shape: tuple[int, int, int] | None
) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    source = f"npz:{path}"
    if not path.is_file():
        raise DataError(f"{source}: file {str(path)!r} does not exist; check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot read NumPy archive: {exc}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing array(s) {missing}; the archive needs 'x' and 'y'")
    pool = _npz_pair(source, arrays["x"], arrays["y"], input_shape, "x")
    own_test = None
    if "x_test" in arrays or "y_test" in arrays:
        if not ("x_test" in arrays and "y_test" in arrays):
            raise DataError(f"{source}: has only one of 'x_test'/'y_test'; provide both or neither")
        own_test = _npz_pair(source, arrays["x_test"], arrays["y_test"], input_shape, "x_test")
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else []
    return path.stem, pool, own_test, names


def _npz_pair(
    source: str, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, int, int] | None, key: str
) -> _Arrays:
    if x.dtype.kind not in "uif":
        raise DataError(f"{source}: '{key}' has dtype {x.dtype}; expected numbers")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        # NCHW unless the spec (or the layout) says channels-last.
        if input_shape is not None and tuple(x.shape[1:]) != input_shape and (
            (x.shape[3], x.shape[1], x.shape[2]) == input_shape
        ):
            x = x.transpose(0, 3, 1, 2)
        elif input_shape is None and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{source}: '{key}' has shape {list(x.shape)}; expected [N,H,W], [N,C,H,W] or [N,H,W,C]"
        )
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] == 1 else y
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{source}: '{key}' holds {len(x)} images but its labels have shape {list(y.shape)}"
        )
    if len(y) == 0:
        raise DataError(f"{source}: '{key}' holds no samples")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{source}: labels must be integer class indices; found non-integers")
    elif y.dtype.kind not in "ui":
        raise DataError(f"{source}: labels have dtype {y.dtype}; expected integer class indices")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{source}: '{key}' contains NaN or infinite values")
    return np.ascontiguousarray(x), y.astype(np.int64)


def read_folder(
    path: Path, input_shape: tuple[int, int, int] | None
) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    from PIL import Image, UnidentifiedImageError

    source = f"folder:{path}"
    _require_dir(path, source)
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{source}: no class sub-folders; put each class's images in DIR/<class>/")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        imgs = sorted(
            f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not imgs:
            raise DataError(
                f"{source}: class folder {d.name!r} has no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
        files.extend((f, label) for f in imgs)

    def read(f: Path) -> Image.Image:
        try:
            with Image.open(f) as im:
                im.load()
                return im.copy()
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{source}: cannot read image {os.fspath(f)!r}: {exc}") from None

    if input_shape is None:
        first = read(files[0][0])
        channels = 1 if first.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
        input_shape = (channels, first.height, first.width)
        log.info("%s: no input shape given, using %s from %s", source, input_shape, files[0][0])
    c, h, w = input_shape
    if c not in (1, 3):
        raise DataError(f"{source}: images can be read as 1 or 3 channels, the spec asks for {c}")
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        im = read(f).convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        x[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    y = np.array([label for _, label in files], dtype=np.int64)
    return path.name, (x, y), None, [d.name for d in class_dirs]

"""Reading the dataset sources of :mod:`archgen.data`: raw arrays in, no splitting.

Each ``read_*`` function (``read_digits`` here; :func:`archgen.read_idx.read_idx_dir`,
:func:`archgen.read_npz.read_npz`, :func:`archgen.read_folder.read_folder` for the file formats)
returns ``(name, (x, y), own_test, class_names)``: ``x`` is ``[N, C, H, W]`` (uint8 or float),
``y`` int64 ``[N]``, ``own_test`` the source's own test pair or ``None``. This module holds what
they share: the size limits, the checks every array passes, and the helpers for messages and
file access.

Hostile input. Every problem a file can cause raises :class:`archgen.errors.DataError` with one
line that names the file; a bad value is quoted by :func:`excerpt`, never whole. Nothing is
allocated or decompressed before the sizes a file declares are checked against the limits below
(an IDX header or ``.npy`` header claiming 10**15 values, a gzip or zip bomb, a decompression-bomb
PNG), and every reader's arrays go through the same checks (:func:`check_pair`): images real and
finite in float32, with sane sizes; labels integral, non-negative and below :data:`MAX_CLASSES`.
The readers look the limits up here when they run (``readers.MAX_DATASET_BYTES``), so one
assignment changes them for all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from archgen.errors import DataError
from archgen.inputs import excerpt, int_text
from archgen.spec import MAX_CLASSES, MAX_INPUT_CHANNELS, MAX_INPUT_SIDE

# ---------------------------------------------------------------------------------------------
# limits (the spec's own limits, archgen.spec.MAX_INPUT_*, are the same numbers)

#: Largest dataset: all images (training pool plus a shipped test split) as one float32 tensor.
#: Also caps what a single file may declare or decompress to.
MAX_DATASET_BYTES = 4 * 2**30
# Classes, channels and image sides: the spec's limits (archgen.spec), so that data for any
# valid spec loads.
MAX_CHANNELS = MAX_INPUT_CHANNELS
MAX_IMAGE_SIDE = MAX_INPUT_SIDE
#: Most pixels of a folder image decoded before resizing (checked from its header, before
#: decoding; below Pillow's own decompression-bomb threshold of about 89 million).
MAX_SOURCE_PIXELS = 8192 * 8192
#: Longest class name (characters).
MAX_CLASS_NAME_CHARS = 200

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CHUNK = 1 << 24  # bytes read or values scanned at a time

Arrays = tuple[np.ndarray, np.ndarray]  # images [N, C, H, W] and labels [N]
# What a reader returns: name, the pool (x, y), the source's own test pair, class names.
SourceData = tuple[str, Arrays, Arrays | None, list[str]]


# ---------------------------------------------------------------------------------------------
# message helpers


def show_path(path: str | os.PathLike[str], limit: int = 120) -> str:
    """A path for a message: escaped like :func:`excerpt` (no quotes), long ones shortened in the
    middle so that both the start and the file name stay visible."""
    text = repr(os.fspath(path))[1:-1]
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + "..." + text[-half:]


def quote_name(name: str) -> str:
    """A file name, quoted and escaped, for a message."""
    return "'" + show_path(name, 80) + "'"


def fmt_bytes(n: int) -> str:
    units = (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
             ("KiB", 2**10))
    for unit, size in units:
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1e6 else f"{value:.3e} {unit}"
    return f"{n} bytes"


def _os_reason(exc: OSError) -> str:
    return show_path(exc.strerror or str(exc) or type(exc).__name__, 60)


# ---------------------------------------------------------------------------------------------
# the shared checks: every reader's arrays pass through these


def check_image_shape(where: str, shape: tuple[int, ...]) -> None:
    """``(C, H, W)`` of one image within :data:`MAX_CHANNELS` and :data:`MAX_IMAGE_SIDE`."""
    c, h, w = (int(d) for d in shape)
    if min(c, h, w) < 1:
        raise DataError(
            f"{where}: images are {int_text(c)}x{int_text(h)}x{int_text(w)} (C x H x W); "
            "every size must be at least 1"
        )
    if c > MAX_CHANNELS:
        raise DataError(
            f"{where}: images have {int_text(c)} channels; the limit is {MAX_CHANNELS} "
            "(archgen.readers.MAX_CHANNELS)"
        )
    if max(h, w) > MAX_IMAGE_SIDE:
        raise DataError(
            f"{where}: images are {int_text(h)}x{int_text(w)} pixels; the limit is "
            f"{MAX_IMAGE_SIDE} per side (archgen.readers.MAX_IMAGE_SIDE)"
        )


def check_dataset_size(where: str, n_values: int) -> None:
    """``n_values`` image values fit :data:`MAX_DATASET_BYTES` as float32."""
    if n_values * 4 > MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: {n_values:,} image values need {fmt_bytes(n_values * 4)} as float32; "
            f"the limit is {fmt_bytes(MAX_DATASET_BYTES)} (archgen.readers.MAX_DATASET_BYTES)"
        )


def check_images(where: str, x: np.ndarray) -> np.ndarray:
    """``x`` [N, C, H, W]: real numbers (no bool, complex or strings), at least one image, sizes
    within the limits, every value finite and representable in float32."""
    if x.dtype.kind not in "uif":
        raise DataError(
            f"{where}: images have dtype {show_path(str(x.dtype), 40)}; expected integer or "
            "floating-point pixel values"
        )
    if x.ndim != 4:
        raise DataError(f"{where}: images have shape {excerpt(list(x.shape))}; expected N x C x H x W")
    if x.shape[0] == 0:
        raise DataError(f"{where}: holds no images")
    check_image_shape(where, tuple(int(d) for d in x.shape[1:]))
    check_dataset_size(where, int(x.size))
    if x.dtype.kind == "f":
        lo, hi = float(np.min(x)), float(np.max(x))  # NaN propagates into both
        if not (-_FLOAT32_MAX <= lo and hi <= _FLOAT32_MAX):
            i, value = _first_bad_value(x)
            raise DataError(
                f"{where}: image {i} holds {excerpt(value, 30)}; pixel values must be finite "
                "numbers within the float32 range"
            )
    return x


def _first_bad_value(x: np.ndarray) -> tuple[int, float]:
    """(image index, value) of the first value of ``x`` that is not finite in float32."""
    per = max(1, _CHUNK // max(1, x[0].size))
    for start in range(0, len(x), per):
        flat = x[start:start + per].reshape(-1)
        with np.errstate(all="ignore"):
            bad = np.flatnonzero(~(np.abs(flat) <= _FLOAT32_MAX))
        if len(bad):
            return start + int(bad[0]) // x[0].size, float(flat[bad[0]])
    return 0, float("nan")  # not reached: the caller saw a bad value


def check_labels(where: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64 ``[N]``: integral (integer dtype, or floats holding whole numbers),
    non-negative, below :data:`MAX_CLASSES`. ``[N, 1]`` columns are flattened."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {excerpt(list(y.shape))}; expected one class index per "
            "sample, shape [N]"
        )
    if y.dtype.kind not in "uif":
        raise DataError(
            f"{where}: labels have dtype {show_path(str(y.dtype), 40)}; expected integer class indices"
        )
    if len(y) == 0:
        raise DataError(f"{where}: holds no labels")
    if y.dtype.kind == "f":
        with np.errstate(all="ignore"):
            bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: label {i} is {excerpt(y[i], 30)}; labels must be integer class indices"
            )
    lo, hi = y.min().item(), y.max().item()
    if lo < 0:
        raise DataError(
            f"{where}: label {excerpt(lo, 30)} is negative; labels must be class indices 0..K-1"
        )
    if hi >= MAX_CLASSES:
        raise DataError(
            f"{where}: label {excerpt(hi, 30)} is too large: at most {MAX_CLASSES:,} classes "
            f"(labels 0..{MAX_CLASSES - 1}) are supported (archgen.readers.MAX_CLASSES)"
        )
    return y.astype(np.int64)


def check_pair(x_where: str, x: np.ndarray, y_where: str, y: np.ndarray) -> Arrays:
    """Images and labels of one split: each checked, and as many labels as images."""
    x = check_images(x_where, x)
    y = check_labels(y_where, y)
    if len(x) != len(y):
        where = x_where if x_where == y_where else f"{x_where} / {y_where}"
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    return np.ascontiguousarray(x), y


def check_class_names(where: str, names: np.ndarray) -> list[str]:
    """A 1-d array of strings (or integers), at most :data:`MAX_CLASSES` short names."""
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise DataError(
            f"{where}: 'class_names' has shape {excerpt(list(names.shape))} and dtype "
            f"{show_path(str(names.dtype), 30)}; expected a 1-d array of strings"
        )
    if len(names) > MAX_CLASSES:
        raise DataError(
            f"{where}: 'class_names' lists {len(names):,} names; at most {MAX_CLASSES:,} classes "
            "are supported (archgen.readers.MAX_CLASSES)"
        )
    out = [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names.tolist()
    ]
    for i, name in enumerate(out):
        if len(name) > MAX_CLASS_NAME_CHARS:
            raise DataError(
                f"{where}: class name {i} has {len(name):,} characters ({excerpt(name, 40)}); "
                f"the limit is {MAX_CLASS_NAME_CHARS}"
            )
    return out


# ---------------------------------------------------------------------------------------------
# digits


def read_digits() -> SourceData:
    """scikit-learn's bundled handwritten digits (1,797 images, 1x8x8, values 0..16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # values 0..16
    pool = check_pair("digits", x, "digits", bunch.target)
    return "digits", pool, None, [str(c) for c in bunch.target_names]


# ---------------------------------------------------------------------------------------------
# file access


def require(path: Path, source: str, kind: str) -> None:
    """``path`` exists and is a ``kind`` ("directory" or "file"), else DataError naming it."""
    try:
        if not path.exists():
            raise DataError(f"{source}: {kind} does not exist; check the path")
        if not (path.is_dir() if kind == "directory" else path.is_file()):
            raise DataError(f"{source}: is not a {'directory' if kind == 'directory' else 'regular file'}")
    except OSError as exc:
        raise DataError(f"{source}: cannot access the {kind} ({_os_reason(exc)})") from None


def list_dir(path: Path, where: str) -> list[Path]:
    """The entries of directory ``path``, sorted; an unreadable directory as a DataError."""
    try:
        return sorted(path.iterdir())
    except OSError as exc:
        raise DataError(f"{where}: cannot list the directory ({_os_reason(exc)})") from None


def path_is(kind: str, p: Path, where: str) -> bool:
    """``p.is_file()`` / ``p.is_dir()``, a permission error on ``p`` as a DataError."""
    try:
        return p.is_file() if kind == "file" else p.is_dir()
    except OSError as exc:
        raise DataError(f"{where}: cannot access {quote_name(p.name)} ({_os_reason(exc)})") from None


def read_exact(stream: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes (fewer only at the end of the stream), read in bounded chunks: memory
    grows with the bytes that actually arrive, not with what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def valid_unicode(text: str, errors: str = "replace") -> str:
    """``text`` (e.g. a file name holding undecodable bytes as lone surrogates) as valid Unicode
    that can be written as UTF-8: bad bytes become U+FFFD (``errors="replace"``) or ``\\xNN``
    (``errors="backslashreplace"``)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", errors)


def display_name(name: str) -> str:
    """A file name as valid Unicode: undecodable bytes become U+FFFD."""
    return valid_unicode(name)

"""Readers for the dataset sources of :mod:`archgen.data`: raw arrays in, no splitting.

Each ``read_*`` function returns ``(name, (x, y), own_test, class_names)``: ``x`` is
``[N, C, H, W]`` (uint8 or float), ``y`` int64 ``[N]``, ``own_test`` the source's own test pair or
``None``. IDX is the MNIST file format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic
``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data, big-endian.

Hostile input. Every problem a file can cause raises :class:`archgen.errors.DataError` with one
line that names the file; a bad value is quoted by :func:`excerpt`, never whole. Nothing is
allocated or decompressed before the sizes a file declares are checked against the limits below
(an IDX header or ``.npy`` header claiming 10**15 values, a gzip or zip bomb, a decompression-bomb
PNG), and every reader's arrays go through the same checks (:func:`check_pair`): images real and
finite in float32, with sane sizes; labels integral, non-negative and below :data:`MAX_CLASSES`.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from archgen import spec as spec_limits
from archgen.errors import DataError
from archgen.inputs import excerpt, int_text

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# limits (the spec's own limits, archgen.spec.MAX_INPUT_*, are the same numbers)

#: Largest dataset: all images (training pool plus a shipped test split) as one float32 tensor.
#: Also caps what a single file may declare or decompress to.
MAX_DATASET_BYTES = 4 * 2**30
# Classes, channels and image sides: the spec's limits (archgen.spec), so that data for any
# valid spec loads.
MAX_CLASSES = spec_limits.MAX_CLASSES
MAX_CHANNELS = spec_limits.MAX_INPUT_CHANNELS
MAX_IMAGE_SIDE = spec_limits.MAX_INPUT_SIDE
#: Most pixels of a folder image decoded before resizing (checked from its header, before
#: decoding; below Pillow's own decompression-bomb threshold of about 89 million).
MAX_SOURCE_PIXELS = 8192 * 8192
#: Longest class name (characters).
MAX_CLASS_NAME_CHARS = 200

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

_NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CHUNK = 1 << 24  # bytes read or values scanned at a time

_Arrays = tuple[np.ndarray, np.ndarray]



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


def _q(name: str) -> str:
    """A file name, quoted and escaped, for a message."""
    return "'" + show_path(name, 80) + "'"


def _fmt_bytes(n: int) -> str:
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
            f"{where}: {n_values:,} image values need {_fmt_bytes(n_values * 4)} as float32; "
            f"the limit is {_fmt_bytes(MAX_DATASET_BYTES)} (archgen.readers.MAX_DATASET_BYTES)"
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


def check_pair(x_where: str, x: np.ndarray, y_where: str, y: np.ndarray) -> _Arrays:
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


def read_digits() -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # values 0..16
    pool = check_pair("digits", x, "digits", bunch.target)
    return "digits", pool, None, [str(c) for c in bunch.target_names]


# ---------------------------------------------------------------------------------------------
# idx


def _require_dir(path: Path, source: str) -> None:
    _require(path, source, "directory")


def _require(path: Path, source: str, kind: str) -> None:
    """``path`` exists and is a ``kind`` ("directory" or "file"), else DataError naming it."""
    try:
        if not path.exists():
            raise DataError(f"{source}: {kind} does not exist; check the path")
        if not (path.is_dir() if kind == "directory" else path.is_file()):
            raise DataError(f"{source}: is not a {'directory' if kind == 'directory' else 'regular file'}")
    except OSError as exc:
        raise DataError(f"{source}: cannot access the {kind} ({_os_reason(exc)})") from None


def _list_dir(path: Path, where: str) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError as exc:
        raise DataError(f"{where}: cannot list the directory ({_os_reason(exc)})") from None


def _is(kind: str, p: Path, where: str) -> bool:
    """``p.is_file()`` / ``p.is_dir()``, a permission error on ``p`` as a DataError."""
    try:
        return p.is_file() if kind == "file" else p.is_dir()
    except OSError as exc:
        raise DataError(f"{where}: cannot access {_q(p.name)} ({_os_reason(exc)})") from None


def read_idx_dir(path: Path) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    source = f"idx:{show_path(path)}"
    _require_dir(path, source)
    found: dict[tuple[str, str], Path] = {}
    for f in _list_dir(path, source):
        lower = f.name.lower()
        kind = "images" if ("idx3" in lower or "images" in lower or "imgs" in lower) else (
            "labels" if ("idx1" in lower or "labels" in lower) else None
        )
        role = "test" if ("t10k" in lower or "test" in lower) else (
            "train" if "train" in lower else None
        )
        if kind is None or role is None or not _is("file", f, source):
            continue
        if (role, kind) in found:
            raise DataError(
                f"{source}: two {role} {kind} files ({_q(found[(role, kind)].name)}, {_q(f.name)}); "
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
            raise DataError(
                f"{source}: {role} {missing} file missing (have {_q((img or lab).name)})"
            )
        x = _read_idx_file(img, source, "images")
        y = _read_idx_file(lab, source, "labels")
        img_where, lab_where = f"{source}: {_q(img.name)}", f"{source}: {_q(lab.name)}"
        if len(x) != len(y):
            raise DataError(
                f"{source}: {_q(img.name)} has {len(x)} images but {_q(lab.name)} has "
                f"{len(y)} labels"
            )
        pairs[role] = check_pair(img_where, x[:, None, :, :], lab_where, y)
    if not pairs:
        raise DataError(
            f"{source}: no IDX files found (expected e.g. train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz, or t10k-*)"
        )
    if "train" in pairs and "test" in pairs:
        check_dataset_size(source, int(pairs["train"][0].size + pairs["test"][0].size))
    name = _display_name(path.name or str(path))
    if "train" in pairs and "test" in pairs:
        return name, pairs["train"], pairs["test"], []
    return name, pairs.get("train") or pairs["test"], None, []


def _read_exact(stream: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes (fewer only at the end of the stream), read in bounded chunks: memory
    grows with the bytes that actually arrive, not with what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_idx_file(path: Path, source: str, kind: str) -> np.ndarray:
    """Parse one IDX file (gzip detected by its magic bytes, not its name). ``kind`` is
    ``"images"`` (N x H x W) or ``"labels"`` (N). Sizes are checked from the header before any
    data is read or decompressed; a gzip stream is never inflated past what the header declares."""
    where = f"{source}: {_q(path.name)}"
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh  # type: ignore[assignment]
            try:
                return _parse_idx(stream, where, kind, None if gz else os.fstat(fh.fileno()).st_size)
            finally:
                if gz:
                    stream.close()
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: cannot read ({excerpt(exc, 100)})") from None


def _parse_idx(stream: BinaryIO, where: str, kind: str, file_size: int | None) -> np.ndarray:
    head = bytes(_read_exact(stream, 4))
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(
            f"{where}: corrupt IDX header (magic bytes {head.hex() or 'none'}; "
            "expected 0000 <type 08..0e> <ndim>)"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    want = 3 if kind == "images" else 1
    if ndim != want:
        expected = "N x H x W images" if kind == "images" else "N labels"
        if ndim == 0:
            raise DataError(f"{where}: corrupt IDX header (0 dimensions); expected {expected}")
        raise DataError(f"{where}: holds {ndim}-d data; expected {expected}")
    raw_dims = bytes(_read_exact(stream, 4 * ndim))
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{where}: corrupt IDX header (truncated dimensions)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    if dims[0] == 0:
        raise DataError(f"{where}: holds no {kind}")
    if kind == "images":
        check_image_shape(where, (1, dims[1], dims[2]))
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    if kind == "images":
        check_dataset_size(where, count)
    elif max(nbytes, count * 8) > MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: IDX header declares {count:,} labels; the limit is "
            f"{MAX_DATASET_BYTES // 8:,} (archgen.readers.MAX_DATASET_BYTES)"
        )
    header = 4 + 4 * ndim
    if file_size is not None and file_size - header != nbytes:
        raise DataError(
            f"{where}: corrupt IDX header: dimensions {list(dims)} need {nbytes} data bytes but "
            f"the file holds {file_size - header}"
        )
    buf = _read_exact(stream, nbytes)
    if len(buf) != nbytes:
        raise DataError(
            f"{where}: corrupt IDX header: dimensions {list(dims)} need {nbytes} data bytes but "
            f"the file holds {len(buf)}"
        )
    if stream.read(1):
        raise DataError(
            f"{where}: corrupt IDX header: dimensions {list(dims)} need {nbytes} data bytes but "
            "the file holds more"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(dims)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------------
# npz


def read_npz(
    path: Path, input_shape: tuple[int, int, int] | None
) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    source = f"npz:{show_path(path)}"
    _require(path, source, "file")
    arrays = _read_npz_arrays(path, source)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing array(s) {missing}; the archive needs 'x' and 'y'")
    pool = _npz_pair(source, arrays["x"], arrays["y"], input_shape, "x", "y")
    own_test = None
    if "x_test" in arrays or "y_test" in arrays:
        if not ("x_test" in arrays and "y_test" in arrays):
            raise DataError(f"{source}: has only one of 'x_test'/'y_test'; provide both or neither")
        own_test = _npz_pair(
            source, arrays["x_test"], arrays["y_test"], input_shape, "x_test", "y_test"
        )
        check_dataset_size(source, int(pool[0].size + own_test[0].size))
    names = check_class_names(source, arrays["class_names"]) if "class_names" in arrays else []
    return _display_name(path.stem), pool, own_test, names


def _read_npz_arrays(path: Path, source: str) -> dict[str, np.ndarray]:
    """The arrays of :data:`_NPZ_KEYS` in the archive, each ``.npy`` header checked (dtype, shape,
    declared size against the limits and the member's size) before its data is read. Other
    members are not read at all. Nothing is unpickled."""
    try:
        with open(path, "rb") as fh:
            if fh.read(6) == b"\x93NUMPY":
                raise DataError(
                    f"{source}: is a single .npy array, not an .npz archive; save with "
                    "numpy.savez(FILE, x=images, y=labels)"
                )
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                members: dict[str, zipfile.ZipInfo] = {}
                for info in zf.infolist():
                    name = info.filename
                    key = name[:-4] if name.endswith(".npy") else name
                    if key not in _NPZ_KEYS:
                        continue
                    if key in members:
                        raise DataError(f"{source}: the archive holds {key!r} twice")
                    members[key] = info
                arrays = {}
                for key, info in members.items():
                    with zf.open(info) as member:
                        arrays[key] = _read_npy(member, info, f"{source}: {key!r}")
                return arrays
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError,
            KeyError, NotImplementedError, RuntimeError, OverflowError, struct.error,
            _lzma_error()) as exc:
        raise DataError(
            f"{source}: cannot read NumPy archive ({type(exc).__name__}: {excerpt(exc, 100)})"
        ) from None


def _lzma_error() -> type[Exception]:
    try:
        import lzma
    except ImportError:  # pragma: no cover - Python built without lzma
        return zipfile.BadZipFile
    return lzma.LZMAError


def _read_npy(member: BinaryIO, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = fmt.read_array_header_2_0(member)
    else:
        raise DataError(f"{where}: unsupported .npy format version {excerpt(version, 20)}")
    if dtype.hasobject:
        raise DataError(
            f"{where}: holds Python objects (dtype object); archgen never unpickles data, save "
            "plain numeric arrays"
        )
    if dtype.kind not in "buifcUS" or dtype.itemsize == 0 or dtype.fields is not None:
        raise DataError(f"{where}: has dtype {show_path(str(dtype), 40)}; expected numbers")
    if len(shape) > 8 or any(d < 0 for d in shape):
        raise DataError(f"{where}: has shape {excerpt(list(shape))}; expected at most 5 dimensions")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if max(nbytes, count * 4) > MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: declares shape {excerpt(list(shape))} ({_fmt_bytes(max(nbytes, count * 4))});"
            f" the limit is {_fmt_bytes(MAX_DATASET_BYTES)} (archgen.readers.MAX_DATASET_BYTES)"
        )
    if nbytes > info.file_size:
        raise DataError(
            f"{where}: declares shape {excerpt(list(shape))} ({nbytes:,} bytes) but the archive "
            f"member holds {info.file_size:,} bytes; the archive is truncated or corrupt"
        )
    if count == 0:
        return np.empty(shape, dtype=dtype)
    buf = _read_exact(member, nbytes)
    if len(buf) != nbytes:
        raise DataError(
            f"{where}: holds {len(buf):,} of the {nbytes:,} data bytes its header declares; the "
            "archive is truncated or corrupt"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return arr if dtype.isnative or dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def _npz_pair(
    source: str, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, int, int] | None,
    key: str, ykey: str,
) -> _Arrays:
    where = f"{source}: {key!r}"
    if x.dtype.kind not in "uif":
        raise DataError(
            f"{where} has dtype {show_path(str(x.dtype), 40)}; expected integer or floating-point "
            "pixel values"
        )
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
            f"{where} has shape {excerpt(list(x.shape))}; expected [N,H,W], [N,C,H,W] or [N,H,W,C]"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{where} holds {len(x)} images but {ykey!r} has shape {excerpt(list(y.shape))}; "
            "expected one label per image"
        )
    return check_pair(where, x, f"{source}: {ykey!r}", y)


# ---------------------------------------------------------------------------------------------
# folder


_ONE_CHANNEL_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def read_folder(
    path: Path, input_shape: tuple[int, int, int] | None
) -> tuple[str, _Arrays, _Arrays | None, list[str]]:
    source = f"folder:{show_path(path)}"
    _require_dir(path, source)
    class_dirs = [
        d for d in _list_dir(path, source) if not d.name.startswith(".") and _is("dir", d, source)
    ]
    if not class_dirs:
        raise DataError(f"{source}: no class sub-folders; put each class's images in DIR/<class>/")
    if len(class_dirs) > MAX_CLASSES:
        raise DataError(
            f"{source}: {len(class_dirs):,} class sub-folders; at most {MAX_CLASSES:,} classes are "
            "supported (archgen.readers.MAX_CLASSES)"
        )
    files: list[tuple[Path, str, int]] = []
    for label, d in enumerate(class_dirs):
        where = f"{source}: class folder {_q(d.name)}"
        imgs = [
            f for f in _list_dir(d, where)
            if f.suffix.lower() in IMAGE_SUFFIXES and _is("file", f, where)
        ]
        if not imgs:
            raise DataError(
                f"{source}: class folder {_q(d.name)} has no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
        files.extend((f, _q(d.name + "/" + f.name), label) for f in imgs)

    if input_shape is None:
        mode, (w0, h0) = _probe_image(files[0][0], source, files[0][1])
        channels = 1 if (mode in _ONE_CHANNEL_MODES or mode.startswith("I;")) else 3
        if max(h0, w0) > MAX_IMAGE_SIDE:
            raise DataError(
                f"{source}: image {files[0][1]} is {w0}x{h0} pixels and sets the input shape; the limit is "
                f"{MAX_IMAGE_SIDE} per side (archgen.readers.MAX_IMAGE_SIDE): give an input "
                "shape to resize the images to"
            )
        input_shape = (channels, h0, w0)
        log.info("%s: no input shape given, using %s from %s", source, input_shape, files[0][1])
    c, h, w = input_shape
    if c not in (1, 3):
        raise DataError(f"{source}: images can be read as 1 or 3 channels, the spec asks for {c}")
    check_image_shape(source, (c, h, w))
    check_dataset_size(source, len(files) * c * h * w)
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, (f, shown, _) in enumerate(files):
        arr = _load_image(f, source, shown, "L" if c == 1 else "RGB", (w, h))
        x[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    y = np.array([label for _, _, label in files], dtype=np.int64)
    pool = check_pair(source, x, source, y)
    names = [_display_name(d.name) for d in class_dirs]
    return _display_name(path.name or str(path)), pool, None, names


def valid_unicode(text: str, errors: str = "replace") -> str:
    """``text`` (e.g. a file name holding undecodable bytes as lone surrogates) as valid Unicode
    that can be written as UTF-8: bad bytes become U+FFFD (``errors="replace"``) or ``\\xNN``
    (``errors="backslashreplace"``)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", errors)


def _display_name(name: str) -> str:
    """A file name as valid Unicode: undecodable bytes become U+FFFD."""
    return valid_unicode(name)


@contextlib.contextmanager
def _pillow_warnings(where: str) -> Iterator[None]:
    """Pillow's decompression-bomb warning becomes an error; its other warnings on odd files
    (corrupt EXIF, truncated metadata) are logged, not printed to stderr."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for w in caught[:3]:
                log.info("%s: %s", where, excerpt(str(w.message), 200))


def _open_checked(f: Path, source: str, shown: str):  # noqa: ANN202 - PIL.Image.Image, imported lazily
    """``Image.open`` (which reads the header only) with the pixel count checked before anything
    is decoded."""
    from PIL import Image

    try:
        with _pillow_warnings(f"{source}: image {shown}"):
            im = Image.open(f)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{source}: image {shown} refused as a decompression bomb ({excerpt(exc, 90)}); the "
            f"limit is {MAX_SOURCE_PIXELS:,} pixels (archgen.readers.MAX_SOURCE_PIXELS)"
        ) from None
    w, h = im.size
    if w * h > MAX_SOURCE_PIXELS:
        im.close()
        raise DataError(
            f"{source}: image {shown} is {w}x{h} = {w * h:,} pixels; the limit is "
            f"{MAX_SOURCE_PIXELS:,} (archgen.readers.MAX_SOURCE_PIXELS)"
        )
    return im


def _probe_image(f: Path, source: str, shown: str) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) from the image's header; nothing is decoded."""
    try:
        im = _open_checked(f, source, shown)
        with im:
            return str(im.mode), (int(im.width), int(im.height))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise many types on bad bytes
        raise DataError(f"{source}: cannot read image {shown} ({_pil_reason(exc)})") from None


def _load_image(f: Path, source: str, shown: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image decoded, converted to ``mode`` and resized to ``size`` (width, height)."""
    from PIL import Image

    try:
        im = _open_checked(f, source, shown)
        with im, _pillow_warnings(f"{source}: image {shown}"):
            im.load()
            out = im.convert(mode)
            if out.size != size:
                out = out.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(out, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad bytes
        raise DataError(f"{source}: cannot read image {shown} ({_pil_reason(exc)})") from None
    expected = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    if arr.shape != expected:
        raise DataError(
            f"{source}: image {shown} decoded to shape {excerpt(list(arr.shape))}, not "
            f"{list(expected)}"
        )
    return arr


def _pil_reason(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can identify"
    if isinstance(exc, OSError) and exc.strerror:
        return show_path(exc.strerror, 80)
    return f"{type(exc).__name__}: {excerpt(exc, 100)}"

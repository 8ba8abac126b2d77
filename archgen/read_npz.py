"""The NumPy archive reader (``npz:FILE``): arrays ``x`` and ``y``, optionally ``x_test`` /
``y_test`` and ``class_names``. Each ``.npy`` header is checked (dtype, shape, declared size)
before its data is read; other members are not read at all, and nothing is unpickled.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

import archgen.readers as readers
from archgen.errors import DataError
from archgen.inputs import excerpt
from archgen.readers import (
    Arrays,
    SourceData,
    display_name,
    fmt_bytes,
    read_exact,
    require,
    show_path,
)

_NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names")


def read_npz(path: Path, input_shape: tuple[int, int, int] | None) -> SourceData:
    """The arrays ``x``, ``y`` (and ``x_test``, ``y_test``, ``class_names`` when present) of the
    archive ``path``; ``input_shape`` tells channels-first from channels-last images."""
    source = f"npz:{show_path(path)}"
    require(path, source, "file")
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
        readers.check_dataset_size(source, int(pool[0].size + own_test[0].size))
    names = readers.check_class_names(source, arrays["class_names"]) if "class_names" in arrays else []
    return display_name(path.stem), pool, own_test, names


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
    if max(nbytes, count * 4) > readers.MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: declares shape {excerpt(list(shape))} ({fmt_bytes(max(nbytes, count * 4))});"
            f" the limit is {fmt_bytes(readers.MAX_DATASET_BYTES)} (archgen.readers.MAX_DATASET_BYTES)"
        )
    if nbytes > info.file_size:
        raise DataError(
            f"{where}: declares shape {excerpt(list(shape))} ({nbytes:,} bytes) but the archive "
            f"member holds {info.file_size:,} bytes; the archive is truncated or corrupt"
        )
    if count == 0:
        return np.empty(shape, dtype=dtype)
    buf = read_exact(member, nbytes)
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
) -> Arrays:
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
    return readers.check_pair(where, x, f"{source}: {ykey!r}", y)

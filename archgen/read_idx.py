"""The IDX reader (``idx:DIR``): MNIST-format files, gzip or raw (MNIST, Fashion-MNIST, KMNIST,
notMNIST-style). IDX is the MNIST file format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic
``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data, big-endian. Sizes are
checked from the header before any data is read or decompressed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
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
    list_dir,
    path_is,
    quote_name,
    read_exact,
    require,
    show_path,
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


def read_idx_dir(path: Path) -> SourceData:
    """The train and/or test pair of the IDX files in directory ``path`` (a shipped test split
    when both are there)."""
    source = f"idx:{show_path(path)}"
    require(path, source, "directory")
    found = _idx_files(path, source)
    pairs: dict[str, Arrays] = {}
    for role in ("train", "test"):
        img, lab = found.get((role, "images")), found.get((role, "labels"))
        if img is None and lab is None:
            continue
        if img is None or lab is None:
            missing = "images" if img is None else "labels"
            raise DataError(
                f"{source}: {role} {missing} file missing (have {quote_name((img or lab).name)})"
            )
        x = _read_idx_file(img, source, "images")
        y = _read_idx_file(lab, source, "labels")
        img_where, lab_where = f"{source}: {quote_name(img.name)}", f"{source}: {quote_name(lab.name)}"
        if len(x) != len(y):
            raise DataError(
                f"{source}: {quote_name(img.name)} has {len(x)} images but {quote_name(lab.name)} has "
                f"{len(y)} labels"
            )
        pairs[role] = readers.check_pair(img_where, x[:, None, :, :], lab_where, y)
    if not pairs:
        raise DataError(
            f"{source}: no IDX files found (expected e.g. train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz, or t10k-*)"
        )
    if "train" in pairs and "test" in pairs:
        readers.check_dataset_size(source, int(pairs["train"][0].size + pairs["test"][0].size))
    name = display_name(path.name or str(path))
    if "train" in pairs and "test" in pairs:
        return name, pairs["train"], pairs["test"], []
    return name, pairs.get("train") or pairs["test"], None, []


def _idx_files(path: Path, source: str) -> dict[tuple[str, str], Path]:
    """The IDX files of directory ``path`` by (role, kind): ("train" or "test", "images" or
    "labels"), recognized by their names; two files for one role and kind are an error."""
    found: dict[tuple[str, str], Path] = {}
    for f in list_dir(path, source):
        lower = f.name.lower()
        kind = "images" if ("idx3" in lower or "images" in lower or "imgs" in lower) else (
            "labels" if ("idx1" in lower or "labels" in lower) else None
        )
        role = "test" if ("t10k" in lower or "test" in lower) else (
            "train" if "train" in lower else None
        )
        if kind is None or role is None or not path_is("file", f, source):
            continue
        if (role, kind) in found:
            raise DataError(
                f"{source}: two {role} {kind} files ({quote_name(found[(role, kind)].name)}, {quote_name(f.name)}); "
                "keep one of each"
            )
        found[(role, kind)] = f
    return found


def _read_idx_file(path: Path, source: str, kind: str) -> np.ndarray:
    """Parse one IDX file (gzip detected by its magic bytes, not its name). ``kind`` is
    ``"images"`` (N x H x W) or ``"labels"`` (N). Sizes are checked from the header before any
    data is read or decompressed; a gzip stream is never inflated past what the header declares."""
    where = f"{source}: {quote_name(path.name)}"
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
    head = bytes(read_exact(stream, 4))
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
    raw_dims = bytes(read_exact(stream, 4 * ndim))
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{where}: corrupt IDX header (truncated dimensions)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    if dims[0] == 0:
        raise DataError(f"{where}: holds no {kind}")
    if kind == "images":
        readers.check_image_shape(where, (1, dims[1], dims[2]))
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    if kind == "images":
        readers.check_dataset_size(where, count)
    elif max(nbytes, count * 8) > readers.MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: IDX header declares {count:,} labels; the limit is "
            f"{readers.MAX_DATASET_BYTES // 8:,} (archgen.readers.MAX_DATASET_BYTES)"
        )
    header = 4 + 4 * ndim
    if file_size is not None and file_size - header != nbytes:
        raise DataError(
            f"{where}: corrupt IDX header: dimensions {list(dims)} need {nbytes} data bytes but "
            f"the file holds {file_size - header}"
        )
    buf = read_exact(stream, nbytes)
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

"""Writing MNIST-format (IDX) files for the data tests: one helper for every test module."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(dims: tuple[int, ...] | list[int], payload: bytes, type_code: int = 0x08) -> bytes:
    """An IDX file's bytes: the magic (type code, rank), the big-endian dimensions, the payload."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True, type_code: int = 0x08) -> None:
    """``array`` as unsigned bytes in an IDX file (gzip-compressed unless ``gz`` is False)."""
    array = np.asarray(array)
    data = idx_bytes(array.shape, array.astype(np.uint8).tobytes(), type_code)
    path.write_bytes(gzip.compress(data) if gz else data)

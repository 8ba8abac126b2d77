"""Hostile and malformed datasets: every one ends in a one-line DataError that names the file,
quickly, without a huge allocation (archgen.readers' limits), never another exception type."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from idx_helpers import idx_bytes

import archgen.readers as readers
from archgen.data import load_dataset
from archgen.errors import DataError
from archgen.read_npz import read_npz

MAX_MESSAGE = 300

# ---------------------------------------------------------------------------------------------
# helpers


def write_idx_pair(root: Path, images: bytes, labels: bytes, *, gz: bool = False) -> None:
    wrap = gzip.compress if gz else (lambda b: b)
    (root / "train-images-idx3-ubyte").write_bytes(wrap(images))
    (root / "train-labels-idx1-ubyte").write_bytes(wrap(labels))


def good_idx_images(n=20, h=3, w=3, dtype=">u1", code=0x08, values=None) -> bytes:
    arr = np.arange(n * h * w).reshape(n, h, w) % 7 if values is None else values
    return idx_bytes((n, h, w), np.asarray(arr).astype(dtype).tobytes(), code)


def good_idx_labels(n=20, dtype=">u1", code=0x08, values=None) -> bytes:
    arr = np.arange(n) % 2 if values is None else values
    return idx_bytes((n,), np.asarray(arr).astype(dtype).tobytes(), code)


def assert_one_line(exc: DataError, root: str | Path | None = None) -> str:
    msg = str(exc)
    assert "\n" not in msg and "\r" not in msg, msg
    shown = msg.replace(str(root), "") if root is not None else msg
    assert len(shown) <= MAX_MESSAGE, f"{len(shown)} characters: {msg}"
    msg.encode("utf-8")  # no lone surrogates from undecodable file names
    return msg


def raises_data_error(fn, match: str, root=None) -> str:
    start = time.perf_counter()
    with pytest.raises(DataError, match=match) as info:
        fn()
    assert time.perf_counter() - start < 10, "took too long: a hang or a huge allocation"
    return assert_one_line(info.value, root)


def check_outcome(load, root) -> None:
    """The property every hostile input must satisfy: a valid dataset or a short DataError."""
    try:
        ds = load()
    except DataError as exc:
        assert_one_line(exc, root)
        event("DataError")  # --hypothesis-show-statistics shows how often each outcome occurs
        return
    event("loaded")
    assert 1 <= ds.num_classes <= readers.MAX_CLASSES
    assert len(ds.class_names) == ds.num_classes
    for split in (ds.train, ds.val, ds.test.open("property check")):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == ds.input_shape
        assert bool(torch.isfinite(split.x).all())
        assert int(split.y.min()) >= 0 and int(split.y.max()) < ds.num_classes


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width x height`` and whose image data is a few bytes: Pillow
    reads the size from the header, so only a pre-decoding check can stop it cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def make_class_folders(root: Path, per_class: int = 6, size=(4, 4)) -> None:
    for ci, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full(size, 40 * ci + 5 * i, dtype=np.uint8)
            (root / name / f"{i}.png").write_bytes(png_bytes(arr))


def npy_member(shape, dtype="<f4", data: bytes = b"") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def write_zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


# ---------------------------------------------------------------------------------------------
# npz labels


def test_npz_huge_labels_without_num_classes_are_refused_quickly(tmp_path):
    # Used to hang: one class name was built per possible label (2**62 of them).
    np.savez(tmp_path / "big.npz", x=np.zeros((20, 4, 4)), y=np.full(20, 2**62, dtype=np.int64))
    msg = raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'big.npz'}"),
                            r"label 4611686018427387904 is too large: at most 100,000 classes", tmp_path)
    assert "MAX_CLASSES" in msg and "'y'" in msg


def test_npz_uint64_labels_do_not_wrap_to_negative(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((20, 4, 4)), y=np.full(20, 2**64 - 1, dtype=np.uint64))
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'u.npz'}"), "18446744073709551615 is too large")


def test_npz_labels_are_bounded_by_num_classes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 4, 4)), y=np.arange(20) % 4)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'd.npz'}", num_classes=3),
                      r"label 3 is outside the class range 0\.\.2")
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'd.npz'}", num_classes=10**30),
                      r"num_classes must be an integer in 1\.\.100,000")
    np.savez(tmp_path / "n.npz", x=np.zeros((20, 4, 4)), y=np.r_[np.arange(19) % 2, -5])
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'n.npz'}"), "label -5 is negative")


@pytest.mark.parametrize("value, match", [
    (0.5, r"label 0 is 0\.5; labels must be integer class indices"),
    (np.nan, "label 0 is nan"),
    (np.inf, "label 0 is inf"),
    (1e300, "is too large"),
])
def test_npz_float_labels(tmp_path, value, match):
    np.savez(tmp_path / "f.npz", x=np.zeros((20, 4, 4)), y=np.full(20, value))
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'f.npz'}"), match)


# ---------------------------------------------------------------------------------------------
# class names


def test_class_names_of_the_wrong_length_or_dtype(tmp_path):
    x, y = np.zeros((20, 4, 4)), np.arange(20) % 3

    def load(names, **kw):
        np.savez(tmp_path / "c.npz", x=x, y=y, class_names=names)
        return load_dataset(f"npz:{tmp_path / 'c.npz'}", **kw)

    raises_data_error(lambda: load(np.array(["a", "b"])), r"label 2 has no class name: class_names lists 2")
    raises_data_error(lambda: load(np.array(["a", "b", "c", "d"]), num_classes=3),
                      "names 4 classes but the spec has num_classes=3")
    raises_data_error(lambda: load(np.array([0.5, 1.5, 2.5])), "expected a 1-d array of strings")
    raises_data_error(lambda: load(np.array([["a", "b", "c"]])), "expected a 1-d array of strings")
    raises_data_error(lambda: load(np.array(["a", "b", "x" * 10_000])),
                      "class name 2 has 10,000 characters")
    # More names than labels: the names define the classes (a class may have no samples).
    ds = load(np.array(["a", "b", "c", "d"]))
    assert ds.num_classes == 4 and ds.class_names == ["a", "b", "c", "d"]
    ds = load(np.array([b"a", b"\xff", b"c"]))  # byte strings are decoded, bad bytes replaced
    assert ds.class_names == ["a", "\ufffd", "c"]


# ---------------------------------------------------------------------------------------------
# npz archives


@pytest.mark.parametrize("cut", [0, 10, 100, -200, -30, -1])
def test_truncated_npz_names_the_file(tmp_path, cut):
    np.savez_compressed(tmp_path / "full.npz", x=np.random.default_rng(0).random((30, 4, 4)),
                        y=np.arange(30) % 3)
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:cut])
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'cut.npz'}"), r"npz:.*cut\.npz: ")


def test_corrupt_deflate_stream_and_crc_are_data_errors(tmp_path):
    np.savez_compressed(tmp_path / "full.npz", x=np.random.default_rng(0).random((30, 4, 4)),
                        y=np.arange(30) % 3)
    raw = bytearray((tmp_path / "full.npz").read_bytes())
    for offset in (60, 200, 400):
        bad = bytearray(raw)
        bad[offset] ^= 0xFF
        (tmp_path / "bad.npz").write_bytes(bytes(bad))
        raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'bad.npz'}"), r"bad\.npz")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reader_reads_what_numpy_wrote(tmp_path, compressed):
    # The archive is parsed by archgen (to check sizes before reading); it must agree with numpy
    # on byte order, Fortran order and every numeric dtype.
    rng = np.random.default_rng(5)
    x = np.asfortranarray(rng.random((12, 3, 4, 5))).astype(">f4", order="F")
    y = (np.arange(12) % 3).astype(">u2")
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "r.npz", x=x, y=y, x_test=x[:3].astype("<f2"), y_test=y[:3].astype("<i1"),
         class_names=np.array([b"a", b"b", b"c"]), extra=np.array([object()], dtype=object))
    name, (rx, ry), (tx, ty), names = read_npz(tmp_path / "r.npz", None)
    assert name == "r" and names == ["a", "b", "c"]
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
    np.testing.assert_array_equal(tx, x[:3].astype("<f2"))
    assert ry.dtype == np.int64 and ty.tolist() == [0, 1, 2]


def test_npz_that_is_not_an_archive(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros((4, 4)))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'single.npz'}"), "single .npy array")
    (tmp_path / "empty.npz").write_bytes(b"")
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'empty.npz'}"), "cannot read NumPy archive")
    (tmp_path / "dir.npz").mkdir()
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'dir.npz'}"), "is not a regular file")


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([np.zeros(3), "evil"], dtype=object), y=np.zeros(2))
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'o.npz'}"), r"'x': holds Python objects")


def test_npy_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path):
    path = tmp_path / "h.npz"
    write_zip(path, {"x.npy": npy_member((10**9, 1000, 1000)), "y.npy": npy_member((3,), "<i8")})
    raises_data_error(lambda: load_dataset(f"npz:{path}"), r"'x': declares shape .* the limit is 4 GiB")
    # A modest shape whose data is missing: truncated, not a 4 GiB buffer of zeros.
    write_zip(path, {"x.npy": npy_member((100, 4, 4), data=b"\0" * 10), "y.npy": npy_member((3,), "<i8")})
    raises_data_error(lambda: load_dataset(f"npz:{path}"), "truncated or corrupt")
    write_zip(path, {"x.npy": npy_member((-1, 4)), "y.npy": npy_member((3,), "<i8")})
    raises_data_error(lambda: load_dataset(f"npz:{path}"), r"'x': has shape \[-1, 4\]")
    write_zip(path, {"x.npy": b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 70000})
    raises_data_error(lambda: load_dataset(f"npz:{path}"), "cannot read NumPy archive")


def test_zip_bomb_member_is_not_inflated_past_its_header(tmp_path):
    # x.npy declares 20 x 4 x 4 float32 (1,280 bytes) but inflates to 64 MiB: only the declared
    # bytes are read, the rest is never decompressed.
    data = np.zeros((20, 4, 4), dtype="<f4").tobytes() + b"\0" * (64 * 2**20)
    path = tmp_path / "bomb.npz"
    write_zip(path, {"x.npy": npy_member((20, 4, 4), data=data),
                     "y.npy": npy_member((20,), "<i8", (np.arange(20) % 2).astype("<i8").tobytes())},
              method=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    start = time.perf_counter()
    ds = load_dataset(f"npz:{path}")
    assert ds.num_classes == 2 and time.perf_counter() - start < 5


def test_npz_duplicate_members_are_refused(tmp_path):
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("x.npy", npy_member((3,), "<i8", b"\0" * 24))
        zf.writestr("x.npy", npy_member((3,), "<i8", b"\0" * 24))
    raises_data_error(lambda: load_dataset(f"npz:{path}"), "holds 'x' twice")


@pytest.mark.parametrize("x, match", [
    (np.zeros((20, 1, 4, 4, 1)), r"'x' has shape \[20, 1, 4, 4, 1\]; expected"),
    (np.zeros((20, 16)), r"'x' has shape \[20, 16\]"),
    (np.zeros((20, 0, 4)), r"images are 1x0x4 \(C x H x W\); every size must be at least 1"),
    (np.zeros((0, 4, 4)), r"'x' holds 0 images but 'y' has shape \[20\]"),
    (np.zeros((20, 4, 4), dtype=bool), "'x' has dtype bool; expected integer or floating-point"),
    (np.zeros((20, 4, 4), dtype=complex), "'x' has dtype complex128"),
    (np.full((20, 4, 4), "a"), "'x' has dtype <U1"),
    (np.zeros((20, 4, 4), dtype="datetime64[s]"), "'x': has dtype datetime64"),
    (np.r_[np.zeros((19, 4, 4)), np.full((1, 4, 4), np.nan)], r"image 19 holds nan"),
    (np.full((20, 4, 4), 1e300), r"image 0 holds 1e\+300; pixel values must be finite"),
    (np.zeros((20, 100, 5, 5)), "images have 100 channels; the limit is 64"),
    (np.zeros((20, 1, 5000, 1), dtype=np.uint8), "images are 5000x1 pixels; the limit is 4096"),
])
def test_npz_bad_images(tmp_path, x, match):
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(20) % 2)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'x.npz'}"), match)


@pytest.mark.parametrize("y, match", [
    (np.zeros((20, 3)), r"'y' has shape \[20, 3\]; expected one label per image"),
    (np.full(20, "cat"), "'y': labels have dtype <U3"),
    (np.zeros(20, dtype=bool), "'y': labels have dtype bool"),
    (np.zeros(20, dtype=complex), "labels have dtype complex128"),
])
def test_npz_bad_labels(tmp_path, y, match):
    np.savez(tmp_path / "y.npz", x=np.zeros((20, 4, 4)), y=y)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'y.npz'}"), match)


def test_normalization_overflow_is_a_data_error(tmp_path):
    x = np.full((20, 2, 2), 3e38, dtype=np.float32)
    np.savez(tmp_path / "o.npz", x=x, y=np.arange(20) % 2, x_test=-x[:4], y_test=np.arange(4) % 2)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'o.npz'}"),
                      "the test split overflows float32 once normalized")


def test_dataset_memory_limit_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DATASET_BYTES", 1000)
    np.savez(tmp_path / "m.npz", x=np.zeros((20, 4, 4), dtype=np.uint8), y=np.arange(20) % 2)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'm.npz'}"),
                      r"the limit is 1000 bytes \(archgen.readers.MAX_DATASET_BYTES\)")
    write_idx_pair(tmp_path, good_idx_images(20, 4, 4), good_idx_labels(20), gz=True)
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "MAX_DATASET_BYTES")
    folder = tmp_path / "f"
    make_class_folders(folder)
    raises_data_error(lambda: load_dataset(f"folder:{folder}", input_shape=(3, 16, 16)),
                      "MAX_DATASET_BYTES")


# ---------------------------------------------------------------------------------------------
# idx


def test_idx_float_images_with_nan_or_inf_are_refused(tmp_path):
    values = np.zeros((20, 3, 3), dtype=np.float32)
    values[7, 1, 2] = np.inf
    write_idx_pair(tmp_path, good_idx_images(dtype=">f4", code=0x0D, values=values), good_idx_labels())
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), r"'train-images-idx3-ubyte': image 7 holds inf")
    values[7, 1, 2] = np.nan
    write_idx_pair(tmp_path, good_idx_images(dtype=">f8", code=0x0E, values=values), good_idx_labels())
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "image 7 holds nan")


def test_idx_float_and_negative_labels_are_refused(tmp_path):
    labels = (np.arange(20) % 2).astype(np.float32)
    labels[3] = 0.5
    write_idx_pair(tmp_path, good_idx_images(), good_idx_labels(dtype=">f4", code=0x0D, values=labels))
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"),
                      r"'train-labels-idx1-ubyte': label 3 is 0\.5; labels must be integer")
    labels = np.arange(20) % 2
    labels[4] = -1
    write_idx_pair(tmp_path, good_idx_images(), good_idx_labels(dtype=">i2", code=0x0B, values=labels))
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "label -1 is negative")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims, match", [
    ((2**31, 4096, 4096), r"image values need 128 PiB as float32; the limit is 4 GiB"),
    ((100_000, 4096, 4096), "the limit is 4 GiB"),
    ((10, 100_000, 4), "images are 100000x4 pixels; the limit is 4096 per side"),
    ((10, 0, 4), r"images are 1x0x4"),
    ((0, 4, 4), "holds no images"),
])
def test_idx_header_claiming_a_huge_or_empty_size(tmp_path, gz, dims, match):
    write_idx_pair(tmp_path, idx_bytes(dims, b"\0" * 64), good_idx_labels(10), gz=gz)
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), match)


def test_idx_gzip_header_within_the_limit_but_no_data_allocates_nothing_big(tmp_path):
    import tracemalloc

    # 1,000,000 x 32 x 32 bytes (3.8 GiB as float32) is within the limit, but the data is absent:
    # the reader must not reserve a gigabyte on the header's word.
    write_idx_pair(tmp_path, idx_bytes((1_000_000, 32, 32), b"\0" * 100), good_idx_labels(10), gz=True)
    tracemalloc.start()
    try:
        raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"),
                          "need 1024000000 data bytes but the file holds 100")
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    finally:
        tracemalloc.stop()


def test_idx_labels_header_claiming_a_huge_count(tmp_path):
    write_idx_pair(tmp_path, good_idx_images(), idx_bytes((2**32 - 1,), b"\0" * 8), gz=True)
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "declares 4,294,967,295 labels; the limit")


@pytest.mark.parametrize("header, match", [
    (bytes([0, 0, 0x08, 0]), r"corrupt IDX header \(0 dimensions\)"),
    (bytes([0, 0, 0x08, 4]) + struct.pack(">IIII", 2, 2, 2, 2), "holds 4-d data; expected N x H x W"),
    (bytes([0, 0, 0x08, 3]) + b"\0" * 9, "truncated dimensions"),
])
def test_idx_bad_ndim(tmp_path, header, match):
    write_idx_pair(tmp_path, header, good_idx_labels())
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), match)


def test_idx_gzip_bomb_is_not_inflated_past_its_header(tmp_path):
    # The header declares 20 x 3 x 3 bytes; 64 MiB of zeros follow (about 64 KB compressed).
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(good_idx_images())]
    block = b"\0" * 2**20
    parts += [comp.compress(block) for _ in range(64)]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"".join(parts) + comp.flush())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(good_idx_labels()))
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "need 180 data bytes but the file holds more")


@pytest.mark.parametrize("raw", [b"", b"\x1f\x8b", b"\x1f\x8b\x08\x00" + b"\0" * 20, b"\0\0\x08"])
def test_idx_empty_and_broken_gzip_files(tmp_path, raw):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(raw)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(good_idx_labels()))
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), r"'train-images-idx3-ubyte\.gz': ")


def test_idx_truncated_gzip_data(tmp_path):
    full = gzip.compress(good_idx_images(200, 8, 8))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(full[: len(full) // 2])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(good_idx_labels(200)))
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), "cannot read")


def test_idx_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    write_idx_pair(tmp_path, good_idx_images(), good_idx_labels())
    real_open = open

    def deny(path, *args, **kwargs):
        if "images" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    raises_data_error(lambda: load_dataset(f"idx:{tmp_path}"), r"cannot read \(.*Permission denied")


# ---------------------------------------------------------------------------------------------
# folder


def test_decompression_bomb_png_is_refused(tmp_path):
    make_class_folders(tmp_path)
    bomb = tmp_path / "a" / "bomb.png"
    for width, height in ((20_000, 20_000), (10_000, 10_000)):  # Pillow's error, Pillow's warning
        bomb.write_bytes(png_header_only(width, height))
        raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                          r"image 'a/bomb\.png' refused as a decompression bomb.*MAX_SOURCE_PIXELS")


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    make_class_folders(tmp_path)
    (tmp_path / "a" / "big.png").write_bytes(png_header_only(9000, 9000))  # under Pillow's limit
    raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                      r"image 'a/big\.png' is 9000x9000 = 81,000,000 pixels; the limit is 67,108,864")


def test_first_image_too_large_to_set_the_input_shape(tmp_path):
    make_class_folders(tmp_path, size=(1, 5000))
    raises_data_error(lambda: load_dataset(f"folder:{tmp_path}"),
                      r"image 'a/0\.png' is 5000x1 pixels and sets the input shape; the limit is 4096")
    ds = load_dataset(f"folder:{tmp_path}", input_shape=(1, 2, 8))  # resized: fine
    assert ds.input_shape == (1, 2, 8)


@pytest.mark.parametrize("data", [
    b"",
    b"\x89PNG\r\n\x1a\n",
    png_bytes(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8))[:100],
    png_header_only(64, 64, bit_depth=8),  # IDAT too short for the declared size
])
def test_broken_pngs_name_the_file(tmp_path, data):
    make_class_folders(tmp_path)
    (tmp_path / "b" / "broken.png").write_bytes(data)
    raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                      r"cannot read image 'b/broken\.png' \(")


def test_weird_and_undecodable_file_names_stay_one_printable_line(tmp_path):
    root = os.fsencode(tmp_path)
    make_class_folders(tmp_path)
    os.rename(tmp_path / "a", os.fsdecode(root + b"/cl\xffass\nA"))
    bad = root + b"/b/evil\n\xfe\xff\x1b[31m.png"
    with open(bad, "wb") as f:
        f.write(b"not an image")
    msg = raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                            "cannot read image", tmp_path)
    assert "\\udcfe" in msg and "\\x1b" in msg
    os.remove(bad)
    ds = load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4))
    assert sorted(ds.class_names) == ["b", "cl\ufffdass\nA"]
    json.dumps(ds.describe()).encode("utf-8")


def test_symlink_loops_do_not_hang(tmp_path):
    make_class_folders(tmp_path)
    os.symlink("loop.png", tmp_path / "a" / "loop.png")  # points at itself
    os.symlink("c", tmp_path / "c")  # a class folder that is a loop
    os.symlink(tmp_path, tmp_path / "b" / "up")  # a folder cycle (not followed: one level only)
    ds = load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4))
    assert ds.class_names == ["a", "b"] and len(ds.train) + len(ds.val) + ds.test.n == 12


def test_unreadable_folders_and_images_are_data_errors(tmp_path, monkeypatch):
    from PIL import Image

    make_class_folders(tmp_path)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                      r"class folder 'b': cannot list the directory \(Permission denied\)")
    monkeypatch.setattr(Path, "iterdir", real_iterdir)

    def deny(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", deny)
    raises_data_error(lambda: load_dataset(f"folder:{tmp_path}", input_shape=(1, 4, 4)),
                      r"cannot read image 'a/0\.png' \(Permission denied\)")


# ---------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("source, match", [
    ("idx:", r"data source 'idx:' needs a path after the colon, e.g\. idx:"),
    ("npz:  ", "needs a path"),
    ("folder:", "needs a path"),
    ("digits:extra", "unknown data source 'digits:extra'"),
    ("", "unknown data source ''"),
    ("mnist" * 200_000, r"unknown data source 'mnistmnist.*\.\.\."),
    ("idx:a\x00b", "NUL byte"),
    ("npz:/nonexistent/\udcff\n.npz", "file does not exist"),
    ("idx:" + "a" * 5000, r"idx:aaaa.*\.\.\.a+: (directory does not exist|cannot access)"),
    ("folder:" + "/a" * 3000, "folder:/a/a.*(directory does not exist|cannot access)"),
    (None, "data source must be a string"),
    (Path("digits"), "data source must be a string"),
])
def test_bad_source_strings(source, match):
    raises_data_error(lambda: load_dataset(source), match)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (1, 28)}, "input_shape must be three integers"),
    ({"input_shape": "1,8"}, "input_shape must be three integers"),
    ({"input_shape": 5}, "input_shape must be three integers"),
    ({"input_shape": (1, 2.5, 8)}, "input_shape must be three integers"),
    ({"input_shape": (1, True, 8)}, "input_shape must be three integers"),
    ({"input_shape": (1, 0, 8)}, "three positive integers"),
    ({"input_shape": (1, 10**9, 10**9)}, r"images are 1000000000x1000000000 pixels; the limit is 4096"),
    ({"input_shape": (65, 8, 8)}, "65 channels; the limit is 64"),
    ({"input_shape": (3, 8, 8)}, r"images are 1x8x8 \(C x H x W\) but the spec expects 3x8x8"),
    ({"input_shape": (1, 10**5000, 8)}, r"images are <integer of 16610 bits>x8 pixels"),
    ({"num_classes": 10**5000}, r"num_classes must be an integer in 1\.\.100,000.*got <integer of"),
    ({"val_frac": 10**400}, "val_frac must lie strictly between 0 and 1"),
    ({"num_classes": "3"}, "num_classes must be an integer"),
    ({"num_classes": 2.5}, "num_classes must be an integer"),
    ({"num_classes": 0}, "num_classes must be an integer"),
    ({"num_classes": float("inf")}, "num_classes must be an integer"),
    ({"val_frac": "0.1"}, "val_frac must lie strictly between 0 and 1"),
    ({"val_frac": float("nan")}, "val_frac must lie strictly between 0 and 1"),
    ({"test_frac": None}, "test_frac must lie"),
    ({"seed": -1}, r"split seed must be an integer in 0\.\.4294967294"),
    ({"seed": 2**40}, "split seed"),
    ({"seed": 1.5}, "split seed"),
])
def test_bad_arguments(kwargs, match):
    raises_data_error(lambda: load_dataset("digits", **kwargs), match)


def test_npz_channels_last_mismatch_with_requested_shape(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((20, 5, 6, 3)), y=np.arange(20) % 2)
    ds = load_dataset(f"npz:{tmp_path / 'c.npz'}", input_shape=(3, 5, 6))
    assert ds.input_shape == (3, 5, 6)
    raises_data_error(lambda: load_dataset(f"npz:{tmp_path / 'c.npz'}", input_shape=(1, 5, 6)),
                      r"images are 5x6x3 \(C x H x W\) but the spec expects 1x5x6")


def test_cli_turns_a_hostile_dataset_into_one_line_and_exit_2(run_cli, tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({
        "schema_version": 1, "input_shape": [1, 4, 4], "num_classes": 2,
        "layers": [{"op": "dense", "units": 4}], "init": {"scheme": "kaiming_uniform"},
    }))
    np.savez(tmp_path / "big.npz", x=np.zeros((20, 4, 4)), y=np.full(20, 2**62))
    code, out, err = run_cli("train", str(spec), "--data", f"npz:{tmp_path / 'big.npz'}",
                             "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("archgen train: error: npz:") and "is too large" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# properties: whatever the bytes, a valid dataset or a short DataError

# hypothesis.extra.numpy warns when it casts generated floats into float16 and the like.
_QUIET_CASTS = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
PROPERTY = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def _rare(draw, n: int) -> bool:
    """True about once in ``n`` draws (``st.integers`` would favour 0, and so the rare branch)."""
    return draw(st.sampled_from(range(n))) == n - 1


_IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_file(draw, kind: str, n: int) -> bytes:
    """Bytes of an IDX file: random junk, or a header (sometimes lying) with data of any type."""
    if _rare(draw, 10):
        return draw(st.binary(max_size=48))
    code = draw(st.sampled_from(sorted(_IDX_CODES)))
    ndim = 3 if kind == "images" else 1
    if _rare(draw, 5):
        ndim = draw(st.sampled_from([0, 1, 2, 4] if kind == "images" else [0, 2, 3]))
    true_dims = [n] + [draw(st.integers(1, 3)) for _ in range(ndim - 1)] if ndim else []
    dims = list(true_dims)
    if ndim and _rare(draw, 8):  # a lying header
        i = draw(st.integers(0, ndim - 1))
        dims[i] = draw(st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1)))
    dtype = np.dtype(_IDX_CODES[code])
    native = dtype.newbyteorder("=")
    if kind == "labels":
        small = st.sampled_from([0, 1, 2] + ([-1] if native.kind == "i" else []))
        elements = small if native.kind in "iu" else st.one_of(
            small.map(float), st.floats(allow_nan=True, allow_infinity=True))
    elif native.kind == "f" and draw(st.booleans()):
        elements = st.floats(-1e3, 1e3, width=8 * native.itemsize)
    else:
        elements = None  # the whole range of the type, NaN and infinities included
    values = draw(hnp.arrays(native, tuple(true_dims), elements=elements))
    payload = values.astype(dtype).tobytes()
    if _rare(draw, 8):
        payload = payload[: draw(st.integers(0, len(payload)))] + draw(st.binary(max_size=4))
    raw = bytes([0, 0, code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload
    if draw(st.booleans()):
        raw = gzip.compress(raw)
        if _rare(draw, 8):
            raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@st.composite
def idx_dataset(draw):
    n = draw(st.one_of(st.integers(10, 24), st.integers(0, 24)))
    m = draw(st.sampled_from([n] * 5 + [n + 1]))
    return draw(idx_file("images", n)), draw(idx_file("labels", m))


@_QUIET_CASTS
@PROPERTY
@given(idx_dataset())
def test_property_idx_bytes(files):
    images, labels = files
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train-images-idx3-ubyte").write_bytes(images)
        (root / "train-labels-idx1-ubyte").write_bytes(labels)
        check_outcome(lambda: load_dataset(f"idx:{root}"), root)


_ANY_DTYPE = st.one_of(
    hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
    hnp.boolean_dtypes(), hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3),
    hnp.byte_string_dtypes(max_len=3), hnp.datetime64_dtypes(),
)


def any_array(max_dims: int = 5):
    return hnp.arrays(_ANY_DTYPE, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=4))


@st.composite
def images_array(draw, n: int):
    """Mostly plausible images of ``n`` samples (any real dtype, values including NaN/inf)."""
    if _rare(draw, 5):
        return draw(any_array())
    dtype = draw(st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes()))
    shape = draw(st.sampled_from([(n, 2, 2), (n, 1, 2, 3), (n, 2, 3, 1), (n, 3, 2, 2)]))
    elements = None  # the whole range of the type, NaN and infinities included
    if dtype.kind == "f" and draw(st.booleans()):
        elements = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def labels_array(draw, n: int):
    if _rare(draw, 5):
        return draw(any_array(max_dims=2))
    y = (np.arange(n) % draw(st.integers(1, 3))).astype(np.float64)
    if n and _rare(draw, 4):
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, 2**7 - 1, 0.5, np.nan, 2.0**62]))
    with np.errstate(all="ignore"):  # a NaN or 2**62 cast to uint8 is whatever it becomes
        y = y.astype(draw(st.sampled_from([np.int64, np.uint8, np.int8, np.float32, np.float64])))
    if _rare(draw, 5):
        y = y.reshape(-1, 1)
    return y


@st.composite
def npz_archive(draw) -> bytes:
    n = draw(st.one_of(st.integers(10, 16), st.integers(0, 16)))
    arrays = {"x": draw(images_array(n)), "y": draw(labels_array(n))}
    if _rare(draw, 4):
        m = draw(st.integers(0, 6))
        arrays["x_test"], arrays["y_test"] = draw(images_array(m)), draw(labels_array(m))
        if _rare(draw, 5):
            del arrays[draw(st.sampled_from(["x_test", "y_test"]))]
    if _rare(draw, 4):
        arrays["class_names"] = draw(st.one_of(
            st.lists(st.text(max_size=5), max_size=5).map(lambda v: np.array(v, dtype=str)), any_array(2)))
    if _rare(draw, 8):
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    raw = buf.getvalue()
    mutation = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip"]))
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    return raw


@_QUIET_CASTS
@PROPERTY
@given(npz_archive(), st.sampled_from([None, None, (1, 2, 2), (3, 2, 2), (1, 2, 3)]),
       st.sampled_from([None, None, 2, 3]))
def test_property_npz_arrays(raw, input_shape, num_classes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "d.npz").write_bytes(raw)
        check_outcome(lambda: load_dataset(f"npz:{root / 'd.npz'}", input_shape=input_shape,
                                           num_classes=num_classes), root)


_VALID_PNG = png_bytes(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10)


@st.composite
def png_file(draw) -> bytes:
    kind = draw(st.sampled_from(range(5)))
    if kind == 0:
        return draw(st.binary(max_size=120))
    if kind == 4:  # another format's magic bytes, then junk: Pillow goes by content, not name
        magic = draw(st.sampled_from([b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"P5\n", b"P6\n4 4\n255\n",
                                      b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x89PNG\r\n\x1a\n"]))
        return magic + draw(st.binary(max_size=120))
    if kind == 1:  # a real PNG of some size and mode
        h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        arr = draw(hnp.arrays(np.uint8, (h, w, 3)))
        return png_bytes(arr, draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16"])))
    raw = _VALID_PNG
    if kind == 2:
        return raw[: draw(st.integers(0, len(raw)))]
    i = draw(st.integers(0, len(raw) - 1))
    return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]


@_QUIET_CASTS
@PROPERTY
@given(png_file(), st.sampled_from(["-first.png", "z-last.png"]),
       st.sampled_from([None, (1, 4, 4), (3, 3, 5)]))
def test_property_folder_png_bytes(data, name, input_shape):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for cls in ("a", "b"):
            (root / cls).mkdir()
            for i in range(6):
                (root / cls / f"{i}.png").write_bytes(_VALID_PNG)
        (root / "a" / name).write_bytes(data)
        check_outcome(lambda: load_dataset(f"folder:{root}", input_shape=input_shape), root)

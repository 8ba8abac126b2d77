from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from idx_helpers import write_idx

from archgen.data import Dataset, SealedTest, Split, load_dataset
from archgen.errors import DataError

# ---------------------------------------------------------------------------------------------
# fixtures written by code



def id_images(n: int, h: int = 4, w: int = 4) -> np.ndarray:
    """uint8 images whose every pixel equals the sample id (ids < 256), so splits can be traced."""
    return np.repeat(np.arange(n, dtype=np.uint8), h * w).reshape(n, h, w)


def ids_of(split: Split, stats: dict) -> np.ndarray:
    raw = split.x[:, 0, 0, 0].double() * stats["std"][0] + stats["mean"][0]
    return np.rint(raw.numpy()).astype(int)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_default_split_sizes_shapes_and_train_only_normalization():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.name == "digits" and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    # 1,797 images: 15% test = 270, 15% val = 270, rest train.
    assert (len(ds.train), len(ds.val), ds.test.n) == (1257, 270, 270)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert tuple(ds.train.x.shape) == (1257, 1, 8, 8)
    # Statistics come from the training split: it is standardized exactly, validation only roughly.
    assert abs(float(ds.train.x.mean())) < 1e-5 and abs(float(ds.train.x.std()) - 1) < 1e-3
    assert abs(float(ds.val.x.mean())) > 1e-4
    from sklearn.datasets import load_digits

    images = load_digits().images
    assert ds.stats["mean"][0] == pytest.approx(images.mean(), rel=0.02)
    assert ds.stats["mean"][0] != pytest.approx(images.mean(), rel=1e-9)  # not the full data
    assert ds.stats["n_train"] == 1257 and ds.stats["test_split"] == "held_out"
    assert ds.class_names == [str(i) for i in range(10)]


def test_digits_split_is_stratified_and_seeded():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.y, c.val.y)
    counts = np.bincount(a.val.y.numpy(), minlength=10)
    # 270 of 1,797 with roughly 180 per class: stratification keeps each class at 27 +/- 1.
    assert counts.min() >= 26 and counts.max() <= 28


def test_fractions_are_configurable_and_checked():
    ds = load_dataset("digits", val_frac=0.1, test_frac=0.2)
    assert (len(ds.val), ds.test.n) == (180, 359)
    with pytest.raises(DataError, match="val_frac"):
        load_dataset("digits", val_frac=0.0)
    with pytest.raises(DataError, match="test_frac"):
        load_dataset("digits", test_frac=1.5)
    with pytest.raises(DataError, match="0.9"):
        load_dataset("digits", val_frac=0.5, test_frac=0.45)


def test_shape_and_label_range_mismatch_are_data_errors():
    with pytest.raises(DataError, match=r"1x8x8.*1x28x28"):
        load_dataset("digits", input_shape=(1, 28, 28))
    with pytest.raises(DataError, match=r"label 9 is outside the class range 0\.\.4"):
        load_dataset("digits", num_classes=5)
    ds = load_dataset("digits", num_classes=12)  # more outputs than labels is allowed
    assert ds.num_classes == 12 and len(ds.class_names) == 12


def test_unknown_source_names_the_choices():
    with pytest.raises(DataError, match=r"unknown data source 'mnist'.*idx:DIR"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# sealed test split


def test_sealed_test_opens_once_and_records_it():
    ds = load_dataset("digits")
    assert ds.test.opened == 0 and ds.test.n == 270
    assert "270" in repr(ds.test) and "tensor" not in repr(ds.test)
    with pytest.raises(ValueError, match="reason"):
        ds.test.open("")
    split = ds.test.open("final evaluation")
    assert isinstance(split, Split) and len(split) == 270
    assert ds.test.opened == 1 and ds.test.reasons == ["final evaluation"]
    with pytest.raises(RuntimeError, match="test split already opened"):
        ds.test.open("again")
    assert ds.test.opened == 1
    assert not hasattr(ds.test, "split") and not hasattr(ds.test, "_split")


def test_splits_are_disjoint_cover_everything_and_test_uses_train_stats(tmp_path):
    n = 200
    x = id_images(n)
    y = np.arange(n) % 4
    np.savez(tmp_path / "ids.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'ids.npz'}", seed=3)
    tr, va = ids_of(ds.train, ds.stats), ids_of(ds.val, ds.stats)
    te = ids_of(ds.test.open("check"), ds.stats)
    assert len(set(tr) | set(va) | set(te)) == n == len(tr) + len(va) + len(te)
    assert (len(tr), len(va), len(te)) == (140, 30, 30)
    assert ds.stats["mean"][0] == pytest.approx(tr.mean())
    assert ds.stats["std"][0] == pytest.approx(tr.std())


# ---------------------------------------------------------------------------------------------
# idx


def test_idx_with_own_test_split_keeps_it(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (100, 6, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(100) % 5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (30, 6, 5)), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(30) % 3, gz=False)
    ds = load_dataset(f"idx:{tmp_path}", val_frac=0.2)
    assert ds.input_shape == (1, 6, 5) and ds.num_classes == 5
    assert (len(ds.train), len(ds.val), ds.test.n) == (80, 20, 30)
    assert ds.stats["test_split"] == "shipped" and ds.stats["test_frac"] is None
    assert sorted(ds.test.open("t").y.tolist()) == sorted((np.arange(30) % 3).tolist())


def test_idx_mnist10k_is_split_70_15_15(mnist_dir):
    ds = load_dataset(f"idx:{mnist_dir}", input_shape=(1, 28, 28), num_classes=10)
    assert ds.input_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.val), ds.test.n) == (7000, 1500, 1500)
    assert ds.stats["mean"][0] == pytest.approx(33.8, abs=0.3)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x08\x03\x00\x00" + b"\x00" * 20, "corrupt IDX header"),  # bad magic
        (bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10, 4, 4) + b"\x00" * 50, r"need 160 data bytes"),
        (bytes([0, 0, 0x08, 3]) + b"\x00\x00", "truncated"),
        (b"", "corrupt IDX header"),
    ],
)
def test_corrupt_idx_is_a_data_error(tmp_path, payload, match):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(payload)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match=match):
        load_dataset(f"idx:{tmp_path}")


def test_idx_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no IDX files"):
        load_dataset(f"idx:{tmp_path}")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((10, 4, 4)))
    with pytest.raises(DataError, match="train labels file missing"):
        load_dataset(f"idx:{tmp_path}")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(9))
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_dataset(f"idx:{tmp_path}")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"idx:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_channels_last_and_own_test(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((60, 5, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3, x_test=x[:9], y_test=np.arange(9) % 3,
             class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", input_shape=(3, 5, 5))
    assert ds.input_shape == (3, 5, 5) and ds.class_names == ["a", "b", "c"]
    assert ds.test.n == 9 and len(ds.train) + len(ds.val) == 60
    assert len(ds.stats["mean"]) == 3
    # Per-channel normalization: each training channel has mean 0.
    assert torch.allclose(ds.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_npz_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 4, 4)))
    with pytest.raises(DataError, match=r"missing array\(s\) \['y'\]"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x=np.zeros((20, 4, 4)), y=np.r_[np.arange(19) % 2, -1])
    with pytest.raises(DataError, match="label -1 is negative"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}")
    np.savez(tmp_path / "c.npz", x=np.zeros((20, 4, 4)), y=np.full(20, 0.5))
    with pytest.raises(DataError, match="integer class indices"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 4, 4)), y=np.arange(6))  # one sample per class
    with pytest.raises(DataError, match="stratified split"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


# ---------------------------------------------------------------------------------------------
# folder


def make_folder(root, classes=("cat", "dog", "emu"), per_class=10, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (12 + i % 3, 10)  # varying sizes: the loader resizes
            shape = size[::-1] if mode == "L" else (*size[::-1], 3)
            arr = (rng.integers(0, 50, shape) + 60 * ci).astype(np.uint8)
            Image.fromarray(arr, mode=None).convert(mode).save(root / name / f"{i}.png")


def test_folder_resizes_to_input_shape_and_names_classes(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(f"folder:{tmp_path}", input_shape=(1, 8, 8), val_frac=0.2, test_frac=0.2)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 3
    assert ds.class_names == ["cat", "dog", "emu"]
    assert len(ds.train) + len(ds.val) + ds.test.n == 30
    assert np.bincount(ds.val.y.numpy()).tolist() == [2, 2, 2]
    # Class brightness differs by design; normalization keeps that ordering.
    means = [float(ds.train.x[ds.train.y == k].mean()) for k in range(3)]
    assert means[0] < means[1] < means[2]
    rgb = load_dataset(f"folder:{tmp_path}", input_shape=(3, 6, 7), val_frac=0.2, test_frac=0.2)
    assert tuple(rgb.train.x.shape[1:]) == (3, 6, 7)


def test_folder_without_shape_uses_first_image(tmp_path):
    make_folder(tmp_path)
    ds = load_dataset(f"folder:{tmp_path}", val_frac=0.2, test_frac=0.2)
    assert ds.input_shape == (1, 10, 12)


def test_folder_problems_are_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "zebra").mkdir()
    with pytest.raises(DataError, match="class folder 'zebra' has no images"):
        load_dataset(f"folder:{tmp_path}", input_shape=(1, 8, 8))
    (tmp_path / "zebra" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*0\.png"):
        load_dataset(f"folder:{tmp_path}", input_shape=(1, 8, 8))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'cat'}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'none'}")


def test_sealed_test_is_constructible_standalone():
    split = Split(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64))
    sealed = SealedTest(split)
    assert sealed.n == 3 and sealed.open("x") is split
    with pytest.raises(ValueError, match="Split needs"):
        Split(torch.zeros(3, 2, 2), torch.zeros(3, dtype=torch.int64))


def test_with_val_in_train_appends_validation_and_keeps_the_same_sealed_test():
    data = load_dataset("digits", seed=3)
    merged = data.with_val_in_train()
    assert len(merged.train) == len(data.train) + len(data.val)
    assert torch.equal(merged.train.x[: len(data.train)], data.train.x)
    assert torch.equal(merged.train.x[len(data.train):], data.val.x)
    assert torch.equal(merged.train.y[len(data.train):], data.val.y)
    assert merged.test is data.test  # still one seal: opening it through either counts once
    merged.test.open("final evaluation")
    with pytest.raises(RuntimeError, match="already opened once"):
        data.test.open("again")
    assert merged.stats["refit_on_train_plus_val"] is True and "refit_on_train_plus_val" not in data.stats

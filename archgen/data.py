"""Datasets with strict train / validation / test discipline.

``load_dataset(source)`` reads one of four sources into in-memory tensors:

* ``digits``      scikit-learn's bundled handwritten digits (1,797 images, 1x8x8, offline);
* ``idx:DIR``     MNIST-format files (gzip or raw): MNIST, Fashion-MNIST, KMNIST, notMNIST-style;
* ``npz:FILE``    a NumPy archive with arrays ``x`` and ``y`` (optionally ``x_test``/``y_test``
                  and ``class_names``);
* ``folder:DIR``  one sub-folder per class, images resized to the requested input shape.

Contracts:

* Splits are seeded and stratified (scikit-learn). A source that ships its own test split
  (an idx directory with both ``train-*`` and ``t10k-*`` files, an npz with ``x_test``) keeps it;
  the validation split is then carved out of its training data.
* Normalization (per-channel mean and standard deviation) uses the **training split only**; the
  same statistics are applied to validation and test. They are recorded in ``Dataset.stats``.
* The test split is sealed (:class:`SealedTest`): it can be opened once per dataset object, with a
  reason, and the opening is recorded. Nothing in the trainer's selection logic opens it.
* Every problem a user can cause (missing path, corrupt or hostile file, shape or label mismatch,
  empty class folder, a dataset over the size limits of :mod:`archgen.readers`) raises
  :class:`archgen.errors.DataError` with a one-line message naming the file and, in short, the bad
  value. The readers check every array the same way (:func:`archgen.readers.check_pair`); this
  module checks the arguments, the labels against ``num_classes`` and ``class_names``, the total
  size, and that normalized values stay finite.

The file formats are read by :mod:`archgen.readers`; this module splits and normalizes.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from archgen.errors import DataError
from archgen.readers import (
    MAX_CLASSES,
    check_dataset_size,
    check_image_shape,
    excerpt,
    read_digits,
    read_folder,
    read_idx_dir,
    read_npz,
    show_path,
    valid_unicode,
)

log = logging.getLogger(__name__)

SOURCES = ("digits", "idx:DIR", "npz:FILE", "folder:DIR")


@dataclass(frozen=True, eq=False)
class Split:
    """One split held in memory: ``x`` float32 ``[N, C, H, W]`` (normalized with the training
    split's statistics) and ``y`` int64 ``[N]`` class indices."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Split needs x [N,C,H,W] and y [N]; got x {tuple(self.x.shape)}, "
                f"y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


class SealedTest:
    """The test split, sealed: only an explicit final evaluation may open it, once.

    ``open(reason)`` returns the :class:`Split` the first time and records the reason; any second
    call raises ``RuntimeError``. ``opened`` counts the openings (0 or 1) and ``reasons`` lists
    them, so a run can prove it looked at the test data exactly once. ``n`` (the size) is public:
    knowing how many test images exist leaks nothing about them.
    """

    def __init__(self, split: Split) -> None:
        self.__split = split  # name-mangled so that casual attribute access does not reach it
        self.opened = 0
        self.reasons: list[str] = []

    @property
    def n(self) -> int:
        return len(self.__split)

    def open(self, reason: str) -> Split:
        if not reason or not reason.strip():
            raise ValueError("SealedTest.open needs a reason, e.g. 'final evaluation of run X'")
        if self.opened:
            raise RuntimeError(
                f"test split already opened once (reason: {self.reasons[0]!r}); it may be "
                "opened only once per run, for the final evaluation of the selected model"
            )
        self.opened += 1
        self.reasons.append(reason)
        log.info("test split opened (%d samples): %s", self.n, reason)
        return self.__split

    def __repr__(self) -> str:
        return f"SealedTest(n={self.n}, opened={self.opened})"


@dataclass(eq=False)
class Dataset:
    """A dataset ready for training: train and validation splits in memory, test sealed.

    ``stats`` records the normalization (``mean``, ``std`` per channel, computed on the training
    split) and the provenance of the splits (source, seed, fractions, sizes).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train: Split
    val: Split
    test: SealedTest
    class_names: list[str]
    stats: dict = field(default_factory=dict)

    def with_val_in_train(self) -> Dataset:
        """The same dataset with the validation split appended to the training split, for a
        final refit after selection. Normalization stays the training split's (the model is
        exported with it); ``val`` stays as it is but is no longer held out; the sealed test
        split is the same object, so it still opens only once."""
        merged = Split(torch.cat([self.train.x, self.val.x]), torch.cat([self.train.y, self.val.y]))
        return replace(self, train=merged, stats={**self.stats, "refit_on_train_plus_val": True})

    def describe(self) -> dict:
        """A JSON/YAML-friendly summary (no data), for run directories."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": self.test.n,
            "class_names": list(self.class_names),
            **{k: v for k, v in self.stats.items() if k not in ("n_train", "n_val", "n_test")},
        }


# ---------------------------------------------------------------------------------------------
# public entry point


def load_dataset(
    source: str = "digits",
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Load ``source`` and split it into train / validation / sealed test.

    ``val_frac`` and ``test_frac`` are fractions of all samples when the source has no test split
    of its own; when it has one, ``test_frac`` is ignored and ``val_frac`` is the fraction of the
    source's training data held out for validation. ``input_shape`` (C, H, W) is the shape the
    model expects: folder images are converted and resized to it; for the other sources it must
    match the data. ``num_classes`` (the model's output count) bounds the labels: every label must
    lie in ``[0, num_classes)``. Without it the count is ``max(label) + 1``, or the number of
    class names the source lists if that is larger (at most ``archgen.readers.MAX_CLASSES``).

    Raises ``DataError`` for anything wrong with the data or the arguments.
    """
    val_frac, test_frac = _check_fracs(val_frac, test_frac)
    seed = _check_seed(seed)
    if input_shape is not None:
        input_shape = _check_shape_arg(input_shape)
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)

    if not isinstance(source, str):
        raise DataError(f"data source must be a string such as 'digits', got {excerpt(source)}")
    where = show_path(source, 160)
    kind, colon, arg = source.partition(":")
    if kind in ("idx", "npz", "folder") and not arg.strip():
        raise DataError(
            f"data source {excerpt(source)} needs a path after the colon, e.g. {kind}:"
            + {"idx": "../shared/data/mnist10k", "npz": "data.npz", "folder": "images/"}[kind]
        )
    if "\x00" in arg:
        raise DataError(f"data source {excerpt(source)}: the path contains a NUL byte")
    if kind == "digits" and not colon:
        name, pool, own_test, class_names = read_digits()
    elif kind == "idx":
        name, pool, own_test, class_names = read_idx_dir(Path(arg))
    elif kind == "npz":
        name, pool, own_test, class_names = read_npz(Path(arg), input_shape)
    elif kind == "folder":
        name, pool, own_test, class_names = read_folder(Path(arg), input_shape)
    else:
        raise DataError(
            f"unknown data source {excerpt(source)}; use one of: {', '.join(SOURCES)} "
            "(e.g. idx:../shared/data/mnist10k)"
        )

    x_all, y_all = pool
    data_shape = tuple(int(d) for d in x_all.shape[1:])
    if input_shape is not None and data_shape != input_shape:
        raise DataError(
            f"{where}: images are {_fmt_shape(data_shape)} (C x H x W) but the spec expects "
            f"{_fmt_shape(input_shape)}; change the spec's input_shape to {list(data_shape)} "
            "or use data of that shape"
        )
    if own_test is not None and tuple(own_test[0].shape[1:]) != data_shape:
        raise DataError(
            f"{where}: test images are {_fmt_shape(tuple(own_test[0].shape[1:]))} but training "
            f"images are {_fmt_shape(data_shape)}"
        )
    check_dataset_size(where, int(x_all.size + (own_test[0].size if own_test is not None else 0)))

    labels = [y_all] if own_test is None else [y_all, own_test[1]]
    k = _check_labels(where, labels, num_classes, class_names)
    if len(class_names) < k:
        class_names = class_names + [str(i) for i in range(len(class_names), k)]

    if own_test is None:
        idx_train, idx_val, idx_test = _stratified_three_way(where, y_all, val_frac, test_frac, seed)
        x_test, y_test = x_all[idx_test], y_all[idx_test]
    else:
        idx_train, idx_val = _stratified_two_way(where, y_all, val_frac, seed)
        x_test, y_test = own_test
    x_train, y_train = x_all[idx_train], y_all[idx_train]
    x_val, y_val = x_all[idx_val], y_all[idx_val]

    mean, std = _channel_stats(x_train)
    stats = {
        "source": valid_unicode(source, "backslashreplace"),
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": None if own_test is not None else test_frac,
        "test_split": "shipped" if own_test is not None else "held_out",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "n_train": len(y_train),
        "n_val": len(y_val),
        "n_test": len(y_test),
    }
    log.info(
        "dataset %s: %d train / %d val / %d test, shape %s, %d classes",
        name, len(y_train), len(y_val), len(y_test), _fmt_shape(data_shape), k,
    )
    return Dataset(
        name=name,
        input_shape=data_shape,  # type: ignore[arg-type]
        num_classes=k,
        train=_to_split(where, "training", x_train, y_train, mean, std),
        val=_to_split(where, "validation", x_val, y_val, mean, std),
        test=SealedTest(_to_split(where, "test", x_test, y_test, mean, std)),
        class_names=class_names,
        stats=stats,
    )


# ---------------------------------------------------------------------------------------------
# argument checks

def _check_fracs(val_frac: float, test_frac: float) -> tuple[float, float]:
    out = []
    for label, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        try:
            value = float(frac) if isinstance(frac, numbers.Real) and not isinstance(frac, bool) else None
        except OverflowError:  # an int too large for a float
            value = None
        if value is None or not (0.0 < value < 1.0):
            raise DataError(f"{label} must lie strictly between 0 and 1, got {excerpt(frac)}")
        out.append(value)
    if out[0] + out[1] >= 0.9:
        raise DataError(
            f"val_frac + test_frac = {out[0] + out[1]:g} leaves too little training data; "
            "keep the sum below 0.9"
        )
    return out[0], out[1]


def _check_seed(seed: int) -> int:
    # seed and seed + 1 go to scikit-learn, which takes 0 .. 2**32 - 1.
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not (
        0 <= int(seed) <= 2**32 - 2
    ):
        raise DataError(f"the split seed must be an integer in 0..{2**32 - 2}, got {excerpt(seed)}")
    return int(seed)


def _check_shape_arg(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        items = list(shape) if not isinstance(shape, (str, bytes)) and len(shape) == 3 else None
    except TypeError:
        items = None
    if items is None or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in items
    ):
        raise DataError(f"input_shape must be three integers (C, H, W), got {excerpt(shape)}")
    out = tuple(int(d) for d in items)
    if min(out) < 1:
        raise DataError(f"input_shape must be three positive integers (C, H, W), got {excerpt(shape)}")
    check_image_shape(f"input_shape {excerpt(out)}", out)
    return out  # type: ignore[return-value]


def _check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or not (
        1 <= int(num_classes) <= MAX_CLASSES
    ):
        raise DataError(
            f"num_classes must be an integer in 1..{MAX_CLASSES:,} (archgen.readers.MAX_CLASSES), "
            f"got {excerpt(num_classes)}"
        )
    return int(num_classes)


def _check_labels(
    where: str, labels: list[np.ndarray], num_classes: int | None, class_names: list[str]
) -> int:
    """The number of classes: ``num_classes`` if given, else ``max(label) + 1`` or the number of
    class names, whichever is larger. Labels were checked by the readers (integral, 0 <= label <
    MAX_CLASSES); here they are checked against ``num_classes`` and ``class_names``."""
    lo = min(int(y.min()) for y in labels)
    hi = max(int(y.max()) for y in labels)
    if lo < 0:
        raise DataError(f"{where}: label {lo} is negative; labels must be class indices 0..K-1")
    if hi >= MAX_CLASSES:
        raise DataError(
            f"{where}: label {hi} is too large: at most {MAX_CLASSES:,} classes are supported "
            "(archgen.readers.MAX_CLASSES)"
        )
    if class_names and hi >= len(class_names):
        raise DataError(
            f"{where}: label {hi} has no class name: class_names lists {len(class_names)} names "
            f"(labels 0..{len(class_names) - 1})"
        )
    if num_classes is not None:
        if hi >= num_classes:
            raise DataError(
                f"{where}: label {hi} is outside the class range 0..{num_classes - 1} of the spec "
                f"(num_classes={num_classes}); set num_classes to at least {hi + 1} or fix the "
                "labels"
            )
        if len(class_names) > num_classes:
            raise DataError(
                f"{where}: the data names {len(class_names)} classes but the spec has "
                f"num_classes={num_classes}; they must agree"
            )
        return num_classes
    return max(hi + 1, len(class_names))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------------
# splitting and normalization

def _stratified_three_way(
    source: str, y: np.ndarray, val_frac: float, test_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(y)
    n_test = max(1, round(test_frac * n))
    n_val = max(1, round(val_frac * n))
    idx = np.arange(n)
    rest, test = _split_indices(source, idx, y, n_test, seed)
    train, val = _split_indices(source, rest, y[rest], n_val, seed + 1)
    return train, val, test


def _stratified_two_way(
    source: str, y: np.ndarray, val_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, round(val_frac * len(y)))
    return _split_indices(source, np.arange(len(y)), y, n_val, seed)


def _split_indices(
    source: str, idx: np.ndarray, y: np.ndarray, n_out: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        keep, out = train_test_split(idx, test_size=n_out, random_state=seed, stratify=y, shuffle=True)
    except ValueError:
        counts = np.bincount(y)
        present = counts[counts > 0]
        raise DataError(
            f"{source}: cannot make a stratified split of {len(y)} samples into {n_out} held out "
            f"and {len(y) - n_out} kept ({len(present)} classes, the smallest with "
            f"{int(present.min())} samples): each class needs at least 2 samples and each part "
            "one per class; add samples or change val_frac/test_frac"
        ) from None
    return np.sort(keep), np.sort(out)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x`` [N,C,H,W], computed in float64 for stability."""
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).astype(np.float64)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    # A constant channel would divide by zero; leave it unscaled instead.
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std


def _to_split(
    where: str, part: str, x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> Split:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    xt = ((xt - m) / s).contiguous()
    if not bool(torch.isfinite(xt).all()):
        raise DataError(
            f"{where}: the {part} split overflows float32 once normalized with the training "
            f"split's mean {excerpt(float(mean.max()), 20)} and std {excerpt(float(std.min()), 20)}"
            "; rescale the data to a moderate range"
        )
    return Split(x=xt, y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))

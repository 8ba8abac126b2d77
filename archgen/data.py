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

The file formats are read by :mod:`archgen.read_idx`, :mod:`archgen.read_npz` and
:mod:`archgen.read_folder` (their shared limits and checks: :mod:`archgen.readers`); the
arguments are checked by :mod:`archgen.data_checks`; this module splits and normalizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from archgen.data_checks import (
    check_fracs,
    check_input_shape,
    check_num_classes,
    check_seed,
    count_classes,
)
from archgen.errors import DataError
from archgen.inputs import excerpt
from archgen.read_folder import read_folder
from archgen.read_idx import read_idx_dir
from archgen.read_npz import read_npz
from archgen.readers import (
    Arrays,
    SourceData,
    check_dataset_size,
    read_digits,
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
    val_frac, test_frac = check_fracs(val_frac, test_frac)
    seed = check_seed(seed)
    if input_shape is not None:
        input_shape = check_input_shape(input_shape)
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
    name, pool, own_test, class_names = _read_source(source, input_shape)
    where = show_path(source, 160)
    data_shape = _check_shapes(where, pool, own_test, input_shape)
    labels = [pool[1]] if own_test is None else [pool[1], own_test[1]]
    k = count_classes(where, labels, num_classes, class_names)
    if len(class_names) < k:
        class_names = class_names + [str(i) for i in range(len(class_names), k)]

    train, val, test = _split(where, pool, own_test, val_frac, test_frac, seed)
    mean, std = _channel_stats(train[0])
    stats = {
        "source": valid_unicode(source, "backslashreplace"),
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": None if own_test is not None else test_frac,
        "test_split": "shipped" if own_test is not None else "held_out",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "n_train": len(train[1]),
        "n_val": len(val[1]),
        "n_test": len(test[1]),
    }
    log.info(
        "dataset %s: %d train / %d val / %d test, shape %s, %d classes",
        name, len(train[1]), len(val[1]), len(test[1]), _fmt_shape(data_shape), k,
    )
    return Dataset(
        name=name,
        input_shape=data_shape,
        num_classes=k,
        train=_to_split(where, "training", train, mean, std),
        val=_to_split(where, "validation", val, mean, std),
        test=SealedTest(_to_split(where, "test", test, mean, std)),
        class_names=class_names,
        stats=stats,
    )


def _read_source(source: str, input_shape: tuple[int, int, int] | None) -> SourceData:
    """The raw arrays of ``source`` (``digits``, ``idx:DIR``, ``npz:FILE``, ``folder:DIR``)."""
    if not isinstance(source, str):
        raise DataError(f"data source must be a string such as 'digits', got {excerpt(source)}")
    kind, colon, arg = source.partition(":")
    if kind in ("idx", "npz", "folder") and not arg.strip():
        raise DataError(
            f"data source {excerpt(source)} needs a path after the colon, e.g. {kind}:"
            + {"idx": "../shared/data/mnist10k", "npz": "data.npz", "folder": "images/"}[kind]
        )
    if "\x00" in arg:
        raise DataError(f"data source {excerpt(source)}: the path contains a NUL byte")
    if kind == "digits" and not colon:
        return read_digits()
    if kind == "idx":
        return read_idx_dir(Path(arg))
    if kind == "npz":
        return read_npz(Path(arg), input_shape)
    if kind == "folder":
        return read_folder(Path(arg), input_shape)
    raise DataError(
        f"unknown data source {excerpt(source)}; use one of: {', '.join(SOURCES)} "
        "(e.g. idx:../shared/data/mnist10k)"
    )


def _check_shapes(
    where: str, pool: Arrays, own_test: Arrays | None, input_shape: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """The images' shape (C, H, W): the spec's ``input_shape`` when given, the same for a shipped
    test split, and all images together within the size limit."""
    x_all = pool[0]
    c, h, w = (int(d) for d in x_all.shape[1:])
    data_shape = (c, h, w)
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
    return data_shape


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------------
# splitting and normalization


def _split(
    where: str, pool: Arrays, own_test: Arrays | None, val_frac: float, test_frac: float, seed: int
) -> tuple[Arrays, Arrays, Arrays]:
    """(train, validation, test): a stratified three-way split of ``pool``, or a two-way split
    of it when the source ships its own test split."""
    x_all, y_all = pool
    if own_test is None:
        idx_train, idx_val, idx_test = _stratified_three_way(where, y_all, val_frac, test_frac, seed)
        test = x_all[idx_test], y_all[idx_test]
    else:
        idx_train, idx_val = _stratified_two_way(where, y_all, val_frac, seed)
        test = own_test
    return (x_all[idx_train], y_all[idx_train]), (x_all[idx_val], y_all[idx_val]), test


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


def _to_split(where: str, part: str, pair: Arrays, mean: np.ndarray, std: np.ndarray) -> Split:
    """``pair`` as tensors, the images normalized with ``mean`` and ``std``; values that overflow
    float32 once normalized are an error."""
    x, y = pair
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

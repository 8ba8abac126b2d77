"""The checks of :func:`archgen.data.load_dataset`'s arguments, and of the labels a source holds
against ``num_classes`` and its class names. Each raises :class:`archgen.errors.DataError` with
one line naming the argument and, in short, the bad value.
"""

from __future__ import annotations

import numbers

import numpy as np

from archgen.errors import DataError
from archgen.inputs import excerpt
from archgen.readers import MAX_CLASSES, check_image_shape


def check_fracs(val_frac: float, test_frac: float) -> tuple[float, float]:
    """Both fractions as floats strictly between 0 and 1, their sum below 0.9."""
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


def check_seed(seed: int) -> int:
    """The split seed as an int; seed and seed + 1 go to scikit-learn, which takes 0 .. 2**32 - 1."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not (
        0 <= int(seed) <= 2**32 - 2
    ):
        raise DataError(f"the split seed must be an integer in 0..{2**32 - 2}, got {excerpt(seed)}")
    return int(seed)


def check_input_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``shape`` as three positive ints (C, H, W) within the readers' image limits."""
    try:
        items = list(shape) if not isinstance(shape, (str, bytes)) and len(shape) == 3 else None
    except TypeError:
        items = None
    if items is None or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in items
    ):
        raise DataError(f"input_shape must be three integers (C, H, W), got {excerpt(shape)}")
    c, h, w = (int(d) for d in items)
    out = (c, h, w)
    if min(out) < 1:
        raise DataError(f"input_shape must be three positive integers (C, H, W), got {excerpt(shape)}")
    check_image_shape(f"input_shape {excerpt(out)}", out)
    return out


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int in 1..MAX_CLASSES."""
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or not (
        1 <= int(num_classes) <= MAX_CLASSES
    ):
        raise DataError(
            f"num_classes must be an integer in 1..{MAX_CLASSES:,} (archgen.readers.MAX_CLASSES), "
            f"got {excerpt(num_classes)}"
        )
    return int(num_classes)


def count_classes(
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

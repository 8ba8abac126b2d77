"""argparse ``type=`` functions: every number on the command line is checked where it is parsed,
so a bad flag is one ``archgen CMD: error: argument --flag: ...`` line and exit 2, before
anything is read or written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type) -> float | int:
    text = text.strip()
    try:
        value = int(text) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a finite number")
    return value


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            bound = f"in [{low:,}, {high:,}]" if high is not None else f">= {low:,}"
            raise argparse.ArgumentTypeError(f"{value} must be an integer {bound}")
        return value

    parse.__name__ = "integer"
    return parse


def workers_count(text: str) -> int | str:
    """``auto`` or a worker count in [1, 512]."""
    if text.strip().lower() == "auto":
        return "auto"
    return int_in(1, 512)(text)


workers_count.__name__ = "worker count"


def float_in(low: float, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A finite number in the interval [low, high] (either end open on request)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            left = "(" if low_open else "["
            right = (")" if high_open else "]") if high is not None else ")"
            raise argparse.ArgumentTypeError(
                f"{value:g} must be in {left}{low:g}, {'inf' if high is None else f'{high:g}'}{right}"
            )
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
seed_int = int_in(0, 2**32 - 2)  # the data split passes seed + 1 to scikit-learn
threads_int = int_in(1, 1024)
batch_int = int_in(1, 65_536)
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
fraction = float_in(0.0, 1.0, low_open=True, high_open=True)

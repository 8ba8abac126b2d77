"""Exceptions a user can cause in costmodel (the archgen CLI maps them to exit code 2)."""

from __future__ import annotations


class CostModelError(ValueError):
    """Bad input to the cost model: unknown device, missing CUDA, a foreign or stale profile,
    a module with a layer type the estimator cannot price (named in the message)."""

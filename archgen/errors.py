"""Exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a malformed spec, unreadable data, an impossible constraint, a bad option."""


class SpecError(UserError):
    """An ArchSpec (or its file) is invalid; the message names the layer index and the bad value."""


class ConstraintError(UserError):
    """A generator or search constraint that no candidate can meet; the message names it."""


class DataError(UserError):
    """A dataset that cannot be read or does not fit the spec."""


class SearchConfigError(UserError):
    """A search configuration (strategy, grid/manual YAML, storage URL) that is invalid."""


class NothingTrainedError(UserError):
    """A search that ended without a trained trial to select (a budget too short, every candidate
    screened out or failed); the message says why and, where the budget was the cause, what would work."""

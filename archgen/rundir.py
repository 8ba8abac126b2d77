"""Run directories: what archgen may write into, replace or resume.

A run directory carries a marker file (``.archgen-run``, JSON ``{"kind": "search"|"train"}``)
written before anything else. archgen writes only into a directory that is new, empty, or a run
directory of the same kind; ``--force`` may replace only a previous run directory of that kind.
A user's own folder passed as ``--out`` is refused whole, with or without ``--force``: nothing
outside a run directory is ever overwritten or deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

from archgen.errors import UserError
from archgen.fsio import atomic_write_json

MARKER = ".archgen-run"
KINDS = ("search", "train")
# Files an older archgen (before the marker) left in each kind of run directory.
_LEGACY_SIGNS = (
    ("search", ("config.yaml", "study.journal")),
    ("search", ("config.yaml", "trials.csv")),
    ("train", ("status.json", "spec.json", "metrics.csv")),
)


def run_kind(path: Path) -> str | None:
    """``"search"`` or ``"train"`` when ``path`` is an archgen run directory, else None."""
    marker = path / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in KINDS else None
    for kind, signs in _LEGACY_SIGNS:
        if all((path / name).is_file() for name in signs):
            return kind
    return None


def check_out_dir(path: Path, kind: str, *, force: bool = False, flag: str = "--out") -> str:
    """How ``path`` may be used for a run of ``kind``: ``"new"`` (absent or empty),
    ``"existing"`` (a run directory of this kind: resume it, or replace it with ``force``).
    Anything else raises UserError naming the directory."""
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file; choose a directory path")
    try:
        empty = not any(path.iterdir())
    except PermissionError:
        raise UserError(f"{flag} {str(path)!r}: permission denied") from None
    if empty:
        return "new"
    found = run_kind(path)
    if found == kind:
        return "existing"
    what = f"an archgen {found} run" if found else "files that are not an archgen run"
    extra = " (--force replaces only a previous run directory)" if force else ""
    raise UserError(
        f"{flag} {str(path)!r} holds {what}; choose a new or empty directory for this {kind}{extra}"
    )


def mark(path: Path, kind: str) -> None:
    """Create ``path`` (if needed) and write its marker."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).is_file():
        atomic_write_json(path / MARKER, {"kind": kind, "schema_version": 1})


def check_out_file(path: Path, *, force: bool = False, flag: str = "--out") -> None:
    """An output file path: not a directory, its directory exists or can be made, and an existing
    file is replaced only with ``--force``. Checked before any work, so a mistake costs nothing."""
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a directory; name a file")
    if path.exists() and not force:
        raise UserError(f"{flag} {str(path)!r} already exists; pass --force to replace it or choose another path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(parent)!r} is not a directory")

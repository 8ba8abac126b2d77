"""Writing run files safely: every file atomically (``costmodel.atomic``), in the formats a run
directory holds (JSON, YAML, CSV, PyTorch weights)."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any

from costmodel.atomic import atomic_path, atomic_write_bytes, atomic_write_text, fsync_path

# Errors of the machine's state, not of archgen or the input: a full disk, a quota, a read-only
# file system, too many open files, a name too long. They stop a search (every trial would hit
# them) and reach the user as one line with exit 2.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENAMETOOLONG})

__all__ = [
    "ENVIRONMENT_ERRNOS",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_yaml",
    "atomic_write_csv",
    "atomic_torch_save",
    "fsync_path",
]


def atomic_write_json(path: str | os.PathLike[str], data: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **kwargs) + "\n")


def atomic_write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    import yaml

    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def atomic_write_csv(path: str | os.PathLike[str], frame: Any) -> Path:
    """A pandas DataFrame as CSV without the index."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path

"""Writing run files safely: every file atomically (``costmodel.atomic``), in the formats a run
directory holds (JSON, YAML, CSV, PyTorch weights)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from costmodel.atomic import atomic_path, atomic_write_bytes, atomic_write_text, fsync_path

__all__ = [
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

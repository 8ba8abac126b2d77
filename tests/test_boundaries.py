"""Import boundaries of docs/design.md ("Packages"), checked in fresh interpreters."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module",
    ["archgen.spec", "archgen.rules", "archgen.generator", "archgen.costing", "costmodel.geometry", "costmodel.estimator"],
)
def test_pure_modules_do_not_import_torch(module):
    assert "torch" not in _modules_after_import(module)


def test_costmodel_never_imports_archgen():
    mods = [f"costmodel.{p.stem}" for p in (REPO / "costmodel").glob("*.py") if p.stem != "__init__"]
    loaded = _modules_after_import(", ".join(["costmodel"] + mods))
    assert not any(m == "archgen" or m.startswith("archgen.") for m in loaded)
    for path in (REPO / "costmodel").rglob("*.py"):
        text = path.read_text()
        assert "import archgen" not in text and "from archgen" not in text, path


def test_only_cli_prints():
    for pkg in ("archgen", "costmodel"):
        for path in (REPO / pkg).rglob("*.py"):
            if "cli" in path.parts:
                continue
            assert not re.search(r"(?<![\w.])print\(", path.read_text()), f"{path} prints; libraries log"

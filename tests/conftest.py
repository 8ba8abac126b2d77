from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist10k"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep device profiles written by tests out of the user's cache."""
    if "ARCHGEN_CACHE" not in os.environ:
        monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path_factory.getbasetemp() / "archgen-cache"))


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST test set missing at {MNIST_DIR}: tests expect ../shared/data/mnist10k")
    return MNIST_DIR


@pytest.fixture
def run_cli(capsys):
    """Run the archgen CLI in-process; return (exit_code, stdout, stderr)."""
    from archgen.cli import main

    def _run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return _run

"""archgen: design small CNNs from explicit rules, price them, search, export.

The public API (see the README's "Python API")::

    import archgen

    specs = archgen.generate(input_shape=(1, 28, 28), num_classes=10, n=50, seed=0)
    result = archgen.search(data="digits", strategy="bohb", trials=20, time_budget_s=120,
                            out="runs/digits", seed=0)
    result.spec, result.val_acc, result.test_acc, result.run_dir, result.trials

Names are loaded when first used, so ``import archgen`` stays light (no torch, no optuna).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ablate": "archgen.api",
    "generate": "archgen.api",
    "search": "archgen.api",
    "train": "archgen.api",
    "SearchResult": "archgen.api",
    "TrainRunResult": "archgen.train_run",
    "latency_estimator": "archgen.api",
    "ArchSpec": "archgen.spec",
    "load_spec": "archgen.spec",
    "save_spec": "archgen.spec",
    "RuleSet": "archgen.rules",
    "build_model": "archgen.build",
    "spec_geoms": "archgen.costing",
    "SearchSettings": "archgen.settings",
    "load_dataset": "archgen.data",
    "Dataset": "archgen.data",
}

__all__ = [
    "ArchSpec", "Dataset", "RuleSet", "SearchResult", "SearchSettings", "TrainRunResult", "__version__",
    "ablate", "build_model", "generate", "latency_estimator", "load_dataset", "load_spec", "save_spec", "search",
    "spec_geoms", "train",
]

if TYPE_CHECKING:
    from archgen.api import SearchResult, ablate, generate, latency_estimator, search, train
    from archgen.build import build_model
    from archgen.costing import spec_geoms
    from archgen.data import Dataset, load_dataset
    from archgen.rules import RuleSet
    from archgen.settings import SearchSettings
    from archgen.spec import ArchSpec, load_spec, save_spec
    from archgen.train_run import TrainRunResult


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

"""The boosted regression trees of a device profile: per op on ``log(T / T_linear)`` of the
in-context samples, exported as JSON-safe arrays (``costmodel.estimator.compile_trees`` runs
them). No torch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from costmodel.device_profile import TreeEnsemble
from costmodel.measurements import Sample
from costmodel.modeldef import (
    TREE_CLAMP,
    linear_ms,
    strip_activation,
    tree_base_class,
    tree_features,
)
from costmodel.netfit import FLOOR_MS

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingRegressor

MIN_TREE_SAMPLES = 30
TREE_PARAMS = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.15, "subsample": 0.8}


def fit_trees(
    samples: Sequence[Sample], coeffs: dict[str, dict[str, float]],
    act_elem_ms: dict[str, float], seed: int = 0,
) -> tuple[dict[str, TreeEnsemble], dict[str, object]]:
    """Boosted regression trees per op on ``log(T / T_linear)`` (in-context samples, each
    time without its fused activation's cost, ``modeldef.strip_activation``).

    Returns ``(trees, quality)``; ops with fewer than ``MIN_TREE_SAMPLES`` samples get none.
    """
    from sklearn.ensemble import GradientBoostingRegressor

    by_op: dict[str, list[Sample]] = defaultdict(list)
    for g, t in samples:
        by_op[g.op].append((g, t))
    trees: dict[str, TreeEnsemble] = {}
    quality: dict[str, object] = {}
    for op, rows in sorted(by_op.items()):
        if len(rows) < MIN_TREE_SAMPLES or op == "dropout":
            continue
        base = []
        for g, _ in rows:
            c = coeffs.get(tree_base_class(g)) or coeffs.get(op)
            if c is None:
                break
            base.append(linear_ms((c["c"], c["a"], c["b"]), g))
        else:
            y = np.maximum([strip_activation(g, t, act_elem_ms) for g, t in rows], FLOOR_MS)
            x = np.array([tree_features(g) for g, _ in rows])
            r = np.log(np.maximum(y, 1e-9) / np.maximum(np.array(base), 1e-9))
            model = GradientBoostingRegressor(random_state=seed, **TREE_PARAMS).fit(x, r)
            trees[op] = _export_gbr(model, x[:1])
            pred = np.exp(np.clip(model.predict(x), -TREE_CLAMP, TREE_CLAMP)) * np.array(base)
            err = np.abs(pred - y) / y
            quality[f"trees_{op}"] = {"n": len(rows), "mape_in_sample": float(err.mean())}
    return trees, quality


def _export_gbr(model: GradientBoostingRegressor, x0: np.ndarray) -> TreeEnsemble:
    """sklearn GradientBoostingRegressor -> JSON-safe arrays (see estimator.compile_trees)."""
    lr = float(model.learning_rate)
    trees = []
    total = 0.0
    for est in model.estimators_[:, 0]:
        t = est.tree_
        trees.append([t.feature.tolist(), t.threshold.tolist(), t.children_left.tolist(),
                      t.children_right.tolist(), t.value[:, 0, 0].tolist()])
        total += float(est.predict(x0)[0])
    init = float(model.predict(x0)[0]) - lr * total
    return {"init": init, "lr": lr, "trees": trees}

"""Opt-in k-fold re-scoring of the best trials before selection (archgen.rescore)."""

from __future__ import annotations

import json

import pytest
import torch

from archgen.data import SealedTest, load_dataset
from archgen.errors import SearchConfigError
from archgen.rescore import cv_folds
from archgen.search_run import run_search
from archgen.settings import SearchSettings

TINY_SPACE = {
    "stages": [1, 2], "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": [0, 1],
    "dense_units": 64, "batchnorm": [False, True], "stacking": False, "growth": 2, "batch_size": 128,
    "lr": {"low": 3e-4, "high": 3e-2, "log": True},
}


def test_folds_partition_train_plus_validation_and_leave_test_sealed():
    data = load_dataset("digits")
    folds = cv_folds(data, 4, seed=0)
    n = len(data.train) + len(data.val)
    assert len(folds) == 4
    held = torch.cat([f.val.y for f in folds])
    assert len(held) == n and all(len(f.train) + len(f.val) == n for f in folds)
    # every image is held out exactly once: the held-out images together are train + val
    everything = torch.cat([data.train.x, data.val.x]).flatten(1)
    together = torch.cat([f.val.x for f in folds]).flatten(1)
    assert torch.equal(torch.sort(everything.sum(1)).values, torch.sort(together.sum(1)).values)
    assert all(f.test is data.test and f.test.opened == 0 for f in folds)
    assert [len(f.val) for f in cv_folds(data, 4, seed=0)] == [len(f.val) for f in folds]


def test_rescoring_selects_the_best_mean_fold_accuracy_and_opens_test_once(tmp_path, monkeypatch):
    opened: list[str] = []
    real_open = SealedTest.open
    monkeypatch.setattr(SealedTest, "open", lambda self, reason: (opened.append(reason), real_open(self, reason))[1])
    settings = SearchSettings(data="digits", strategy="random", trials=4, max_epochs=2, threads=1, workers=1,
                              out=str(tmp_path / "r"), space=TINY_SPACE, rescore_folds=3, rescore_top=2,
                              calibrate=False)
    summary = run_search(settings)
    metrics = json.loads((tmp_path / "r" / "test_metrics.json").read_text())
    rows = metrics["rescored"]
    assert len(rows) == 2 and all(len(r["cv_accs"]) == 3 for r in rows)
    assert all(0.0 <= a <= 1.0 for r in rows for a in r["cv_accs"])
    assert rows[0]["val_acc"] >= rows[1]["val_acc"]  # the two best on validation, in that order
    best = max(rows, key=lambda r: r["cv_acc"])
    assert summary["trial_number"] == best["trial"]
    assert len(opened) == 1


def test_one_fold_is_refused():
    with pytest.raises(SearchConfigError, match="rescore_folds=1"):
        SearchSettings(rescore_folds=1)

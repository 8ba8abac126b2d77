"""Selection that survives a small validation split (opt-in, ``rescore_folds: K``): the best few
trials on validation are re-scored by K-fold cross-validation on train + validation, each
configuration retrained from its own initial weights for its best epoch count on every K-1 folds
and scored on the fold left out; the highest mean fold accuracy is selected. The test split stays
sealed. On a 270-image validation split one image is 0.37 pt, so trials tie or sit one image
apart by chance; K folds score each candidate on every train + validation image.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from archgen.data import Dataset, Split
from archgen.selection import validation_rank
from archgen.spec import ArchSpec
from archgen.trial_record import BEST_EPOCH, SPEC, VAL_ACC

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from archgen.settings import SearchSettings

log = logging.getLogger(__name__)


def cv_folds(dataset: Dataset, k: int, seed: int) -> list[Dataset]:
    """``k`` datasets whose validation split is one fold of train + validation (shuffled with
    ``seed``) and whose training split is the rest; the test split is the same sealed object."""
    x = torch.cat([dataset.train.x, dataset.val.x])
    y = torch.cat([dataset.train.y, dataset.val.y])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    folds = torch.tensor_split(order, k)
    out = []
    for i, held in enumerate(folds):
        rest = torch.cat([f for j, f in enumerate(folds) if j != i])
        out.append(replace(dataset, train=Split(x[rest], y[rest]), val=Split(x[held], y[held])))
    return out


def rescore_best(study: optuna.Study, settings: SearchSettings, dataset: Dataset,
                 done: list[FrozenTrial]) -> tuple[FrozenTrial, list[dict[str, Any]]]:
    """The trial to select among ``done`` (completed trials within the budgets) and one record
    per re-scored trial: ``trial``, ``val_acc``, ``cv_acc`` (mean over folds), ``cv_accs``."""
    from archgen.objective import trial_start
    from archgen.training import train_fixed

    ranked = sorted(done, key=validation_rank, reverse=True)
    top = ranked[:settings.rescore_top]
    folds = cv_folds(dataset, settings.rescore_folds, settings.seed)
    rows = []
    for t in top:
        spec = ArchSpec.from_dict(t.user_attrs[SPEC])
        epochs = max(1, int(t.user_attrs.get(BEST_EPOCH) or 1))
        accs = []
        for fold in folds:
            model, config = trial_start(settings, t.number, spec, t.params, epochs)
            result = train_fixed(model, fold, config, epochs)
            accs.append(0.0 if result.status != "ok" or not result.history else result.history[-1].val_acc)
        rows.append({"trial": t.number, "val_acc": t.user_attrs[VAL_ACC], "cv_acc": statistics.fmean(accs),
                     "cv_accs": accs, "epochs": epochs})
        log.info("trial %d: val_acc %.4f, %d-fold accuracy %.4f", t.number, t.user_attrs[VAL_ACC],
                 len(folds), rows[-1]["cv_acc"])
    best_row = max(rows, key=lambda r: r["cv_acc"])  # first of equals: the validation ranking's
    return next(t for t in top if t.number == best_row["trial"]), rows

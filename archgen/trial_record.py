"""The names a trial's record uses, in one place.

A search trial records everything it learns as Optuna user attributes (so that any worker on any
machine sees it); finalize flattens them into the columns of ``trials.csv`` (``user_attrs_`` is
dropped from the names), and the report, the plots, PBT and the strategies read them back. Use
these constants instead of the bare strings.
"""

from __future__ import annotations

# What the candidate is and what it costs (set before training).
SPEC = "spec"  # ArchSpec.to_dict() of the (rebalanced) network
SPEC_KEY = "spec_key"
SPEC_NAME = "spec_name"
EST_MS = "est_ms"  # calibrated latency estimate at the search's latency batch
MACS = "macs"
PARAMS = "params"
BALANCE_CV_BEFORE = "balance_cv_before"
BALANCE_CV_AFTER = "balance_cv_after"
EST_EPOCH_S = "est_epoch_s"
EPOCH_BUDGET = "epoch_budget"  # the epochs this trial may train (max_epochs, or fewer when the time budget is short)
REJECTED = "rejected"  # screened out before training: the reason

# What training found.
STRATEGY = "strategy"
VAL_ACC = "val_acc"  # best validation accuracy over the epochs run
VAL_LOSS = "val_loss"
VAL_ACC_EPOCH_PREFIX = "val_acc_epoch_"  # + epoch number: the learning curve
EPOCHS = "epochs"
BEST_EPOCH = "best_epoch"
DURATION_S = "duration_s"
TRAIN_MACS_PER_S = "train_macs_per_s"
PRUNED = "pruned"
STOPPED = "stopped"
FAILURE = "failure"
PBT_GENERATION = "pbt_generation"
LINEAGE = "lineage"  # PBT: the members this one copied (epoch, who, new lr and weight decay)
FINAL_LR = "final_lr"  # PBT: the hyperparameters a member ended with
FINAL_WEIGHT_DECAY = "final_weight_decay"

# Where it ran, and what happened to it when its worker died.
WORKER = "worker"
LOST = "lost"
LOST_BY = "lost_by"  # the worker tag of the process that failed a lost trial
RETRY_OF = "retry_of"

# Enqueued trials (grid plans, warm starts).
GRID_PHASE = "grid_phase"
WARM_START = "warm_start"

# Study-level flags.
PLAN_ENQUEUED = "plan_enqueued"
FINE_ENQUEUED = "fine_enqueued"

# What finalize records of the test split (test_metrics.json and the trials table).
TEST_ACC = "test_acc"
TEST_LOSS = "test_loss"
MEAS_MS = "meas_ms"


def epoch_attr(epoch: int) -> str:
    """The user attribute holding the validation accuracy of one epoch."""
    return f"{VAL_ACC_EPOCH_PREFIX}{epoch}"


def epoch_of(attr: str) -> int | None:
    """The epoch number of a learning-curve attribute, or None for any other attribute."""
    if not attr.startswith(VAL_ACC_EPOCH_PREFIX):
        return None
    tail = attr[len(VAL_ACC_EPOCH_PREFIX):]
    return int(tail) if tail.isdigit() else None

"""One trial of a search: price the sampled candidate, screen it against the latency, size and
time budgets (rejected candidates are recorded and never trained), rebalance its widths, then
build and train it with Hyperband pruning and the search's deadline. Everything a trial learns
is recorded as Optuna user attributes, so any worker on any machine sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from archgen import trial_record as tr
from archgen.errors import SpecError
from archgen.fsio import atomic_torch_save
from archgen.settings import PRUNING, SearchSettings
from archgen.space import Param, spec_from_params, suggest, train_kwargs

if TYPE_CHECKING:
    from torch import nn

    from archgen.data import Dataset
    from archgen.spec import ArchSpec
    from archgen.train_config import TrainConfig
    from archgen.trainer import EpochMetrics
    from costmodel.device_profile import DeviceProfile

# A trial may take this share of the time budget's wall clock with one worker (so that at least
# three trials fit); with N workers, N times as much, up to MAX_TRIAL_SHARE_SHARED (docs/benchmarks.md).
MAX_TRIAL_SHARE_OF_BUDGET = 1 / 3
MAX_TRIAL_SHARE_SHARED = 2 / 3
# Forward MACs x training images per second on one thread, until the study has measured its own.
PRIOR_TRAIN_MACS_PER_S = 3e9
# The same on a GPU (small nets are launch-bound there; the study replaces it after one trial).
PRIOR_TRAIN_MACS_PER_S_CUDA = 1e11


def trial_share(settings: SearchSettings) -> float:
    """The share of the time budget's wall clock one trial may take: a third with one worker;
    with N workers running trials side by side, N thirds, at most two thirds."""
    workers = settings.workers if isinstance(settings.workers, int) else 1
    return min(MAX_TRIAL_SHARE_OF_BUDGET * workers, MAX_TRIAL_SHARE_SHARED)


def trial_start(settings: SearchSettings, number: int, spec: ArchSpec, params: dict[str, Any], epochs: int,
                patience: int | None = None, device: str | None = None) -> tuple[nn.Module, TrainConfig]:
    """A trial's freshly initialized model and its training config, seeded by the search seed and
    the trial number: the same initial weights wherever it is built (the trial itself, a refit,
    a retrain on another machine, a PBT member)."""
    from archgen.build import build_model
    from archgen.train_config import TrainConfig
    from archgen.training import seed_everything

    seed = settings.seed * 100_003 + number
    seed_everything(seed)
    model = build_model(spec, seed=seed)
    config = TrainConfig(epochs=epochs, patience=settings.patience if patience is None else patience, seed=seed,
                         threads=settings.threads, device=device or settings.main_device, **train_kwargs(params))
    return model, config


@dataclass
class TrialOutcome:
    state: TrialState
    values: list[float] | None = None


class Objective:
    """Price, screen, rebalance, build, train one trial; records everything as user attrs."""

    def __init__(self, settings: SearchSettings, dataset: Dataset, profile: DeviceProfile,
                 space: dict[str, Param], deadline: float | None, device: str | None = None) -> None:
        self.settings = settings
        self.device = device or settings.main_device  # where this worker's trials train
        self.dataset = dataset
        self.profile = profile
        self.space = space
        self.deadline = deadline
        self.checkpoints = settings.run_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def candidate(self, trial: optuna.Trial, params: dict[str, Any]) -> ArchSpec | None:
        """The (rebalanced) spec to train, or None when screened out (reason recorded). Sets
        the trial's epoch budget (``trial_record.EPOCH_BUDGET``): ``max_epochs``, or as many
        epochs as fit in the trial's share of a short time budget."""
        from archgen.balance import rebalance
        from archgen.costing import spec_geoms, spec_macs, training_memory_mb
        from costmodel.estimator import estimate_total_ms

        s = self.settings
        try:
            spec = spec_from_params(params, self.dataset.input_shape, self.dataset.num_classes)
        except SpecError as exc:
            trial.set_user_attr(tr.REJECTED, f"invalid: {exc}")
            return None
        bal = rebalance(spec, self.profile, s.latency_batch, max_steps=64 if params.get("rebalance") else 0)
        if params.get("rebalance"):
            spec = bal.spec
        est_ms = estimate_total_ms(spec_geoms(spec), self.profile, s.latency_batch)
        macs, n_params = spec_macs(spec), spec.num_params()
        for key, value in {
            tr.SPEC_KEY: spec.key(), tr.SPEC_NAME: spec.short_name(), tr.SPEC: spec.to_dict(),
            tr.EST_MS: est_ms, tr.MACS: macs, tr.PARAMS: n_params,
            tr.BALANCE_CV_BEFORE: bal.cv_before,
            tr.BALANCE_CV_AFTER: bal.cv_after if params.get("rebalance") else bal.cv_before,
        }.items():
            trial.set_user_attr(key, value)
        over = []
        if s.max_latency_ms is not None and est_ms > s.max_latency_ms:
            over.append(f"est_ms {est_ms:.3g} > {s.max_latency_ms:g}")
        if s.max_macs is not None and macs > s.max_macs:
            over.append(f"macs {macs:,} > {s.max_macs:,}")
        if s.max_params is not None and n_params > s.max_params:
            over.append(f"params {n_params:,} > {s.max_params:,}")
        train_mb = training_memory_mb(spec, spec_geoms(spec), int(params.get("batch_size", 64)))
        if train_mb > s.memory_cap_mb():
            over.append(f"training memory ~{train_mb:,.0f} MB > cap {s.memory_cap_mb():,.0f} MB")
        if over:
            trial.set_user_attr(tr.REJECTED, "over budget: " + "; ".join(over))
            return None
        epochs = s.max_epochs
        if s.time_budget_s:
            epoch_s = macs * len(self.dataset.train.y) / self.train_macs_per_s(trial.study, self.device)
            trial.set_user_attr(tr.EST_EPOCH_S, epoch_s)
            share = trial_share(s)
            allowed_s = s.time_budget_s * share
            if epoch_s * s.min_epochs > allowed_s:
                trial.set_user_attr(
                    tr.REJECTED,
                    f"too slow for the time budget: ~{epoch_s:.1f} s/epoch x {s.min_epochs} epoch(s) > "
                    f"{share:.0%} of {s.time_budget_s:g} s",
                )
                return None
            # A short budget trains fewer epochs instead of rejecting the candidate.
            epochs = max(s.min_epochs, min(s.max_epochs, int(allowed_s // epoch_s)))
        trial.set_user_attr(tr.EPOCH_BUDGET, epochs)
        return spec

    @staticmethod
    def train_macs_per_s(study: optuna.Study, device: str = "cpu") -> float:
        """Training speed in forward MACs per second per training image, learned from this
        study's finished trials (median), with a conservative prior before the first one."""
        prior = PRIOR_TRAIN_MACS_PER_S_CUDA if device.startswith("cuda") else PRIOR_TRAIN_MACS_PER_S
        rates = [
            t.user_attrs[tr.TRAIN_MACS_PER_S]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.user_attrs.get(tr.TRAIN_MACS_PER_S)
        ]
        if not rates:
            return prior
        rates.sort()
        return rates[len(rates) // 2]

    @staticmethod
    def _study_has_epoch(study: optuna.Study) -> bool:
        return any(tr.epoch_attr(1) in t.user_attrs for t in study.get_trials(deepcopy=False))

    def __call__(self, trial: optuna.Trial) -> TrialOutcome:
        """Run one trial. The caller (``archgen.worker``) keeps its heartbeat going."""
        from archgen.training import train

        s = self.settings
        trial.set_user_attr(tr.STRATEGY, s.strategy)
        params = suggest(trial, self.space)
        spec = self.candidate(trial, params)
        if spec is None:
            return TrialOutcome(TrialState.PRUNED)
        model, config = trial_start(s, trial.number, spec, params, trial.user_attrs[tr.EPOCH_BUDGET],
                                    device=self.device)
        pruning = s.strategy in PRUNING
        stop_reason: list[str] = []

        def on_epoch(m: EpochMetrics) -> bool:
            trial.set_user_attr(tr.epoch_attr(m.epoch), m.val_acc)
            if pruning:
                trial.report(m.val_acc, m.epoch)
                if trial.should_prune():
                    stop_reason.append(f"pruned at epoch {m.epoch}")
                    return True
            return False

        t0 = time.perf_counter()
        # Until some trial of the study has finished an epoch, a trial finishes its first epoch
        # even past the deadline (the screen kept that epoch within the trial's share), so a
        # budget that allows one epoch always trains something.
        grace = 0 if self._study_has_epoch(trial.study) else 1
        result = train(model, self.dataset, config, on_epoch=on_epoch, deadline=self.deadline, grace_epochs=grace)
        duration_s = time.perf_counter() - t0
        trial.set_user_attr(tr.DURATION_S, duration_s)
        trial.set_user_attr(tr.EPOCHS, result.epochs_run)
        epochs_s = sum(m.duration_s for m in result.history)  # finished epochs only, not one cut short
        if result.history and epochs_s > 0:
            trial.set_user_attr(tr.TRAIN_MACS_PER_S,
                                trial.user_attrs[tr.MACS] * len(self.dataset.train.y) * len(result.history) / epochs_s)
        trial.set_user_attr(tr.BEST_EPOCH, result.best_epoch)
        if result.status == "diverged":
            trial.set_user_attr(tr.FAILURE, result.reason or "diverged")
            return TrialOutcome(TrialState.FAIL)
        if result.status == "stopped" and not stop_reason:  # the time budget ran out
            stop_reason.append(result.reason or "time budget reached")
        if not result.history:
            trial.set_user_attr(tr.FAILURE, f"no epoch finished ({stop_reason[0]})" if stop_reason else "no epoch finished")
            return TrialOutcome(TrialState.FAIL)
        atomic_torch_save(model.state_dict(), self.checkpoints / f"trial_{trial.number}.pt")
        trial.set_user_attr(tr.VAL_ACC, result.best_val_acc)
        trial.set_user_attr(tr.VAL_LOSS, result.best_val_loss)
        if stop_reason and stop_reason[0].startswith("pruned"):
            trial.set_user_attr(tr.PRUNED, stop_reason[0])
            return TrialOutcome(TrialState.PRUNED)
        if stop_reason:
            trial.set_user_attr(tr.STOPPED, stop_reason[0])
        values = [result.best_val_acc]
        if s.objective == "pareto":
            values.append(trial.user_attrs[tr.EST_MS])
        return TrialOutcome(TrialState.COMPLETE, values)

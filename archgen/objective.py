"""One trial of a search: price the sampled candidate, screen it against the latency, size and
time budgets (rejected candidates are recorded and never trained), rebalance its widths, then
build and train it with Hyperband pruning and the search's deadline. Everything a trial learns
is recorded as Optuna user attributes, so any worker on any machine sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from archgen.errors import SpecError
from archgen.fsio import atomic_torch_save
from archgen.space import Param, spec_from_params, suggest, train_kwargs
from archgen.storage import Heartbeat
from archgen.strategies import PRUNING

# A candidate whose full training (max_epochs) would take more than this share of the search's
# time budget is not started: one such trial ate 233 s of a 300 s MNIST search for 7 epochs.
MAX_TRIAL_SHARE_OF_BUDGET = 1 / 3
# Forward MACs x training images per second of wall time, one thread, before the study has
# measured its own (seen here: 3.2e9 for a 1.9M-MAC net, 12e9 for a 58M-MAC one).
PRIOR_TRAIN_MACS_PER_S = 3e9
# The same on a GPU (small nets are launch-bound there; the study replaces it after one trial).
PRIOR_TRAIN_MACS_PER_S_CUDA = 1e11


def trial_start(settings: Any, number: int, spec: Any, params: dict[str, Any], epochs: int,
                patience: int | None = None) -> tuple[Any, Any]:
    """A trial's freshly initialized model and its training config, seeded by the search seed and
    the trial number: the same initial weights wherever it is built (the trial itself, a refit,
    a retrain on another machine, a PBT member)."""
    from archgen.build import build_model
    from archgen.train import TrainConfig, seed_everything

    seed = settings.seed * 100_003 + number
    seed_everything(seed)
    model = build_model(spec, seed=seed)
    config = TrainConfig(epochs=epochs, patience=settings.patience if patience is None else patience, seed=seed,
                         threads=settings.threads, device=settings.device, **train_kwargs(params))
    return model, config


@dataclass
class TrialOutcome:
    state: TrialState
    values: list[float] | None = None


class Objective:
    """Price, screen, rebalance, build, train one trial; records everything as user attrs."""

    def __init__(self, settings: Any, dataset: Any, profile: Any, space: dict[str, Param],
                 deadline: float | None, storage: Any) -> None:
        self.settings = settings
        self.dataset = dataset
        self.profile = profile
        self.space = space
        self.deadline = deadline
        self.storage = storage
        self.checkpoints = settings.run_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def candidate(self, trial: optuna.Trial, params: dict[str, Any]) -> Any | None:
        """The (rebalanced) spec to train, or None when screened out (reason recorded)."""
        from archgen.balance import rebalance
        from archgen.costing import spec_geoms, spec_macs, training_memory_mb
        from costmodel.estimate import estimate_total_ms

        s = self.settings
        try:
            spec = spec_from_params(params, self.dataset.input_shape, self.dataset.num_classes)
        except SpecError as exc:
            trial.set_user_attr("rejected", f"invalid: {exc}")
            return None
        bal = rebalance(spec, self.profile, s.latency_batch, max_steps=64 if params.get("rebalance") else 0)
        if params.get("rebalance"):
            spec = bal.spec
        est_ms = estimate_total_ms(spec_geoms(spec), self.profile, s.latency_batch)
        macs, n_params = spec_macs(spec), spec.num_params()
        for key, value in {
            "spec_key": spec.key(), "spec_name": spec.short_name(), "spec": spec.to_dict(),
            "est_ms": est_ms, "macs": macs, "params": n_params,
            "balance_cv_before": bal.cv_before, "balance_cv_after": bal.cv_after if params.get("rebalance") else bal.cv_before,
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
            trial.set_user_attr("rejected", "over budget: " + "; ".join(over))
            return None
        if s.time_budget_s:
            epoch_s = macs * len(self.dataset.train.y) / self.train_macs_per_s(trial.study, s.device)
            trial.set_user_attr("est_epoch_s", epoch_s)
            if epoch_s * s.max_epochs > s.time_budget_s * MAX_TRIAL_SHARE_OF_BUDGET:
                trial.set_user_attr(
                    "rejected",
                    f"too slow for the time budget: ~{epoch_s:.1f} s/epoch x {s.max_epochs} epochs > "
                    f"{MAX_TRIAL_SHARE_OF_BUDGET:.0%} of {s.time_budget_s:g} s",
                )
                return None
        return spec

    @staticmethod
    def train_macs_per_s(study: optuna.Study, device: str = "cpu") -> float:
        """Training speed in forward MACs per second per training image, learned from this
        study's finished trials (median), with a conservative prior before the first one."""
        prior = PRIOR_TRAIN_MACS_PER_S_CUDA if device.startswith("cuda") else PRIOR_TRAIN_MACS_PER_S
        rates = [
            t.user_attrs["train_macs_per_s"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.user_attrs.get("train_macs_per_s")
        ]
        if not rates:
            return prior
        rates.sort()
        return rates[len(rates) // 2]

    def __call__(self, trial: optuna.Trial) -> TrialOutcome:

        from archgen.train import train

        s = self.settings
        trial.set_user_attr("strategy", s.strategy)
        params = suggest(trial, self.space)
        spec = self.candidate(trial, params)
        if spec is None:
            return TrialOutcome(TrialState.PRUNED)
        model, config = trial_start(s, trial.number, spec, params, s.max_epochs)
        pruning = s.strategy in PRUNING
        stop_reason: list[str] = []

        def on_epoch(m: Any) -> bool:
            trial.set_user_attr(f"val_acc_epoch_{m.epoch}", m.val_acc)
            if pruning:
                trial.report(m.val_acc, m.epoch)
                if trial.should_prune():
                    stop_reason.append(f"pruned at epoch {m.epoch}")
                    return True
            return False

        t0 = time.perf_counter()
        with Heartbeat(self.storage, trial):
            result = train(model, self.dataset, config, on_epoch=on_epoch, deadline=self.deadline)
        duration_s = time.perf_counter() - t0
        trial.set_user_attr("duration_s", duration_s)
        trial.set_user_attr("epochs", result.epochs_run)
        epochs_s = sum(m.duration_s for m in result.history)  # finished epochs only, not one cut short
        if result.history and epochs_s > 0:
            trial.set_user_attr("train_macs_per_s",
                                trial.user_attrs["macs"] * len(self.dataset.train.y) * len(result.history) / epochs_s)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if result.status == "diverged":
            trial.set_user_attr("failure", result.reason or "diverged")
            return TrialOutcome(TrialState.FAIL)
        if result.status == "stopped" and not stop_reason:  # the time budget ran out
            stop_reason.append(result.reason or "time budget reached")
        if not result.history:
            trial.set_user_attr("failure", f"no epoch finished ({stop_reason[0]})" if stop_reason else "no epoch finished")
            return TrialOutcome(TrialState.FAIL)
        atomic_torch_save(model.state_dict(), self.checkpoints / f"trial_{trial.number}.pt")
        trial.set_user_attr("val_acc", result.best_val_acc)
        trial.set_user_attr("val_loss", result.best_val_loss)
        if stop_reason and stop_reason[0].startswith("pruned"):
            trial.set_user_attr("pruned", stop_reason[0])
            return TrialOutcome(TrialState.PRUNED)
        if stop_reason:
            trial.set_user_attr("stopped", stop_reason[0])
        values = [result.best_val_acc]
        if s.objective == "pareto":
            values.append(trial.user_attrs["est_ms"])
        return TrialOutcome(TrialState.COMPLETE, values)

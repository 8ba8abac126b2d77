"""Population-based training (Jaderberg et al., 2017) on archgen's own Trainer.

A population of ``population`` members (each an Optuna trial, sampled like random search and
screened by the cost model) trains in rounds of ``pbt_interval`` epochs. After each round the
members are ranked by validation accuracy; each member in the bottom ``pbt_quantile``
*exploits* a random member of the top quantile (copies its architecture, weights, optimizer
state and hyperparameters) and *explores* (multiplies lr and weight decay by 0.8 or 1.25).
Every member stays one trial in the study: its intermediate values are its per-epoch
validation accuracy, its final value the validation accuracy of its final weights, and its
lineage (who it copied, when, with which hyperparameters) is in its user attributes.

A population stops at ``max_epochs``. Under ``--time-budget`` alone the remaining time is not
left idle: a fresh population starts (a restart, ``pbt_generation`` 1, 2, ...) while two rounds
at the last population's pace still fit; with ``--trials N`` there is one population of N.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from archgen.fsio import atomic_torch_save
from archgen.space import Param, suggest

log = logging.getLogger(__name__)

PERTURB = (0.8, 1.25)


@dataclass
class Member:
    trial: optuna.Trial
    spec: Any
    trainer: Any
    val_acc: float = 0.0
    lineage: list[dict] = field(default_factory=list)


def _new_member(objective: Any, study: optuna.Study, space: dict[str, Param]) -> Member | None:
    from archgen.objective import trial_start
    from archgen.train import Trainer

    s = objective.settings
    for _ in range(20):
        trial = study.ask()
        trial.set_user_attr("strategy", "pbt")
        params = suggest(trial, space)
        spec = objective.candidate(trial, params)
        if spec is None:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        model, config = trial_start(s, trial.number, spec, params, s.max_epochs, patience=s.max_epochs)
        return Member(trial, spec, Trainer(model, objective.dataset, config))
    return None


def run_pbt(settings: Any, study: optuna.Study, dataset: Any, profile: Any, space: dict[str, Param],
            deadline: float | None, progress: Callable[[dict], None] | None = None) -> list[Member]:
    """Train populations until the budget: ``--trials N`` is one population of N members; under a
    time budget alone, a population that reaches ``max_epochs`` with time left is followed by a
    fresh one (a restart; user attr ``pbt_generation``) while at least two rounds of the last
    population's pace fit in the remaining time. Returns every member of every population."""
    from archgen.objective import Objective

    objective = Objective(settings, dataset, profile, space, deadline, study._storage)
    rng = random.Random(settings.seed)
    everyone: list[Member] = []
    generation = 0
    while True:
        t0 = time.time()
        members = _population(objective, study, space, rng, progress, generation)
        everyone += members
        if len(members) < 2:
            if generation == 0:
                raise RuntimeError("pbt: fewer than 2 members passed the budget screen")
            return everyone  # a later population could not be formed within the budget
        round_s = (time.time() - t0) / math.ceil(settings.max_epochs / settings.pbt_interval)
        if settings.trials is not None or deadline is None or deadline - time.time() < 2 * round_s:
            return everyone
        generation += 1


def _population(objective: Any, study: optuna.Study, space: dict[str, Param], rng: random.Random,
                progress: Callable[[dict], None] | None, generation: int) -> list[Member]:
    """One PBT run: a fresh population trained in rounds to ``max_epochs`` (or the objective's
    deadline), every member told to the study; fewer than 2 members are told FAIL untrained."""

    from archgen.build import build_model
    from archgen.search import progress_status
    from archgen.train import Trainer

    settings, deadline = objective.settings, objective.deadline
    dataset, profile = objective.dataset, objective.profile
    size = settings.trials or settings.population
    members = [m for m in (_new_member(objective, study, space) for _ in range(size)) if m]
    for m in members:
        m.trial.set_user_attr("pbt_generation", generation)
    if len(members) < 2:
        for m in members:
            m.trial.set_user_attr("failure", "population of fewer than 2 members")
            study.tell(m.trial, state=TrialState.FAIL)
        return members
    epoch = 0
    while epoch < settings.max_epochs and (deadline is None or time.time() < deadline):
        step = min(settings.pbt_interval, settings.max_epochs - epoch)
        for m in members:
            if m.trainer.diverged:
                continue
            m.trainer.deadline = deadline  # a round stops at the budget, to the batch
            for metrics in m.trainer.run_epochs(step):
                m.val_acc = metrics.val_acc
                m.trial.report(metrics.val_acc, metrics.epoch)
                m.trial.set_user_attr(f"val_acc_epoch_{metrics.epoch}", metrics.val_acc)
        epoch += step
        if epoch >= settings.max_epochs:
            break
        ranked = sorted(members, key=lambda m: (not m.trainer.diverged, m.val_acc))
        n_q = max(1, int(round(len(members) * settings.pbt_quantile)))
        bottom, top = ranked[:n_q], ranked[-n_q:]
        for loser in bottom:
            winner = rng.choice(top)
            if winner is loser:
                continue
            state = winner.trainer.state_dict()
            lr = state["hparams"]["lr"] * rng.choice(PERTURB)
            wd = state["hparams"]["weight_decay"] * rng.choice(PERTURB)
            model = build_model(winner.spec, seed=0)
            trainer = Trainer(model, dataset, winner.trainer.config)
            trainer.load_state_dict(state)
            trainer.set_hparams(lr=lr, weight_decay=wd)
            loser.lineage.append({"epoch": epoch, "copied": winner.trial.number, "lr": lr, "weight_decay": wd,
                                  "val_acc_before": loser.val_acc})
            loser.spec, loser.trainer, loser.val_acc = winner.spec, trainer, winner.val_acc
        if progress is not None:
            progress(progress_status(study, settings))
    from archgen.costing import spec_geoms, spec_macs
    from costmodel.estimate import estimate_total_ms

    for m in members:
        t = m.trial
        for key, value in {
            "est_ms": estimate_total_ms(spec_geoms(m.spec), profile, settings.latency_batch),
            "macs": spec_macs(m.spec), "params": m.spec.num_params(),
            "lineage": m.lineage, "spec": m.spec.to_dict(), "spec_key": m.spec.key(),
            "spec_name": m.spec.short_name(), "epochs": m.trainer.epoch,
            "final_lr": m.trainer.lr, "final_weight_decay": m.trainer.weight_decay,
        }.items():
            t.set_user_attr(key, value)
        if m.trainer.diverged or m.trainer.epoch == 0:
            # diverged, or the time budget ran out before this member finished an epoch
            t.set_user_attr("failure", m.trainer.reason or "no epoch finished")
            study.tell(t, state=TrialState.FAIL)
            continue
        loss, acc = m.trainer.evaluate(dataset.val)
        t.set_user_attr("val_acc", acc)
        t.set_user_attr("val_loss", loss)
        atomic_torch_save(m.trainer.model.state_dict(), objective.checkpoints / f"trial_{t.number}.pt")
        study.tell(t, [acc])
    return members

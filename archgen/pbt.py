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
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from archgen import trial_record as tr
from archgen.fsio import atomic_torch_save
from archgen.objective import Objective, trial_start
from archgen.settings import SearchSettings
from archgen.space import Param, suggest

if TYPE_CHECKING:
    from archgen.data import Dataset
    from archgen.spec import ArchSpec
    from archgen.trainer import Trainer
    from costmodel.device_profile import DeviceProfile

log = logging.getLogger(__name__)

PERTURB = (0.8, 1.25)


@dataclass
class Member:
    trial: optuna.Trial
    spec: ArchSpec
    trainer: Trainer
    val_acc: float = 0.0
    lineage: list[dict[str, Any]] = field(default_factory=list)


def _new_member(objective: Objective, study: optuna.Study, space: dict[str, Param]) -> Member | None:
    from archgen.trainer import Trainer

    s = objective.settings
    for _ in range(20):
        trial = study.ask()
        trial.set_user_attr(tr.STRATEGY, "pbt")
        params = suggest(trial, space)
        spec = objective.candidate(trial, params)
        if spec is None:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        model, config = trial_start(s, trial.number, spec, params, s.max_epochs, patience=s.max_epochs)
        return Member(trial, spec, Trainer(model, objective.dataset, config))
    return None


def run_pbt(settings: SearchSettings, study: optuna.Study, dataset: Dataset, profile: DeviceProfile,
            space: dict[str, Param], deadline: float | None,
            progress: Callable[[optuna.Study], None] | None = None) -> list[Member]:
    """Train populations until the budget: ``--trials N`` is one population of N members; under a
    time budget alone, a population that reaches ``max_epochs`` with time left is followed by a
    fresh one (a restart; user attr ``pbt_generation``) while at least two rounds of the last
    population's pace fit in the remaining time before ``deadline``. ``progress`` is called with
    the study after each round. Returns every member of every population."""
    objective = Objective(settings, dataset, profile, space, deadline)
    rng = random.Random(settings.seed)
    everyone: list[Member] = []
    generation = 0
    while True:
        t0 = time.time()
        members = _population(objective, study, space, rng, progress, generation)
        everyone += members
        if len(members) < 2:
            if generation == 0:
                from archgen.errors import NothingTrainedError

                raise NothingTrainedError(
                    "pbt: fewer than 2 members passed the budget screen; loosen the budgets"
                    + (f" or raise --time-budget above {settings.time_budget_s:g} s" if settings.time_budget_s else ""))
            return everyone  # a later population could not be formed within the budget
        round_s = (time.time() - t0) / math.ceil(settings.max_epochs / settings.pbt_interval)
        if settings.trials is not None or deadline is None or deadline - time.time() < 2 * round_s:
            return everyone
        generation += 1


def _population(objective: Objective, study: optuna.Study, space: dict[str, Param], rng: random.Random,
                progress: Callable[[optuna.Study], None] | None, generation: int) -> list[Member]:
    """One PBT run: a fresh population trained in rounds to ``max_epochs`` (or the objective's
    deadline), every member told to the study; fewer than 2 members are told FAIL untrained."""
    settings, deadline = objective.settings, objective.deadline
    size = settings.trials or settings.population
    members = [m for m in (_new_member(objective, study, space) for _ in range(size)) if m]
    for m in members:
        m.trial.set_user_attr(tr.PBT_GENERATION, generation)
    if len(members) < 2:
        for m in members:
            m.trial.set_user_attr(tr.FAILURE, "population of fewer than 2 members")
            study.tell(m.trial, state=TrialState.FAIL)
        return members
    epoch = 0
    while epoch < settings.max_epochs and (deadline is None or time.time() < deadline):
        step = min(settings.pbt_interval, settings.max_epochs - epoch)
        _train_round(members, step, deadline)
        epoch += step
        if epoch >= settings.max_epochs:
            break
        _exploit_and_explore(members, epoch, settings.pbt_quantile, rng, objective.dataset)
        if progress is not None:
            progress(study)
    for m in members:
        _tell_member(objective, study, m)
    return members


def _train_round(members: list[Member], step: int, deadline: float | None) -> None:
    """``step`` more epochs for every member that has not diverged, each epoch reported."""
    for m in members:
        if m.trainer.diverged:
            continue
        m.trainer.deadline = deadline  # a round stops at the budget, to the batch
        for metrics in m.trainer.run_epochs(step):
            m.val_acc = metrics.val_acc
            m.trial.report(metrics.val_acc, metrics.epoch)
            m.trial.set_user_attr(tr.epoch_attr(metrics.epoch), metrics.val_acc)


def _exploit_and_explore(members: list[Member], epoch: int, quantile: float, rng: random.Random,
                         dataset: Dataset) -> None:
    """Each member of the bottom ``quantile`` copies a random member of the top one (architecture,
    weights, optimizer state, hyperparameters) and perturbs its lr and weight decay."""
    from archgen.build import build_model
    from archgen.trainer import Trainer

    ranked = sorted(members, key=lambda m: (not m.trainer.diverged, m.val_acc))
    n_q = max(1, int(round(len(members) * quantile)))
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


def _tell_member(objective: Objective, study: optuna.Study, m: Member) -> None:
    """Record a member's final spec, costs and lineage; tell it FAIL when it diverged or never
    finished an epoch, else COMPLETE with the validation accuracy of its final weights."""
    from archgen.costing import spec_geoms, spec_macs
    from costmodel.estimator import estimate_total_ms

    settings, t = objective.settings, m.trial
    for key, value in {
        tr.EST_MS: estimate_total_ms(spec_geoms(m.spec), objective.profile, settings.latency_batch),
        tr.MACS: spec_macs(m.spec), tr.PARAMS: m.spec.num_params(),
        tr.LINEAGE: m.lineage, tr.SPEC: m.spec.to_dict(), tr.SPEC_KEY: m.spec.key(),
        tr.SPEC_NAME: m.spec.short_name(), tr.EPOCHS: m.trainer.epoch,
        tr.FINAL_LR: m.trainer.lr, tr.FINAL_WEIGHT_DECAY: m.trainer.weight_decay,
    }.items():
        t.set_user_attr(key, value)
    if m.trainer.diverged or m.trainer.epoch == 0:
        # diverged, or the time budget ran out before this member finished an epoch
        t.set_user_attr(tr.FAILURE, m.trainer.reason or "no epoch finished")
        study.tell(t, state=TrialState.FAIL)
        return
    loss, acc = m.trainer.evaluate(objective.dataset.val)
    t.set_user_attr(tr.VAL_ACC, acc)
    t.set_user_attr(tr.VAL_LOSS, loss)
    atomic_torch_save(m.trainer.release().state_dict(), objective.checkpoints / f"trial_{t.number}.pt")
    study.tell(t, [acc])

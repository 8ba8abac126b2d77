"""Search strategies as Optuna samplers and pruners, plus what each enqueues into the study
(manual configs, the grid's coarse-to-fine steps, the warm start).

| strategy  | sampler                         | pruner                         |
|-----------|---------------------------------|--------------------------------|
| manual    | configs from YAML, enqueued     | none                           |
| grid      | a coarse grid, then a finer grid around its best point (both enqueued) | none |
| random    | RandomSampler                   | none                           |
| bayes     | TPESampler (or GPSampler), start-up from the prior | none                |
| hyperband | RandomSampler                   | HyperbandPruner (epochs)       |
| bohb      | TPESampler on every bracket, start-up from the prior | HyperbandPruner (epochs) |
| pbt       | RandomSampler for the initial population; ``archgen.pbt`` does the rest |

Model-based samplers see *trained* trials only (``TrainedTrialsSampler``): a candidate screened
out before training (over a latency/size/time budget) carries no accuracy. Optuna would show it
to TPE as the worst kind of pruned trial, so the model's "bad" density fills with large networks
and TPE drifts to small ones (docs/benchmarks.md).
Under Hyperband, TPE still models every bracket's trials, as BOHB (Falkner et al., 2018) does.

Start-up (``PriorStartupSampler``, ``prior_startup: true``, the default): before the model has
``STARTUP_TRIALS`` trained trials to fit, bayes and bohb draw from the practitioner's prior
instead of uniformly: each parameter independently keeps its default (``Param.default``, the
warm-start configuration) or, for numbers, a value near it; PriorBand (Mallik et al., 2023) and
piBO (Hvarfner et al., 2022) use expert priors the same way. Uniform start-up draws are the
first draws of random search with the same seed, so without a prior the model-based strategies
spend their first trials exactly as random search does.

Hyperband runs asynchronously (Optuna's ASHA-style successive halving): a trial reaching a rung is
promoted when it ranks in the top 1/eta of the trials *of its bracket* at that rung so far, so the
first trial of each bracket at each rung is always promoted, however bad.
``SeededHyperbandPruner`` (opt-in, ``seeded_pruning: true``) compares such a trial, which its bracket cannot judge yet, with the
median of every other trial's accuracy at the same epoch: a network at chance level after the
epochs its bracket grants is stopped there instead of training to ``max_epochs``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import statistics
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from archgen import trial_record as tr
from archgen.errors import SearchConfigError
from archgen.liveness import slots_used
from archgen.settings import PRUNING, SearchSettings
from archgen.space import Param

log = logging.getLogger(__name__)
STARTUP_TRIALS = 8  # trained trials before TPE/GP fit a model
PRIOR_KEEP = 0.5  # chance that a start-up draw keeps a choice parameter's default
PRIOR_SPREAD = 0.2  # std of a numeric start-up draw around its default, as a fraction of the (log) range


class TrainedTrialsSampler(optuna.samplers.BaseSampler):
    """Delegates to ``inner`` with a view of the whole study (all Hyperband brackets) that
    leaves out trials screened out before training (user attr ``trial_record.REJECTED``)."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    @staticmethod
    def view(study: optuna.Study) -> optuna.Study:
        # Under Hyperband Optuna passes a per-bracket view that keeps the real study in
        # ``_study`` (its ``_get_trials``, which TPE reads, already spans all brackets in
        # Optuna 5; the view itself cannot be copied). The copy shares the storage; its
        # filtering ``_get_trials`` reads through the real study's trial cache.
        base = getattr(study, "_study", study)
        seen = copy.copy(base)
        get = base._get_trials

        def trained(deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
            trials = get(deepcopy=deepcopy, states=states, use_cache=use_cache)
            return [t for t in trials if tr.REJECTED not in t.user_attrs]

        seen._get_trials = trained  # type: ignore[method-assign]
        seen.get_trials = lambda deepcopy=True, states=None: trained(deepcopy, states)  # type: ignore[method-assign]
        return seen

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self.view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self.view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self.view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self.view(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(self.view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class PriorStartupSampler(optuna.samplers.BaseSampler):
    """``inner`` (TPE or GP) once ``n_startup`` trials are trained; before that, every parameter
    is drawn from the practitioner's prior around ``space``'s defaults.

    A choice parameter keeps its default with probability ``PRIOR_KEEP`` and is otherwise uniform
    over its choices; a number is normal around its default in (log-)space, std ``PRIOR_SPREAD``
    of the range, redrawn until it lies inside the range (centred on the range's nearest end when
    a narrowed ``space:`` leaves the default outside). A parameter without a default, or not
    in ``space``, is left to ``inner`` (uniform in start-up). Whether a trial is a start-up trial
    is decided once, when it starts, so a trial never mixes prior and model draws.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, space: dict[str, Param], seed: int | None,
                 n_startup: int = STARTUP_TRIALS) -> None:
        self.inner, self.space, self.n_startup = inner, space, n_startup
        self._rng = random.Random(seed)
        self._startup: dict[int, bool] = {}

    def _in_startup(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number not in self._startup:
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            done = study._get_trials(deepcopy=False, states=states, use_cache=True)
            self._startup[trial.number] = len(done) < self.n_startup
        return self._startup[trial.number]

    def draw(self, p: Param) -> Any:
        """One draw from the prior of ``p`` (which has a usable default)."""
        default = p.default_value()
        if p.kind == "choice":
            return default if self._rng.random() < PRIOR_KEEP else self._rng.choice(p.choices)
        if p.low == p.high:
            return p.low
        to, back = (math.log, math.exp) if p.log else (float, float)
        lo, hi = to(p.low), to(p.high)
        centre = min(max(to(default), lo), hi)  # a narrowed range may leave the default outside
        while True:
            value = back(self._rng.gauss(centre, PRIOR_SPREAD * (hi - lo)))
            if p.kind == "int":
                value = int(round(value))
            if p.low <= value <= p.high:
                return value

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._in_startup(study, trial):
            return {}
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)  # {} in start-up: nothing inferred

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        p = self.space.get(param_name)
        # default_value() falls back to a first choice or mid-range; the prior needs a real default
        usable = p is not None and p.default is not None and p.default_value() == p.default
        if usable and self._in_startup(study, trial):
            return self.draw(p)  # the distribution is p's own (Param.suggest)
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._startup.pop(trial.number, None)
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        self.inner.reseed_rng()


def make_sampler(strategy: str, seed: int, space: dict[str, Param],
                 settings: SearchSettings) -> optuna.samplers.BaseSampler:
    if strategy in ("random", "hyperband", "pbt", "manual", "grid"):
        # manual and grid enqueue every trial's parameters; the sampler is never consulted
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "bayes" and settings.bayes_sampler == "gp":
        inner: optuna.samplers.BaseSampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    else:
        multi = settings.objective == "pareto"
        # constant_liar: once past the start-up trials, concurrent workers treat each other's
        # running trials as bad guesses instead of proposing the same point (their start-up draws
        # differ because each worker's sampler has its own seed, see archgen.settings.sampler_seed)
        shared = settings.workers != 1 or settings.storage is not None
        inner = optuna.samplers.TPESampler(
            seed=seed, multivariate=not multi, n_startup_trials=STARTUP_TRIALS, constant_liar=shared)
    if settings.prior_startup:
        inner = PriorStartupSampler(inner, space, seed)
    return TrainedTrialsSampler(inner)


class SeededHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, plus a judgement for trials their bracket promotes by default.

    At a rung of its bracket (epoch ``min_resource * eta**(bracket + k)``) where fewer than
    ``eta - 1`` other trials of the bracket have a value, successive halving has nothing to
    rank the trial against and promotes it (the first one always; the next ones when they are
    the best so far). Such a trial is pruned when its value is below the median of every other
    trial's value at the same epoch, from all brackets. Once the bracket has its own
    competitors, Hyperband decides alone. Pruning stays at the bracket's rung epochs, so the
    Hyperband schedule (and the TPE-per-bracket behaviour keyed on ``HyperbandPruner``) holds.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if super().prune(study, trial):
            return True
        step = trial.last_step
        if step is None or not self._pruners or len(study.directions) != 1:
            return False
        eta = self._reduction_factor
        bracket = self._get_bracket_id(study, trial)
        rung, first = 0, self._min_resource * eta**bracket
        while first * eta**rung < step:
            rung += 1
        if first * eta**rung != step:
            return False  # not a rung epoch of this trial's bracket
        key = f"completed_rung_{rung}"
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        peers = [t for t in trials if key in t.system_attrs and self._get_bracket_id(study, t) == bracket]
        if len(peers) >= eta - 1:
            return False  # successive halving had competitors: its decision stands
        others = [t.intermediate_values[step] for t in trials
                  if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])]
        if not others:
            return False
        value, median = trial.intermediate_values[step], statistics.median(others)
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return value < median
        return value > median


def make_pruner(strategy: str, settings: SearchSettings) -> optuna.pruners.BasePruner:
    if strategy in PRUNING:
        cls = SeededHyperbandPruner if settings.seeded_pruning else optuna.pruners.HyperbandPruner
        return cls(
            min_resource=settings.min_epochs,
            max_resource=settings.max_epochs,
            reduction_factor=settings.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def coarse_grid(space: dict[str, Param], settings: SearchSettings) -> dict[str, list[Any]]:
    """Values per parameter: the YAML ``grid:`` section where given, else ``grid_points``
    evenly spaced values for the ranges named in ``grid_params`` and the midpoint (or first
    choice) for everything else."""
    grid: dict[str, list[Any]] = {}
    given = settings.grid or {}
    for name, p in space.items():
        if name in given:
            values = given[name] if isinstance(given[name], list) else [given[name]]
            grid[name] = [p.check(v, f"grid.{name}") for v in values]
        elif name in settings.grid_params:
            grid[name] = p.grid_values(settings.grid_points)
        else:
            grid[name] = [p.default_value()]
    return grid


def grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in grid.values())


def fine_grid(best: dict[str, Any], coarse: dict[str, list[Any]], space: dict[str, Param]) -> list[dict[str, Any]]:
    """Coarse-to-fine: a finer grid centred on the best coarse point. Each numeric parameter
    that varied in the coarse grid gets the best value and the midpoints to its coarse
    neighbours (geometric midpoints on log scales); everything else stays at the best value."""
    axes: dict[str, list[Any]] = {}
    for name, values in coarse.items():
        p = space[name]
        b = best[name]
        if len(values) < 2 or p.kind == "choice":
            axes[name] = [b]
            continue
        ordered = sorted(values)
        i = ordered.index(b) if b in ordered else min(range(len(ordered)), key=lambda j: abs(ordered[j] - b))
        points = {b}
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                mid = math.sqrt(ordered[j] * b) if p.log else (ordered[j] + b) / 2
                points.add(int(round(mid)) if p.kind == "int" else float(f"{mid:.3g}"))
        axes[name] = sorted(points)
    names = list(axes)
    combos = [dict(zip(names, vals)) for vals in itertools.product(*(axes[n] for n in names))]
    return [c for c in combos if c != best]


def manual_configs(configs: object, space: dict[str, Param]) -> list[dict[str, Any]]:
    """Validate the YAML ``manual:`` list; unspecified parameters take the space's default."""
    if not isinstance(configs, list) or not configs:
        raise SearchConfigError("manual: needs a non-empty list of configs (mappings of parameter: value)")
    out = []
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, dict):
            raise SearchConfigError(f"manual[{i}]: must be a mapping, got {cfg!r}")
        unknown = set(cfg) - set(space)
        if unknown:
            raise SearchConfigError(f"manual[{i}]: unknown parameter(s) {', '.join(sorted(map(str, unknown)))}")
        full = {}
        for name, p in space.items():
            if name in cfg:
                full[name] = p.check(cfg[name], f"manual[{i}]")
            else:
                full[name] = p.default_value()
        out.append(full)
    return out


def enqueue_plan(settings: SearchSettings, study: optuna.Study, space: dict[str, Param]) -> None:
    """The study's plan. manual and grid: enqueue their configs; sampling strategies: the
    default config as a warm start. Once per study (a resumed search does not enqueue again)."""
    if study.user_attrs.get(tr.PLAN_ENQUEUED):
        return
    if settings.warm_start and settings.strategy in ("random", "bayes", "hyperband", "bohb"):
        study.enqueue_trial({name: p.default_value() for name, p in space.items()},
                            user_attrs={tr.WARM_START: True})
    if settings.strategy == "manual":
        for cfg in manual_configs(settings.manual, space):
            study.enqueue_trial(cfg)
    elif settings.strategy == "grid":
        grid = coarse_grid(space, settings)
        names = list(grid)
        combos = [dict(zip(names, v)) for v in itertools.product(*(grid[n] for n in names))]
        random.Random(settings.seed).shuffle(combos)
        budget = settings.trials
        if budget and settings.refine:
            budget = max(1, budget - budget // 3)  # keep a third of the trials for the fine grid
        for cfg in combos[:budget] if budget else combos:
            study.enqueue_trial(cfg, user_attrs={tr.GRID_PHASE: "coarse"})
        log.info("grid: %d coarse points of %d", min(len(combos), budget or len(combos)), grid_size(grid))
    study.set_user_attr(tr.PLAN_ENQUEUED, True)


def enqueue_fine_grid(settings: SearchSettings, study: optuna.Study, space: dict[str, Param]) -> int:
    """grid with ``refine``: enqueue the fine grid around the best coarse point, within
    ``trials``, once per study. Returns the number of configs enqueued."""
    if study.user_attrs.get(tr.FINE_ENQUEUED) or not settings.refine:
        return 0
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return 0
    best = max(done, key=lambda t: t.values[0])
    combos = fine_grid(best.params, coarse_grid(space, settings), space)
    if settings.trials:
        combos = combos[: max(0, settings.trials - slots_used(study))]
    for cfg in combos:
        study.enqueue_trial(cfg, user_attrs={tr.GRID_PHASE: "fine"})
    study.set_user_attr(tr.FINE_ENQUEUED, True)
    return len(combos)

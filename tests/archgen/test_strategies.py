"""Samplers of the model-based strategies: start-up draws from the practitioner's prior."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest

from archgen.settings import SearchSettings
from archgen.space import Param, default_space, suggest
from archgen.strategies import PriorStartupSampler, TrainedTrialsSampler, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
MNIST = (1, 28, 28)


class _Lowest(optuna.samplers.BaseSampler):
    """Stands in for TPE: always the lowest value / first choice, so its draws are recognisable."""

    calls = 0

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        self.calls += 1
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            return distribution.choices[0]
        return distribution.low


def test_prior_draws_centre_on_the_practitioners_defaults():
    sampler = PriorStartupSampler(_Lowest(), {}, seed=0)
    space = default_space(MNIST)
    opt = [sampler.draw(space["optimizer"]) for _ in range(3000)]
    # keeps the default half the time, else uniform over 3 choices: 1/2 + 1/6
    assert opt.count("adam") / len(opt) == pytest.approx(2 / 3, abs=0.04)
    assert set(opt) == {"adam", "adamw", "sgd"}  # every choice stays reachable
    lr = [sampler.draw(space["lr"]) for _ in range(3000)]
    assert all(1e-4 <= x <= 3e-2 for x in lr)
    near = sum(1e-3 / 3 <= x <= 3e-3 for x in lr) / len(lr)
    uniform_near = math.log(9) / math.log(300)  # the same band under log-uniform draws: 0.385
    assert near > uniform_near + 0.2
    assert statistics.median(lr) == pytest.approx(1e-3, rel=0.25)
    shift = [sampler.draw(space["augment_shift"]) for _ in range(1000)]
    assert set(shift) <= {0, 1, 2} and all(isinstance(s, int) for s in shift)
    assert shift.count(2) > shift.count(1) > shift.count(0)  # MNIST's default is 2
    fixed = Param("lr", "float", 1e-3, 1e-3, log=True, default=1e-3)
    assert sampler.draw(fixed) == 1e-3
    # a space: section that narrows lr away from its default still draws, near the closer end
    narrowed = [sampler.draw(Param("lr", "float", 1e-2, 3e-2, log=True, default=1e-3)) for _ in range(200)]
    assert all(1e-2 <= x <= 3e-2 for x in narrowed) and statistics.median(narrowed) < 1.6e-2


def test_start_up_trials_come_from_the_prior_then_the_model_takes_over():
    space = default_space(MNIST)
    inner = _Lowest()
    study = optuna.create_study(direction="maximize",
                                sampler=TrainedTrialsSampler(PriorStartupSampler(inner, space, seed=1, n_startup=3)))
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)}
    # trials screened out before training do not end the start-up (nothing was learned from them)
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"lr": 1e-4},
                                                  distributions=dist, user_attrs={"rejected": "over budget"}))
    drawn = []
    for _ in range(5):
        trial = study.ask()
        drawn.append(suggest(trial, space))
        study.tell(trial, 0.5)
    assert inner.calls == 2 * len(space)  # trials 4 and 5 only
    for params in drawn[:3]:
        assert params["lr"] != 1e-4 and 1e-4 < params["lr"] <= 3e-2
    assert all(p["lr"] == 1e-4 and p["optimizer"] == "adam" and p["batch_size"] == 32 for p in drawn[3:])


def test_a_trial_does_not_switch_from_prior_to_model_halfway():
    space = default_space(MNIST)
    inner = _Lowest()
    study = optuna.create_study(direction="maximize", sampler=PriorStartupSampler(inner, space, seed=0, n_startup=1))
    slow = study.ask()
    slow.suggest_float("lr", 1e-4, 3e-2, log=True)
    fast = study.ask()  # another worker's trial finishes meanwhile: the start-up is over
    fast.suggest_float("lr", 1e-4, 3e-2, log=True)
    study.tell(fast, 0.9)
    assert inner.calls == 0
    assert slow.suggest_categorical("optimizer", ["adam", "adamw", "sgd"]) is not None
    assert inner.calls == 0  # still the prior: the decision was taken when the trial started
    late = study.ask()
    assert late.suggest_float("lr", 1e-4, 3e-2, log=True) == 1e-4 and inner.calls == 1


@pytest.mark.parametrize("strategy", ["bohb", "bayes"])
def test_without_the_prior_the_model_based_start_up_repeats_random_search(tmp_path, strategy):
    """Why the prior exists: uniform start-up draws are random search's own first draws."""
    space = default_space(MNIST)

    def first_trials(strat, **kw):
        settings = SearchSettings(workers=1, data="digits", out=str(tmp_path), strategy=strat, **kw)
        study = optuna.create_study(direction="maximize", sampler=make_sampler(strat, 7, space, settings))
        out = []
        for _ in range(3):
            trial = study.ask()
            out.append(suggest(trial, space))
            study.tell(trial, 0.5)
        return out

    random_draws = first_trials("random")
    assert first_trials(strategy, prior_startup=False) == random_draws
    assert first_trials(strategy) != random_draws


def test_prior_startup_is_the_default_for_model_based_strategies(tmp_path):
    space = default_space(MNIST)
    on = make_sampler("bohb", 0, space, SearchSettings(workers=1, data="digits", out=str(tmp_path)))
    assert isinstance(on.inner, PriorStartupSampler) and isinstance(on.inner.inner, optuna.samplers.TPESampler)
    off = make_sampler("bohb", 0, space, SearchSettings(workers=1, data="digits", out=str(tmp_path), prior_startup=False))
    assert isinstance(off.inner, optuna.samplers.TPESampler)
    assert type(make_sampler("random", 0, space, SearchSettings(workers=1, data="digits", out=str(tmp_path)))) \
        is optuna.samplers.RandomSampler

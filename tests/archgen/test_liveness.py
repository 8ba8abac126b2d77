"""Lost trials: a process killed between failing a trial and enqueuing its retry leaves an
orphan that the next worker to claim a trial retries, once."""
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from archgen import trial_record as tr
from archgen.liveness import retry_orphans, worker_tag


def _dead_tag() -> str:
    proc = subprocess.Popen(["sleep", "30"])
    tag = worker_tag(proc.pid)
    proc.kill()
    proc.wait()
    return tag


def _orphan(study: optuna.Study, failer: str, **params: float) -> optuna.trial.FrozenTrial:
    """A trial failed as lost whose retry was never enqueued (its failer stopped in between)."""
    trial = study.ask()
    for name, value in params.items():
        trial.suggest_float(name, value, value)
    trial.set_user_attr(tr.LOST, "its worker (pid 1) died")
    trial.set_user_attr(tr.LOST_BY, failer)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[trial.number]


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study()


def test_an_orphan_of_a_dead_failer_is_retried_once_with_its_parameters(study):
    orphan = _orphan(study, _dead_tag(), lr=0.01)
    assert retry_orphans(study) == [orphan.number]
    assert retry_orphans(study) == []  # the waiting retry names it: not retried twice
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].user_attrs[tr.RETRY_OF] == orphan.number
    retry = study.ask()
    assert retry.number == waiting[0].number
    assert retry.suggest_float("lr", 1e-4, 1.0) == 0.01


def test_an_orphan_of_a_live_failer_waits_for_the_grace_period(study, monkeypatch):
    orphan = _orphan(study, worker_tag())  # this process: alive, maybe about to enqueue
    assert retry_orphans(study) == []
    monkeypatch.setattr("archgen.liveness.GRACE_PERIOD_S", 0)
    assert retry_orphans(study) == [orphan.number]


def test_orphans_are_retried_only_into_free_slots(study):
    dead = _dead_tag()
    first = _orphan(study, dead)
    _orphan(study, dead)
    assert retry_orphans(study, max_n=0) == []
    assert retry_orphans(study, max_n=1) == [first.number]
    assert retry_orphans(study, max_n=1) == []  # the waiting retry holds the one free slot


def test_clean_failures_retries_and_surplus_trials_are_not_orphans(study):
    dead = _dead_tag()
    diverged = study.ask()
    diverged.set_user_attr(tr.FAILURE, "diverged")
    study.tell(diverged, state=TrialState.FAIL)
    surplus = study.ask()
    surplus.set_user_attr(tr.LOST, "surplus: the slot lock was lost while asking")
    study.tell(surplus, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={tr.RETRY_OF: 99})
    lost_retry = study.ask()
    lost_retry.set_user_attr(tr.LOST_BY, dead)
    study.tell(lost_retry, state=TrialState.FAIL)
    assert retry_orphans(study) == []

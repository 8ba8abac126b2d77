"""Which trained trial a search selects, on validation data only (test data plays no part), and
why nothing could be selected when nothing can."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from archgen.trial_record import EST_EPOCH_S, EST_MS, FAILURE, REJECTED, VAL_ACC, VAL_LOSS

if TYPE_CHECKING:
    import optuna

    from archgen.settings import SearchSettings


def selectable(study: optuna.Study, settings: SearchSettings) -> list[FrozenTrial]:
    """Completed trials with a validation accuracy, within the latency budget."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if VAL_ACC in t.user_attrs]
    if settings.max_latency_ms is not None:
        done = [t for t in done if t.user_attrs.get(EST_MS, 0) <= settings.max_latency_ms]
    return done


def validation_rank(t: FrozenTrial) -> tuple[float, float, float]:
    """The key that orders trials best first under ``max``: validation accuracy, then the lower
    validation loss, then the lower estimated latency."""
    return t.user_attrs[VAL_ACC], -t.user_attrs.get(VAL_LOSS, 0.0), -t.user_attrs.get(EST_MS, 0.0)


def select_best(study: optuna.Study, settings: SearchSettings, n_val: int | None = None) -> FrozenTrial | None:
    """The trial to select among completed trials within the latency budget; test data plays no
    part.

    ``selection: best``: the highest validation accuracy; ties (common: one validation image is
    0.4% on digits) go to the lower validation loss, the finer signal, then to the lower
    estimated latency. ``selection: se1`` (the default, with ``n_val`` validation images): the
    one-standard-error rule, the lowest estimated latency among the trials whose validation
    accuracy is within one binomial standard error sqrt(p (1 - p) / n_val) of the best p; a
    trial that is better on validation by less than the split can tell is not worth a slower
    network (measured: docs/benchmarks.md, "Selection on a small validation split")."""
    done = selectable(study, settings)
    if not done:
        return None
    best = max(done, key=validation_rank)
    if getattr(settings, "selection", "best") != "se1" or not n_val:
        return best
    margin = selection_margin(best.user_attrs[VAL_ACC], n_val)
    near = [t for t in done if t.user_attrs[VAL_ACC] >= best.user_attrs[VAL_ACC] - margin - 1e-12]
    return min(near, key=lambda t: (t.user_attrs.get(EST_MS, math.inf), -t.user_attrs[VAL_ACC],
                                    t.user_attrs.get(VAL_LOSS, 0.0)))


def selection_margin(best_acc: float, n_val: int) -> float:
    """One binomial standard error of a validation accuracy ``best_acc`` on ``n_val`` images."""
    return math.sqrt(max(0.0, best_acc * (1.0 - best_acc)) / n_val)


def nothing_trained_message(study: optuna.Study, settings: SearchSettings) -> str:
    """Why no trial can be selected, and what budget would work where the budget was the cause."""
    from archgen.objective import trial_share

    trials = study.get_trials(deepcopy=False)
    budget = settings.time_budget_s
    slow = [t.user_attrs[EST_EPOCH_S] for t in trials if EST_EPOCH_S in t.user_attrs]
    if budget and slow:
        need = settings.min_epochs * min(slow) / trial_share(settings)
        if need > budget * 0.9 or not [t for t in trials if REJECTED not in t.user_attrs]:
            return (f"nothing could be trained in --time-budget {budget:g} s: the fastest candidate drawn "
                    f"needs ~{min(slow):.1f} s per epoch here; use --time-budget {max(need * 1.5, budget * 2):.0f} "
                    "or more, or narrow the space")
    failed = [t.user_attrs[FAILURE] for t in trials if FAILURE in t.user_attrs]
    if failed:
        return (f"nothing could be selected: all {len(failed)} trained trial(s) failed, e.g. {failed[0]} "
                "(see trials.csv)")
    rejected = [t.user_attrs[REJECTED] for t in trials if REJECTED in t.user_attrs]
    if rejected:
        return (f"nothing could be trained: all {len(rejected)} candidate(s) were screened out before "
                f"training, e.g. {rejected[0]}")
    if settings.max_latency_ms is not None and [t for t in trials if t.state == TrialState.COMPLETE]:
        return f"nothing could be selected: no trained trial meets --max-latency-ms {settings.max_latency_ms:g}"
    if budget:
        return (f"nothing could be trained: --time-budget {budget:g} s ran out before a trial finished "
                f"an epoch; use --time-budget {budget * 3:.0f} or more")
    return "nothing could be trained: no trial finished (raise --trials)"

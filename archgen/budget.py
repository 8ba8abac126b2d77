"""The time budget a run has used, across the sessions of the same command.

A search killed and resumed, or a finished one run again, goes on with what its earlier sessions
left of ``--time-budget``, not with a fresh budget: a finished search run again selects from its
trials and reports the recorded result (the test split stays closed), and a larger
``--time-budget`` searches on for the difference. The study keeps the seconds used
(``BUDGET_USED_S``), written when a session's workers stop (normally, on an error or on Ctrl-C;
a session killed outright is not counted). Processes that join one study at the same time
(``--no-finalize`` on a shared storage) each record how long the search has run by their clock;
the study keeps the largest.
"""

from __future__ import annotations

import logging
import time

import optuna

from archgen.redact import redact_text
from archgen.settings import SearchSettings
from archgen.storage_errors import driver_detail

log = logging.getLogger(__name__)

BUDGET_USED_S = "budget_used_s"


def used_s(study: optuna.Study) -> float:
    """Seconds of the time budget earlier sessions used (0 for a new study)."""
    try:
        return max(0.0, float(study.user_attrs.get(BUDGET_USED_S) or 0.0))
    except (TypeError, ValueError):
        return 0.0


def session_start(study: optuna.Study, settings: SearchSettings) -> float:
    """The ``start`` (``time.time()`` scale) from which ``settings.deadline`` leaves this session
    what is left of the budget: now, less the seconds already used."""
    used = used_s(study)
    if used and settings.time_budget_s:
        if used >= settings.time_budget_s:
            log.warning("this run has used its time budget (%.0f s of %g s): selecting from its trials; "
                        "a larger --time-budget searches on", used, settings.time_budget_s)
        else:
            log.info("resumed: %.0f s of the %g s budget left", settings.time_budget_s - used,
                     settings.time_budget_s)
    return time.time() - used


def record_used(study: optuna.Study, start: float) -> None:
    """Keep ``now - start`` as the budget used (never lowering what the study holds)."""
    used = time.time() - start
    try:
        if used > used_s(study):
            study.set_user_attr(BUDGET_USED_S, used)
    except Exception as exc:  # noqa: BLE001 - the storage may be gone; the trials stand
        log.warning("could not record the time budget used (%s)", redact_text(driver_detail(exc)))

"""archgen's public Python API, for notebooks and libraries (``import archgen``).

The command line calls these same functions; each keyword follows the CLI flag of the same name
(``--time-budget`` is ``time_budget_s``, the search's keywords are the ``SearchSettings`` fields).
Heavy libraries (torch, optuna, pandas) are imported when a function runs, never on
``import archgen``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archgen.errors import ConstraintError
from archgen.rules import RuleSet
from archgen.spec import ArchSpec

if TYPE_CHECKING:
    import pandas as pd

    from archgen.train_run import TrainRunResult
    from costmodel.device_profile import DeviceProfile


def cached_profile(batch_size: int = 1, runtime: str = "torch") -> DeviceProfile:
    """This machine's cached CPU profile for 1 thread at ``batch_size`` (``runtime`` torch or
    onnxruntime); ConstraintError when there is none (run ``archgen calibrate``)."""
    from costmodel.device_profile import load_cached

    profile = load_cached(device="cpu", threads=1, batch_size=batch_size, runtime=runtime)
    if profile is None:
        flag = "" if runtime == "torch" else f" --runtime {runtime}"
        raise ConstraintError(
            f"--max-latency-ms needs a device profile for cpu, {runtime}, 1 thread, batch "
            f"{batch_size}; run 'archgen calibrate{flag} --batch-size {batch_size}' first, or give "
            "--device-profile FILE"
        )
    return profile


def latency_estimator(batch_size: int = 1, profile: DeviceProfile | None = None) -> Callable[[ArchSpec], float]:
    """``spec -> estimated ms`` with ``profile``, or with :func:`cached_profile`."""
    from archgen.costing import spec_geoms
    from costmodel.estimator import estimate_total_ms

    chosen = cached_profile(batch_size) if profile is None else profile
    return lambda spec: estimate_total_ms(spec_geoms(spec), chosen, batch_size)


def generate(
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    n: int = 10,
    seed: int = 0,
    *,
    rules: RuleSet | None = None,
    disable: str | Iterable[str] = (),
    growth: int = 2,
    stacking: bool = False,
    init: str | None = None,
    max_macs: float | None = None,
    max_params: float | None = None,
    max_latency_ms: float | None = None,
    batch_size: int = 1,
    profile: DeviceProfile | None = None,
) -> list[ArchSpec]:
    """Up to ``n`` distinct rule-following specs for ``input_shape`` (C, H, W) and
    ``num_classes``, the same for the same arguments.

    ``rules`` is a ``RuleSet``; without one, the default rules with those named in ``disable``
    (e.g. ``"R2,R5"``) off, filter ``growth`` 2 or 4 per pooling (R1), ``stacking`` of 3x3
    convs (R3) and the ``init`` scheme (R7). Budgets screen candidates without training:
    ``max_macs``, ``max_params`` and ``max_latency_ms`` (the calibrated estimate at
    ``batch_size``, with ``profile`` or this machine's cached one). Fewer than ``n`` come back
    when fewer distinct candidates meet the constraints; none at all raises ConstraintError.
    """
    from archgen.generator import Budget, sample_specs

    for name, value in (("max_macs", max_macs), ("max_params", max_params), ("max_latency_ms", max_latency_ms)):
        if value is not None and not value > 0:
            raise ConstraintError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    if rules is None:
        rules = RuleSet.with_rules_off(disable, growth=growth, stacking=stacking, init=init)
    budget = Budget(
        max_macs=int(max_macs) if max_macs is not None else None,
        max_params=int(max_params) if max_params is not None else None,
    )
    accept = None
    if max_latency_ms is not None:
        latency = latency_estimator(batch_size, profile)
        accept = lambda spec: latency(spec) <= max_latency_ms  # noqa: E731
    return sample_specs(tuple(input_shape), num_classes, n, seed, rules=rules, budget=budget, accept=accept)


@dataclass(frozen=True)
class SearchResult:
    """What a search selected and where it wrote it (the run directory is the CLI's)."""

    run_dir: Path
    spec: ArchSpec | None  # the selected network (None when the search ran without finalize)
    val_acc: float | None
    test_acc: float | None  # measured once, on the sealed test split
    est_ms: float | None
    meas_ms: float | None
    trials: pd.DataFrame  # trials.csv: one row per trial (empty without finalize)
    summary: dict[str, Any]  # everything finalize recorded (test_metrics.json's fields)


def search(
    data: str = "digits",
    strategy: str = "bohb",
    trials: int | None = None,
    time_budget_s: float | None = None,
    out: str | Path | None = "runs/search",
    seed: int | None = 0,
    *,
    config: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> SearchResult:
    """Search architectures and training hyperparameters, as ``archgen search`` does, and return
    the selected network with its validation and test accuracy.

    ``data`` is ``digits``, ``idx:DIR`` (MNIST-format files), ``npz:FILE`` or ``folder:DIR``;
    ``strategy`` one of manual, grid, random, bayes, hyperband, bohb, pbt. Further keywords are
    ``SearchSettings`` fields (``max_latency_ms``, ``objective``, ``workers``, ``storage``,
    ``max_epochs``, ``refit``, ...); ``config`` is a search YAML (keywords win over it).
    ``progress`` receives a status dict now and then. Raises ``UserError`` (or a subclass) on
    bad input, before anything is written.
    """
    import pandas as pd

    from archgen.search_run import run_search
    from archgen.settings import settings_from
    from archgen.spec import load_spec

    given = {"data": data, "strategy": strategy, "trials": trials, "time_budget_s": time_budget_s,
             "out": None if out is None else str(out), "seed": seed, **settings}
    resolved = settings_from(given, None if config is None else str(config))
    summary = run_search(resolved, progress=progress)
    run_dir = Path(summary["run_dir"])
    spec_path, trials_csv = run_dir / "best" / "spec.json", run_dir / "trials.csv"
    finalized = "test_acc" in summary
    return SearchResult(
        run_dir=run_dir,
        spec=load_spec(spec_path) if finalized else None,
        val_acc=summary.get("val_acc"),
        test_acc=summary.get("test_acc"),
        est_ms=summary.get("est_ms"),
        meas_ms=summary.get("meas_ms"),
        trials=pd.read_csv(trials_csv) if trials_csv.exists() else pd.DataFrame(),
        summary=summary,
    )


def train(spec: ArchSpec | str | Path, data: str = "digits", **kwargs: Any) -> TrainRunResult:
    """Train one network with honest train / validation / test splits and write its run
    directory, as ``archgen train`` does; see :func:`archgen.train_run.train_run` for the
    keywords (``out``, ``epochs``, ``lr``, ``batch_size``, ``loss``, ``patience``, ...)."""
    from archgen.train_run import train_run

    return train_run(spec, data, **kwargs)


def ablate(rule: str, data: str = "digits", *, seeds: int = 3, networks: int = 2, epochs: int = 20,
           time_budget_s: float | None = None, measure: bool = True, out: str | Path | None = None) -> dict[str, Any]:
    """Measure one design rule (``"R1"`` .. ``"R7"``, ``"balance"``) or training hyperparameter
    (``"lr"``, ``"loss"``, ``"reg"``, ``"batch"``, ``"early-stopping"``, ``"init"``) against its
    alternatives, as ``archgen ablate`` does: the JSON document (``summary`` per arm with 95%
    confidence intervals, ``paired`` differences to the rule, every ``runs`` row; docs/rules.md).
    ``out`` also writes ``ablate.json``, ``runs.csv`` and ``ablate.png`` there."""
    from archgen.ablate import AblateSettings, run_ablation

    doc = run_ablation(AblateSettings(rule=rule, data=data, seeds=seeds, networks=networks, epochs=epochs,
                                      time_budget_s=time_budget_s, measure=measure))
    if out is not None:
        from archgen.ablate_report import write_outputs

        write_outputs(doc, Path(out))
    return doc

"""``archgen ablate``: a rule or hyperparameter turned into evidence on the user's data and machine.

For each seed ``s`` the data is split with seed ``s``; ``networks`` configurations are drawn the
way the search draws them (the default space's own configuration first, then seeded random
samples of it), each is fixed so that the factor can matter (``Factor.prepare``), and every arm
of the factor builds and trains its version of it from the same seed under the same epoch cap
and time limit. Each trained network is priced (calibrated estimate at batch 1, the machine's
cached profile or the built-in one, labelled), measured layer by layer on this machine (1
thread, batch 1) and evaluated once on its split's test data, for the report: nothing is
chosen on test data. ``archgen.ablate_report`` summarises the arms (means with 95% confidence
intervals over the matched runs, paired differences against the first arm).

The JSON document (``ablate.json``, ``--format json``) is described in docs/rules.md, "The
ablate JSON"; its ``schema`` number changes when a field changes meaning.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archgen.ablate_factors import Arm, Factor, arm_spec, factor
from archgen.errors import SpecError, UserError

log = logging.getLogger(__name__)

SCHEMA = 1
LATENCY_BATCH = 1


@dataclass(frozen=True)
class AblateSettings:
    rule: str
    data: str = "digits"
    seeds: int = 3
    networks: int = 2
    epochs: int = 20
    patience: int = 5
    time_budget_s: float | None = None  # per trained network
    measure: bool = True  # time every layer of every trained network (1 thread, batch 1)

    def __post_init__(self) -> None:
        for name, low in (("seeds", 1), ("networks", 1), ("epochs", 1), ("patience", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"{name}={value!r}: use a positive integer")
        if self.time_budget_s is not None and not (isinstance(self.time_budget_s, (int, float))
                                                   and math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise UserError(f"time_budget_s={self.time_budget_s!r}: use a positive number of seconds per network")


def drawn_configs(space: dict, n: int, seed: int) -> list[dict[str, Any]]:
    """The space's default configuration, then ``n - 1`` seeded random samples (the search's
    warm start and its random start-up draws)."""
    import optuna

    from archgen.space import suggest

    out = [{name: p.default_value() for name, p in space.items()}]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(out) < n:
        out.append(suggest(study.ask(), space))
    return out


def fit_all_arms(fac: Factor, params: dict[str, Any], input_shape: tuple[int, int, int],
                 num_classes: int) -> dict[str, Any]:
    """``params`` with fewer stages where an arm cannot build the drawn depth (valid padding
    shrinks an 8x8 input to nothing after one stage): the deepest configuration every arm can
    build, so that the arms stay matched. Unchanged when none fits."""
    for stages in range(params["stages"], 0, -1):
        trial = {**params, "stages": stages}
        try:
            for arm in fac.arms:
                arm_spec(arm, trial, input_shape, num_classes)
        except SpecError:
            continue
        return trial
    return params


def run_ablation(settings: AblateSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every arm of ``settings.rule`` on every seed and drawn network; the JSON document.
    ``progress`` is given one line per trained network (the CLI prints them on stderr)."""
    import optuna

    from archgen.ablate_report import summarize
    from archgen.data import load_dataset
    from archgen.generator import max_pools
    from archgen.rules import RuleSet
    from archgen.space import default_space

    fac = factor(settings.rule)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    profile, profile_note, calibrated = _profile()
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in range(settings.seeds):
        data = load_dataset(settings.data, seed=seed)
        space = default_space(data.input_shape)
        depth = max_pools(data.input_shape, RuleSet())
        test = data.test.open(f"archgen ablate {fac.name}: each trained network evaluated once, for the report")
        for net, params in enumerate(drawn_configs(space, settings.networks, seed)):
            if fac.prepare is not None:
                params = fac.prepare(params, depth)
            params = fit_all_arms(fac, params, data.input_shape, data.num_classes)
            for arm in fac.arms:
                runs.append(_one(settings, fac, arm, params, data, test, seed, net, profile))
                line = f"{fac.name} seed {seed} network {net} {arm.name}: {_brief(runs[-1])}"
                log.info("%s", line)
                if progress is not None:
                    progress(line)
    doc = {
        "schema": SCHEMA, "factor": fac.name, "claim": fac.claim, "data": settings.data,
        "seeds": settings.seeds, "networks": settings.networks, "epochs": settings.epochs,
        "patience": settings.patience, "time_budget_s": settings.time_budget_s,
        "latency": {"batch": LATENCY_BATCH, "threads": 1, "profile": profile_note, "calibrated": calibrated,
                    "measured": settings.measure},
        "arms": [a.name for a in fac.arms], "runs": runs, "wall_s": round(time.perf_counter() - t0, 1),
    }
    doc.update(summarize(doc))
    return doc


def _brief(run: dict[str, Any]) -> str:
    if run["status"] != "ok":
        return f"{run['status']} ({run.get('reason')})"
    meas = f", {run['meas_ms']:.3f} ms measured" if run.get("meas_ms") is not None else ""
    return f"val {run['val_acc']:.4f} test {run['test_acc']:.4f}, {run['est_ms']:.3f} ms est{meas}"


def _profile() -> tuple[Any, str, bool]:
    from archgen.profiles import choose_profile

    choice = choose_profile(None, device="cpu", runtime="torch", threads=1, batch_size=LATENCY_BATCH)
    return choice.profile, choice.profile.describe(), not choice.is_default


def _one(settings: AblateSettings, fac: Factor, arm: Arm, params: dict[str, Any], data: Any, test: Any,
         seed: int, net: int, profile: Any) -> dict[str, Any]:
    """Build, train, price, measure and test one arm's network."""
    from archgen.balance import rebalance

    row: dict[str, Any] = {"seed": seed, "network": net, "arm": arm.name}
    try:
        spec = arm_spec(arm, params, data.input_shape, data.num_classes)
    except SpecError as exc:
        return {**row, "status": "not applicable", "reason": str(exc)}
    if {**params, **arm.params}.get("rebalance"):
        spec = rebalance(spec, profile, LATENCY_BATCH).spec
    row.update(spec_name=spec.short_name(), spec_key=spec.key(), params=spec.num_params(),
               macs=_macs(spec), est_ms=None, meas_ms=None)
    row.update(_train(settings, arm, {**params, **arm.params}, spec, data, test, seed))
    if row["status"] == "ok":
        row.update(_price(spec, profile, row.pop("_model"), settings.measure))
    row.pop("_model", None)
    return row


def _macs(spec: Any) -> int:
    from archgen.costing import spec_macs

    return spec_macs(spec)


def _train(settings: AblateSettings, arm: Arm, params: dict[str, Any], spec: Any, data: Any, test: Any,
           seed: int) -> dict[str, Any]:
    import torch

    from archgen.build import build_model
    from archgen.evaluation import evaluate_split
    from archgen.losses import LOSS_FNS
    from archgen.space import train_kwargs
    from archgen.training import TrainConfig, seed_everything, train, train_fixed

    options = {k: v for k, v in arm.train.items() if k != "fixed"}
    config = TrainConfig(**{"epochs": settings.epochs, "patience": settings.patience, "seed": seed, "threads": 1,
                            **train_kwargs(params), **options})
    seed_everything(seed)
    model = build_model(spec, seed=seed)
    deadline = None if settings.time_budget_s is None else time.time() + settings.time_budget_s
    t0 = time.perf_counter()
    if arm.train.get("fixed"):
        result = train_fixed(model, data, config, settings.epochs)
    else:
        result = train(model, data, config, deadline=deadline, grace_epochs=1)
    train_s = time.perf_counter() - t0
    if result.status == "diverged" or not result.history:
        return {"status": "diverged" if result.status == "diverged" else "no epoch",
                "reason": result.reason, "train_s": round(train_s, 2)}
    val_acc = result.history[-1].val_acc if arm.train.get("fixed") else result.best_val_acc
    test_loss, test_acc = evaluate_split(model, test, LOSS_FNS[config.loss], torch.device("cpu"))
    return {"status": "ok", "val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss,
            "epochs": len(result.history), "best_epoch": result.best_epoch, "train_s": round(train_s, 2),
            "_model": model}


def _price(spec: Any, profile: Any, model: Any, measure: bool) -> dict[str, Any]:
    """Estimated (and measured) whole-network and per-conv-layer time; the spread of the
    per-conv times without the stem (``conv_cv_*``: coefficient of variation)."""
    from archgen.costing import spec_geoms
    from archgen.pricing import estimate_and_measure
    from costmodel.estimator import estimate

    if measure:
        report = estimate_and_measure(spec, profile, LATENCY_BATCH, model=model, threads=1)
    else:
        report = estimate(spec_geoms(spec), profile, LATENCY_BATCH)
    table = report.table
    conv = table[table["op"] == "conv"]
    out = {"est_ms": report.total_est_ms, "conv_cv_est": _cv(list(conv["est_ms"])[1:])}
    if measure:
        out.update(meas_ms=report.e2e_meas_ms, conv_cv_meas=_cv(list(conv["meas_ms"])[1:]))
    return out


def _cv(values: list[float]) -> float | None:
    """Coefficient of variation (population); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean > 0 else None

"""The settings of one search: ``SearchSettings`` (every value checked when it is built), the
YAML config file, merging it with CLI options, and the seeds of the workers' samplers.

This module imports nothing of the search itself (workers, strategies, PBT), so each of them
can take a ``SearchSettings``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archgen.costing import total_memory_mb
from archgen.errors import SearchConfigError, UserError
from archgen.inputs import clip, excerpt, load_document
from archgen.redact import redact
from archgen.space import MAX_CHOICES

if TYPE_CHECKING:
    from archgen.data import Dataset

log = logging.getLogger(__name__)

STRATEGIES = ("manual", "grid", "random", "bayes", "hyperband", "bohb", "pbt")
PRUNING = ("hyperband", "bohb")
DEFAULT_TIME_BUDGET_S = 240.0
SELECTIONS = ("se1", "best")
# A resume with other values is refused: these define what the run is; data, seed and the
# fractions also define the train/validation/test split, which must never move under a run.
CONFIG_KEYS_THAT_DEFINE_A_RUN = ("strategy", "data", "objective", "storage", "study", "seed", "val_frac",
                                 "test_frac")


@dataclass(frozen=True)
class SearchSettings:
    """Resolved settings of one search (written to ``config.yaml``)."""

    data: str = "digits"
    strategy: str = "bohb"
    trials: int | None = None
    time_budget_s: float | None = None
    objective: str = "accuracy"  # "accuracy" (max val_acc under the budget) | "pareto"
    max_latency_ms: float | None = None
    latency_batch: int = 1
    max_macs: int | None = None
    max_params: int | None = None
    storage: str | None = None
    study: str = "archgen"
    # Local worker processes: "auto" (the default) runs one single-threaded worker per usable
    # core, several per GPU with --device cuda (archgen.machine); an int runs that many; 1 trains
    # in the search's own process. Resolved before the first trial (config.yaml has the number).
    workers: int | str = "auto"
    seed: int = 0
    out: str = "runs/search"
    max_epochs: int = 20
    min_epochs: int = 1
    patience: int = 6
    reduction_factor: int = 3
    # Hyperband/BOHB: also prune a bracket's first trial at a rung below the median of all trials
    # at that epoch (archgen.strategies.SeededHyperbandPruner). Opt-in: it did not pay off in the
    # benchmarks (docs/benchmarks.md).
    seeded_pruning: bool = False
    # bayes/bohb: the start-up trials (before the model has 8 trained trials) draw from the
    # practitioner's prior around the default configuration instead of uniformly
    # (archgen.strategies.PriorStartupSampler); false: uniform, as random search draws.
    prior_startup: bool = True
    val_frac: float = 0.15
    test_frac: float = 0.15
    # One intra-op thread per worker: small CNNs barely scale past one core and oversubscribed
    # OpenMP threads are far slower (docs/benchmarks.md). Use --workers to fill the cores instead.
    threads: int | None = 1
    # Where trials train and where latency is calibrated, estimated and measured: "cpu",
    # "cuda[:N]", or "cuda:all" (workers spread over every visible GPU; latency on cuda:0). The
    # device profile is this device's; the exported ONNX model is CPU-portable.
    device: str = "cpu"
    # What the exported network will run in, for the latency screen and finalize's measurement:
    # "torch" (PyTorch eager) or "onnxruntime" (its ONNX export in ONNX Runtime, CPU).
    runtime: str = "torch"
    # A device profile file (e.g. fitted from a calibration bundle run on the target device):
    # the latency screen, the Pareto objective and the report price with it; its batch size and
    # runtime are the search's. None: this machine's cached profile (calibrated when missing).
    device_profile: str | None = None
    bayes_sampler: str = "tpe"
    grid_points: int = 3
    grid_params: tuple[str, ...] = ("lr", "base_filters", "stages")
    refine: bool = True
    population: int = 8
    pbt_interval: int = 2
    pbt_quantile: float = 0.25
    finalize: bool = True
    # Opt-in: after selection on validation, retrain the selected configuration on train +
    # validation for the selected trial's best epoch count (test stays sealed until the one final
    # evaluation; not for pbt, whose members change hyperparameters). Off by default: neutral on
    # converged networks (docs/benchmarks.md), it costs up to one more trial beyond
    # --time-budget, and without it validation data never fits weights (docs/design.md, "Data flow").
    refit: bool = False
    # How the trained trials are ranked for selection (archgen.selection.select_best): "se1" (the
    # one-standard-error rule: the lowest estimated latency among trials within one binomial
    # standard error of the best validation accuracy) or "best" (the best validation accuracy,
    # ties to the lower validation loss). se1 by measurement over 10 digits split seeds
    # (docs/benchmarks.md, "Selection on a small validation split").
    selection: str = "se1"
    # Opt-in: before selecting, re-score the best ``rescore_top`` trials on validation by K-fold
    # cross-validation on train + validation (archgen.rescore; test stays sealed). 0: off; K >= 2
    # folds. Runs after the time budget, like finalize. Off: over 10 digits split seeds 5 folds
    # of the top 5 scored no better on test than se1 (0.9893 both) and cost 20-120 s more.
    rescore_folds: int = 0
    rescore_top: int = 5
    calibrate: bool = True  # fit a quick profile first when none is cached for this device
    warm_start: bool = True  # sampling strategies start from the practitioner's default config
    # Candidates whose estimated training memory exceeds this are rejected before training
    # (None: half of this machine's memory, shared by the workers).
    max_memory_mb: float | None = None
    space: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    manual: list = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    def memory_cap_mb(self) -> float:
        """The memory one trial may use to train: ``max_memory_mb``, else half of this
        machine's memory (of the GPU's with ``--device cuda``) shared by the workers on it."""
        if self.max_memory_mb is not None:
            return float(self.max_memory_mb)
        workers = self.workers if isinstance(self.workers, int) else 1
        if self.device == "cuda:all":
            workers = math.ceil(workers / max(1, _cuda_count()))
        return total_memory_mb(self.main_device) / 2 / workers

    @property
    def main_device(self) -> str:
        """The device the search calibrates on, prices for and measures the selection on
        (``cuda:0`` for ``cuda:all``)."""
        return "cuda:0" if self.device == "cuda:all" else self.device

    def worker_device(self, worker_id: int) -> str:
        """Where worker ``worker_id`` trains: ``device``, or with ``cuda:all`` GPU
        ``worker_id`` mod the visible GPUs."""
        if self.device != "cuda:all":
            return self.device
        return f"cuda:{worker_id % max(1, _cuda_count())}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def deadline(self, start: float) -> float | None:
        """When a search that began at ``start`` (``time.time()``) stops starting work."""
        return start + self.time_budget_s if self.time_budget_s else None

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid_params"] = list(self.grid_params)
        if d["storage"]:
            d["storage"] = redact(d["storage"])
        return d


def _check_values(s: SearchSettings) -> None:
    """Raise SearchConfigError for values that are well typed but do not go together."""
    if s.strategy not in STRATEGIES:
        raise SearchConfigError(f"unknown strategy {excerpt(s.strategy)}; choose one of {', '.join(STRATEGIES)}")
    if s.selection not in SELECTIONS:
        raise SearchConfigError(f"selection {excerpt(s.selection)} must be one of {', '.join(SELECTIONS)}")
    if s.objective not in ("accuracy", "pareto"):
        raise SearchConfigError(f"objective {excerpt(s.objective)} must be 'accuracy' or 'pareto'")
    if s.objective == "pareto" and s.strategy in PRUNING + ("pbt",):
        raise SearchConfigError(
            f"--objective pareto cannot prune: use random, bayes, grid or manual, not {s.strategy}"
        )
    if s.min_epochs > s.max_epochs:
        raise SearchConfigError(f"min_epochs={s.min_epochs} exceeds max_epochs={s.max_epochs}")
    if s.rescore_folds == 1:
        raise SearchConfigError("rescore_folds=1: give 0 (off) or at least 2 folds")
    if s.runtime not in ("torch", "onnxruntime"):
        raise SearchConfigError(f"runtime {excerpt(s.runtime)} must be 'torch' or 'onnxruntime'")
    if s.runtime == "onnxruntime" and s.device != "cpu" and s.device_profile is None:
        raise SearchConfigError("runtime onnxruntime is calibrated on the CPU; use --device cpu "
                                "(trials may still train on a GPU with --device-profile FILE)")
    for name in ("val_frac", "test_frac"):
        if not 0 < getattr(s, name) < 1:
            raise SearchConfigError(f"{name}={getattr(s, name)!r} must be a fraction in (0, 1)")
    if s.val_frac + s.test_frac >= 0.9:
        raise SearchConfigError(
            f"val_frac + test_frac = {s.val_frac + s.test_frac:g} leaves too little training data; keep it below 0.9"
        )
    if not 0 < s.pbt_quantile <= 0.5:
        raise SearchConfigError(f"pbt_quantile={s.pbt_quantile!r} must be in (0, 0.5]")
    if not (s.device == "cpu" or re.fullmatch(r"cuda(:\d{1,3}|:all)?", s.device)):
        raise SearchConfigError(f"device={excerpt(s.device)} must be 'cpu', 'cuda[:N]' or 'cuda:all'")
    if s.bayes_sampler not in ("tpe", "gp"):
        raise SearchConfigError(f"bayes_sampler={excerpt(s.bayes_sampler)} must be 'tpe' or 'gp'")
    if not s.study.strip() or len(s.study) > 200:
        raise SearchConfigError(f"study={excerpt(s.study)} must be a name of 1 to 200 characters")
    if not s.out.strip():
        raise SearchConfigError("--out must name a directory")
    if s.strategy == "pbt" and s.workers != "auto" and s.workers > 1:
        raise SearchConfigError("pbt trains its population in one process; use --workers 1")
    if s.strategy == "manual" and not s.manual:
        raise SearchConfigError("strategy manual needs a 'manual:' list of configs in --config FILE")
    for name, values in s.grid.items():
        values = values if isinstance(values, list) else [values]
        if not values or len(values) > MAX_CHOICES:
            raise SearchConfigError(f"grid.{clip(str(name), 40)}: give 1 to {MAX_CHOICES} values, got {len(values)}")


# The type of every setting, for YAML and Python callers alike (argparse checks the CLI's).
# int/float: (low, high) inclusive bounds; None allowed where the default is None.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "trials": (1, 1_000_000), "workers": (1, 512), "seed": (0, 2**32 - 2), "max_epochs": (1, 10_000),
    "min_epochs": (1, 10_000), "patience": (1, 10_000), "latency_batch": (1, 65_536),
    "population": (2, 10_000), "pbt_interval": (1, 10_000), "grid_points": (1, 64),
    "reduction_factor": (2, 100), "threads": (1, 1024), "rescore_folds": (0, 20), "rescore_top": (1, 100),
}
_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "time_budget_s": (1e-3, 3.2e7), "max_latency_ms": (1e-9, 1e9), "max_macs": (1, 1e15),
    "max_params": (1, 1e15), "max_memory_mb": (1, 1e9), "val_frac": (0, 1), "test_frac": (0, 1),
    "pbt_quantile": (0, 1),
}
_STR_FIELDS = ("data", "strategy", "objective", "study", "out", "device", "bayes_sampler", "runtime")
_BOOL_FIELDS = ("seeded_pruning", "prior_startup", "refine", "finalize", "refit", "calibrate", "warm_start")


def _check_types(s: SearchSettings) -> None:
    """Raise SearchConfigError naming the setting when a value has the wrong type or range."""
    def bad(name: str, what: str) -> SearchConfigError:
        return SearchConfigError(f"{name}={excerpt(getattr(s, name))} must be {what}")

    for name in _STR_FIELDS:
        if not isinstance(getattr(s, name), str) or not getattr(s, name):
            raise bad(name, "a non-empty string")
    if s.storage is not None and not isinstance(s.storage, str):
        raise bad("storage", "a database URL string")
    if s.device_profile is not None and (not isinstance(s.device_profile, str) or not s.device_profile):
        raise bad("device_profile", "a profile file path")
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(s, name), bool):
            raise bad(name, "true or false")
    for name, (low, high) in _INT_BOUNDS.items():
        value = getattr(s, name)
        if value is None and name in ("trials", "threads"):
            continue
        if name == "workers" and value == "auto":
            continue
        if type(value) is not int or not low <= value <= high:
            raise bad(name, f"an integer in [{low:,}, {high:,}]" + (" or auto" if name == "workers" else ""))
    for name, (low, high) in _FLOAT_BOUNDS.items():
        value = getattr(s, name)
        if value is None and name in _OPTIONAL:
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not low <= value <= high):
            raise bad(name, f"a finite number in [{low:g}, {high:g}]")
    for name, kind in (("space", dict), ("grid", dict), ("manual", list)):
        if not isinstance(getattr(s, name), kind):
            raise bad(name, "a mapping" if kind is dict else "a list of mappings")
    if not isinstance(s.grid_params, tuple) or not all(isinstance(v, str) for v in s.grid_params):
        raise bad("grid_params", "a list of parameter names")


_OPTIONAL = frozenset(f.name for f in dataclasses.fields(SearchSettings) if f.default is None)


# What a run's config.yaml records beside the settings (run_record.write_config); a config.yaml
# given back as --config reruns the same settings, these keys ignored.
RUN_RECORD_KEYS = frozenset({"split_fingerprint", "latency_profile", "latency_profile_device",
                             "latency_profile_path", "latency_profile_id"})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a search YAML; unknown keys are an error naming the key."""
    data = load_document(path, "search config", SearchConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SearchConfigError(f"{path}: the config must be a mapping of setting: value, got {excerpt(data)}")
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    aliases = {"time_budget": "time_budget_s"}
    out = {}
    for key, value in data.items():
        name = aliases.get(key, key) if isinstance(key, str) else key
        if name in RUN_RECORD_KEYS:  # a run's config.yaml given back as --config: what it records, not settings
            continue
        if name not in known:
            raise SearchConfigError(f"{path}: unknown key {excerpt(key)}")
        if name == "grid_params" and isinstance(value, list):
            value = tuple(value)
        elif name in _FLOAT_BOUNDS and isinstance(value, str):
            value = _number_or_text(value)  # YAML 1.1 reads 1e6 as a string
        out[name] = value
    return out


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def settings_from(cli: dict[str, Any], config_file: str | None) -> SearchSettings:
    """Merge a YAML config with CLI options (CLI wins where given)."""
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update({k: v for k, v in cli.items() if v is not None})
    try:
        return SearchSettings(**merged)
    except TypeError as exc:
        raise UserError(str(exc)) from None


def _cuda_count() -> int:
    from archgen.machine import cuda_devices

    return cuda_devices()


def sampler_seed(settings: SearchSettings, worker_id: int = 0) -> int:
    """``--seed`` itself for a lone local process (reproducible). Concurrent workers need
    distinct streams, or every worker's random and start-up draws are the same configurations:
    local workers add their id; with shared ``--storage`` (other machines may join with the same
    ``--seed``) the host and process id go in too."""
    if settings.storage is not None:
        key = f"{settings.seed}|{socket.gethostname()}|{os.getpid()}|{worker_id}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    return settings.seed + 7919 * worker_id


def resolve_workers(settings: SearchSettings, dataset: Dataset) -> SearchSettings:
    """``workers: auto`` made a number (``archgen.machine.auto_workers``): one worker per usable
    core, several per GPU, within memory and ``--trials``; said on stderr."""
    from archgen.machine import auto_workers, usable_cpus

    if settings.workers != "auto":
        return settings
    x = dataset.train.x
    per_image = x.element_size() * x[0].nelement() if len(x) else 0
    data_mb = per_image * (len(dataset.train.y) + len(dataset.val.y) + dataset.test.n) / 2**20
    n = auto_workers(device=settings.device, strategy=settings.strategy, trials=settings.trials, data_mb=data_mb)
    log.warning("workers: %d (auto: %d usable core(s)%s); --workers 1 trains one trial at a time",
                n, usable_cpus(), f", {settings.device}" if settings.device != "cpu" else "")
    return dataclasses.replace(settings, workers=n)

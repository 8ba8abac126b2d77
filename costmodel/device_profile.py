"""The device profile: a fitted latency model plus the context it holds for (JSON on disk).

Plain data: JSON load/save, the context it holds for, the per-device cache and the built-in
default. No torch at module level (the estimator uses profiles in the search loop); reading the
current context (torch version, GPU name) imports torch inside ``current_context``.

The model the numbers parametrise is defined in ``costmodel.modeldef``; the estimator
(``costmodel.estimator``) compiles a profile for its fast path.

A profile holds for ONE batch size: ``estimate`` refuses another batch size for a calibrated
profile (``batch_scaling == "fixed"``). The built-in default profile (``batch_scaling ==
"linear"``) scales the ``a``/``b`` terms linearly with batch size; it is a rough, uncalibrated
starting point and every report made with it says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

from costmodel.atomic import atomic_write_text
from costmodel.errors import CostModelError

SCHEMA_VERSION = 1
# Context fields that must match for a profile to be used.
CONTEXT_KEYS = ("device", "device_name", "threads", "torch_version", "dtype", "batch_size")
# device, device_name, threads, torch_version, dtype, batch_size, cpu_count, fingerprint
Context = dict[str, str | int | None]


class TreeEnsemble(TypedDict):
    """Boosted trees as stored: per tree the sklearn arrays ``[feature, threshold, left, right,
    value]`` (a leaf has ``left == -1``); prediction = ``init + lr * sum(tree values)``."""

    init: float
    lr: float
    trees: list[list[list[float]]]


@dataclass(frozen=True, eq=False)
class DeviceProfile:
    """A fitted latency model for one context (device, threads, torch, dtype, batch size).

    ``coeffs[op_class] = {"c": ms, "a": ms per MAC, "b": ms per byte}`` with MACs/bytes per
    sample at batch size ``context["batch_size"]``; ``act_elem_ms[name]`` is the cost of one
    activation element of a fused activation; ``residual[op_class]`` the weights of the
    log-space correction; ``table`` maps ``LayerGeom.config_key()`` to a measured ms;
    ``network = {"c0_ms", "scale", "per_layer_ms"}``; ``t_k_ms[op]`` the textbook per-op filter time.
    """

    context: Context
    coeffs: dict[str, dict[str, float]]
    t_k_ms: dict[str, float]
    act_elem_ms: dict[str, float] = field(default_factory=dict)
    residual: dict[str, list[float]] = field(default_factory=dict)
    trees: dict[str, TreeEnsemble] = field(default_factory=dict)
    use_table: bool = True
    table: dict[str, float] = field(default_factory=dict)
    network: dict[str, float] = field(default_factory=lambda: {"c0_ms": 0.0, "scale": 1.0})
    fit_quality: dict[str, object] = field(default_factory=dict)
    protocol: dict[str, object] = field(default_factory=dict)
    batch_scaling: str = "fixed"
    is_default: bool = False
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def batch_size(self) -> int:
        return int(self.context["batch_size"])

    @property
    def fingerprint(self) -> str:
        return str(self.context.get("fingerprint") or context_fingerprint(self.context))

    def describe(self) -> str:
        """One line naming the profile (used in reports)."""
        c = self.context
        kind = "built-in default profile (uncalibrated, rough)" if self.is_default else "device profile"
        return (
            f"{kind}: {c.get('device')} {c.get('device_name')}, {c.get('threads')} thread(s), "
            f"batch {c.get('batch_size')}, torch {c.get('torch_version')}, {c.get('dtype')}"
        )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["context"] = dict(self.context, fingerprint=self.fingerprint)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DeviceProfile:
        if not isinstance(d, dict) or "context" not in d or "coeffs" not in d:
            raise CostModelError("not a device profile: missing 'context' or 'coeffs'")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise CostModelError(
                f"device profile schema_version {d.get('schema_version')!r} is not "
                f"{SCHEMA_VERSION}; recalibrate with `archgen calibrate`"
            )
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceProfile:
        """Read a profile written by ``save``; raises ``FileNotFoundError`` / ``CostModelError``."""
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CostModelError(f"device profile {str(path)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def check_context(
        self,
        device: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        current: Context | None = None,
    ) -> None:
        """Raise ``CostModelError`` if this profile was made in another context.

        Compared: device kind, CPU model / GPU name, threads, torch version, dtype and batch
        size against ``current`` (default: ``current_context(device, threads, batch_size)``
        with the profile's own values for the arguments left out). The default profile is
        never refused (it claims no context).
        """
        if self.is_default:
            return
        ctx = self.context
        if current is None:
            current = current_context(
                device or str(ctx["device"]),
                threads or int(ctx["threads"]),
                batch_size or int(ctx["batch_size"]),
                str(ctx.get("dtype", "float32")),
            )
        for key in CONTEXT_KEYS:
            if str(ctx.get(key)) != str(current.get(key)):
                raise CostModelError(
                    f"device profile was calibrated for {key}={ctx.get(key)!r} but this run has "
                    f"{key}={current.get(key)!r}; recalibrate with `archgen calibrate "
                    f"--device {current.get('device')} --threads {current.get('threads')} "
                    f"--batch-size {current.get('batch_size')}`"
                )


def cpu_model_name() -> str:
    """The CPU model as ``lscpu`` reports it (``/proc/cpuinfo`` 'model name')."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def current_context(
    device: str = "cpu", threads: int = 1, batch_size: int = 32, dtype: str = "float32"
) -> Context:
    """The context a profile made here and now would hold for (imports torch)."""
    import torch

    from costmodel.profile import resolve_device

    dev = resolve_device(device)
    if dev == "cpu":
        name = cpu_model_name()
    else:
        name = torch.cuda.get_device_name(torch.device(dev))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CostModelError(f"batch_size={batch_size!r} must be a positive integer")
    ctx: Context = {
        "device": "cpu" if dev == "cpu" else "cuda",
        "device_name": name,
        "threads": int(threads),
        "torch_version": torch.__version__,
        "dtype": dtype,
        "batch_size": int(batch_size),
        "cpu_count": os.cpu_count(),
    }
    ctx["fingerprint"] = context_fingerprint(ctx)
    return ctx


def device_fingerprint(ctx: Context) -> str:
    """Hash of what identifies the device and software (not threads or batch size)."""
    raw = "|".join(str(ctx.get(k)) for k in ("device", "device_name", "torch_version", "dtype"))
    slug = "".join(ch if ch.isalnum() else "-" for ch in str(ctx.get("device_name")).lower())
    slug = "-".join(part for part in slug.split("-") if part)[:40]
    return f"{ctx.get('device')}-{slug}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


def context_fingerprint(ctx: Context) -> str:
    """Device fingerprint plus threads and batch size."""
    return f"{device_fingerprint(ctx)}-t{ctx.get('threads')}-b{ctx.get('batch_size')}"


def cache_root() -> Path:
    """``$ARCHGEN_CACHE/profiles`` if ``ARCHGEN_CACHE`` is set, else ``~/.cache/archgen/profiles``."""
    env = os.environ.get("ARCHGEN_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "archgen"
    return base / "profiles"


def cache_path(ctx: Context) -> Path:
    """Where the profile for ``ctx`` is cached: one directory per device fingerprint."""
    return (
        cache_root()
        / device_fingerprint(ctx)
        / f"profile-t{ctx['threads']}-b{ctx['batch_size']}.json"
    )


def load_cached(device: str = "cpu", threads: int = 1, batch_size: int = 32) -> DeviceProfile | None:
    """The cached profile for this device/threads/batch size, or None when there is none.

    A cached file that is unreadable or from another context raises ``CostModelError``.
    """
    ctx = current_context(device, threads, batch_size)
    path = cache_path(ctx)
    if not path.exists():
        return None
    profile = DeviceProfile.load(path)
    profile.check_context(current=ctx)
    return profile


# Built-in default: a linear per-op model measured on an Intel Xeon (2 cores) with torch 2.13 CPU,
# 1 thread, expressed at batch 1 and scaled linearly with batch size (batch_scaling="linear").
# It is only a starting point: calibrate for real numbers.
_DEFAULT_COEFFS: dict[str, dict[str, float]] = {
    "conv": {"c": 0.02, "a": 2.6e-8, "b": 1.2e-7},
    "dense": {"c": 0.01, "a": 1.4e-8, "b": 6.0e-8},
    "pool_max": {"c": 0.01, "a": 0.0, "b": 2.5e-7},
    "pool_avg": {"c": 0.01, "a": 0.0, "b": 2.5e-7},
    "bn": {"c": 0.01, "a": 0.0, "b": 1.2e-7},
    "gap": {"c": 0.01, "a": 0.0, "b": 1.0e-7},
    "act": {"c": 0.01, "a": 0.0, "b": 1.5e-7},
    "dropout": {"c": 0.002, "a": 0.0, "b": 0.0},
}
_DEFAULT_T_K_MS = {"conv": 4.0e-6, "dense": 1.0e-5, "pool": 1.0e-6, "bn": 5.0e-7,
                   "gap": 5.0e-7, "act": 5.0e-7, "dropout": 0.0}
_DEFAULT_ACT_ELEM_MS = {"relu": 2.0e-7, "tanh": 1.0e-6, "sigmoid": 1.0e-6}


def default_profile() -> DeviceProfile:
    """The built-in, uncalibrated profile (batch 1, linear batch scaling)."""
    return DeviceProfile(
        context={
            "device": "cpu", "device_name": "built-in default (not calibrated)", "threads": 1,
            "torch_version": "any", "dtype": "float32", "batch_size": 1,
        },
        coeffs={k: dict(v) for k, v in _DEFAULT_COEFFS.items()},
        t_k_ms=dict(_DEFAULT_T_K_MS),
        act_elem_ms=dict(_DEFAULT_ACT_ELEM_MS),
        batch_scaling="linear",
        is_default=True,
        fit_quality={"note": "not fitted on this machine; run `archgen calibrate`"},
    )

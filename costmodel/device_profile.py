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
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

from costmodel.atomic import atomic_write_text
from costmodel.errors import CostModelError
from costmodel.geometry import parse_config_key
from costmodel.measurements import RUNTIMES
from costmodel.modeldef import splits_on_padding
from costmodel.timing import MMAP_OFF, MMAP_THRESHOLD

SCHEMA_VERSION = 1
# A profile whose network correction has the log form is written as version 2, so that an older
# archgen (which knows only the linear form and would price the bare layer sum) refuses it
# instead of misreading it; linear profiles stay version 1. This version reads both.
LOG_FORM_SCHEMA_VERSION = 2
# A log form that counts module calls (``"count": "calls"``) or has the weights feature (five
# coefficients) is version 3: an archgen that reads version 2 would count layers and price
# without the weights.
LOG_FORM_V3_SCHEMA_VERSION = 3
# A network correction with the layers' context (``"context"``, ``costmodel.layer_context``), or trees
# that split on the channel-padding features (``modeldef.splits_on_padding``), is version 4: an
# archgen that reads version 3 would price every layer in the reference context, or fail on a
# feature it does not compute.
CONTEXT_SCHEMA_VERSION = 4
READABLE_SCHEMA_VERSIONS = (SCHEMA_VERSION, LOG_FORM_SCHEMA_VERSION, LOG_FORM_V3_SCHEMA_VERSION,
                            CONTEXT_SCHEMA_VERSION)
# Context fields that must match for a profile to be used.
CONTEXT_KEYS = ("device", "device_name", "runtime", "runtime_version", "threads", "dtype", "batch_size")
# device, device_name, runtime, runtime_version, threads, torch_version, dtype, batch_size,
# cpu_count, fingerprint (+ graph_optimization, executor for onnxruntime)
Context = dict[str, str | int | None]


def runtime_of(ctx: Context) -> str:
    """The runtime a context names (profiles from before runtimes existed are torch ones)."""
    return str(ctx.get("runtime") or "torch")


def runtime_version_of(ctx: Context) -> str:
    """The runtime's version: torch's for torch profiles, onnxruntime's for onnxruntime ones."""
    if runtime_of(ctx) == "torch":
        return str(ctx.get("torch_version"))
    return str(ctx.get("runtime_version"))


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
    ``network`` the network-level correction, ``{"form": "linear", "c0_ms", "scale", "per_layer_ms"}``
    (no ``form``: linear) or ``{"form": "log", "log_coef", "log_bounds"}`` (4 coefficients and 2
    bounds, or 5 and 3 with the weights feature) and optionally ``"count": "calls"``
    (``costmodel.modeldef``), either form optionally with the layers' context ``"context": {"ref_ms",
    "beta": {op: exponent}, "after": {op: {neighbour: ln factor}}}`` (``costmodel.layer_context``);
    ``t_k_ms[op]`` the textbook per-op filter time.
    """

    context: Context
    coeffs: dict[str, dict[str, float]]
    t_k_ms: dict[str, float]
    act_elem_ms: dict[str, float] = field(default_factory=dict)
    residual: dict[str, list[float]] = field(default_factory=dict)
    trees: dict[str, TreeEnsemble] = field(default_factory=dict)
    use_table: bool = True
    table: dict[str, float] = field(default_factory=dict)
    network: dict[str, object] = field(default_factory=lambda: {"c0_ms": 0.0, "scale": 1.0})
    fit_quality: dict[str, object] = field(default_factory=dict)
    protocol: dict[str, object] = field(default_factory=dict)
    batch_scaling: str = "fixed"
    is_default: bool = False
    # Time of the drift reference workload when the profile was fitted (None: not measured).
    reference_ms: float | None = None
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def batch_size(self) -> int:
        return int(self.context["batch_size"])

    @property
    def runtime(self) -> str:
        return runtime_of(self.context)

    @property
    def fingerprint(self) -> str:
        return str(self.context.get("fingerprint") or context_fingerprint(self.context))

    def describe(self) -> str:
        """One line naming the profile (used in reports)."""
        c = self.context
        kind = "built-in default profile (uncalibrated, rough)" if self.is_default else "device profile"
        runtime = self.runtime
        version = runtime_version_of(c)
        name = "torch" if runtime == "torch" else "onnxruntime"
        return (
            f"{kind}: {c.get('device')} {c.get('device_name')}, {name} {version}, "
            f"{c.get('threads')} thread(s), batch {c.get('batch_size')}, {c.get('dtype')}"
        )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["context"] = dict(self.context, fingerprint=self.fingerprint)
        if self.network.get("form") == "log":
            v3 = self.network.get("count", "layers") != "layers" or len(self.network.get("log_coef", ())) != 4
            d["schema_version"] = LOG_FORM_V3_SCHEMA_VERSION if v3 else LOG_FORM_SCHEMA_VERSION
        if "context" in self.network or splits_on_padding(self.trees):
            d["schema_version"] = CONTEXT_SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DeviceProfile:
        if not isinstance(d, dict) or "context" not in d or "coeffs" not in d:
            raise CostModelError("not a device profile: missing 'context' or 'coeffs'")
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise CostModelError(
                f"device profile schema_version {version!r} is not "
                f"{' or '.join(map(str, READABLE_SCHEMA_VERSIONS))}; recalibrate with `archgen calibrate`"
            )
        ctx = d["context"]
        if not isinstance(ctx, dict) or ctx.get("device") not in ("cpu", "cuda") or any(
                isinstance(ctx.get(k), bool) or not isinstance(ctx.get(k), int) or ctx[k] < 1
                for k in ("batch_size", "threads")):
            raise CostModelError("not a device profile: its 'context' must name the device ('cpu' or 'cuda'), "
                                 "its threads and its batch size")
        names = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in d.items() if k in names}
        fields["schema_version"] = SCHEMA_VERSION  # in memory; to_dict writes the version the form needs
        return cls(**fields)

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
                runtime=self.runtime,
            )
        mine = dict(ctx, runtime=self.runtime, runtime_version=runtime_version_of(ctx))
        theirs = dict(current, runtime=runtime_of(current), runtime_version=runtime_version_of(current))
        keys = [("torch_version" if k == "runtime_version" and self.runtime == "torch" else k)
                for k in CONTEXT_KEYS]
        for key in keys:
            if str(mine.get(key)) != str(theirs.get(key)):
                raise CostModelError(
                    f"device profile was calibrated for {key}={mine.get(key)!r} but this run has "
                    f"{key}={theirs.get(key)!r}; recalibrate with `archgen calibrate "
                    f"--device {current.get('device')} --runtime {runtime_of(current)} "
                    f"--threads {current.get('threads')} --batch-size {current.get('batch_size')}`"
                )

    def is_foreign(self, current: Context | None = None) -> bool:
        """True when this profile was made for another device, runtime or software version than
        this machine's (it still prices networks: for the device it was made on)."""
        if self.is_default:
            return False
        if str(self.context.get("dtype", "float32")) != "float32":  # measured here: float32 only
            return True
        try:
            self.check_context(current=current)
        except (CostModelError, KeyError, TypeError, ValueError):
            return True
        return False


def cpu_model_name() -> str:
    """The CPU model (``/proc/cpuinfo`` 'model name', else 'Hardware'), named as a calibration
    bundle's ``run.py`` names it (``costmodel.runner.device_name``)."""
    from costmodel.runner import device_name

    return device_name()


def current_context(
    device: str = "cpu", threads: int = 1, batch_size: int = 32, dtype: str = "float32",
    runtime: str = "torch",
) -> Context:
    """The context a profile made here and now would hold for (imports torch)."""
    import torch

    from costmodel.profile import resolve_device

    if runtime not in RUNTIMES:
        raise CostModelError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    dev = resolve_device(device)
    if runtime == "onnxruntime" and dev != "cpu":
        raise CostModelError("the onnxruntime runtime is measured on the CPU (CPUExecutionProvider); "
                             "use --device cpu")
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
        "runtime": runtime,
        "runtime_version": torch.__version__,
        "torch_version": torch.__version__,
        "dtype": dtype,
        "batch_size": int(batch_size),
        "cpu_count": os.cpu_count(),
    }
    if runtime == "onnxruntime":
        from costmodel.ort import runtime_context

        ctx.update(runtime_context())
    ctx["fingerprint"] = context_fingerprint(ctx)
    return ctx


def device_fingerprint(ctx: Context) -> str:
    """Hash of what identifies the device and software (not threads or batch size)."""
    parts = [str(ctx.get(k)) for k in ("device", "device_name", "torch_version", "dtype")]
    if runtime_of(ctx) != "torch":  # torch profiles keep the fingerprints they always had
        parts.append(f"{runtime_of(ctx)} {runtime_version_of(ctx)}")
    raw = "|".join(parts)
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
    prefix = "profile" if runtime_of(ctx) == "torch" else f"profile-{runtime_of(ctx)}"
    return (
        cache_root()
        / device_fingerprint(ctx)
        / f"{prefix}-t{ctx['threads']}-b{ctx['batch_size']}.json"
    )


def predates_steady_allocator(profile: DeviceProfile) -> bool:
    """Whether ``profile`` was measured before calibration kept freed memory in the process
    (``costmodel.timing.steady_allocator``): its times of layers with large outputs may include
    page faults (up to several times the layer's time) that measurements now leave out. That is
    a profile with no allocator in its protocol, or one measured with glibc's thresholds raised
    but mmap still on whose layers had a buffer over 32 MiB (faulted in on every call then): at
    large batch sizes, or the search's networks at a large input size. Only measured profiles
    (their protocol records the repeats) of PyTorch on the CPU can be: ONNX Runtime keeps its
    tensors in its own arena, and on CUDA the host's malloc hardly counts."""
    if profile.is_default or "repeats" not in profile.protocol or profile.runtime != "torch" or (
            profile.context.get("device") != "cpu"):
        return False
    allocator = str(profile.protocol.get("allocator", ""))
    if not allocator:
        return True
    return allocator.startswith("glibc") and MMAP_OFF not in allocator and _largest_buffer(profile) > MMAP_THRESHOLD


def _largest_buffer(profile: DeviceProfile) -> float:
    """Bytes of the largest layer input or output the profile's table measured (infinite when
    the table is empty or unreadable: unknown)."""
    sizes = []
    for key in profile.table:
        # LayerGeom.config_tuple: op, c_in, c_out, h_in, w_in, h_out, w_out, ..., dtype_bytes
        f = parse_config_key(key)
        dims = (*f[1:7], f[-1])
        if len(f) < 8 or not all(isinstance(v, int) for v in dims):
            return math.inf
        c_in, c_out, h_in, w_in, h_out, w_out, dtype = dims
        sizes.append(max(c_in * h_in * w_in, c_out * h_out * w_out) * dtype * profile.batch_size)
    return max(sizes, default=math.inf)


def load_cached(device: str = "cpu", threads: int = 1, batch_size: int = 32,
                runtime: str = "torch") -> DeviceProfile | None:
    """The cached profile for this device/runtime/threads/batch size, or None when there is none.

    A cached file that is unreadable or from another context raises ``CostModelError``.
    """
    ctx = current_context(device, threads, batch_size, runtime=runtime)
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

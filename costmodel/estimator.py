"""Price a sequence of layer geometries: textbook seed form and the calibrated estimate.

Pure arithmetic, no torch. Two entry points:

* ``estimate(geoms, profile, batch_size) -> CostReport``: the per-layer DataFrame (docs/design.md,
  "Cost table"), totals and the balance summary, for people and reports.
* ``estimate_total_ms(geoms, profile, batch_size) -> float`` and ``estimate_layers_ms``: the
  fast path for the search loop (no pandas; thousands of candidates per second).

Per layer, ``t_k_ms`` is the textbook time of one filter application for the op and
``t_c_seed_ms = n_p * n_f * t_k_ms`` (scaled by batch size relative to the profile's);
``est_ms`` is the calibrated estimate (model in ``costmodel.modeldef``), already multiplied
by the network-level ``scale`` and including the network-level ``per_layer_ms`` term;
``total_est_ms = sum(est_ms) + overhead_ms`` where ``overhead_ms`` is the fitted per-network
constant ``c0_ms``. A profile whose network correction has the log form (``network["form"] ==
"log"``) multiplies every layer by one factor of the network's layer sum, its layer count (in
torch its module calls) and its weights instead, and has no per-network constant
(``costmodel.modeldef``). A profile with a layer context (``costmodel.layer_context``) prices
each layer in its network's context: after the layer before it and at the network's own total,
which it solves for with its layers (a fixed point); ``est_ms`` includes that.

Batch size: a calibrated profile holds for its own batch size only; asking for another raises
``CostModelError`` (calibrate at that batch size instead). The built-in default profile scales
linearly with batch size. ``batch_size=None`` means the profile's own batch size.

A profile is compiled once for the fast path (``compile_profile``: plain tuples, tree ensembles
turned into Python functions) and the compiled form is cached per profile object.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from costmodel.device_profile import DeviceProfile, TreeEnsemble, default_profile
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom, parse_config_key
from costmodel.layer_context import checked_context, solve_in_context
from costmodel.modeldef import (
    RESIDUAL_CLAMP,
    TREE_CLAMP,
    corrected_layer_ms,
    fused_activation_ms,
    linear_ms,
    module_calls,
    network_factor,
    network_overhead_ms,
    op_class,
    priced_layers,
    residual_features,
    seed_t_k_ms,
    tree_base_class,
    tree_features,
    weight_mib,
)

if TYPE_CHECKING:
    import pandas as pd

    from costmodel.profile import ModelProfile

JsonValue = float | int | str | bool | None
TreeFunction = Callable[[Sequence[float]], float]

COLUMNS = (
    "layer", "op", "c_in", "c_out", "kernel", "stride", "h_out", "w_out", "n_p", "n_f", "macs",
    "params", "acts", "bytes", "t_k_ms", "t_c_seed_ms", "est_ms",
)


def compile_trees(model: TreeEnsemble) -> TreeFunction:
    """Turn a stored tree ensemble into one Python function of the feature list.

    The ensemble is ``{"init": float, "lr": float, "trees": [[feature, threshold, left, right,
    value], ...]}`` (sklearn's array layout; a leaf has ``left == -1``). Each tree becomes one
    nested conditional expression, so a prediction costs a few comparisons per tree instead of
    an interpreter loop; every number is converted with ``int()``/``float()`` first, so a
    profile file cannot inject code.
    """

    def expr(tree: list[list[float]], node: int) -> str:
        feature, threshold, left, right, value = (col[node] for col in tree)
        if int(left) < 0:
            return repr(float(value))
        return (
            f"({expr(tree, int(left))} if x[{int(feature)}] <= {float(threshold)!r} "
            f"else {expr(tree, int(right))})"
        )

    terms = " + ".join(expr(t, 0) for t in model["trees"]) or "0.0"
    source = f"lambda x: {float(model['init'])!r} + {float(model['lr'])!r} * ({terms})"
    return eval(source, {"__builtins__": {}})  # generated from numbers only


@dataclass(frozen=True)
class _Compiled:
    coeffs: dict[str, tuple[float, float, float]]
    residual: dict[str, tuple[float, ...]]
    trees: dict[str, TreeFunction]
    table: dict[tuple[str | int, ...], float]
    act_elem_ms: dict[str, float]
    t_k_ms: dict[str, float]
    c0_ms: float
    scale: float
    per_layer_ms: float
    log_coef: tuple[float, ...] | None  # the log-form network correction, None for the linear form
    log_bounds: tuple[tuple[float, float], ...]
    log_counts_calls: bool  # the log form's n: module calls (``modeldef.module_calls``), else priced layers
    context: dict[str, object] | None  # the layer context (``costmodel.layer_context``), or None
    batch_size: int
    linear: bool
    runtime: str


def compile_profile(profile: DeviceProfile) -> _Compiled:
    """Flatten a profile into tuples for the fast path (``_compiled`` caches it per profile)."""
    return _Compiled(
        coeffs={k: (float(v["c"]), float(v["a"]), float(v["b"])) for k, v in profile.coeffs.items()},
        residual={k: tuple(float(x) for x in v) for k, v in profile.residual.items()},
        trees={k: compile_trees(v) for k, v in profile.trees.items()},
        table={parse_config_key(k): float(v) for k, v in profile.table.items()}
        if profile.use_table else {},
        act_elem_ms={k: float(v) for k, v in profile.act_elem_ms.items()},
        t_k_ms={k: float(v) for k, v in profile.t_k_ms.items()},
        c0_ms=float(profile.network.get("c0_ms", 0.0)),
        scale=float(profile.network.get("scale", 1.0)),
        per_layer_ms=float(profile.network.get("per_layer_ms", 0.0)),
        **_log_form(profile.network),
        context=_context(profile.network),
        batch_size=profile.batch_size,
        linear=profile.batch_scaling == "linear",
        runtime=profile.runtime,
    )


def _log_form(network: dict) -> dict[str, object]:
    if network.get("form", "linear") == "linear":
        return {"log_coef": None, "log_bounds": (), "log_counts_calls": False}
    try:
        if network["form"] != "log":
            raise ValueError(network["form"])
        coef = tuple(float(v) for v in network["log_coef"])
        bounds = tuple((float(lo), float(hi)) for lo, hi in network["log_bounds"])
        if (len(coef), len(bounds)) not in ((4, 2), (5, 3)) or not all(map(math.isfinite, coef)) or not all(
                math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in bounds):
            raise ValueError("size")
        if network.get("count", "layers") not in ("layers", "calls"):
            raise ValueError(network["count"])
    except (KeyError, TypeError, ValueError):
        raise CostModelError("the device profile's network correction is malformed; recalibrate with "
                             "`archgen calibrate`") from None
    return {"log_coef": coef, "log_bounds": bounds, "log_counts_calls": network.get("count") == "calls"}


def _context(network: dict) -> dict[str, object] | None:
    try:
        return checked_context(network.get("context"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CostModelError("the device profile's layer context is malformed; recalibrate with "
                             "`archgen calibrate`") from None


# Compiled forms by profile object (profiles hash by identity); dropped with their profile.
_COMPILED: weakref.WeakKeyDictionary[DeviceProfile, _Compiled] = weakref.WeakKeyDictionary()


def _compiled(profile: DeviceProfile) -> _Compiled:
    comp = _COMPILED.get(profile)
    if comp is None:
        comp = _COMPILED[profile] = compile_profile(profile)
    return comp


def _resolve(
    profile: DeviceProfile | None, batch_size: int | None
) -> tuple[DeviceProfile, _Compiled, float]:
    """The profile to use, its compiled form and the batch factor B / B0."""
    if profile is None:
        profile = default_profile()
    comp = _compiled(profile)
    if batch_size is None:
        batch_size = comp.batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CostModelError(f"batch_size={batch_size!r} must be a positive integer")
    if batch_size != comp.batch_size and not comp.linear:
        raise CostModelError(
            f"device profile holds for batch size {comp.batch_size}, not {batch_size}; "
            f"calibrate at this batch size (`archgen calibrate --batch-size {batch_size}`) "
            f"or price at --batch-size {comp.batch_size}"
        )
    return profile, comp, batch_size / comp.batch_size


def _layer_raw_ms(g: LayerGeom, comp: _Compiled, factor: float) -> float:
    """One layer's calibrated time before the network-level scale."""
    if factor == 1.0 and comp.table:
        hit = comp.table.get(g.config_tuple())
        if hit is not None:
            return hit
    if g.op == "dropout" and "dropout" not in comp.coeffs:
        return 0.0
    tree = comp.trees.get(g.op)
    cls = tree_base_class(g) if tree is not None else op_class(g, comp.coeffs)
    coeff = comp.coeffs.get(cls) or comp.coeffs.get(g.op)
    if coeff is None:
        raise CostModelError(
            f"layer {g.name!r}: the device profile has no coefficients for op {g.op!r}; "
            "recalibrate with `archgen calibrate`"
        )
    t = linear_ms(coeff, g, factor)
    if tree is not None:
        r = tree(tree_features(g))
        t *= math.exp(max(-TREE_CLAMP, min(TREE_CLAMP, r)))
    else:
        w = comp.residual.get(cls)
        if w is not None:
            r = sum(wi * xi for wi, xi in zip(w, residual_features(g)))
            t *= math.exp(max(-RESIDUAL_CLAMP, min(RESIDUAL_CLAMP, r)))
    t += fused_activation_ms(g, comp.act_elem_ms, factor)
    return max(t, 0.0)


def estimate_layers_ms(
    geoms: Sequence[LayerGeom], profile: DeviceProfile | None = None, batch_size: int | None = None
) -> tuple[list[float], float]:
    """Per-layer ``est_ms`` (network scale applied) and the per-network overhead in ms."""
    _, comp, factor = _resolve(profile, batch_size)
    priced = _priced(geoms, comp)
    raw = [0.0 if g is None else _layer_raw_ms(g, comp, factor) for g in priced]
    n, w = _log_inputs(geoms, priced, comp)
    if comp.context is not None:  # each layer in its network's context (``costmodel.layer_context``)
        raw = solve_in_context(raw, priced, comp.context, lambda moved: _total(*_corrected(moved, priced, comp, n, w)),
                               None if comp.log_coef is None else lambda s: s * network_factor(
                                   comp.log_coef, comp.log_bounds, s, n, w))  # type: ignore[arg-type]
    return _corrected(raw, priced, comp, n, w)


def _total(per_layer: Sequence[float], overhead: float) -> float:
    return sum(per_layer) + overhead


def _log_inputs(geoms: Sequence[LayerGeom], priced: Sequence[LayerGeom | None], comp: _Compiled) -> tuple[float, float]:
    """The log form's n (module calls where the profile counts calls, else priced layers) and W
    (the network's weights in MiB where the form has the W / S feature, else 0)."""
    if comp.log_coef is None:
        return 0.0, 0.0
    n = module_calls(geoms) if comp.log_counts_calls else sum(g is not None for g in priced)
    return float(n), weight_mib(geoms) if len(comp.log_coef) == 5 else 0.0


def _corrected(raw: Sequence[float], priced: Sequence[LayerGeom | None], comp: _Compiled, n: float,
               w: float) -> tuple[list[float], float]:
    """The layers' times with the network-level correction, and the per-network overhead."""
    if comp.log_coef is not None:
        k = network_factor(comp.log_coef, comp.log_bounds, sum(raw), n, w)
        return [k * t for t in raw], 0.0
    per_layer = [0.0 if g is None else corrected_layer_ms(t, comp.scale, comp.per_layer_ms)
                 for g, t in zip(priced, raw)]
    return per_layer, network_overhead_ms(comp.c0_ms, sum(per_layer))


def _priced(geoms: Sequence[LayerGeom], comp: _Compiled) -> Sequence[LayerGeom | None]:
    """The layers as the profile's runtime runs them (``modeldef.priced_layers``)."""
    return geoms if comp.runtime == "torch" else priced_layers(geoms, comp.runtime)


def estimate_total_ms(
    geoms: Sequence[LayerGeom], profile: DeviceProfile | None = None, batch_size: int | None = None
) -> float:
    """Fast path: the calibrated end-to-end estimate in ms (no DataFrame)."""
    return _total(*estimate_layers_ms(geoms, profile, batch_size))


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs (``table``), totals and balance for one network at one batch size.

    ``total_est_ms = sum(table.est_ms) + overhead_ms``. ``balance`` has ``cv`` (population
    standard deviation over mean) and ``max_over_mean`` of ``est_ms`` over conv layers
    (0.0 and 1.0 when there are none). ``profile_note`` names the profile used.
    """

    table: pd.DataFrame
    total_est_ms: float
    total_seed_ms: float
    overhead_ms: float
    total_macs: int
    total_params: int
    balance: dict[str, float]
    batch_size: int
    profile_note: str
    is_default_profile: bool
    e2e_meas_ms: float | None = None
    e2e_meas_iqr_ms: float | None = None
    meas_clock: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def with_measurements(self, model_profile: ModelProfile) -> CostReport:
        """A copy with ``meas_ms``/``meas_iqr_ms`` columns from a ``ModelProfile`` whose layers
        match this report's layers one to one."""
        if len(model_profile.meas_ms) != len(self.table):
            raise CostModelError(
                f"profiled {len(model_profile.meas_ms)} layers but the report has "
                f"{len(self.table)}; profile the same network"
            )
        table = self.table.copy()
        table["meas_ms"] = list(model_profile.meas_ms)
        table["meas_iqr_ms"] = list(model_profile.meas_iqr_ms)
        return replace(
            self, table=table, e2e_meas_ms=float(model_profile.e2e_ms),
            e2e_meas_iqr_ms=float(model_profile.e2e_iqr_ms),
            meas_clock=getattr(model_profile, "clock", None) or None,
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-safe dict: ``layers`` (records), totals, balance, profile note."""
        records = []
        for rec in self.table.to_dict(orient="records"):
            records.append({k: _plain(v) for k, v in rec.items()})
        out: dict[str, object] = {
            "layers": records,
            "total_est_ms": self.total_est_ms,
            "total_seed_ms": self.total_seed_ms,
            "overhead_ms": self.overhead_ms,
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "balance": dict(self.balance),
            "batch_size": self.batch_size,
            "profile": self.profile_note,
            "is_default_profile": self.is_default_profile,
        }
        if self.e2e_meas_ms is not None:
            out["e2e_meas_ms"] = self.e2e_meas_ms
            out["e2e_meas_iqr_ms"] = self.e2e_meas_iqr_ms
            out["meas_clock"] = self.meas_clock
        return out


def _plain(v: object) -> JsonValue:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def balance_summary(geoms: Sequence[LayerGeom], est_ms: Sequence[float]) -> dict[str, float]:
    """``cv`` and ``max_over_mean`` of ``est_ms`` over the conv layers."""
    conv = [t for g, t in zip(geoms, est_ms) if g.op == "conv"]
    if not conv:
        return {"cv": 0.0, "max_over_mean": 1.0}
    mean = sum(conv) / len(conv)
    if mean <= 0:
        return {"cv": 0.0, "max_over_mean": 1.0}
    var = sum((t - mean) ** 2 for t in conv) / len(conv)
    return {"cv": math.sqrt(var) / mean, "max_over_mean": max(conv) / mean}


def estimate(
    geoms: Sequence[LayerGeom], profile: DeviceProfile | None = None, batch_size: int | None = None
) -> CostReport:
    """Price ``geoms`` (per sample geometry) at ``batch_size`` with ``profile``.

    Without a profile the built-in default profile is used and the report says so
    (``is_default_profile``, ``profile_note``).
    """
    import pandas as pd

    geoms = list(geoms)
    if not geoms:
        raise CostModelError("nothing to price: the network has no layers")
    prof, comp, factor = _resolve(profile, batch_size)
    bs = int(round(factor * comp.batch_size))
    est, overhead = estimate_layers_ms(geoms, prof, bs)
    rows = []
    for g, e in zip(geoms, est):
        t_k = seed_t_k_ms(g, comp.t_k_ms)
        rows.append(
            (g.name, g.op, g.c_in, g.c_out, g.kernel, g.stride, g.h_out, g.w_out, g.n_p, g.n_f,
             g.macs, g.params, g.acts, g.bytes, t_k, factor * g.n_p * g.n_f * t_k, e)
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return CostReport(
        table=table,
        total_est_ms=float(sum(est) + overhead),
        total_seed_ms=float(table["t_c_seed_ms"].sum()),
        overhead_ms=float(overhead),
        total_macs=int(sum(g.macs for g in geoms)),
        total_params=int(sum(g.params for g in geoms)),
        balance=balance_summary(geoms, est),
        batch_size=bs,
        profile_note=prof.describe(),
        is_default_profile=prof.is_default,
    )

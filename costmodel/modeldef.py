"""The cost model's definition, shared by the estimator and the fitter (pure arithmetic, no torch).

Per layer, at the profile's batch size ``B0`` (``factor = B / B0``, 1 for a calibrated profile):

    linear base  = c + a * factor * MACs + b * factor * bytes   coefficients per op class
    layer        = table[config]  if this exact configuration was measured in context,
                   else base * exp(clamp(trees(tree_features)))   (ops with trees), or
                        base * exp(clamp(w . residual_features))  (log-linear residual)
                   + factor * activation elements * per-element cost of the fused activation
    network      = max(c0, -(1 - share) * sum) + sum of max(scale * layer + per_layer,
                                                            share * scale * layer)   (linear form)
                 = sum * exp(clamp(w . log_network_features(sum, n, weights)))      (log form)

    in context   = layer * exp(after[op][layer before]) * (T / ref) ** beta[op]   (profiles with a
                   layer context, ``costmodel.layer_context``; T the network's own total, solved
                   with its layers as a fixed point)

``share`` is ``MIN_SHARE_OF_LAYER_SUM``. The calibration picks the form whose out-of-fold error on
its own networks is lower (``costmodel.netfit``); in the log form a layer's ``est_ms`` is its time
times the network's factor, and there is no per-network constant. The textbook seed form prices a layer at
``N_p * N_f * T_k`` with one ``T_k`` per op (conv per kernel size).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from costmodel.activations import CALIBRATED
from costmodel.geometry import LayerGeom

# The log-space residual correction is clamped so that a regressor extrapolating far outside
# the calibrated space can move the linear base by at most this factor (in log space) either way.
RESIDUAL_CLAMP = 1.0
TREE_CLAMP = 3.0
# Tree-feature code of the fused activation: 0 for none, 1.. for the calibrated activations in
# their table order, ``OTHER_ACT_CODE`` for any other.
ACT_CODES: dict[str | None, float] = {None: 0.0, **{n: float(i) for i, n in enumerate(CALIBRATED, 1)}}
OTHER_ACT_CODE = float(len(ACT_CODES))
# The network-level correction, extrapolated to far smaller networks than it was fitted on, may
# shrink the layer sum but never below this share of it (docs/benchmarks.md, "Cost model accuracy").
MIN_SHARE_OF_LAYER_SUM = 0.25
# The log form's network factor stays within exp(+-LOG_NETWORK_CLAMP) of the layer sum, and its
# features are clamped to the range the calibration networks spanned.
LOG_NETWORK_CLAMP = 0.5


def op_class(g: LayerGeom, coeffs: Mapping[str, object]) -> str:
    """The coefficient set a layer uses: conv per kernel size when calibrated, pool per mode,
    standalone activations per function; falls back to the op name."""
    if g.op == "conv":
        key = f"conv_k{g.kernel}"
        return key if key in coeffs else "conv"
    if g.op == "pool":
        key = f"pool_{g.mode}"
        return key if key in coeffs else ("pool_max" if "pool_max" in coeffs else "pool")
    if g.op == "act":
        key = f"act_{g.activation}"
        return key if key in coeffs else "act"
    return g.op


def fit_classes(g: LayerGeom) -> tuple[str, ...]:
    """The op classes a measured layer is a training sample of (the candidates of ``op_class``)."""
    if g.op == "conv":
        return ("conv", f"conv_k{g.kernel}")
    if g.op == "pool":
        return (f"pool_{g.mode}",)
    if g.op == "act":
        return (f"act_{g.activation}", "act")
    return (g.op,)


def tree_base_class(g: LayerGeom) -> str:
    """The linear base under a tree model: one per op (pool per mode, act all together)."""
    if g.op == "pool":
        return f"pool_{g.mode}"
    return g.op


def linear_features(g: LayerGeom) -> list[float]:
    """What the linear base's coefficients ``(c, a, b)`` multiply: ``[1, MACs, bytes]``."""
    return [1.0, g.macs, g.bytes]


def linear_ms(coeff: tuple[float, float, float], g: LayerGeom, factor: float = 1.0) -> float:
    """The linear base ``c + a * (factor * MACs) + b * (factor * bytes)``."""
    c, a, b = coeff
    return c + a * (factor * g.macs) + b * (factor * g.bytes)


def fused_activation_ms(g: LayerGeom, act_elem_ms: Mapping[str, float], factor: float = 1.0) -> float:
    """Cost of the activation fused into a conv/dense layer (unknown functions cost as relu)."""
    if g.activation and g.op in ("conv", "dense"):
        return factor * g.acts * act_elem_ms.get(g.activation, act_elem_ms.get("relu", 0.0))
    return 0.0


def strip_activation(g: LayerGeom, t: float, act_elem_ms: Mapping[str, float]) -> float:
    """A measured conv or dense layer's time minus its fused activation's estimated cost (never
    below half of it): what the linear base, residuals and trees are fitted on."""
    if g.activation and g.op in ("conv", "dense"):
        return max(t - fused_activation_ms(g, act_elem_ms), 0.5 * t)
    return t


def residual_features(g: LayerGeom) -> list[float]:
    """Features of the log-space residual regressor (its weights live in the profile)."""
    ln = math.log
    if g.op == "conv":
        cin = g.c_in / g.groups
        return [
            1.0, ln(cin), ln(g.c_out), ln(g.n_p), ln(cin * g.kernel * g.kernel),
            ln(cin) ** 2, ln(g.c_out) ** 2, ln(g.n_p) ** 2, 1.0 if g.stride > 1 else 0.0,
            ln(cin) * ln(g.c_out),
        ]
    if g.op == "dense":
        return [1.0, ln(g.c_in), ln(g.c_out), ln(g.c_in) ** 2, ln(g.c_out) ** 2]
    return [1.0, ln(g.acts), ln(g.c_in), ln(g.n_p)]


# The trees' features before the channel-padding ones (profiles of schema version 3 and older).
V3_TREE_FEATURES = 10


def tree_features(g: LayerGeom) -> list[float]:
    """Features of the boosted-tree residual model (log sizes, kernel, stride, activation,
    pooling mode) and, after the first ``V3_TREE_FEATURES``, how much the output and input
    channel counts are padded to SIMD blocks of 16 and of 8 channels (``ln(ceil(c / b) * b /
    c)``: oneDNN computes in such blocks, and a 24-channel conv took longer than a 32-channel one)."""
    ln = math.log
    cin, cout, k = g.c_in // g.groups, g.c_out, g.kernel
    hw_in, n_p = g.h_in * g.w_in, g.h_out * g.w_out
    op = g.op
    if op == "conv":
        macs = n_p * cout * cin * k * k
        params = cout * cin * k * k + (cout if g.bias else 0)
    elif op == "dense":
        macs = g.c_in * cout
        params = macs + (cout if g.bias else 0)
    else:
        macs = 0
        params = 2 * cout if op == "bn" else 0
    nbytes = (g.c_in * hw_in + cout * n_p + params) * g.dtype_bytes
    return [
        ln(cin), ln(cout), ln(g.h_out), ln(g.h_in), float(k), float(g.stride), ln(macs + 1.0),
        ln(nbytes), ACT_CODES.get(g.activation, OTHER_ACT_CODE), 1.0 if g.mode == "max" else 0.0,
        _padding(cout, 16), _padding(cin, 16), _padding(cout, 8), _padding(cin, 8),
    ]


def _padding(c: int, block: int) -> float:
    return math.log(-(-c // block) * block / c)


def splits_on_padding(trees: Mapping[str, Mapping[str, object]]) -> bool:
    """Whether a stored tree ensemble splits on a padding feature (past the first
    ``V3_TREE_FEATURES``; malformed trees: no, pricing with them says they are malformed)."""
    try:
        return any(max(tree[0], default=0) >= V3_TREE_FEATURES
                   for e in trees.values() for tree in e["trees"])  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def corrected_layer_ms(raw_ms: float, scale: float, per_layer_ms: float) -> float:
    """One layer's time with the network-level correction (floored at the minimum share)."""
    return max(scale * raw_ms + per_layer_ms, MIN_SHARE_OF_LAYER_SUM * scale * raw_ms)


def network_overhead_ms(c0_ms: float, layer_sum_ms: float) -> float:
    """The per-network constant, never removing more than ``1 - MIN_SHARE`` of the layer sum."""
    return max(c0_ms, -(1 - MIN_SHARE_OF_LAYER_SUM) * layer_sum_ms)


def log_network_features(layer_sum_ms: float, n_layers: float,
                         bounds: Sequence[Sequence[float]] | None = None,
                         weight_mib: float | None = None) -> list[float]:
    """Features of the log-form network correction: 1, ln S, (ln S)^2, n / S (a per-layer or
    per-call cost relative to the network) and, with ``weight_mib``, W / S (the network's conv
    and dense weights in MiB per ms of its layers: how much of its time streams weights), with S
    the sum of the layers' times in ms, n the number of priced layers or module calls and W
    ``weight_mib``; ``bounds`` ([lo, hi] of ln S, of n / S and of W / S) clamps them to the
    fitted range."""
    s = max(layer_sum_ms, 1e-6)
    feats = [math.log(s), n_layers / s] + ([] if weight_mib is None else [weight_mib / s])
    if bounds is not None:
        feats = [min(max(f, b[0]), b[1]) for f, b in zip(feats, bounds)]
    return [1.0, feats[0], feats[0] * feats[0], *feats[1:]]


def module_calls(geoms: Sequence[LayerGeom]) -> int:
    """The leaf-module calls of a network as torch runs it (``costmodel.timing.build_module``,
    as archgen builds its networks): one per layer, one per conv or dense layer's activation, one
    flatten before the first dense layer or after a global pooling. Timing layers in context
    hooks every call, so what the hooks add to the layer sum goes with this count, not with the
    layers: a conv and its ReLU are two calls, a pooling one. Layers traced from a module
    (``costmodel.geometry.geoms_from_module``) carry the calls seen, which are counted instead."""
    if geoms and all(g.calls for g in geoms):
        return sum(len(g.calls) for g in geoms)
    acts = sum(1 for g in geoms if g.op in ("conv", "dense") and g.activation)
    return len(geoms) + acts + int(any(g.op in ("dense", "gap") for g in geoms))


def weight_mib(geoms: Sequence[LayerGeom]) -> float:
    """A network's conv and dense weights (and biases) in MiB."""
    return sum(g.params * g.dtype_bytes for g in geoms if g.op in ("conv", "dense")) / 2**20


def network_factor(coef: Sequence[float], bounds: Sequence[Sequence[float]], layer_sum_ms: float,
                   n_layers: float, weight_mib: float = 0.0) -> float:
    """The log form's multiplier of the layer sum (clamped to exp(+-LOG_NETWORK_CLAMP)); a
    correction of five coefficients has the W / S feature (``weight_mib``), one of four not."""
    # log_network_features and the dot product written out (the estimator's hot path; the same
    # arithmetic in the same order)
    s = max(layer_sum_ms, 1e-6)
    (lo0, hi0), (lo1, hi1) = bounds[0], bounds[1]
    ln_s = min(max(math.log(s), lo0), hi0)
    r = 0 + coef[0] * 1.0 + coef[1] * ln_s + coef[2] * (ln_s * ln_s) + coef[3] * min(max(n_layers / s, lo1), hi1)
    if len(coef) == 5:
        r += coef[4] * min(max(weight_mib / s, bounds[2][0]), bounds[2][1])
    return math.exp(max(-LOG_NETWORK_CLAMP, min(LOG_NETWORK_CLAMP, r)))


def t_k_classes(g: LayerGeom) -> tuple[str, ...]:
    """The seed-form classes a layer's ``T_k`` is fitted for: its op, and conv per kernel size."""
    return (g.op, f"conv_k{g.kernel}") if g.op == "conv" else (g.op,)


def seed_t_k_ms(g: LayerGeom, t_k_ms: Mapping[str, float]) -> float:
    """Textbook time of one filter application for this layer's op."""
    if g.op == "conv":
        return t_k_ms.get(f"conv_k{g.kernel}", t_k_ms.get("conv", 0.0))
    return t_k_ms.get(g.op, 0.0)


def seed_units(geoms: Iterable[LayerGeom]) -> int:
    """Textbook work of a network: sum of N_p x N_f over its conv and dense layers."""
    return sum(g.n_p * g.n_f for g in geoms if g.op in ("conv", "dense"))


# Activations ONNX Runtime's CPU graph optimizations fuse into the conv (or Gemm) before them
# (ConvActivationFusion: Relu, Sigmoid, Tanh, LeakyRelu, HardSigmoid, and Clip for relu6 and
# hardtanh); any other runs as its own node.
ORT_FUSED_ACTIVATIONS = frozenset({"relu", "sigmoid", "tanh", "leaky_relu", "hardsigmoid", "relu6", "hardtanh"})


def fusion_heads(geoms: Sequence[LayerGeom], runtime: str = "torch") -> list[int]:
    """Per layer, the index of the layer it runs fused into (itself when it runs on its own).

    PyTorch eager runs every layer on its own. ONNX Runtime (graph optimizations on) folds a
    batch norm into the convolution right before it (dropout between them is dropped at
    export) when that convolution has no activation of its own, fuses a standalone activation
    of ``ORT_FUSED_ACTIVATIONS`` into the convolution or dense layer (with its folded batch
    norm) right before it, and drops dropout: those layers are members of the group whose first
    layer (the head) carries their time."""
    heads = list(range(len(geoms)))
    if runtime != "onnxruntime":
        return heads
    for i, g in enumerate(geoms):
        if i == 0:
            continue
        head = heads[i - 1]
        h = geoms[head]
        between = [geoms[j].op for j in range(head + 1, i)]
        open_head = h.op in ("conv", "dense") and not h.activation and "act" not in between
        if g.op == "dropout":
            heads[i] = head
        elif g.op == "bn" and h.op == "conv" and not h.activation and set(between) <= {"dropout"}:
            heads[i] = head
        elif g.op == "act" and open_head and g.activation in ORT_FUSED_ACTIVATIONS:
            heads[i] = head
    return heads


def priced_layers(geoms: Sequence[LayerGeom], runtime: str = "torch") -> list[LayerGeom | None]:
    """Per layer, the geometry the model prices: the layer itself, or for a fusion group's head
    the fused layer (its members' activation and folded batch norm in it); None for a member,
    whose time is its head's."""
    heads = fusion_heads(geoms, runtime)
    out: list[LayerGeom | None] = list(geoms)
    for i, head in enumerate(heads):
        if head == i:
            continue
        out[i] = None
        fused = out[head]
        g = geoms[i]
        if g.op == "bn" and fused is not None:
            out[head] = replace(fused, bias=True)
        elif g.op == "act" and fused is not None:
            out[head] = replace(fused, activation=g.activation)
    return out


def grouped_samples(geoms: Sequence[LayerGeom], times: Sequence[float],
                    runtime: str = "torch") -> list[tuple[LayerGeom, float]]:
    """Measured per-layer times as training samples of ``priced_layers``: a fusion group's
    members' times added to its head's (ONNX Runtime attributes a fused node to whichever
    layer its name comes from)."""
    heads = fusion_heads(geoms, runtime)
    priced = priced_layers(geoms, runtime)
    total = [0.0] * len(geoms)
    for i, t in enumerate(times):
        total[heads[i]] += t
    return [(p, total[i]) for i, p in enumerate(priced) if p is not None]

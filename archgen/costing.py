"""Adapter from an ArchSpec to the cost model's layer geometries (archgen -> costmodel).

Pure arithmetic (no torch). Layer names match the modules ``archgen.build`` creates, so a
profile of the built module lines up row by row with the estimate of the spec.
"""

from __future__ import annotations

import os

from archgen.errors import UserError
from archgen.spec import (
    ArchSpec,
    BatchNormSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    GapSpec,
    PoolSpec,
)
from costmodel.geometry import LayerGeom


def layer_names(spec: ArchSpec) -> list[str]:
    """Module path of every spec layer in the built network (``s1.conv1``, ``fc1``, ...).

    Layers before the first dense layer live in stages ``s1, s2, ...``; a stage ends with its
    pooling layer. Global pooling is ``gap``; the head has ``fc1, fc2, ...``, ``bn_fc1``,
    ``drop1``...; the implied classifier is ``classifier``.
    """
    names: list[str] = []
    stage, counts = 1, {"conv": 0, "bn": 0, "drop": 0}
    n_fc = n_head_bn = n_head_drop = 0
    in_head = False
    for layer in spec.layers:
        if isinstance(layer, (DenseSpec, GapSpec)):
            in_head = True
        if isinstance(layer, ConvSpec):
            counts["conv"] += 1
            names.append(f"s{stage}.conv{counts['conv']}")
        elif isinstance(layer, PoolSpec):
            names.append(f"s{stage}.pool")
            stage, counts = stage + 1, {"conv": 0, "bn": 0, "drop": 0}
        elif isinstance(layer, GapSpec):
            names.append("gap")
        elif isinstance(layer, DenseSpec):
            n_fc += 1
            names.append(f"fc{n_fc}")
        elif isinstance(layer, BatchNormSpec):
            if in_head:
                n_head_bn += 1
                names.append(f"bn_fc{n_head_bn}")
            else:
                counts["bn"] += 1
                names.append(f"s{stage}.bn{counts['bn']}")
        elif isinstance(layer, DropoutSpec):
            if in_head:
                n_head_drop += 1
                names.append(f"drop{n_head_drop}")
            else:
                counts["drop"] += 1
                names.append(f"s{stage}.drop{counts['drop']}")
    return names


def spec_geoms(spec: ArchSpec) -> list[LayerGeom]:
    """One LayerGeom per priced layer of the built network, classifier included."""
    shapes = spec.shapes()
    names = layer_names(spec)
    geoms: list[LayerGeom] = []
    c, h, w = spec.input_shape
    for layer, name, (c2, h2, w2) in zip(spec.layers, names, shapes):
        if isinstance(layer, ConvSpec):
            act = None if layer.activation == "none" else layer.activation
            geoms.append(
                LayerGeom(name, "conv", c, c2, h, w, h2, w2, layer.kernel, layer.stride,
                          layer.pad_amount(), activation=act)
            )
        elif isinstance(layer, PoolSpec):
            geoms.append(
                LayerGeom(name, "pool", c, c2, h, w, h2, w2, layer.kernel, layer.stride, mode=layer.mode)
            )
        elif isinstance(layer, GapSpec):
            geoms.append(LayerGeom(name, "gap", c, c2, h, w, 1, 1, mode="avg"))
        elif isinstance(layer, DenseSpec):
            act = None if layer.activation == "none" else layer.activation
            geoms.append(LayerGeom(name, "dense", c * h * w, c2, 1, 1, 1, 1, activation=act))
        elif isinstance(layer, BatchNormSpec):
            geoms.append(LayerGeom(name, "bn", c, c2, h, w, h2, w2))
        elif isinstance(layer, DropoutSpec):
            geoms.append(LayerGeom(name, "dropout", c, c2, h, w, h2, w2))
        c, h, w = c2, h2, w2
    geoms.append(LayerGeom("classifier", "dense", c * h * w, spec.num_classes, 1, 1, 1, 1))
    return geoms


def spec_macs(spec: ArchSpec) -> int:
    """Multiply-adds per sample (fvcore convention) of the whole network.

    The generator's budget screen calls this for every candidate, so it works on the cached
    shapes without building LayerGeom objects; a test holds it equal to ``spec_geoms``'s sum.
    """
    c, h, w = spec.input_shape
    total = 0
    for layer, shape in zip(spec.layers, spec.shapes()):
        if type(layer) is ConvSpec:
            total += shape[1] * shape[2] * layer.filters * c * layer.kernel * layer.kernel
        elif type(layer) is DenseSpec:
            total += c * h * w * layer.units
        c, h, w = shape
    return total + c * h * w * spec.num_classes


def training_memory_mb(spec: ArchSpec, geoms: list[LayerGeom], batch_size: int) -> float:
    """Memory to train ``spec`` at ``batch_size``, roughly and from above: float32 weights, their
    gradients and two Adam moments (16 bytes a parameter), and every layer's output kept for
    the backward pass plus its gradient and one workspace copy (12 bytes a value), input included."""
    return (16 * spec.num_params() + 12 * batch_size * _values_per_image(spec, geoms)) / 2**20


def _values_per_image(spec: ArchSpec, geoms: list[LayerGeom]) -> int:
    """The input and every layer's output, per image."""
    c, h, w = spec.input_shape
    return sum(g.acts for g in geoms) + c * h * w


def total_memory_mb(device: str = "cpu") -> float:
    """This machine's physical memory, or the GPU's with a ``cuda`` device, in MB."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        return torch.cuda.get_device_properties(index).total_memory / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def inference_memory_mb(spec: ArchSpec, geoms: list[LayerGeom], batch_size: int) -> float:
    """Memory to run ``spec`` forward at ``batch_size`` (profiling, export checks), from above:
    the weights and every layer's output."""
    return 4 * (spec.num_params() + batch_size * _values_per_image(spec, geoms)) / 2**20


def check_fits_in_memory(spec: ArchSpec, batch_size: int, device: str = "cpu", training: bool = False) -> None:
    """Raise UserError when running (or ``training``) ``spec`` at ``batch_size`` needs more than
    half of the device's memory (before torch tries, and fails with an allocation error)."""
    need = (training_memory_mb if training else inference_memory_mb)(spec, spec_geoms(spec), batch_size)
    have = total_memory_mb(device) / 2
    if need > have:
        raise UserError(
            f"{spec.short_name()[:60]} at batch {batch_size} needs ~{need:,.0f} MB, over the limit of half "
            f"this {device}'s memory ({have:,.0f} MB); use a smaller batch or network"
        )

"""Adapter from an ArchSpec to the cost model's layer geometries (archgen -> costmodel).

Pure arithmetic (no torch). Layer names match the modules ``archgen.build`` creates, so a
profile of the built module lines up row by row with the estimate of the spec.
"""

from __future__ import annotations

import os

from archgen.errors import UserError
from archgen.ops import classifier_geom
from archgen.ops import layer_names as _op_layer_names
from archgen.spec import ArchSpec
from costmodel.geometry import LayerGeom


def layer_names(spec: ArchSpec) -> list[str]:
    """Module path of every spec layer in the built network (``s1.conv1``, ``fc1``, ...); see
    ``archgen.ops.Namer``. The implied classifier is ``classifier``."""
    return _op_layer_names(spec.layers)


def spec_geoms(spec: ArchSpec) -> list[LayerGeom]:
    """One LayerGeom per priced layer of the built network, classifier included."""
    shape = spec.input_shape
    geoms: list[LayerGeom] = []
    for layer, name, out in zip(spec.layers, layer_names(spec), spec.shapes()):
        geoms.append(layer.geom(name, shape, out))
        shape = out
    geoms.append(classifier_geom(shape, spec.num_classes))
    return geoms


def spec_macs(spec: ArchSpec) -> int:
    """Multiply-adds per sample (fvcore convention) of the whole network.

    The generator's budget screen calls this for every candidate, so it works on the cached
    shapes without building LayerGeom objects; a test holds it equal to ``spec_geoms``'s sum.
    """
    shape = spec.input_shape
    total = 0
    for layer, out in zip(spec.layers, spec.shapes()):
        total += layer.macs(shape, out)
        shape = out
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

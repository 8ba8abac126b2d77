"""Build a ``torch.nn.Module`` from an ArchSpec, and initialize it by rule R7.

Module paths match ``archgen.costing.layer_names`` (``s1.conv1``, ``s1.act1``, ``s1.pool``,
``gap``, ``flatten``, ``fc1``, ``fc1_act``, ``classifier``) so tables read like the architecture.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from archgen.costing import layer_names
from archgen.spec import (
    ArchSpec,
    BatchNormSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    GapSpec,
    PoolSpec,
    init_bound,
)


def _activation(name: str) -> nn.Module | None:
    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "leaky_relu": nn.LeakyReLU,
    }.get(name, lambda: None)()


def build_model(spec: ArchSpec, seed: int | None = None) -> nn.Sequential:
    """The network of ``spec``, initialized by its init scheme (seeded when ``seed`` is given)."""
    spec.validate()
    top: OrderedDict[str, nn.Module] = OrderedDict()
    stages: OrderedDict[str, OrderedDict[str, nn.Module]] = OrderedDict()
    c, h, w = spec.input_shape
    flattened = False
    for layer, name, (c2, h2, w2) in zip(spec.layers, layer_names(spec), spec.shapes()):
        stage, _, local = name.rpartition(".")
        target = stages.setdefault(stage, OrderedDict()) if stage else top
        if isinstance(layer, ConvSpec):
            target[local] = nn.Conv2d(c, c2, layer.kernel, layer.stride, layer.pad_amount())
            act = _activation(layer.activation)
            if act is not None:
                target[local.replace("conv", "act")] = act
        elif isinstance(layer, PoolSpec):
            cls = nn.MaxPool2d if layer.mode == "max" else nn.AvgPool2d
            target[local] = cls(layer.kernel, layer.stride)
        elif isinstance(layer, GapSpec):
            target[local] = nn.AdaptiveAvgPool2d(1)
        elif isinstance(layer, DenseSpec):
            if not flattened:
                top["flatten"] = nn.Flatten()
                flattened = True
            target[local] = nn.Linear(c * h * w, c2)
            act = _activation(layer.activation)
            if act is not None:
                target[f"{local}_act"] = act
        elif isinstance(layer, BatchNormSpec):
            target[local] = nn.BatchNorm1d(c) if flattened else nn.BatchNorm2d(c)
        elif isinstance(layer, DropoutSpec):
            target[local] = nn.Dropout(layer.rate) if flattened else nn.Dropout2d(layer.rate)
        if stage and stage not in top:
            top[stage] = nn.Module()  # placeholder keeps stage order; replaced below
        c, h, w = c2, h2, w2
    for stage, children in stages.items():
        top[stage] = nn.Sequential(children)
    if not flattened:
        top["flatten"] = nn.Flatten()
    top["classifier"] = nn.Linear(c * h * w, spec.num_classes)
    model = nn.Sequential(top)
    init_weights(model, spec.init.scheme, seed=seed)
    return model


def init_weights(model: nn.Module, scheme: str, seed: int | None = None) -> None:
    """R7: biases 0; conv and dense weights uniform in [-r, r], r from ``scheme``."""
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
                r = init_bound(scheme, fan_in, fan_out)
                module.weight.uniform_(-r, r, generator=gen)
                if module.bias is not None:
                    module.bias.zero_()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

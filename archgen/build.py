"""Build a ``torch.nn.Module`` from an ArchSpec, and initialize it by rule R7.

Module paths match ``archgen.ops.layer_names`` (``s1.conv1``, ``s1.act1``, ``s1.pool``,
``gap``, ``flatten``, ``fc1``, ``fc1_act``, ``classifier``) so tables read like the architecture.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from archgen.ops import layer_names
from archgen.spec import ArchSpec, init_bound


def build_model(spec: ArchSpec, seed: int | None = None) -> nn.Sequential:
    """The network of ``spec``, initialized by its init scheme (seeded when ``seed`` is given)."""
    spec.validate()
    top: OrderedDict[str, nn.Module] = OrderedDict()
    stages: OrderedDict[str, OrderedDict[str, nn.Module]] = OrderedDict()
    shape = spec.input_shape
    flat = False
    for layer, name, out in zip(spec.layers, layer_names(spec.layers), spec.shapes()):
        stage, _, local = name.rpartition(".")
        target = stages.setdefault(stage, OrderedDict()) if stage else top
        if layer.flattens and not flat:
            top["flatten"] = nn.Flatten()
            flat = True
        for key, module in layer.modules(local, shape, out, flat):
            target[key] = module
        if stage and stage not in top:
            top[stage] = nn.Module()  # placeholder keeps stage order; replaced below
        shape = out
    for stage, children in stages.items():
        top[stage] = nn.Sequential(children)
    if not flat:
        top["flatten"] = nn.Flatten()
    c, h, w = shape
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

"""The activation functions the cost model knows: one table, every other view derived from it.

Each row names an activation as ``LayerGeom.activation`` stores it and as ``torch.nn`` spells
its module class. Elementwise activations are fused into a conv/dense layer right before them
(``costmodel.geometry``); the others (softmax over channels) are always a standalone ``act``
layer. No torch here: ``module_for`` looks the class up only when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torch import nn


class Activation(NamedTuple):
    name: str
    torch_type: str
    elementwise: bool = True


# The first rows are the activations calibration measures (``CALIBRATED``), in the order of
# their code in the tree features (``costmodel.modeldef.ACT_CODES``): fitted profiles depend on
# that order, so new activations go after them.
TABLE: tuple[Activation, ...] = (
    Activation("relu", "ReLU"),
    Activation("tanh", "Tanh"),
    Activation("sigmoid", "Sigmoid"),
    Activation("gelu", "GELU"),
    Activation("relu6", "ReLU6"),
    Activation("leaky_relu", "LeakyReLU"),
    Activation("elu", "ELU"),
    Activation("selu", "SELU"),
    Activation("celu", "CELU"),
    Activation("silu", "SiLU"),
    Activation("mish", "Mish"),
    Activation("hardswish", "Hardswish"),
    Activation("hardsigmoid", "Hardsigmoid"),
    Activation("hardtanh", "Hardtanh"),
    Activation("softplus", "Softplus"),
    Activation("prelu", "PReLU"),
    Activation("softmax", "Softmax", elementwise=False),
    Activation("log_softmax", "LogSoftmax", elementwise=False),
)
CALIBRATED: tuple[str, ...] = tuple(a.name for a in TABLE[:4])
BY_NAME: dict[str, Activation] = {a.name: a for a in TABLE}
BY_TORCH_TYPE: dict[str, Activation] = {a.torch_type: a for a in TABLE}
# The table as plain data for ``costmodel.runner`` (name -> (torch.nn class name, elementwise)).
ACTIVATIONS: dict[str, tuple[str, bool]] = {a.name: (a.torch_type, a.elementwise) for a in TABLE}


def module_for(name: str) -> nn.Module:
    """A fresh ``torch.nn`` module computing activation ``name`` (softmax over channels).

    Raises ``KeyError`` for a name not in ``TABLE``."""
    from torch import nn

    act = BY_NAME[name]
    cls = getattr(nn, act.torch_type)
    return cls() if act.elementwise else cls(dim=1)

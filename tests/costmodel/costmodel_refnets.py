"""Reference networks (LeNet-5, AlexNet-style, VGG-style) and fvcore counts for the tests."""

from __future__ import annotations


def fvcore_conv_linear(module, x) -> dict[str, int]:
    """fvcore's conv + linear flop count per leaf module path (batch of ``x``)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = (
        FlopCountAnalysis(module, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    )
    out = {}
    for path, counter in analysis.by_module_and_operator().items():
        n = counter.get("conv", 0) + counter.get("linear", 0) + counter.get("addmm", 0)
        if n and path and next(iter(module.get_submodule(path).children()), None) is None:
            out[path] = n
    return out


def lenet5():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
        nn.Linear(84, 10),
    )


def alexnet_style():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 1024), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1000),
    )


def vgg_style():
    from torch import nn

    def block(c_in: int, c_out: int, n: int) -> list:
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
        return layers + [nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 32, 2), *block(32, 64, 2), *block(64, 128, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10),
    )

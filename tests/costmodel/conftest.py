"""Fixtures for the costmodel tests."""

from __future__ import annotations

import pytest
from costmodel_refnets import alexnet_style, lenet5, vgg_style


@pytest.fixture(scope="module")
def reference_nets():
    import torch

    torch.manual_seed(0)
    return {
        "lenet5": (lenet5(), torch.randn(1, 1, 28, 28)),
        "alexnet": (alexnet_style(), torch.randn(1, 3, 224, 224)),
        "vgg": (vgg_style(), torch.randn(1, 3, 32, 32)),
    }

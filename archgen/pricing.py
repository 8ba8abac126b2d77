"""Estimate next to measurement: price a spec with the calibrated cost model, time the layers of
its built network, and put the two side by side.

``archgen profile SPEC`` prints this table; finalize writes it as the best model's
``best/cost.csv``. torch is imported when a network is measured, never on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from archgen.costing import spec_geoms
from archgen.spec import ArchSpec

if TYPE_CHECKING:
    from torch import nn

    from costmodel.device_profile import DeviceProfile
    from costmodel.estimator import CostReport


def estimate_and_measure(
    spec: ArchSpec,
    profile: DeviceProfile | None,
    batch_size: int,
    *,
    model: nn.Module | None = None,
    device: str = "cpu",
    threads: int = 1,
    repeats: int = 15,
    runtime: str = "torch",
    onnx_path: str | Path | None = None,
) -> CostReport:
    """The per-layer cost estimate of ``spec`` at ``batch_size`` with ``profile`` (None: the
    built-in default), with the measured time of each layer (``meas_ms``, ``meas_iqr_ms``) and
    of the whole network (``e2e_meas_ms``) next to it.

    ``model`` is the network to time (default: ``spec`` built with seed 0); it is timed on
    ``device`` with ``threads`` threads, the minimum of ``repeats`` calls on a random batch,
    and is left there, in eval mode. ``runtime="onnxruntime"``: timed as its ONNX export
    (``onnx_path`` if given, e.g. the exported ``model.onnx``) in ONNX Runtime on the CPU, per
    layer from ONNX Runtime's node profiling.
    """
    import torch

    from archgen.build import build_model
    from costmodel.estimator import estimate
    from costmodel.profile import profile_module

    report = estimate(spec_geoms(spec), profile, batch_size)
    if model is None:
        model = build_model(spec, seed=0)
    x = torch.randn(batch_size, *spec.input_shape)
    if runtime == "onnxruntime":
        from costmodel.ort import profile_module_onnx

        measured = profile_module_onnx(model.cpu().eval(), x, threads=threads, repeats=repeats,
                                       onnx_path=onnx_path)
    else:
        measured = profile_module(model, x, device=device, threads=threads, repeats=repeats)
    model.train(False)
    return report.with_measurements(measured)

"""Export a chosen network: spec (JSON/YAML), weights, ONNX verified with onnxruntime."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archgen.errors import UserError
from archgen.fsio import atomic_path
from archgen.inputs import clip
from archgen.spec import ArchSpec, load_spec

log = logging.getLogger(__name__)

ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3


@dataclass(frozen=True)
class ExportSource:
    """A spec and, when found next to it, trained weights."""

    spec: ArchSpec
    weights: Path | None


def resolve_source(path: str | Path) -> ExportSource:
    """A spec file, a train run directory (spec.json + weights.pt) or a search run
    directory (best/spec.json + best/weights.pt)."""
    path = Path(path)
    if path.is_dir():
        for base in (path / "best", path):
            spec_file = base / "spec.json"
            if spec_file.is_file():
                weights = base / "weights.pt"
                return ExportSource(load_spec(spec_file), weights if weights.is_file() else None)
        raise UserError(f"{path}: no spec.json or best/spec.json in this run directory")
    return ExportSource(load_spec(path), None)


def load_model(source: ExportSource) -> nn.Module:
    from archgen.build import build_model

    model = build_model(source.spec, seed=0)
    if source.weights is not None:
        try:
            state = torch.load(source.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # any failure to read a user's file is a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source.weights}: cannot load weights ({clip(first, 120)})") from None
    return model.eval()


def export_onnx(model: nn.Module, spec: ArchSpec, path: str | Path, verify: bool = True) -> float:
    """Write an ONNX file with a dynamic batch axis; return the largest |onnxruntime - torch|
    logit difference on a random batch (raises RuntimeError above ONNX_ATOL + ONNX_RTOL * max |logit|)."""
    path = Path(path)
    model = model.eval()
    example = torch.randn(2, *spec.input_shape)
    # Verified before the rename: a file at ``path`` is always a complete, checked export.
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        diff = verify_onnx(model, spec, tmp) if verify else float("nan")
    return diff


def verify_onnx(model: nn.Module, spec: ArchSpec, path: str | Path, batch: int = 5) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(abs(got - expected).max())
    # Float32 sums over large maps differ by rounding order between runtimes: the tolerance
    # grows with the logits' magnitude.
    tol = ONNX_ATOL + ONNX_RTOL * float(abs(expected).max())
    if not diff <= tol:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.3g} (> {tol:.3g})")
    return diff

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import yaml

from archgen.build import build_model
from archgen.generator import sample_specs
from archgen.spec import ArchSpec, load_spec, save_spec


def test_export_json_yaml_round_trip(run_cli, tmp_path):
    spec = sample_specs((1, 28, 28), 10, 1, seed=4)[0]
    src = save_spec(spec, tmp_path / "s.json")
    code, out, _ = run_cli("export", str(src), "--format", "yaml")
    assert code == 0 and ArchSpec.from_dict(yaml.safe_load(out)) == spec
    code, out, _ = run_cli("export", str(src), "--format", "yaml", "--out", str(tmp_path / "s.yaml"))
    assert code == 0 and load_spec(tmp_path / "s.yaml") == spec


def test_export_onnx_matches_pytorch_with_trained_weights(run_cli, tmp_path):
    spec = sample_specs((1, 28, 28), 10, 1, seed=7)[0]
    run = tmp_path / "run"
    run.mkdir()
    save_spec(spec, run / "spec.json")
    model = build_model(spec, seed=11).eval()
    torch.save(model.state_dict(), run / "weights.pt")
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli("export", str(run), "--format", "onnx", "--out", str(out))
    assert code == 0, err
    assert "trained weights" in stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 1, 28, 28)  # a batch size other than the export's: the axis is dynamic
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4

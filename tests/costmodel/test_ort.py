"""ONNX Runtime as a runtime: node names mapped to layers, fused groups priced as one layer,
per-layer profiles of real modules, calibration and estimates of an onnxruntime profile."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from costmodel.calibration import calibrate
from costmodel.estimator import estimate, estimate_total_ms
from costmodel.geometry import LayerGeom, geoms_from_module
from costmodel.modeldef import fusion_heads, grouped_samples, priced_layers
from costmodel.netgen import random_plain_cnn
from costmodel.ort import profile_module_onnx
from costmodel.timing_ort import layer_runs, module_path, node_layers, parse_profile


def test_node_names_map_to_module_paths() -> None:
    assert module_path("/s1/conv1/Conv") == "s1.conv1"
    assert module_path("fused /fc1/Gemm") == "fc1"
    assert module_path("/s1_conv1_act/Relu_output_0_nchwc") == "s1_conv1_act"
    assert module_path("ReorderOutput") is None
    assert module_path("/Flatten") is None
    paths = {"s1.conv1": 0, "s1.act1": 0, "s1.pool": 1, "fc": 2}
    names = ["ReorderInput", "/s1/act1/Relu_output_0_nchwc", "/s1/pool/MaxPool", "ReorderOutput",
             "/flatten/Flatten", "fused /fc/Gemm"]
    # made-up nodes go to the layer after them, their consumer: the reorder to NCHW and the
    # flatten before a dense layer count on the dense layer
    assert node_layers(names, paths) == [0, 0, 1, 2, 2, 2]
    # after every known node: the last layer
    assert node_layers(names + ["ReorderOutput_token_3"], paths) == [0, 0, 1, 2, 2, 2, 2]
    assert node_layers(["ReorderOutput"], paths) == [0]


def test_parse_profile_groups_node_events_by_run(tmp_path: Path) -> None:
    events = [
        {"cat": "Node", "name": "/a/Conv_kernel_time", "ts": 10, "dur": 5},
        {"cat": "Node", "name": "/a/Conv_fence_before", "ts": 9, "dur": 0},
        {"cat": "Node", "name": "/b/Gemm_kernel_time", "ts": 16, "dur": 2},
        {"cat": "Session", "name": "model_run", "ts": 8, "dur": 12},
        {"cat": "Node", "name": "/a/Conv_kernel_time", "ts": 40, "dur": 4},
        {"cat": "Node", "name": "/b/Gemm_kernel_time", "ts": 45, "dur": 3},
        {"cat": "Session", "name": "model_run", "ts": 39, "dur": 10},
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5},
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    assert parse_profile(path) == [[("/a/Conv", 0.005), ("/b/Gemm", 0.002)],
                                   [("/a/Conv", 0.004), ("/b/Gemm", 0.003)]]


def test_layer_times_take_the_profilers_cost_off_each_node_down_to_a_floor() -> None:
    paths = {"a": 0, "b": 1}
    runs = [[("/a/Conv", 0.005), ("/a/Relu", 0.002), ("/b/Gemm", 0.001)],
            [("/a/Conv", 0.004), ("/a/Relu", 0.003), ("/b/Gemm", 0.002)]]
    # 1.9 us off each node, a node at least 0.2 us: a 1 us Gemm is 0.2 us, not 0 (a layer of
    # one small node came out at 0 ms on a loaded machine when nodes were floored at 0)
    a, b = layer_runs(runs, paths, 2, (0.0019, 0.0002))
    assert a == pytest.approx([0.0031 + 0.0002, 0.0021 + 0.0011])
    assert b == pytest.approx([0.0002, 0.0002])
    assert layer_runs(runs, paths, 2) == [[0.007, 0.007], [0.001, 0.002]]  # nothing taken off


def _g(name: str, op: str, **kw) -> LayerGeom:
    c = kw.pop("c", 8)
    return LayerGeom(name, op, c, c, 8, 8, 8, 8, **kw)


def test_onnxruntime_fuses_bn_activation_and_dropout_into_the_layer_before() -> None:
    geoms = [_g("c1", "conv", kernel=3, padding=1), _g("bn1", "bn", bias=False), _g("a1", "act", activation="relu"),
             _g("c2", "conv", kernel=3, padding=1, activation="relu"), _g("bn2", "bn", bias=False),
             _g("p", "pool", mode="max", bias=False), _g("d", "dropout", bias=False)]
    assert fusion_heads(geoms, "torch") == list(range(7))
    # bn1 folds into c1 (no activation of its own), a1 fuses into c1+bn1; bn2 follows an
    # activation and stays; dropout is dropped (its time is the pool's)
    assert fusion_heads(geoms, "onnxruntime") == [0, 0, 0, 3, 4, 5, 5]
    priced = priced_layers(geoms, "onnxruntime")
    assert priced[0].activation == "relu" and priced[0].bias and priced[1] is None and priced[2] is None
    assert priced[3] == geoms[3] and priced[6] is None
    samples = grouped_samples(geoms, [1.0, 0.5, 0.25, 2.0, 0.1, 0.2, 0.0], "onnxruntime")
    assert [t for _, t in samples] == [1.75, 2.0, 0.1, 0.2]


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def test_profile_module_onnx_lines_up_with_the_traced_layers() -> None:
    model, x = _small_cnn(), torch.randn(1, 3, 32, 32)
    prof = profile_module_onnx(model, x, repeats=5, warmup_s=0.0)
    geoms = geoms_from_module(model, x)
    assert [g.op for g in prof.geoms] == [g.op for g in geoms] == ["conv", "bn", "pool", "conv", "gap", "dense"]
    assert len(prof.meas_ms) == len(geoms) and all(t >= 0 for t in prof.meas_ms)
    assert prof.meas_ms[0] > 0 and prof.meas_ms[3] > 0  # the convs ran and were attributed
    assert prof.e2e_ms > 0 and prof.clock.startswith("onnxruntime")
    assert len(prof.e2e_samples_ms) == 5  # ONNX Runtime keeps the rounds asked for (no settling)


def test_an_onnxruntime_profile_prices_fused_groups_as_one_layer() -> None:
    rng = random.Random(3)
    nets = [random_plain_cnn(rng, max_macs=3_000_000) for _ in range(10)]
    profile = calibrate(runtime="onnxruntime", batch_size=1, quick=True, networks=nets, repeats=2)
    assert profile.runtime == "onnxruntime" and profile.context["runtime_version"]
    assert profile.context["graph_optimization"] == "all" and profile.reference_ms > 0
    assert profile.protocol["executor"] == "sequential"
    assert profile.fit_quality["noise_floor"]["n"] == len(nets)  # its two rounds against each other
    assert profile.protocol["settle"].startswith("no")
    geoms = [LayerGeom("s1.conv1", "conv", 3, 16, 32, 32, 32, 32, 3, 1, 1),
             LayerGeom("s1.bn1", "bn", 16, 16, 32, 32, 32, 32, bias=False),
             LayerGeom("s1.act1", "act", 16, 16, 32, 32, 32, 32, bias=False, activation="relu"),
             LayerGeom("fc", "dense", 16 * 32 * 32, 10, 1, 1, 1, 1)]
    report = estimate(geoms, profile)
    est = list(report.table["est_ms"])
    assert est[1] == 0.0 and est[2] == 0.0 and est[0] > 0 and est[3] > 0
    assert report.total_est_ms == pytest.approx(estimate_total_ms(geoms, profile))

from __future__ import annotations

import json

import pytest

from archgen.errors import SpecError
from archgen.spec import (
    ArchSpec,
    ConvSpec,
    DenseSpec,
    GapSpec,
    InitSpec,
    PoolSpec,
    load_spec,
    save_spec,
)

LENET = {
    "schema_version": 1,
    "input_shape": [1, 28, 28],
    "num_classes": 10,
    "layers": [
        {"op": "conv", "filters": 32, "kernel": 5, "stride": 1, "padding": "same", "activation": "relu"},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "conv", "filters": 128, "kernel": 3},
        {"op": "pool", "mode": "max", "kernel": 2, "stride": 2},
        {"op": "dense", "units": 256, "activation": "relu"},
    ],
    "init": {"scheme": "lecun_uniform"},
}


def test_shapes_and_params_by_hand():
    spec = ArchSpec.from_dict(LENET)
    assert spec.shapes() == [(32, 28, 28), (32, 14, 14), (128, 14, 14), (128, 7, 7), (256, 1, 1)]
    expected = (1 * 32 * 25 + 32) + (32 * 128 * 9 + 128) + (128 * 49 * 256 + 256) + (256 * 10 + 10)
    assert spec.num_params() == expected
    assert spec.short_name() == "c5x32-p2-c3x128-p2-d256"


def test_same_padding_with_stride_gives_ceil():
    spec = ArchSpec((3, 225, 225), 10, (ConvSpec(8, 11, 4),))
    assert spec.shapes() == [(8, 57, 57)]  # ceil(225 / 4)


def test_round_trip_json_yaml(tmp_path):
    spec = ArchSpec.from_dict(LENET)
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec
    for name in ("a.json", "a.yaml"):
        path = save_spec(spec, tmp_path / name)
        assert load_spec(path) == spec
        assert load_spec(path).key() == spec.key()


def test_key_is_stable_and_distinguishes():
    a = ArchSpec.from_dict(LENET)
    b = ArchSpec.from_dict({**LENET, "init": {"scheme": "glorot_uniform"}})
    assert a.key() == ArchSpec.from_dict(json.loads(json.dumps(LENET))).key()
    assert len(a.key()) == 12 and a.key() != b.key()


def _with_layer(index, **changes):
    d = json.loads(json.dumps(LENET))
    d["layers"][index].update(changes)
    return d


@pytest.mark.parametrize(
    "data, needle",
    [
        (_with_layer(0, op="deconv"), "layer 0: unknown op 'deconv'"),
        (_with_layer(0, filters=-4), "layer 0 (conv): filters must be a positive integer, got -4"),
        (_with_layer(2, kernel=4), "layer 2 (conv): kernel 4 is even"),
        (_with_layer(1, kernel=40, stride=40), "layer 1 (pool): pooling 40x40 shrinks the 28x28 map below 1x1"),
        (_with_layer(4, units=0), "layer 4 (dense): units must be a positive integer, got 0"),
        (_with_layer(0, colour="red"), "layer 0 (conv): unknown key(s) colour"),
        (_with_layer(0, activation="swishy"), "activation 'swishy'"),
        ({**LENET, "schema_version": 2}, "schema_version 2 is not supported"),
        ({**LENET, "input_shape": [1, 28]}, "input_shape must be a list [C, H, W]"),
        ({**LENET, "num_classes": 1}, "num_classes must be an integer in [2, 100,000]"),
        ({**LENET, "init": {"scheme": "zeros"}}, "unknown scheme 'zeros'"),
        ({**LENET, "extra": 1}, "unknown top-level key(s): extra"),
    ],
)
def test_validation_names_layer_and_value(data, needle):
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(data)
    assert needle in str(info.value)


def test_conv_after_dense_is_rejected():
    spec = ArchSpec((1, 8, 8), 10, (DenseSpec(16), ConvSpec(4, 3)))
    with pytest.raises(SpecError, match="layer 1 \\(conv\\): a conv cannot follow a dense layer"):
        spec.validate()


def test_gap_and_head_shapes():
    spec = ArchSpec((3, 32, 32), 5, (ConvSpec(16, 3), PoolSpec(), GapSpec(), DenseSpec(64)), InitSpec())
    assert spec.feature_shape() == (64, 1, 1)
    assert spec.num_params() == (3 * 16 * 9 + 16) + (16 * 64 + 64) + (64 * 5 + 5)


def test_load_spec_reports_json_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n "layers": [}')
    with pytest.raises(SpecError, match=r"bad.json: invalid JSON at line 2 column"):
        load_spec(bad)


def test_key_is_the_hash_of_the_canonical_json():
    import hashlib

    from archgen.generator import sample_specs

    for shape in ((1, 28, 28), (3, 224, 224)):
        for spec in sample_specs(shape, 10, 50, seed=2):
            canon = json.dumps(spec.to_dict(), separators=(",", ":"))
            assert spec.key() == hashlib.sha1(canon.encode()).hexdigest()[:12]

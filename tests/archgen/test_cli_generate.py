from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archgen.spec import ArchSpec


def test_generate_json_is_distinct_valid_and_repeatable(run_cli):
    code, out, _ = run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "50", "--seed", "0", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 50 and len({r["key"] for r in rows}) == 50
    for r in rows:
        assert ArchSpec.from_dict(r["spec"]).key() == r["key"]
    code2, out2, _ = run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "50", "--seed", "0", "--format", "json")
    assert out2 == out


def test_generate_large_input_follows_r2_r4(run_cli):
    code, out, _ = run_cli("generate", "--input", "3,224,224", "--classes", "10", "-n", "10", "--format", "jsonl")
    assert code == 0
    for line in out.splitlines():
        layers = json.loads(line)["spec"]["layers"]
        convs = [l for l in layers if l["op"] == "conv"]
        assert convs[0]["kernel"] in (11, 15) and convs[0]["stride"] == 4
        assert all(c["stride"] == 1 for c in convs[1:])


def test_generate_table_and_out_file(run_cli, tmp_path):
    code, out, _ = run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "3")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["#", "key"] and len(out.splitlines()) == 4
    target = tmp_path / "c.jsonl"
    assert run_cli("generate", "--input", "1,28,28", "--classes", "10", "-n", "4", "--format", "jsonl", "--out", str(target))[0] == 0
    assert len(target.read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--input", "1,28", "--classes", "10"], "--input '1,28' must be three"),
        (["--input", "1,28,28", "--classes", "10", "--max-macs", "100"], "max_macs=100 is below the smallest candidate"),
        (["--input", "1,28,28", "--classes", "10", "--max-params", "10"], "max_params=10 is below"),
        (["--input", "1,28,28", "--classes", "10", "--disable", "R9"], "unknown rule(s) R9"),
        (["--input", "1,28,28", "--classes", "1"], "argument --classes: 1 must be an integer in [2, 100,000]"),
    ],
)
def test_generate_bad_input_exit_2(run_cli, argv, needle):
    code, out, err = run_cli("generate", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def _write(path, text):
    path.write_text(text)
    return str(path)


BAD_SPECS = [
    ("bad.json", '{"schema_version": 1, "input_shape": [1, 28, 28', "invalid JSON at line 1"),
    ("op.json", '{"schema_version":1,"input_shape":[1,28,28],"num_classes":10,"layers":[{"op":"warp"}]}', "layer 0: unknown op 'warp'"),
    ("neg.json", '{"schema_version":1,"input_shape":[1,28,28],"num_classes":10,"layers":[{"op":"conv","filters":-3,"kernel":3}]}', "filters must be a positive integer, got -3"),
    ("pool.yaml", "schema_version: 1\ninput_shape: [1, 4, 4]\nnum_classes: 3\nlayers:\n- {op: pool}\n- {op: pool}\n- {op: pool}\n", "layer 2 (pool): pooling 2x2 shrinks the 1x1 map below 1x1"),
    ("even.json", '{"schema_version":1,"input_shape":[1,28,28],"num_classes":10,"layers":[{"op":"conv","filters":3,"kernel":4,"padding":"same"}]}', "kernel 4 is even"),
    ("ver.json", '{"schema_version":7,"input_shape":[1,28,28],"num_classes":10,"layers":[]}', "schema_version 7 is not supported"),
]


@pytest.mark.parametrize("name, text, needle", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_malformed_spec_exits_2_with_one_line(tmp_path, name, text, needle):
    path = _write(tmp_path / name, text)
    proc = subprocess.run(
        [sys.executable, "-m", "archgen", "export", path, "--format", "yaml"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""

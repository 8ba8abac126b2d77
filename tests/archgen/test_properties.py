"""Property-based tests (hypothesis): arbitrary specs, search configs and argument lists give a
valid result or one short error line with exit 2, never a traceback or a hang.

500 examples per entry point (the hardening issue's floor for CI)."""

from __future__ import annotations

import io
import json
import math
import string
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archgen.errors import SpecError, UserError
from archgen.inputs import parse_json, parse_yaml
from archgen.spec import ArchSpec

EXAMPLES = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["conv", "pool", "dense", "gap", "batchnorm", "dropout", "same",
                                           "valid", "relu", "max", "avg", "kaiming_uniform"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=30)
small_ints = st.integers(-3, 40)
layer = st.one_of(
    st.fixed_dictionaries({"op": st.just("conv"), "filters": small_ints, "kernel": small_ints},
                          optional={"stride": small_ints, "padding": st.one_of(small_ints, st.sampled_from(["same", "valid", "x"])),
                                    "activation": st.sampled_from(["relu", "tanh", "none", "bogus"])}),
    st.fixed_dictionaries({"op": st.just("pool")}, optional={"kernel": small_ints, "stride": small_ints,
                                                             "mode": st.sampled_from(["max", "avg", "min"])}),
    st.fixed_dictionaries({"op": st.just("dense"), "units": small_ints}),
    st.fixed_dictionaries({"op": st.sampled_from(["gap", "batchnorm"])}),
    st.fixed_dictionaries({"op": st.just("dropout"), "rate": st.one_of(st.floats(-1, 2), st.just(math.nan))}),
    json_values,
)
spec_like = st.fixed_dictionaries(
    {"schema_version": st.one_of(st.just(1), scalars),
     "input_shape": st.one_of(st.lists(st.integers(-2, 64), min_size=3, max_size=3), json_values),
     "num_classes": st.one_of(st.integers(-2, 20), scalars),
     "layers": st.one_of(st.lists(layer, max_size=8), json_values)},
    optional={"init": st.one_of(st.fixed_dictionaries({"scheme": st.sampled_from(["lecun_uniform", "nope"])}),
                                json_values),
              "extra": json_values},
)


def short_one_line(message: str, limit: int = 400) -> bool:
    return "\n" not in message.strip() and len(message) <= limit


@EXAMPLES
@given(spec_like)
def test_spec_parser_accepts_or_names_the_problem(data):
    try:
        spec = ArchSpec.from_dict(data)
    except SpecError as exc:
        assert short_one_line(str(exc)), str(exc)
        return
    # A valid spec survives its own round trip and has consistent shapes.
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec
    assert len(spec.shapes()) == len(spec.layers) and spec.num_params() > 0


@EXAMPLES
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 json_values.map(json.dumps), json_values.map(lambda v: yaml.safe_dump(v))))
def test_spec_text_parsers_never_raise_anything_but_a_spec_error(text):
    for parse in (parse_json, parse_yaml):
        try:
            data = parse(text, "spec.json", SpecError)
        except SpecError as exc:
            assert short_one_line(str(exc)), str(exc)
            continue
        try:
            ArchSpec.from_dict(data)
        except SpecError as exc:
            assert short_one_line(str(exc)), str(exc)


SETTING_KEYS = ["data", "strategy", "trials", "time_budget", "objective", "max_latency_ms", "latency_batch",
                "max_macs", "max_params", "storage", "study", "workers", "seed", "max_epochs", "min_epochs",
                "patience", "reduction_factor", "val_frac", "test_frac", "threads", "device", "bayes_sampler",
                "grid_points", "grid_params", "refine", "population", "pbt_interval", "pbt_quantile", "finalize",
                "refit", "calibrate", "warm_start", "max_memory_mb", "space", "grid", "manual", "bogus"]
SPACE_NAMES = ["stages", "convs_per_stage", "base_filters", "growth", "batchnorm", "dense_units", "dropout",
               "lr", "optimizer", "batch_size", "weight_decay", "augment_shift", "init", "wings"]
space_values = st.one_of(
    scalars, st.lists(scalars, max_size=4),
    st.fixed_dictionaries({}, optional={"low": scalars, "high": scalars, "log": scalars}),
)
config_like = st.dictionaries(
    st.sampled_from(SETTING_KEYS),
    st.one_of(scalars, json_values,
              st.dictionaries(st.sampled_from(SPACE_NAMES), space_values, max_size=4),
              st.lists(st.dictionaries(st.sampled_from(SPACE_NAMES), scalars, max_size=3), max_size=3)),
    max_size=6,
)


@EXAMPLES
@given(config_like)
def test_search_config_is_valid_or_one_line(tmp_path_factory, config):
    from archgen.settings import settings_from
    from archgen.space import space_from_config
    from archgen.strategies import coarse_grid, manual_configs

    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(config))
    except yaml.YAMLError:
        return
    try:
        s = settings_from({}, str(path))
        space = space_from_config((1, 8, 8), s.space)
        if s.strategy == "manual":
            manual_configs(s.manual, space)
        if s.strategy == "grid":
            grid = coarse_grid(space, s)
            assert all(grid.values())
    except UserError as exc:
        assert short_one_line(str(exc)), str(exc)
        return
    # A valid configuration has only finite numbers where numbers belong.
    for name in ("time_budget_s", "max_latency_ms", "val_frac", "test_frac", "pbt_quantile"):
        value = getattr(s, name)
        assert value is None or math.isfinite(value)
    assert s.val_frac + s.test_frac < 0.9


def _run_cli(argv):
    from archgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


tokens = st.one_of(
    st.sampled_from(["--seed", "--trials", "--time-budget", "--max-latency-ms", "--threads", "--workers",
                     "--latency-batch", "--max-epochs", "--batch-size", "--epochs", "--lr", "--val-frac",
                     "--test-frac", "--patience", "--format", "--input", "--classes", "-n", "--max-macs",
                     "--max-params", "--growth", "--disable", "--init", "--strategy", "--objective", "--device",
                     "--storage", "--repeats", "--data", "--study", "-q", "--quiet", "--stacking"]),
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "3", "1e9", "1e-300", "0.5", "", " ", "x", "1,8,8",
                     "1,28,28", "0,0,0", "R1,R9", "json", "table", "cuda:7", "bohb", "digits", "idx:", "npz:/nope"]),
    st.text(alphabet=string.printable, max_size=8),
)


@EXAMPLES
@given(st.sampled_from(["generate", "cost", "export"]), st.lists(tokens, max_size=8))
def test_generate_cost_export_arguments_never_crash(tmp_path_factory, command, argv):
    # -n and the budgets are kept small by the token set: the property is about parsing.
    base = tmp_path_factory.getbasetemp()
    spec = base / "prop-spec2.json"
    if not spec.exists():
        spec.write_text(json.dumps({"schema_version": 1, "input_shape": [1, 8, 8], "num_classes": 10,
                                    "layers": [{"op": "conv", "filters": 4, "kernel": 3}]}))
    head = [command] if command == "generate" else [command, str(spec)]
    if command == "export":
        argv = [*argv, "--out", str(tmp_path_factory.mktemp("exp") / "m.json")]
    code, out, err = _run_cli([*head, *argv])
    if code == 0:
        return
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and len(lines[-1]) <= 400


@pytest.fixture(scope="module")
def stub_runs():
    """search and train stop right after their arguments were validated (nothing is trained)."""
    import archgen.search_run
    import archgen.training

    class Validated(BaseException):  # passes through the CLI's handlers
        pass

    saved = archgen.search_run.run_search, archgen.training.train

    def stop(*args, **kwargs):
        raise Validated

    archgen.search_run.run_search, archgen.training.train = stop, stop
    yield Validated
    archgen.search_run.run_search, archgen.training.train = saved


@EXAMPLES
@given(st.sampled_from(["search", "train"]), st.lists(tokens, max_size=8))
def test_search_and_train_arguments_never_crash(stub_runs, tmp_path_factory, command, argv):
    spec = tmp_path_factory.getbasetemp() / "prop-spec.json"
    if not spec.exists():
        spec.write_text(json.dumps({"schema_version": 1, "input_shape": [1, 8, 8], "num_classes": 10,
                                    "layers": [{"op": "conv", "filters": 4, "kernel": 3}]}))
    out = tmp_path_factory.mktemp("out") / "run"
    head = [command, str(spec)] if command == "train" else [command]
    try:
        code, _, err = _run_cli([*head, *argv, "--out", str(out)])
    except stub_runs:
        return  # the arguments were valid: the run would have started here
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and len(lines[-1]) <= 400
    assert not out.exists()

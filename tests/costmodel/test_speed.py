"""The machine's speed between chunks of calibration networks: anchors timed in every chunk
bring each chunk's times to the machine's median speed (costmodel.speed)."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest

import costmodel.measure as measure
import costmodel.speed as speed
import costmodel.timing as timing
from costmodel.profile import ModelProfile


def test_chunk_factors_bring_every_chunk_to_the_median_speed() -> None:
    # three chunks; the second ran 10% slow on both anchors, the third 20% fast on one of them
    anchors = [[1.0, 2.0], [1.1, 2.2], [0.8, 2.0]]
    factors = speed.chunk_factors(anchors)
    assert factors[0] == pytest.approx(1.0)
    assert factors[1] == pytest.approx(1 / 1.1)
    assert factors[2] == pytest.approx(math.sqrt(1 / 0.8))  # geometric mean over the anchors
    record = speed.speed_record(anchors, factors, [40, 40, 39])
    assert record["chunks"] == 3 and record["anchors"] == 2
    assert speed.network_factors(record) == pytest.approx([factors[0]] * 40 + [factors[1]] * 40 + [factors[2]] * 39,
                                                          abs=1e-6)
    assert record["spread"] == pytest.approx(max(factors) / min(factors), abs=1e-4)
    assert "moved 23%" in speed.describe(record)  # 1.118 / 0.909


@pytest.mark.parametrize("anchors", [[], [[1.0, 2.0]], [[1.0], [0.0]], [[1.0, 2.0], [1.0]], [[], []]])
def test_chunk_factors_leave_times_alone_without_two_usable_chunks(anchors: list) -> None:
    assert speed.chunk_factors(anchors) == [1.0] * len(anchors)
    assert speed.describe(speed.speed_record(anchors, [1.0] * len(anchors), [1] * len(anchors))) == ""
    # normalized, but by under 1%: nothing worth a line
    assert speed.describe(speed.speed_record([[1.0], [1.004]], [1.0, 0.996], [2, 2])) == ""


def test_chunks_are_of_near_equal_size() -> None:
    """44 networks (a search's quick calibration) in chunks of at most 40: two of 22, not 40 and
    a 4-network chunk whose anchors would run warmer than the big chunk's."""
    assert speed.chunk_sizes(44, 40) == [22, 22]
    assert speed.chunk_sizes(960, 40) == [40] * 24
    assert speed.chunk_sizes(81, 40) == [27, 27, 27]
    assert speed.chunk_sizes(7, 40) == [7] and speed.chunk_sizes(0, 40) == []
    assert [list(r) for r in speed.chunk_ranges(5, 3)] == [[0, 1, 2], [3, 4]]


def _fake_profiles(slow_chunk: int, slowdown: float):
    """profile_modules stand-in: every module measures 1 ms per layer and its layers' sum end to
    end, ``slowdown`` times that in the ``slow_chunk``-th call (a machine slowed for a while)."""
    calls = {"n": 0}

    def fake(pairs, device="cpu", threads=1, repeats=15, warmup=3, clock="auto", per_layer=True, warmup_s=0.0):
        f = slowdown if calls["n"] == slow_chunk else 1.0
        calls["n"] += 1
        out = []
        for module, x in pairs:
            from costmodel.geometry import trace_module

            geoms, _ = trace_module(module, x)
            layers = tuple(f * 1.0 for _ in geoms)
            out.append(ModelProfile(tuple(geoms), layers, tuple(0.0 for _ in geoms), sum(layers), 0.0, sum(layers),
                                    "cpu", threads, int(x.shape[0]), repeats, "thread",
                                    (sum(layers), 1.01 * sum(layers))))
        return out

    return fake


def test_a_chunk_measured_while_the_machine_was_slow_is_brought_back(monkeypatch) -> None:
    """Seven networks in chunks of three: the second chunk measured 1.5x slow (anchors
    included); its networks come out at the other chunks' speed, and the record says so."""
    from costmodel.netgen import random_plain_cnn

    monkeypatch.setattr(measure, "CHUNK", 3)
    monkeypatch.setattr(measure, "profile_modules", _fake_profiles(slow_chunk=1, slowdown=1.5))
    rng = random.Random(5)
    nets = [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(7)]
    record: dict[str, object] = {}
    rounds: list[list[float]] = []
    out = measure.measure_networks(nets, 1, "cpu", 1, 2, "auto", 0, lambda m: None, rounds, record)
    assert record["chunks"] == 3 and record["anchors"] == len(measure.ANCHOR_GEOMS)
    assert record["factors"] == pytest.approx([1.0, 1 / 1.5, 1.0], abs=1e-4)
    assert record["spread"] == pytest.approx(1.5, abs=1e-3)
    for (geoms, layers, e2e), rnd in zip(out, rounds):
        assert layers == pytest.approx([1.0] * len(geoms))  # the slow chunk's 1.5 ms layers at 1 ms
        assert e2e == pytest.approx(len(geoms)) and rnd == pytest.approx([len(geoms), 1.01 * len(geoms)])


def _count_models(monkeypatch, module, name: str) -> list[int]:
    """How many models each call of ``module.name`` (first argument: the models) timed together."""
    seen: list[int] = []
    real = getattr(module, name)

    def spy(models, *a, **k):
        seen.append(len(models))
        return real(models, *a, **k)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_calibration_records_the_speed_and_each_chunk_times_the_anchors(monkeypatch) -> None:
    from costmodel.calibration import fit_measurements, measure_calibration

    monkeypatch.setattr(measure, "CHUNK", 3)
    monkeypatch.setattr(measure, "WARMUP_S", 0.0)
    seen = _count_models(monkeypatch, measure, "profile_modules")
    from costmodel.netgen import random_plain_cnn

    rng = random.Random(2)
    nets = [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(5)]
    m = measure_calibration(batch_size=1, quick=True, networks=nets, repeats=2)
    assert seen == [3 + len(measure.ANCHOR_GEOMS), 2 + len(measure.ANCHOR_GEOMS)]
    rec = m.protocol[speed.PROTOCOL_KEY]
    assert rec["chunks"] == 2 and rec["sizes"] == [3, 2] and all(t > 0 for a in rec["anchor_ms"] for t in a)
    # the fit says how far the speed moved (here, or from a bundle's measurements file)
    said: list[str] = []
    slowed = dict(rec, factors=[1.0, 0.8], spread=1.25, normalized=True)
    fit_measurements(dataclasses.replace(m, protocol=dict(m.protocol, speed=slowed)), progress=said.append)
    assert any("speed moved 25% between chunks" in line for line in said)


def test_onnxruntime_calibration_times_the_anchors_in_every_chunk(monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import costmodel.ort as ort
    from costmodel.netgen import random_plain_cnn

    monkeypatch.setattr(timing, "CHUNK", 2)
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    sizes = _count_models(monkeypatch, ort, "time_networks")
    rng = random.Random(3)
    nets = [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(3)]
    record: dict[str, object] = {}
    out = ort.measure_networks(nets, 1, 1, 2, "auto", 0, lambda m: None, None, record)
    assert sizes[-2:] == [2 + len(measure.ANCHOR_GEOMS), 1 + len(measure.ANCHOR_GEOMS)]
    assert record["chunks"] == 2 and record["anchors"] == len(measure.ANCHOR_GEOMS)
    assert len(out) == 3 and all(e2e > 0 for _, _, e2e in out)


def test_a_bundle_times_the_anchors_in_every_chunk(tmp_path: Path, monkeypatch) -> None:
    """run.py (here in-process) times the bundle's anchors with each chunk and records the speed
    in the measurements' protocol, as a local calibration does."""
    import costmodel.runner as runner
    from costmodel.bundle import write_bundle
    from costmodel.netgen import random_plain_cnn

    rng = random.Random(4)
    nets = [random_plain_cnn(rng, max_macs=2_000_000) for _ in range(5)]
    folder = write_bundle(tmp_path / "b", nets, [], runtime="torch", batch_size=1, repeats=2)
    monkeypatch.setattr(timing, "CHUNK", 3)
    slow = {"n": 0}

    def fake_part(folder, bundle, key, entries, *args):
        """Every entry 1 ms a layer; the second chunk of networks (anchors included) 1.25x slow."""
        f = 1.0
        if key == "networks":
            slow["n"] += 1
            f = 1.25 if slow["n"] == 2 else 1.0
        return [([f] * len(g), [f * len(g), f * len(g) * 1.1]) for _, _, g in entries]

    monkeypatch.setattr(runner, "_measure_part", fake_part)
    doc = runner.measure_bundle(folder, warmup_s=0.0)
    rec = doc["protocol"][speed.PROTOCOL_KEY]
    assert rec["chunks"] == 2 and rec["sizes"] == [3, 2] and rec["anchors"] == len(measure.ANCHOR_GEOMS)
    # the anchors' median over two chunks is their mean: 1.125 ms a layer
    assert rec["factors"] == pytest.approx([1.125, 0.9], abs=1e-6)
    for net in doc["networks"]:  # each network's times carry its own chunk's factor
        assert net["layers_ms"] == pytest.approx([1.125] * len(net["geoms"]), rel=1e-5)
        assert net["e2e_ms"] == pytest.approx(1.125 * len(net["geoms"]), rel=1e-5)

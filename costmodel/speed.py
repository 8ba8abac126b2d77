"""The machine's speed while it measures, from anchor networks timed in every chunk.

A calibration measures its networks in chunks of ``timing.CHUNK``, a few seconds each. A shared
or throttled machine runs faster in some chunks than in others: on a 2-core cloud machine the
same three networks ran up to 20% apart between chunks a few seconds apart, and the same 120
networks measured in two passes agreed within 10% for only 53-82% of them
(docs/benchmarks.md). Every chunk therefore also times the same few anchor networks (the
same instances, in the same interleaved rounds); a chunk's speed factor is the geometric mean
over the anchors of their median time over all chunks divided by their time in that chunk, and
each network's times are multiplied by its chunk's factor: what the networks would have measured
with the machine at its median speed of the whole calibration. Standalone (the Python standard
library only), as a calibration bundle runs it next to ``timing.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# The speed record a calibration's protocol keeps (``speed_record``): how many anchors, the
# factors per chunk, and the largest factor over the smallest.
PROTOCOL_KEY = "speed"


def chunk_factors(anchor_ms: Sequence[Sequence[float]]) -> list[float]:
    """Per chunk, the factor that brings its times to the machine's median speed: ``anchor_ms[c][k]``
    is anchor k's time in chunk c. 1.0 for every chunk when there are no anchors, one chunk, or
    a time that is not above 0."""
    if len(anchor_ms) < 2 or not anchor_ms[0] or any(len(a) != len(anchor_ms[0]) for a in anchor_ms):
        return [1.0] * len(anchor_ms)
    if any(not (t > 0 and math.isfinite(t)) for a in anchor_ms for t in a):
        return [1.0] * len(anchor_ms)
    medians = [statistics.median(a[k] for a in anchor_ms) for k in range(len(anchor_ms[0]))]
    return [math.exp(statistics.fmean(math.log(m / t) for m, t in zip(medians, a))) for a in anchor_ms]


def scale_network(layers: Sequence[float], e2e: Sequence[float], factor: float) -> tuple[list[float], list[float]]:
    """A network's per-layer times and end-to-end samples at the median speed."""
    return [t * factor for t in layers], [t * factor for t in e2e]


def speed_record(anchor_ms: Sequence[Sequence[float]], factors: Sequence[float]) -> dict[str, object]:
    """What the protocol keeps of the speed normalization (``PROTOCOL_KEY``)."""
    spread = max(factors) / min(factors) if factors else 1.0
    return {"anchors": len(anchor_ms[0]) if anchor_ms else 0, "chunks": len(factors),
            "normalized": any(f != 1.0 for f in factors),
            "factors": [round(f, 4) for f in factors], "spread": round(spread, 4),
            "anchor_ms": [[round(t, 6) for t in a] for a in anchor_ms]}


def describe(record: dict[str, object] | None) -> str:
    """One line on how much the machine's speed moved between chunks while it measured."""
    if not record or not record.get("normalized"):
        return ""
    spread = float(record["spread"])  # type: ignore[arg-type]
    return (f"the machine's speed moved {100 * (spread - 1):.0f}% between chunks of networks "
            f"(anchor networks timed in each; times normalized to its median speed)")

"""The machine's speed while it measures, from anchor networks timed in every chunk.

A calibration measures its networks in chunks (``chunk_sizes``: about ``timing.CHUNK`` each), a
few seconds to a minute each. A shared or throttled machine runs faster in some chunks than in
others: on a 2-core cloud machine the anchors' times spanned 11-25% between the fastest and the
slowest chunk of one calibration, and two instances of the same network measured in different
chunks agreed within 10% for only 69-90% of 120 networks at batch 1 (docs/benchmarks.md, "A
machine that changes speed between chunks"). Every chunk therefore also times the same anchor
networks (the same architectures and weights, in the same interleaved rounds as the chunk's
networks); a chunk's speed factor is the geometric mean over the anchors of their median time
over all chunks divided by their time in that chunk, and each network's times (per layer, end to
end, every round) are multiplied by its chunk's factor: what they would have measured with the
machine at its median speed over the networks (92-98% of those instances then agree within 10%).
The micro-benchmarks and the drift reference, measured outside the chunks, are left as measured.
Standalone (the Python standard library only), as a calibration bundle runs it next to
``timing.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# The speed record a calibration's protocol keeps (``speed_record``): how many anchors, the
# factors per chunk, and the largest factor over the smallest.
PROTOCOL_KEY = "speed"


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """``n`` networks in ``ceil(n / chunk)`` chunks of near-equal size: none much smaller than
    the others, since how many models a chunk interleaves sets how warm each of them (anchors
    included) runs."""
    if n <= 0:
        return []
    k = -(-n // max(chunk, 1))
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def chunk_ranges(n: int, chunk: int) -> list[range]:
    """The index ranges of ``chunk_sizes(n, chunk)``, in order."""
    out, start = [], 0
    for size in chunk_sizes(n, chunk):
        out.append(range(start, start + size))
        start += size
    return out


def network_factors(record: dict[str, object]) -> list[float]:
    """Each network's factor, in measuring order, from a speed record (``speed_record``)."""
    sizes, factors = record.get("sizes") or [], record.get("factors") or []
    return [float(f) for size, f in zip(sizes, factors) for _ in range(int(size))]  # type: ignore[call-overload]


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


def normalize(timed: Sequence[tuple[Sequence[float], Sequence[float]]], anchor_ms: Sequence[Sequence[float]],
              sizes: Sequence[int]) -> tuple[list[tuple[list[float], list[float]]], dict[str, object]]:
    """Each network's ``(per-layer times, end-to-end samples)``, in measuring order, multiplied by
    its chunk's factor (chunks of ``sizes``; without anchors, 1.0), and the speed record."""
    factors = chunk_factors(anchor_ms) if anchor_ms else [1.0] * len(sizes)
    per_network = [f for size, f in zip(sizes, factors) for _ in range(size)]
    scaled = [([t * f for t in layers], [t * f for t in e2e]) for (layers, e2e), f in zip(timed, per_network)]
    return scaled, speed_record(anchor_ms, factors, sizes)


def speed_record(anchor_ms: Sequence[Sequence[float]], factors: Sequence[float],
                 sizes: Sequence[int]) -> dict[str, object]:
    """What the protocol keeps of the speed normalization (``PROTOCOL_KEY``): the anchors' times
    per chunk, each chunk's size and factor, and the largest factor over the smallest."""
    spread = max(factors) / min(factors) if factors else 1.0
    return {"anchors": len(anchor_ms[0]) if anchor_ms else 0, "chunks": len(factors), "sizes": list(sizes),
            "normalized": any(f != 1.0 for f in factors),
            "factors": [round(f, 6) for f in factors], "spread": round(spread, 4),
            "anchor_ms": [[round(t, 6) for t in a] for a in anchor_ms]}


def describe(record: dict[str, object] | None) -> str:
    """One line on how much the machine's speed moved between chunks while it measured (empty
    when nothing was normalized or it moved under 1%)."""
    if not record or not record.get("normalized") or float(record.get("spread", 1.0)) < 1.01:  # type: ignore[arg-type]
        return ""
    spread = float(record["spread"])  # type: ignore[arg-type]
    return (f"the machine's speed moved {100 * (spread - 1):.0f}% between chunks of networks "
            f"(anchor networks timed in each; times normalized to its median speed)")

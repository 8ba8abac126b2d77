"""How a layer's in-context time depends on the network around it, from ``bench_costmodel.py
--dump`` files (a diagnostic, not part of the model).

For every layer configuration measured in two or more calibration networks, the within-configuration
slope of ln(layer time) on ln(its network's end-to-end time), per op class (``beta``): 0.1 means a
layer runs 7% slower in a network twice as slow. Then a replay of the held-out networks with each
table-priced layer moved from its calibration networks' mean context to the network's own
estimated time (``t * exp(beta * (ln T - mean ln E))``, the total scaled by the new layer sum),
beside the model as fitted::

    python scripts/analyze_layer_context.py /tmp/cm/B1.b32t1.json /tmp/cm/P1.b1t1.json
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.calibration import fit_measurements  # noqa: E402
from costmodel.estimator import estimate  # noqa: E402
from costmodel.measurements import Measurements, geom_from_dict  # noqa: E402


def context_slopes(measured: Measurements) -> tuple[dict[str, float], dict[str, float]]:
    """Per op class the within-configuration slope, and per configuration the mean ln E of the
    calibration networks it was measured in."""
    by_key: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for geoms, layers, e2e in measured.networks:
        for g, t in zip(geoms, layers):
            if t > 0 and e2e > 0:
                by_key[g.config_key()].append((math.log(t), math.log(e2e), g.op))
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for rows in by_key.values():
        if len(rows) < 2:
            continue
        a = np.array([r[:2] for r in rows])
        a -= a.mean(axis=0)
        num[rows[0][2]] += float(a[:, 0] @ a[:, 1])
        den[rows[0][2]] += float(a[:, 1] @ a[:, 1])
    beta = {op: num[op] / den[op] for op in num if den[op] > 0}
    return beta, {k: float(np.mean([r[1] for r in rows])) for k, rows in by_key.items()}


def share_within(pred: list[float], meas: list[float], tol: float) -> float:
    return 100 * float(np.mean(np.abs(np.array(pred) / np.array(meas) - 1) <= tol))


def main(paths: list[str]) -> None:
    logging.disable(logging.INFO)
    for path in paths:
        dump = json.loads(Path(path).read_text())
        held, measured = dump["held_out"], Measurements.from_dict(dump["calibration"])
        beta, mean_ln_e = context_slopes(measured)
        profile = fit_measurements(measured)
        fitted, moved = [], []
        for geoms_d in held["geoms"]:
            geoms = [geom_from_dict(g, "held-out") for g in geoms_d]
            report = estimate(geoms, profile)
            total, est = report.total_est_ms, report.table["est_ms"].to_numpy()
            layer_sum = 0.0
            for g, e in zip(geoms, est):
                key = g.config_key()
                if key in profile.table and key in mean_ln_e:
                    e *= math.exp(beta.get(g.op, 0.0) * (math.log(total) - mean_ln_e[key]))
                layer_sum += e
            fitted.append(total)
            moved.append(total * layer_sum / float(est.sum()))
        ref = held["ref"]
        print(f"{Path(path).name}: beta " + ", ".join(f"{op} {b:+.3f}" for op, b in sorted(beta.items())))
        for name, pred in (("as fitted", fitted), ("table moved to the network's context", moved)):
            print(f"  {name}: within 10% {share_within(pred, ref, 0.10):.1f}%, within 5% "
                  f"{share_within(pred, ref, 0.05):.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])

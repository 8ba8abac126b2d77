"""The run report: Pareto front and best-so-far arithmetic, the HTML, missing files, the CLI."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archgen.errors import UserError
from archgen.plots import progress_curves
from archgen.report import PLOT_FILES, write_report
from archgen.rundata import best_so_far, load_run, pareto_front

T0 = pd.Timestamp("2026-11-26 09:00:00")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BEST_SPEC = "c5x16-p2-c5x32-p2-d64"


def _ts(seconds: float) -> str:
    return str(T0 + pd.Timedelta(seconds=seconds))


def make_run(root: Path, *, strategy: str = "hyperband", n_trials: int = 24, seed: int = 0) -> Path:
    """A complete synthetic run directory with hand-made numbers.

    The best completed trial is number 7 (val_acc 0.9712, est_ms 1.25); trial 2 was rejected
    before training; every fourth trial from 3 on (but 7) was pruned; trial 5 failed.
    """
    run = root / f"run-{strategy}"
    (run / "best").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, inter = [], []
    start_s = 0.0
    for number in range(n_trials):
        state, rejected, failure = "COMPLETE", "", ""
        if number == 2:
            state, rejected = "PRUNED", "over budget: est_ms 5.3 > 5.0"
        elif number == 5:
            state, failure = "FAIL", "diverged: loss nan at epoch 1"
        elif number % 4 == 3 and number != 7:
            state = "PRUNED"
        est_ms = round(0.4 + 0.15 * number + rng.uniform(0, 0.3), 3)
        epochs = {"COMPLETE": 9, "PRUNED": 3 if number % 8 == 3 else 1, "FAIL": 1}[state]
        if rejected:
            epochs = 0
        curve = [
            min(0.96, 0.6 + 0.3 * (1 - 0.6**e) + 0.02 * rng.standard_normal())
            for e in range(1, epochs + 1)
        ]
        val_acc = curve[-1] if curve and state != "FAIL" else float("nan")
        if number == 7:
            est_ms, curve[-1], val_acc = 1.25, 0.9712, 0.9712
        duration_s = 0.5 if rejected else 4.0 * epochs + 1.0
        rows.append(
            {
                "number": number,
                "state": state,
                "val_acc": val_acc,
                "est_ms": est_ms,
                "macs": 100_000 * (number + 1),
                "params": 5_000 + 100 * number,
                "epochs": epochs,
                "duration_s": duration_s,
                "datetime_start": _ts(start_s),
                "datetime_complete": _ts(start_s + duration_s),
                "spec_key": f"k{number:03d}",
                "spec_name": BEST_SPEC if number == 7 else f"c5x{8 + number}-p2-d64",
                "rejected": rejected,
                "failure": failure,
                "balance_cv_before": 0.5,
                "balance_cv_after": 0.2,
                "strategy": strategy,
                "params_lr": 10 ** rng.uniform(-4, -1),
                "params_base_filters": int(8 + number),
            }
        )
        inter += [{"number": number, "epoch": e + 1, "val_acc": a} for e, a in enumerate(curve)]
        start_s += duration_s
    pd.DataFrame(rows).to_csv(run / "trials.csv", index=False)
    pd.DataFrame(inter).to_csv(run / "intermediate.csv", index=False)
    (run / "config.yaml").write_text(
        f"strategy: {strategy}\ndata: digits\ntrials: {n_trials}\ntime_budget_s: 600\n"
        "objective: accuracy\nmax_latency_ms: 5.0\nlatency_batch: 1\nseed: 0\n"
        "storage: null\nstudy: s1\n"
    )
    layers = ["s1.conv1", "s1.pool1", "s2.conv1", "s2.pool1", "fc1", "classifier"]
    cost = pd.DataFrame(
        {
            "layer": layers,
            "op": ["conv", "pool", "conv", "pool", "dense", "dense"],
            "c_in": [1, 16, 16, 32, 1568, 64],
            "c_out": [16, 16, 32, 32, 64, 10],
            "kernel": [5, 2, 5, 2, 1, 1],
            "stride": [1, 2, 1, 2, 1, 1],
            "h_out": [28, 14, 14, 7, 1, 1],
            "w_out": [28, 14, 14, 7, 1, 1],
            "n_p": [784, 196, 196, 49, 1, 1],
            "n_f": [16, 16, 32, 32, 64, 10],
            "macs": [313600, 12544, 2508800, 6272, 100352, 640],
            "params": [416, 0, 12832, 0, 100416, 650],
            "acts": [12544, 3136, 6272, 1568, 64, 10],
            "bytes": [52000, 62720, 60000, 31360, 401920, 2856],
            "t_k_ms": [2e-5, 1e-6, 1.6e-4, 1e-6, 2e-3, 1e-4],
            "t_c_seed_ms": [0.25, 0.003, 1.0, 0.002, 0.128, 0.001],
            "est_ms": [0.30, 0.05, 0.62, 0.03, 0.20, 0.05],
            "meas_ms": [0.33, 0.04, 0.58, 0.03, 0.25, 0.04],
            "meas_iqr_ms": [0.02, 0.005, 0.04, 0.004, 0.03, 0.006],
        }
    )
    cost.to_csv(run / "best" / "cost.csv", index=False)
    (run / "test_metrics.json").write_text(
        json.dumps(
            {
                "test_acc": 0.9634,
                "test_loss": 0.1187,
                "n": 360,
                "trial_number": 7,
                "val_acc": 0.9712,
                "est_ms": 1.25,
                "meas_ms": 1.31,
                "spec_name": BEST_SPEC,
                "test_opened": 1,
                "refit": {"epochs": 9, "n_train": 1527},
            }
        )
    )
    return run


def trials_duration_s(run: Path) -> float:
    return float(pd.read_csv(run / "trials.csv")["duration_s"].sum())


def _images(html_text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    ]


# ------------------------------------------------------------------ pareto_front


def test_pareto_front_hand_computed():
    df = pd.DataFrame(
        [
            (0, "COMPLETE", 0.90, 1.0, ""),  # front: cheapest at its accuracy
            (1, "COMPLETE", 0.95, 2.0, ""),  # front
            (2, "COMPLETE", 0.93, 2.5, ""),  # dominated by 1 (slower, less accurate)
            (3, "COMPLETE", 0.97, 4.0, ""),  # front: most accurate
            (4, "PRUNED", 0.99, 0.5, ""),  # not completed: never on the front
            (5, "COMPLETE", 0.95, 2.0, ""),  # exact duplicate of 1: neither dominates, both stay
            (6, "COMPLETE", 0.90, 1.5, ""),  # dominated by 0 (same accuracy, slower)
            (7, "COMPLETE", 0.85, 1.0, ""),  # dominated by 0 (same cost, less accurate)
            (8, "COMPLETE", np.nan, 0.2, ""),  # no accuracy: ignored
            (9, "FAIL", np.nan, 0.3, ""),
            (10, "COMPLETE", 0.99, 0.1, "over budget: est_ms 0.1 > 0.05"),  # never trained
        ],
        columns=["number", "state", "val_acc", "est_ms", "rejected"],
    )
    front = pareto_front(df)
    assert front["number"].tolist() == [0, 1, 5, 3]
    assert front["est_ms"].tolist() == [1.0, 2.0, 2.0, 4.0]
    assert list(front.columns) == list(df.columns)
    # Other columns as the objectives: minimise macs, maximise val_acc.
    df["macs"] = [5, 1, 2, 3, 0, 1, 9, 9, 9, 9, 0]
    assert pareto_front(df, cost_col="macs")["number"].tolist() == [1, 5, 3]


def test_pareto_front_names_a_missing_column():
    with pytest.raises(UserError, match="meas_ms"):
        pareto_front(pd.DataFrame({"val_acc": [0.5]}), cost_col="meas_ms")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=0, max_size=25))
def test_pareto_front_matches_brute_force(points):
    df = pd.DataFrame(
        {
            "number": range(len(points)),
            "state": "COMPLETE",
            "val_acc": [a / 6 for a, _ in points],
            "est_ms": [float(c) for _, c in points],
        }
    )
    want = set()
    for i, (a, c) in enumerate(points):
        dominated = any(
            a2 >= a and c2 <= c and (a2 > a or c2 < c)
            for j, (a2, c2) in enumerate(points)
            if j != i
        )
        if not dominated:
            want.add(i)
    front = pareto_front(df)
    assert set(front["number"]) == want
    assert front["est_ms"].is_monotonic_increasing
    assert front["val_acc"].is_monotonic_increasing  # along a front, paying more buys accuracy


# ------------------------------------------------------------------ best_so_far


def test_best_so_far_uses_completed_trials_in_completion_order():
    df = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "FAIL"],
            "val_acc": [0.80, 0.99, 0.75, 0.90, np.nan],
            "datetime_start": [_ts(2), _ts(2), _ts(12), _ts(7), _ts(30)],
            "datetime_complete": [_ts(12), _ts(7), _ts(32), _ts(27), _ts(31)],
            "duration_s": [10, 5, 20, 20, 1],
        }
    )
    got = best_so_far(df)
    assert list(got.columns) == ["time_s", "best_val_acc"]
    # Origin: the first start of any trial (t=2 s); trial 3 finishes before trial 2.
    assert got["time_s"].tolist() == [10.0, 25.0, 30.0]
    assert got["best_val_acc"].tolist() == [0.80, 0.90, 0.90]


def test_best_so_far_without_datetimes_assumes_sequential_trials():
    df = pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": ["COMPLETE", "PRUNED", "COMPLETE"],
            "val_acc": [0.7, 0.9, 0.8],
            "duration_s": [10.0, 5.0, 20.0],
        }
    )
    got = best_so_far(df)
    assert got["time_s"].tolist() == [10.0, 35.0]
    assert got["best_val_acc"].tolist() == [0.7, 0.8]
    # A missing datetime_complete falls back to start + duration.
    df["datetime_start"] = [_ts(0), _ts(10), _ts(15)]
    df["datetime_complete"] = [_ts(10), _ts(15), None]
    assert best_so_far(df)["time_s"].tolist() == [10.0, 35.0]
    with pytest.raises(UserError, match="duration_s"):
        best_so_far(df.drop(columns=["duration_s", "datetime_start", "datetime_complete"]))


# ------------------------------------------------------------------ the report


def test_report_has_summary_numbers_tables_and_four_plots(tmp_path):
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    text = out.read_text()
    # Summary: strategy, data, trials by state, best val_acc, test accuracy and latency, spec name.
    assert "hyperband" in text and "digits" in text
    assert "24 trials: COMPLETE 17 · FAIL 1 · PRUNED 6 (rejected before training: 1)" in text
    assert "0.9712 (trial #7, c5x16-p2-c5x32-p2-d64)" in text
    assert "0.9634 on 360 test images" in text
    assert "estimated 1.250 ms, measured 1.310 ms (batch size 1)" in text
    assert "refit on train + validation (1527 images, 9 epochs)" in text
    # Four embedded PNGs, each identical to the PNG saved next to the report.
    images = _images(text)
    assert len(images) == 4
    saved = [(run / name).read_bytes() for name in PLOT_FILES.values()]
    assert images == saved
    assert all(img.startswith(PNG_MAGIC) for img in images)
    # Tables: top-10 trials (best first) and the per-layer cost with its totals row.
    top = text.split("Top 10 trials")[1]
    assert top.count("</tr>") == 11  # header + 10 trials
    assert re.search(r"<td>7</td>\s*<td>0\.9712</td>\s*<td>1\.250</td>", top)
    assert "s2.conv1" in text and "<td>total</td>" in text
    total_row = text.split("<td>total</td>")[1].split("</tr>")[0]
    # Sums over the six layers: MACs, est_ms 1.25 (= test_metrics' est_ms), meas_ms 1.27.
    assert re.findall(r"<td>([^<]+)</td>", total_row) == [
        "2,942,208",
        "114,314",
        "23,594",
        "610,856",
        "1.384",
        "1.250",
        "1.270",
    ]
    assert "params_base_filters" in text
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


def test_report_escapes_strings_from_the_run(tmp_path):
    run = make_run(tmp_path)
    trials = pd.read_csv(run / "trials.csv")
    trials.loc[trials["number"] == 7, "spec_name"] = "<script>alert(1)</script>"
    trials.to_csv(run / "trials.csv", index=False)
    (run / "config.yaml").write_text("strategy: '<b>bold</b>'\ndata: 'idx:a&b'\n")
    text = write_report(run).read_text()
    assert "<script>" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "idx:a&amp;b" in text


def test_report_without_optional_files_says_what_is_missing(tmp_path):
    run = make_run(tmp_path)
    write_report(run)  # leaves PNGs behind that the next report must not pretend are current
    for name in ("intermediate.csv", "test_metrics.json", "best/cost.csv", "config.yaml"):
        (run / name).unlink()
    text = write_report(run).read_text()
    assert "No intermediate.csv yet" in text
    assert "No best/cost.csv yet" in text
    assert "No test_metrics.json yet" in text
    assert "No config.yaml" in text
    assert "Test accuracy</td><td>not evaluated yet" in text
    assert "trial #7 (highest val_acc so far)" in text
    assert len(_images(text)) == 2  # progress and Pareto still drawn from trials.csv
    assert (run / PLOT_FILES["progress"]).is_file() and (run / PLOT_FILES["pareto"]).is_file()
    assert not (run / PLOT_FILES["layers"]).exists() and not (run / PLOT_FILES["rungs"]).exists()


def test_report_of_a_run_with_no_completed_trial_yet(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    pd.DataFrame(
        {
            "number": [0],
            "state": ["RUNNING"],
            "val_acc": [np.nan],
            "est_ms": [0.8],
            "datetime_start": [_ts(0)],
            "datetime_complete": [None],
            "rejected": [None],
        }
    ).to_csv(run / "trials.csv", index=False)
    text = write_report(run).read_text()
    assert "1 trials: RUNNING 1" in text
    assert "no completed trial yet" in text.lower()
    assert _images(text) == []


def test_progress_has_one_curve_per_strategy(tmp_path):
    a = make_run(tmp_path, strategy="hyperband", seed=1)
    b = make_run(tmp_path, strategy="random", n_trials=10, seed=2)
    curves = progress_curves([load_run(a), load_run(b)])
    assert [c.label for c in curves] == ["hyperband (run-hyperband)", "random (run-random)"]
    hb, rnd = curves
    assert len(hb.points) == 17 and len(rnd.points) == 7  # completed trials of each run
    assert hb.best["best_val_acc"].iloc[-1] == 0.9712 == rnd.best["best_val_acc"].iloc[-1]
    # Trials run back to back: 17 completed x 37 s, 3 pruned at epoch 3 x 13 s, 2 pruned at
    # epoch 1 and 1 failed x 5 s, 1 rejected x 0.5 s.
    assert hb.end_s == 17 * 37 + 3 * 13 + 3 * 5 + 0.5 == trials_duration_s(a)
    # One run holding two strategies (a resumed study): two curves, each on its own clock.
    trials = pd.read_csv(a / "trials.csv")
    trials.loc[trials["number"] >= 12, "strategy"] = "tpe"
    trials.to_csv(a / "trials.csv", index=False)
    curves = progress_curves([load_run(a)])
    assert [c.label for c in curves] == ["hyperband", "tpe"]
    tpe_first = trials.loc[trials["number"] == 12, "duration_s"].item()
    assert curves[1].best["time_s"].iloc[0] == tpe_first
    text = write_report(a, extra_runs=[b]).read_text()
    assert len(_images(text)) == 4
    with pytest.raises(UserError, match="nowhere"):
        write_report(a, extra_runs=[tmp_path / "nowhere"])


def test_pareto_mode_lists_pareto_csv(tmp_path):
    run = make_run(tmp_path)
    trials = pd.read_csv(run / "trials.csv")
    pareto_front(trials).head(2).to_csv(run / "pareto.csv", index=False)
    text = write_report(run).read_text()
    section = text.split("Pareto front (pareto.csv)")[1].split("<h2>")[0]
    assert section.count("</tr>") == 3  # header + the two rows of pareto.csv


@pytest.mark.parametrize("content", [None, "", "a,b\n1,2\n"])
def test_not_a_run_directory_is_a_user_error(tmp_path, content):
    if content is not None:
        (tmp_path / "trials.csv").write_text(content)
    with pytest.raises(UserError, match=re.escape(str(tmp_path))):
        write_report(tmp_path)


# ------------------------------------------------------------------ CLI


def test_cli_report_prints_the_path(run_cli, tmp_path):
    run = make_run(tmp_path)
    code, out, err = run_cli("report", str(run))
    assert code == 0, err
    assert out.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()


def test_cli_report_on_a_non_run_directory_exits_2_with_one_line(capsys, tmp_path):
    from archgen.cli import main

    code = main(["report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert (
        err.startswith("archgen report: error: ") and str(tmp_path) in err and "trials.csv" in err
    )
    assert not (tmp_path / "report.html").exists()


def test_report_module_needs_neither_torch_nor_pyplot():
    # Reports render on machines without a display or a torch install; pyplot's global state
    # would also leak figures across the search loop's calls.
    import subprocess
    import sys

    code = "import sys, archgen.report; print('torch' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

"""Randomized kill/restart rounds of a multi-worker PostgreSQL search (issue "Hardening",
acceptance point 2).

A fresh study on PostgreSQL; for each of ``--rounds`` rounds the same ``archgen search`` command
(``--workers 4``, a tiny space on ``digits``) starts in its own session and is SIGKILLed at a
random point, in one of four ways:

* ``worker``: one worker process (the search must carry on: the trial is failed and retried),
  then the whole group at the round's end if it is still running;
* ``group``: the whole process group (main process and workers);
* ``main``: the main process only (its workers must stop after their trial);
* ``finalize``: the whole group shortly after finalize starts writing the run directory
  (``trials.csv`` rewritten). Chosen at random once the study has all its trials, and forced at
  three quarters of the rounds if it has not (that run first completes the study, so its first
  finalize, before ``test_metrics.json`` exists, is the one killed).

A kill while the study still needs trials lands during start-up, in the first trial of the
run's workers, or in full flow (see PHASES). Before the rounds, a second copy of the command
is started next to a running one: it must refuse with one line and exit 2. Between rounds the
study is checked (no trial finished twice, never more than ``--trials`` finished, ``trials.csv``
unique). At the end the command runs to completion and the run is
checked: finished trials == ``--trials``, none RUNNING or WAITING, each lost trial failed and
retried once (``retry_of``) with its parameters, no retry lineage finished twice, ``trials.csv``
lists every trial once, and ``best/spec.json`` and ``test_metrics.json`` are those of the trial
``archgen.selection.select_best`` picks from the study.

    python scripts/fault_rounds.py --rounds 20 --seed 0 --json-out /tmp/fault_rounds_20.json

Exit status 0 when every invariant holds, 1 otherwise. Needs PostgreSQL (``--storage``, default
$ARCHGEN_TEST_PG or postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DEFAULT_PG = os.environ.get("ARCHGEN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# The tiny space of tests/archgen/test_search_scaleout.py (FAST_SPACE): a trial takes about a second.
TINY_SPACE = {
    "stages": 1, "convs_per_stage": 1, "base_filters": [8, 16], "dense_layers": 0,
    "batchnorm": False, "stacking": False, "batch_size": 256,
}
# Kinds of kill while the study still needs trials, and once it has them all (the command then
# only starts up and finalizes, in a few seconds: a worker kill is impossible, a finalize kill likely).
KINDS_RUNNING = {"worker": 0.45, "group": 0.35, "main": 0.2}
KINDS_COMPLETE = {"finalize": 0.5, "group": 0.3, "main": 0.2}


# -- processes (no psutil: /proc) ---------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process, None when gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] == pid and st[1] not in ("Z", "X"):
                out.append(int(entry.name))
    return sorted(out)


def worker_pids(main_pid: int) -> list[int]:
    """The search's worker processes (multiprocessing spawn children, not its resource tracker)."""
    return [p for p in children(main_pid) if "--multiprocessing-fork" in _cmdline(p)]


class Started:
    """Every process this script started or saw as a worker, by (pid, start time), so that the
    clean-up kills only those."""

    def __init__(self) -> None:
        self.procs: dict[int, str] = {}

    def add(self, pid: int) -> None:
        st = _stat(pid)
        if st is not None:
            self.procs[pid] = st[2]

    def alive(self) -> list[int]:
        out = []
        for pid, start in self.procs.items():
            st = _stat(pid)
            if st is not None and st[2] == start and st[1] not in ("Z", "X"):
                out.append(pid)
        return out

    def kill_all(self) -> None:
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the study ----------------------------------------------------------------------------------


def load(study_name: str, url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name, storage=url)


def study_exists(study_name: str, url: str) -> bool:

    try:
        load(study_name, url)
    except KeyError:
        return False
    except Exception:  # tables not created yet
        return False
    return True


def check_study(study: Any, n_trials: int, final: bool) -> dict[str, Any]:
    """The study's invariants; ``final``: also those that hold only once a run has finished."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in trials if t.state in done_states
                or (t.state == TrialState.FAIL and "failure" in t.user_attrs)]
    lost = [t for t in trials if t.state == TrialState.FAIL and "failure" not in t.user_attrs]
    retries = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    problems: list[str] = []
    duplicates = 0
    # A retry finished while the trial it retries finished too: the same trial counted twice.
    for r in retries:
        original = by_number.get(r.user_attrs["retry_of"])
        if original is None:
            problems.append(f"trial {r.number} retries trial {r.user_attrs['retry_of']}, which does not exist")
            continue
        if r.state in done_states and original.state in done_states:
            duplicates += 1
            problems.append(f"trial {original.number} finished and so did its retry {r.number}")
        if original.state != TrialState.FAIL and original.state != TrialState.RUNNING:
            problems.append(f"trial {r.number} retries trial {original.number}, which is {original.state.name}")
        if r.state in done_states or r.state == TrialState.RUNNING:
            mismatched = {k for k, v in original.params.items() if r.params.get(k, v) != v}
            if r.state in done_states:
                mismatched |= {k for k in original.params if k not in r.params}
            if mismatched:
                problems.append(f"retry {r.number} of trial {original.number} changed {sorted(mismatched)}")
    lineage = Counter(r.user_attrs["retry_of"] for r in retries)
    for number, count in lineage.items():
        if count > 1:
            duplicates += count - 1
            problems.append(f"trial {number} was retried {count} times")
    if len(finished) > n_trials:
        problems.append(f"{len(finished)} trials finished, more than --trials {n_trials}")
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    # A lost trial is retried once, unless it was itself a retry or a surplus trial.
    retried_numbers = set(lineage)
    unretried = [t.number for t in lost if t.user_attrs.get("retry_of") is None
                 and not str(t.user_attrs.get("lost", "")).startswith("surplus")
                 and t.number not in retried_numbers]
    if final:
        if len(finished) != n_trials:
            problems.append(f"{len(finished)} trials finished, expected {n_trials}")
        if running:
            problems.append(f"trials left RUNNING: {running}")
        if waiting:
            problems.append(f"trials left WAITING: {waiting}")
        if unretried:
            problems.append(f"lost trials never retried: {unretried}")
    return {
        "trials": len(trials),
        "finished": len(finished),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed_clean": sum(t.state == TrialState.FAIL and "failure" in t.user_attrs for t in trials),
        "lost": len(lost),
        "lost_retried": sum(t.number in retried_numbers for t in lost),
        "lost_retries": sum(t.user_attrs.get("retry_of") is not None for t in lost),
        "retries": len(retries),
        "retries_finished": sum(r.state in done_states for r in retries),
        "lost_unretried": len(unretried),
        "duplicates": duplicates,
        "running": len(running),
        "waiting": len(waiting),
        "problems": problems,
    }


def check_run_dir(run_dir: Path, study: Any) -> dict[str, Any]:
    """trials.csv lists every trial once; best/ and test_metrics.json are the selected trial's."""
    import pandas as pd
    from optuna.trial import TrialState

    from archgen.data import load_dataset
    from archgen.selection import select_best
    from archgen.spec import ArchSpec

    problems: list[str] = []
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    table = pd.read_csv(run_dir / "trials.csv")
    numbers = list(table["number"])
    if len(numbers) != len(set(numbers)):
        problems.append("trials.csv lists a trial more than once")
    if sorted(numbers) != sorted(t.number for t in trials):
        problems.append(f"trials.csv has trials {sorted(set(numbers) ^ {t.number for t in trials})} wrong")
    spec = ArchSpec.from_dict(json.loads((run_dir / "best" / "spec.json").read_text()))
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    # The rule the search selected with (se1 by default) on its validation split (digits' default
    # fractions: the same size for every split seed).
    n_val = len(load_dataset("digits").val.y)
    best = select_best(study, SimpleNamespace(max_latency_ms=None, selection=metrics.get("selection", "best")),
                       n_val=n_val)
    best_matches = (best is not None and spec.key() == best.user_attrs["spec_key"]
                    and metrics["trial_number"] == best.number and metrics["spec_key"] == spec.key())
    if not best_matches:
        problems.append(f"best/ holds {spec.key()} (test_metrics trial {metrics.get('trial_number')}); "
                        f"select_best picks trial {best and best.number} ({best and best.user_attrs['spec_key']})")
    return {"best_trial": best.number if best else None, "best_matches": best_matches, "problems": problems}


def trials_csv_unique(run_dir: Path) -> bool:
    import pandas as pd

    path = run_dir / "trials.csv"
    if not path.exists():
        return True
    numbers = list(pd.read_csv(path)["number"])
    return len(numbers) == len(set(numbers))


# -- rounds -------------------------------------------------------------------------------------


def command(args: argparse.Namespace, study_name: str, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "archgen", "search", "--data", "digits", "--strategy", "random",
            "--trials", str(args.trials), "--workers", str(args.workers), "--storage", args.storage,
            "--study", study_name, "--out", str(out), "--max-epochs", str(args.max_epochs),
            "--config", str(cfg), "--no-calibrate", "-q"]


def start(cmd: list[str], log_path: Path, env: dict[str, str], started: Started) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    started.add(proc.pid)
    return proc


def wait_until(proc: subprocess.Popen, t_end: float, started: Started) -> bool:
    """Sleep until ``t_end`` or the process exits (True); notes its workers meanwhile."""
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            return True
        for pid in worker_pids(proc.pid):
            if pid not in started.procs:
                started.add(pid)
        time.sleep(0.05)
    return proc.poll() is not None


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Probe:
    """Counts of the study's trials straight from the database (cheap enough to poll)."""

    def __init__(self, url: str, study_name: str) -> None:
        import sqlalchemy

        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        self.study_name = study_name

    def counts(self) -> tuple[int, int]:
        """(trials started, trials finished); zeros before the study exists. Enqueued retries
        (WAITING) do not count as started."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(self._text(
                    "SELECT t.state::text, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = :n GROUP BY t.state"), {"n": self.study_name}).all()
        except Exception:  # tables not created yet, or the server restarting
            return 0, 0
        by_state = dict(rows)
        started = sum(n for state, n in by_state.items() if state != "WAITING")
        return started, by_state.get("COMPLETE", 0) + by_state.get("PRUNED", 0)


FINALIZE_WAIT_S = 120.0

# Lines counted in the output of every run of the command (the summary's "log").
LOG_NEEDLES = {
    "worker_killed_reports": "was killed by SIGKILL",
    "dead_worker_trials_failed": "died; it is failed and retried",
    "never_started_trials_failed": "its worker died before it started",
    "refused_concurrent": "another archgen search is running",
    "storage_reconnects": "reconnecting (up to",
    "tracebacks": "Traceback (most recent call last)",
}


# When a kill lands while the study still needs trials: during start-up (main process preparing,
# workers importing), in the first trial of this run's workers (a few seconds on a busy machine),
# or in full flow (trials of a fraction of a second: ask, tell and the storage writes between).
PHASES = {"startup": 0.3, "first_trial": 0.35, "flow": 0.35}


def one_round(i: int, kind: str, rng: random.Random, args: argparse.Namespace, cmd: list[str], out: Path,
              env: dict[str, str], started: Started, log_path: Path, complete: bool,
              probe: Probe) -> dict[str, Any]:
    """One start and SIGKILL. ``complete``: the study has all its trials, so the command only
    starts up and finalizes (a few seconds): the kill lands in that window."""
    t0 = time.monotonic()
    csv = out / "trials.csv"
    csv_before = csv.stat().st_mtime if csv.exists() else 0.0
    base_trials, base_finished = probe.counts()
    proc = start(cmd, log_path, env, started)
    phase = "finalize" if kind == "finalize" else ("complete" if complete else rng.choices(
        list(PHASES), list(PHASES.values()))[0])
    rec: dict[str, Any] = {"round": i, "kind": kind, "phase": phase, "kills": []}
    # A phase never reached: kill anyway (a finalize kill may first have to finish the study).
    give_up = t0 + args.max_round_s + (FINALIZE_WAIT_S if kind == "finalize" else 15)

    def note_workers() -> None:
        for pid in worker_pids(proc.pid):
            if pid not in started.procs:
                started.add(pid)

    def wait_for(reached: Any) -> bool:
        while time.monotonic() < give_up and proc.poll() is None:
            note_workers()
            if reached():
                return True
            time.sleep(0.05)
        return False

    if phase == "startup":
        t_kill = t0 + rng.uniform(1.0, args.min_round_s)
    elif phase == "complete":
        t_kill = t0 + rng.uniform(0.5, 4.0)
    elif phase == "first_trial":
        wait_for(lambda: probe.counts()[0] > base_trials)
        t_kill = time.monotonic() + rng.uniform(0.0, 4.0)
    elif phase == "flow":
        wait_for(lambda: probe.counts()[1] > base_finished)
        t_kill = time.monotonic() + rng.uniform(0.0, 2.0)
    else:  # finalize: this run rewrote trials.csv
        reached = wait_for(lambda: csv.exists() and csv.stat().st_mtime > csv_before)
        rec["phase"] = "finalize" if reached else "finalize (not reached)"
        t_kill = time.monotonic() + (rng.uniform(0.0, args.finalize_delay_s) if reached else 0.0)
    exited = wait_until(proc, t_kill, started)
    if not exited:
        if kind == "worker":
            pids = worker_pids(proc.pid)
            if pids:
                victim = rng.choice(pids)
                started.add(victim)
                os.kill(victim, signal.SIGKILL)
                rec["kills"].append({"what": "worker", "pid": victim, "t_s": round(time.monotonic() - t0, 2)})
            # The search carries on without it; the round ends a few seconds later.
            if not wait_until(proc, time.monotonic() + rng.uniform(1.0, 3.0), started):
                kill_group(proc)
                rec["kills"].append({"what": "group (round end)", "t_s": round(time.monotonic() - t0, 2)})
        elif kind == "main":
            os.kill(proc.pid, signal.SIGKILL)
            rec["kills"].append({"what": "main", "t_s": round(time.monotonic() - t0, 2)})
        else:
            kill_group(proc)
            rec["kills"].append({"what": kind, "t_s": round(time.monotonic() - t0, 2)})
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = proc.wait(timeout=30)
    rec["rc"] = rc
    rec["elapsed_s"] = round(time.monotonic() - t0, 2)
    if rc not in (0, -signal.SIGKILL):
        rec["unexpected_exit"] = True
    return rec


def concurrent_check(cmd: list[str], env: dict[str, str], started: Started, log_path: Path) -> dict[str, Any]:
    """A second copy of a running command (its workers started: it holds the run directory):
    refused with one line, exit 2. The first is then SIGKILLed (a group kill)."""
    proc = start(cmd, log_path, env, started)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and proc.poll() is None and not worker_pids(proc.pid):
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    first_running = proc.poll() is None
    with open(log_path, "a") as fh:
        fh.write(second.stdout + second.stderr)
    kill_group(proc)
    proc.wait(timeout=30)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    ok = second.returncode == 2 and len(lines) == 1 and "another archgen search is running" in lines[0]
    return {"rc": second.returncode, "stderr": second.stderr.strip()[-500:], "ok": ok or not first_running,
            "checked": first_running, "elapsed_s": round(time.monotonic() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=None,
                    help="trials of the study (default 12 per round + 10: it fills up over the rounds)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=2)
    ap.add_argument("--storage", default=DEFAULT_PG)
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--min-round-s", type=float, default=10.0,
                    help="a start-up kill lands within this many seconds of the start")
    ap.add_argument("--max-round-s", type=float, default=20.0,
                    help="waits for a phase give up this many seconds (+15) after the start")
    ap.add_argument("--finalize-delay-s", type=float, default=2.0,
                    help="a finalize kill lands up to this long after trials.csv is rewritten")
    ap.add_argument("--no-concurrent-check", action="store_true")
    ap.add_argument("--keep-study", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.trials is None:
        args.trials = 12 * args.rounds + 10

    import optuna

    rng = random.Random(args.seed)
    study_name = f"fault-rounds-{args.seed}-{uuid.uuid4().hex[:8]}"
    tmp = tempfile.TemporaryDirectory(prefix="fault_rounds_") if args.out is None else None
    work = Path(args.out or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    out = work / "run"
    cfg = work / "tiny.yaml"
    cfg.write_text(json.dumps({"space": TINY_SPACE}))  # JSON is YAML
    log_path = work / "search.log"
    env = {**os.environ, "ARCHGEN_CACHE": str(work / "cache")}
    cmd = command(args, study_name, out, cfg)
    started = Started()
    probe = Probe(args.storage, study_name)
    t_start = time.monotonic()
    rounds: list[dict[str, Any]] = []
    problems: list[str] = []
    kills: Counter = Counter()
    max_duplicates = 0
    concurrent = None
    summary: dict[str, Any] = {}
    complete = False
    try:
        if not args.no_concurrent_check:
            concurrent = concurrent_check(cmd, env, started, log_path)
            kills["group"] += 1
            print(f"concurrent run: rc={concurrent['rc']} ok={concurrent['ok']} {concurrent['stderr']!r}",
                  flush=True)
            if not concurrent["ok"]:
                problems.append(f"a second concurrent run was not refused cleanly: {concurrent}")
        for i in range(args.rounds):
            kinds = KINDS_COMPLETE if complete else KINDS_RUNNING
            kind = rng.choices(list(kinds), list(kinds.values()))[0]
            if not complete and i == (3 * args.rounds) // 4:
                kind = "finalize"  # this run completes the study and is killed in its first finalize
            rec = one_round(i, kind, rng, args, cmd, out, env, started, log_path, complete, probe)
            for k in rec["kills"]:
                kills[k["what"].split(" ")[0]] += 1
            if rec.get("unexpected_exit"):
                problems.append(f"round {i}: the search exited with {rec['rc']} (see {log_path})")
            if study_exists(study_name, args.storage):
                state = check_study(load(study_name, args.storage), args.trials, final=False)
                rec["study"] = {k: v for k, v in state.items() if k != "problems"}
                complete = state["finished"] >= args.trials and state["running"] == 0
                max_duplicates = max(max_duplicates, state["duplicates"])
                problems += [f"round {i}: {p}" for p in state["problems"]]
            if not trials_csv_unique(out):
                problems.append(f"round {i}: trials.csv lists a trial twice")
            rounds.append(rec)
            print(f"round {i:2d} {kind:8s} {rec['phase']:12s} rc={rec['rc']:4d} {rec['elapsed_s']:5.1f}s "
                  f"kills={[k['what'] for k in rec['kills']]} study={rec.get('study', {}).get('finished', 0)}"
                  f"/{args.trials} finished, {rec.get('study', {}).get('lost', 0)} lost, "
                  f"{rec.get('study', {}).get('running', 0)} running", flush=True)

        t_final = time.monotonic()
        final = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        final_s = time.monotonic() - t_final
        with open(log_path, "a") as fh:
            fh.write(final.stdout + final.stderr)
        if final.returncode != 0:
            problems.append(f"the final run exited with {final.returncode}: {final.stderr.strip()[-800:]}")
        log_text = log_path.read_text(errors="replace")
        log_counts = {name: log_text.count(needle) for name, needle in LOG_NEEDLES.items()}
        if log_counts["tracebacks"]:
            problems.append(f"{log_counts['tracebacks']} traceback(s) in the searches' output (see {log_path})")
        study = load(study_name, args.storage)
        state = check_study(study, args.trials, final=True)
        problems += [f"final: {p}" for p in state["problems"]]
        run = {"best_matches": False, "problems": []}
        if final.returncode == 0:
            run = check_run_dir(out, study)
            problems += [f"final: {p}" for p in run["problems"]]
        summary = {
            "rounds": args.rounds,
            "seed": args.seed,
            "workers": args.workers,
            "trials": args.trials,
            "study": study_name,
            "kills": dict(kills),
            "kills_total": sum(kills.values()),
            "finished": state["finished"],
            "complete": state["complete"],
            "pruned": state["pruned"],
            "failed_clean": state["failed_clean"],
            "lost": state["lost"],
            "lost_and_retried": state["lost_retried"],
            "lost_retries": state["lost_retries"],
            "lost_unretried": state["lost_unretried"],
            "retries": state["retries"],
            "retries_finished": state["retries_finished"],
            "log": log_counts,
            "duplicates": max(max_duplicates, state["duplicates"]),
            "running_left": state["running"],
            "waiting_left": state["waiting"],
            "best_trial": run.get("best_trial"),
            "best_matches": run["best_matches"],
            "concurrent_run_refused": (concurrent["ok"] and concurrent["checked"]) if concurrent else None,
            "final_rc": final.returncode,
            "final_run_s": round(final_s, 1),
            "wall_s": round(time.monotonic() - t_start, 1),
            "problems": problems,
            "ok": not problems,
            "command": " ".join(cmd),
            "per_round": rounds,
        }
    finally:
        started.kill_all()
        probe.engine.dispose()
        if not args.keep_study:
            try:
                optuna.delete_study(study_name=study_name, storage=args.storage)
            except Exception:  # never created
                pass
        if tmp is not None:
            tmp.cleanup()
    brief = {k: v for k, v in summary.items() if k not in ("per_round", "command")}
    print(json.dumps(brief, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())

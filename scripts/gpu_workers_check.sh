#!/usr/bin/env bash
# One-shot check of workers on a GPU (issue 13, acceptance 5) on a borrowed GPU machine: the same
# bohb search on MNIST-10k with `--device cuda` and the default workers (auto: several share the
# GPU), then with `--workers 1`, one after the other, while nvidia-smi samples the GPU's
# utilisation every second. Reports trained epochs per minute and the mean utilisation of each.
#
#     OUT=/some/dir DATA=.data/mnist10k BUDGET=120 bash scripts/gpu_workers_check.sh
#
# Needs torch with CUDA; optuna may come as wheels in .whl/ (as for gpu_search_check.sh).
# Writes env.txt, {auto,w1}_trials.csv, {auto,w1}_util.csv, {auto,w1}_test_metrics.json, SUMMARY.txt.
set -u
: "${OUT:?set OUT to the folder for the results}"
DATA=${DATA:-.data/mnist10k}
BUDGET=${BUDGET:-120}
mkdir -p "$OUT"
START=$(date +%s)
source "$(dirname "$0")/gpu_lib.sh"
LOGDIR=/tmp

use_wheels
export PYTHONUNBUFFERED=1 ARCHGEN_CACHE=/tmp/archgen-cache
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    lscpu | grep -E 'Model name|^CPU\(s\)' 2>&1
} >"$OUT/env.txt" 2>&1
# Calibrate first (quick, cached) so that neither search pays for it.
run_step calibrate 300 python3 -m archgen calibrate --device cuda --batch-size 1 --quick

for arm in auto w1; do
    workers=$([ "$arm" = auto ] && echo auto || echo 1)
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
        >"$OUT/${arm}_util.csv" 2>/dev/null &
    smi=$!
    run_step "search_$arm" $(( BUDGET + 240 )) python3 -m archgen search --device cuda --workers "$workers" \
        --data "idx:$DATA" --strategy bohb --time-budget "$BUDGET" --out "/tmp/run_$arm" --seed 0 -q
    kill "$smi" 2>/dev/null
    cp "/tmp/run_$arm/trials.csv" "$OUT/${arm}_trials.csv" 2>/dev/null
    cp "/tmp/run_$arm/test_metrics.json" "$OUT/${arm}_test_metrics.json" 2>/dev/null
    python3 - "$arm" "/tmp/run_$arm" "$OUT/${arm}_util.csv" "$BUDGET" >>"$OUT/SUMMARY.txt" 2>&1 <<'EOF'
import json, statistics, sys
import pandas as pd
arm, run, util, budget = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
t = pd.read_csv(f"{run}/trials.csv")
m = json.load(open(f"{run}/test_metrics.json"))
u = [float(line.split(",")[1]) for line in open(util) if line.count(",") >= 2]
trained = t[t["epochs"] > 0]
print(f"{arm}: {len(trained)} trained trials, {int(trained['epochs'].sum())} epochs "
      f"({trained['epochs'].sum() / (budget / 60):.1f} per minute); GPU utilisation mean "
      f"{statistics.fmean(u) if u else float('nan'):.0f}% over {len(u)} samples; val {m['val_acc']:.4f} "
      f"test {m['test_acc']:.4f}")
EOF
done
summary "total: $(( $(date +%s) - START )) s"

#!/usr/bin/env bash
# One-shot CUDA check of the search (issue 5) on a borrowed GPU machine: the CUDA tests, then
# the same bohb search on MNIST-10k on the GPU and on one CPU core of the same machine, side by
# side (same wall-clock budget, each pinned to its own core).
#
#     OUT=/some/dir DATA=.data/mnist10k BUDGET=150 bash scripts/gpu_search_check.sh
#
# Needs torch with CUDA installed; optuna and its dependencies may come as wheels in .whl/
# (installed into /tmp/site); everything else from the working tree. Writes at most 7 files:
#   env.txt                         machine and library versions
#   pytest_cuda.txt                 every @pytest.mark.cuda test
#   {gpu,cpu}_test_metrics.json     the selected model of each search (test opened once)
#   {gpu,cpu}_trials.csv            every trial of each search
#   SUMMARY.txt                     exit status and wall time of each step, the two results
set -u
: "${OUT:?set OUT to the folder for the results}"
DATA=${DATA:-.data/mnist10k}
BUDGET=${BUDGET:-150}
mkdir -p "$OUT"
START=$(date +%s)
source "$(dirname "$0")/gpu_lib.sh"
LOGDIR=/tmp  # only the files named above go to $OUT

use_wheels
export PYTHONUNBUFFERED=1
if ! python3 -c 'import torch, optuna, sys; sys.exit(0 if torch.cuda.is_available() else 3)'; then
    summary "FATAL: python3 cannot import torch with a CUDA device, or optuna"
    exit 1
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    lscpu | grep -E 'Model name|^CPU\(s\)' 2>&1
    python3 -c 'import torch, optuna; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "optuna", optuna.__version__)'
} >"$OUT/env.txt" 2>&1


run_step pytest_cuda 180 python3 -m pytest -q -p no:cacheprovider -m cuda -rs -o addopts="" \
    tests/costmodel/test_profile.py tests/costmodel/test_calibrate.py tests/archgen/test_train.py \
    tests/archgen/test_search.py
cp /tmp/pytest_cuda.txt "$OUT/pytest_cuda.txt"
export ARCHGEN_CACHE=/tmp/archgen-cache  # the searches calibrate afresh (tests keep theirs apart)

# The two searches at once: GPU run on core 1, CPU run on core 2 (each calibrates its device first).
for dev in cuda cpu; do
    core=$([ "$dev" = cuda ] && echo 1 || echo 2)
    run_step "search_$dev" $(( BUDGET + 240 )) taskset -c "$core" python3 -m archgen search --device "$dev" \
        --data "idx:$DATA" --strategy bohb --time-budget "$BUDGET" --out "/tmp/run_$dev" --seed 0 -q &
done
wait
for dev in cuda cpu; do
    tag=$([ "$dev" = cuda ] && echo gpu || echo cpu)
    cp "/tmp/run_$dev/test_metrics.json" "$OUT/${tag}_test_metrics.json" 2>/dev/null
    cp "/tmp/run_$dev/trials.csv" "$OUT/${tag}_trials.csv" 2>/dev/null
    tail -3 "/tmp/search_$dev.txt" | sed "s/^/$dev: /" >>"$OUT/SUMMARY.txt"
    python3 - "$dev" "/tmp/run_$dev" >>"$OUT/SUMMARY.txt" 2>&1 <<'EOF'
import json, sys
import pandas as pd
dev, run = sys.argv[1], sys.argv[2]
t = pd.read_csv(f"{run}/trials.csv")
m = json.load(open(f"{run}/test_metrics.json"))
trained = t[t["epochs"] > 0]
print(f"{dev}: {len(t)} trials, {len(trained)} trained ({(t['state'] == 'COMPLETE').sum()} complete), "
      f"{int(trained['epochs'].sum())} epochs; best val {m['val_acc']:.4f} test {m['test_acc']:.4f} "
      f"({m['spec_name']}); latency est {m['est_ms']:.3f} / measured {m['meas_ms']:.3f} ms at batch {m['latency_batch']}")
EOF
done
summary "total: $(( $(date +%s) - START )) s"

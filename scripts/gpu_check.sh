#!/usr/bin/env bash
# One-shot CUDA check of the cost model (issue 3, acceptance 5) on a borrowed GPU machine.
#
# Run from the repository root with OUT set to an empty folder:
#     OUT=/some/dir bash scripts/gpu_check.sh
# Needs torch with CUDA already installed; everything else comes from the working tree
# (PYTHONPATH=.). Runs in under 10 minutes and writes every figure to $OUT as text/JSON/markdown:
#   env.txt, nvidia-smi.txt       the machine, library versions
#   pytest_cuda.txt               the @pytest.mark.cuda tests of costmodel
#   calibrate_quick.txt/.json     `archgen calibrate --device cuda --quick` (time, profile)
#   bench_cuda.md/.json           held-out benchmark on CUDA (batch 32 and 1)
#   bench_cpu_t4.md/.json         held-out benchmark at 4 CPU threads, torch and onnxruntime
#   SUMMARY.txt                   exit status of each step
set -u
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
START=$(date +%s)
source "$(dirname "$0")/gpu_lib.sh"

if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)'; then
    summary "FATAL: python3 cannot import torch with a CUDA device (torch missing or no GPU)"
    python3 -c 'import torch; print(torch.__version__, torch.version.cuda)' >>"$OUT/SUMMARY.txt" 2>&1
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ARCHGEN_CACHE="$OUT/cache"
export PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    lscpu | grep -E 'Model name|^CPU\(s\)' 2>&1
    python3 - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0))
for name in ("numpy", "scipy", "sklearn", "pandas", "fvcore", "matplotlib", "yaml", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - report, do not stop
        print(name, "MISSING", type(exc).__name__, exc)
EOF
} >"$OUT/env.txt" 2>&1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true


run_step pytest_cuda 120 python3 -m pytest -q -p no:cacheprovider -m cuda -rs \
    tests/costmodel/test_profile.py tests/costmodel/test_calibrate.py
run_step calibrate_quick 90 python3 -m archgen -v calibrate --device cuda --quick \
    --out "$OUT/calibrate_quick.json"
LEFT=$(( 340 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 60 ]; then
    run_step bench_cuda "$LEFT" python3 scripts/bench_costmodel.py --device cuda --networks 100 \
        --configs b32t1,b1t1 --repeats 9 --out "$OUT/bench_cuda.md" --json "$OUT/bench_cuda.json"
else
    summary "bench_cuda: skipped, only $LEFT s left"
fi
# Multi-thread CPU accuracy needs free cores, which a GPU host has (16): 4 threads on cores 2-5,
# torch and (when installed) onnxruntime, batch 1 (issue 12, item 4).
LEFT=$(( 560 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 120 ]; then
    run_step bench_cpu_threads "$LEFT" taskset -c 2-5 python3 scripts/bench_costmodel.py --device cpu \
        --networks 60 --configs b1t4,b1t4-onnxruntime --repeats 9 --no-throughput --no-layer-sum \
        --out "$OUT/bench_cpu_t4.md" --json "$OUT/bench_cpu_t4.json"
else
    summary "bench_cpu_threads: skipped, only $LEFT s left"
fi
summary "total: $(( $(date +%s) - START )) s"

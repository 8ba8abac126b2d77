# Shared by the one-shot GPU scripts (source it after setting OUT):
#   summary LINE                  prints LINE and appends it to $OUT/SUMMARY.txt
#   run_step NAME LIMIT CMD...    runs CMD under `timeout LIMIT`, output in $LOGDIR/NAME.txt
#                                 ($LOGDIR defaults to $OUT), records exit status and wall time,
#                                 returns CMD's exit status
#   use_wheels                    installs .whl/*.whl (optuna and its dependencies) into /tmp/site
#                                 when present and puts it and the working tree on PYTHONPATH
summary() { echo "$1" | tee -a "$OUT/SUMMARY.txt"; }

run_step() {
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    timeout "$limit" "$@" >"${LOGDIR:-$OUT}/$name.txt" 2>&1
    rc=$?
    summary "$name: exit $rc in $(( $(date +%s) - t0 )) s"
    return $rc
}

use_wheels() {
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || { summary "FATAL: wheel install failed"; exit 1; }
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

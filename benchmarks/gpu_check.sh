#!/usr/bin/env bash
# The prepared GPU check: `pneumo bench --gpu` under a hard timeout; prints where the JSON went.
#
#   benchmarks/gpu_check.sh                      # budget 270 s, JSON in benchmarks/results/
#   BUDGET_S=200 benchmarks/gpu_check.sh --skip compile
#
# Environment: BUDGET_S (default 270), OUT_DIR (default benchmarks/results), PYTHON (default
# .venv/bin/python if present, else python3). Extra arguments go to `pneumo bench --gpu`.
# The check keeps to its own budget by construction: every part has its own share, is
# stopped at its deadline and recorded as "not measured: <why>" if it cannot finish, and the
# check ends by BUDGET_S - 8 s (the shares and the worst case: pneumolib/commands/gpu/check.py).
# The hard timeout, BUDGET_S + 20 s (then SIGKILL 5 s later), only catches what nothing in
# Python can stop, so with the default the whole script ends within 5 minutes even then
# (270 + 20 + 5 = 295 s). Exit status: 0 done, 2 refused (no CUDA, bad option; nothing
# written), 124/137 killed by the timeout (the JSON, rewritten after each part, is left with
# "complete": false).
set -u
cd "$(dirname "$0")/.." || exit 2
BUDGET_S="${BUDGET_S:-270}"
OUT_DIR="${OUT_DIR:-benchmarks/results}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT
HARD=$(( ${BUDGET_S%.*} + 20 ))

timeout --kill-after=5 "$HARD" "$PYTHON" -m pneumolib.cli bench --gpu --budget-s "$BUDGET_S" \
    --out "$OUT_DIR" "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}

json="$(sed -n 's/^wrote \(.*\.json\)$/\1/p' "$LOG" | tail -n 1)"
case "$rc" in
    0) echo "gpu_check.sh: GPU check JSON: ${json:-?}" ;;
    124|137)
        partial="$(ls -t "$OUT_DIR"/gpu-*.json 2>/dev/null | head -n 1)"
        echo "gpu_check.sh: killed after ${HARD} s; partial JSON (\"complete\": false): ${partial:-none}" >&2 ;;
    *) echo "gpu_check.sh: exit status $rc; no JSON written" >&2 ;;
esac
exit "$rc"

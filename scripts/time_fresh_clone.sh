#!/usr/bin/env bash
# Time the README's first command from a fresh clone of this repository's HEAD and collect the
# run into the README's summary set (default `demo`) as timing column LABEL:
#   scripts/time_fresh_clone.sh 1 && scripts/time_fresh_clone.sh 2 && \
#     .venv/bin/python -m pneumolib.reporting.summaries render
# Label 1 starts the set afresh and also collects the tables and figures (the runs are bit-identical on one
# machine). Run it on a quiet machine: the timings are of whatever else runs beside it too.
set -euo pipefail
label=${1:?usage: scripts/time_fresh_clone.sh LABEL [SET]}
set_name=${2:-demo}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/pneumo-fresh-XXXXXX)
git clone -q "$repo" "$work/clone"
cd "$work/clone"
t0=$(date +%s.%N)
./setup.sh > "$work/setup.log" 2>&1
t1=$(date +%s.%N)
PNEUMO_HOME="$work/home" PNEUMO_CACHE="$work/home/cache" .venv/bin/pneumo reproduce 2>&1 | tee "$work/reproduce.log"
t2=$(date +%s.%N)
what=timing
if [ "$label" = 1 ]; then  # the first run starts the set afresh
  what=tables,figures,timing
  rm -rf "$repo/figures/readme/$set_name"
fi
cd "$repo"  # collect into this checkout, with its package (python -m imports from the current folder)
.venv/bin/python -m pneumolib.reporting.summaries collect --home "$work/home" --set "$set_name" \
  --label "$label" --what "$what" --command "./setup.sh && .venv/bin/pneumo reproduce" \
  --setup-seconds "$(echo "$t1 - $t0" | bc)" --wall-seconds "$(echo "$t2 - $t1" | bc)" \
  --timings-note "wall clock of ./setup.sh and then of pneumo reproduce (empty PNEUMO_HOME and cache) in a fresh git clone, read with date before and after each by scripts/time_fresh_clone.sh"
echo "run $label in $work (clone, home, logs); collected into figures/readme/$set_name"

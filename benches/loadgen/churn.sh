#!/usr/bin/env bash
# Space under churn (BENCHMARKS.md, "Cost as the work grows"), in one command:
# a fresh embedded store gets a working set of STATES states, then CYCLES
# cycles of: rewrite every state, delete half the users' states (the other
# half next cycle), purge the deletion markers, re-create the deleted states.
# After each step it records the file's size beside the live data, and the
# p50/p99/max of LOAD_RATE user loads per second sampled all along; writes
# OUT/churn.csv and draws OUT/churn.png.
#
# Usage:
#   benches/loadgen/churn.sh
#   STATES=10000000 CYCLES=10 benches/loadgen/churn.sh
set -euo pipefail

STATES=${STATES:-1000000}
CYCLES=${CYCLES:-10}
LOAD_RATE=${LOAD_RATE:-200}
CACHE_MIB=${CACHE_MIB:-128}
# store.repack_per_change; 0 turns the background repacking off.
REPACK=${REPACK:-3}

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-churn/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=churn
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
log "machine: nproc=$(nproc), $(date -u +%Y-%m-%dT%H:%M:%SZ); $STATES states, $CYCLES cycles; results in $OUT"
"$BENCH" store churn --dir "$WORK/store" --states "$STATES" --cycles "$CYCLES" \
    --load-rate "$LOAD_RATE" --cache-mib "$CACHE_MIB" --repack-per-change "$REPACK" --csv "$OUT/churn.csv"
column -s, -t < "$OUT/churn.csv" >&2
python3 benches/loadgen/plot_scale.py --churn "$OUT/churn.csv" "$OUT/churn.png" \
    || log "no plot (benches/loadgen/install-plot.sh installs matplotlib)"

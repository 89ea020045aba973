#!/usr/bin/env bash
# A restart under the soak's load (BENCHMARKS.md, "Cost as the work grows"),
# in one command:
#
#   1. starts readstates as soak.sh does (embedded store in a fresh temp dir,
#      cache.capacity = CAPACITY, flush.delay_ms = DELAY_MS), pinned to
#      SERVER_CORE, and runs the soak's open-loop realistic mix at RATE for
#      BEFORE (the generator pinned to GEN_CORE): the store fills with what
#      the workload touched, and the last minute is the steady state;
#   2. stops it with SIGTERM (it writes back what is dirty), starts it again on
#      the same data with an empty cache, and runs the same load for AFTER at
#      once, timing the start to SERVING;
#   3. samples the server's metrics every SAMPLE_EVERY seconds into
#      OUT/<before|after>.metrics-series.csv (as soak.sh does);
#   4. prints, per minute of each run, the median and worst per-second p99 and
#      the max, and draws OUT/restart.png (matplotlib:
#      benches/loadgen/install-plot.sh).
#
# Usage:
#   benches/loadgen/restart.sh
#   BEFORE=300s AFTER=300s GEN_EXTRA=--omit-mention-states benches/loadgen/restart.sh
set -euo pipefail

BEFORE=${BEFORE:-180s}
AFTER=${AFTER:-180s}
RATE=${RATE:-5000}
CAPACITY=${CAPACITY:-500000}
DELAY_MS=${DELAY_MS:-30000}
CONNECTIONS=${CONNECTIONS:-4}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-57151}
METRICS_PORT=${METRICS_PORT:-57564}
SAMPLE_EVERY=${SAMPLE_EVERY:-1}   # seconds between metrics snapshots
GEN_EXTRA=${GEN_EXTRA:-}
EXTRA_CONFIG=${EXTRA_CONFIG:-}
case $SAMPLE_EVERY in
    '' | 0 | *[!0-9]*) echo "[restart] SAMPLE_EVERY must be a positive whole number of seconds, not '$SAMPLE_EVERY'" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-restart/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=restart
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh
# shellcheck source=benches/loadgen/metrics_series.sh
. benches/loadgen/metrics_series.sh
warmup_s=0

build_release
log "machine: nproc=$(nproc), $(date -u +%Y-%m-%dT%H:%M:%SZ); results in $OUT"
cat > "$OUT/restart.toml" <<EOF
server.listen_addr = "127.0.0.1:$RS_PORT"
store.data_dir = "$WORK/data"
cache.capacity = $CAPACITY
flush.delay_ms = $DELAY_MS
metrics.listen_addr = "127.0.0.1:$METRICS_PORT"
$EXTRA_CONFIG
EOF

# load NAME DURATION: the soak's load against the running server, with its
# metrics sampled beside it.
load() {
    local start_ns gen_pid sampler
    start_ns=$(date +%s%N)
    # shellcheck disable=SC2086
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$RS_PORT" --rate "$RATE" \
        --mix realistic --duration "$2" --warmup 0s --connections "$CONNECTIONS" \
        --server-pid "$RS_PID" --series "$OUT/$1.series.csv" $GEN_EXTRA > "$OUT/$1.txt" &
    gen_pid=$!
    METRICS_CSV="$OUT/$1.metrics-series.csv"
    sample_metrics "$gen_pid" "$start_ns" &
    sampler=$!
    wait "$gen_pid" || { log "the generator failed"; exit 1; }
    wait "$sampler" || true
    grep '^SUMMARY ' "$OUT/$1.txt" >&2
}

stop() {
    kill -TERM "$RS_PID"
    wait "$RS_PID" || { log "readstates exited $?"; exit 1; }
    PIDS=()
}

wait_quiet
start_readstates "$OUT/restart.toml" "$OUT/before.log"
log "before the restart: $BEFORE at $RATE req/s"
load before "$BEFORE"
stop
log "stopped; $(du -sh "$WORK/data" | cut -f1) stored; restarting"
started=$(date +%s%N)
taskset -c "$SERVER_CORE" "$READSTATES_BIN" --config "$OUT/restart.toml" > "$OUT/after.log" 2>&1 &
RS_PID=$!
PIDS+=("$RS_PID")
"$BENCH" store wait-serving --addr "127.0.0.1:$RS_PORT" --started-ns "$started" | tee "$OUT/serving.txt" >&2
log "after the restart: $AFTER at $RATE req/s"
load after "$AFTER"
stop

python3 - "$OUT/before.series.csv" "$OUT/after.series.csv" <<'PY' | tee "$OUT/minutes.md"
import csv, statistics, sys
print("| run | minute | median per-second p99 | worst per-second p99 | max |")
print("|---|---:|---:|---:|---:|")
for name, path in zip(["before", "after"], sys.argv[1:]):
    rows = [r for r in csv.DictReader(open(path)) if int(r["ok"]) > 0]
    for minute in range(0, (len(rows) + 59) // 60):
        part = rows[minute * 60:(minute + 1) * 60]
        p99 = [int(r["p99_us"]) / 1000 for r in part]
        top = max(int(r["max_us"]) for r in part) / 1000
        print(f"| {name} | {minute + 1} | {statistics.median(p99):.2f} ms | {max(p99):.2f} ms | {top:.1f} ms |")
PY
python3 benches/loadgen/plot_series.py -o "$OUT/restart.png" --title "restart under the soak's load" \
    before="$OUT/before.series.csv" after="$OUT/after.series.csv" \
    || log "no plot (benches/loadgen/install-plot.sh installs matplotlib)"

#!/usr/bin/env bash
# The soak of BENCHMARKS.md ("Soak: 10 minutes with a cache smaller than the
# working set"), in one command:
#
#   1. builds the release binaries (unless SKIP_BUILD=1);
#   2. starts readstates pinned to SERVER_CORE with the embedded store in a
#      temp dir, cache.capacity = CAPACITY (500,000: about 5% of the
#      workload's 10 million states, so it evicts and loads all the time),
#      flush.delay_ms = DELAY_MS and metrics on METRICS_PORT;
#   3. runs the generator pinned to GEN_CORE, open loop at RATE req/s of the
#      realistic mix for DURATION, writing the per-second series to
#      OUT/soak.series.csv, while every SAMPLE_EVERY seconds the server's
#      metrics go to OUT/metrics-series.csv (column `second` is on the same
#      clock as the series: 0 = start of the measured window);
#   4. stops the server with SIGTERM (it writes back what is dirty) and checks
#      that it exits 0;
#   5. prints the generator's SUMMARY line, the per-second p99's median, the
#      worst second and how many seconds exceeded 3x the median, and draws
#      OUT/soak.png (if matplotlib is installed: benches/loadgen/install-plot.sh).
#
# Usage: benches/loadgen/soak.sh   (settings below, as environment variables)
#   DURATION=120s benches/loadgen/soak.sh                      # a shorter soak
#   READSTATES_BIN=/tmp/old/readstates SKIP_BUILD=1 benches/loadgen/soak.sh   # an older server
#   EXTRA_CONFIG='flush.batch_size = 1024' benches/loadgen/soak.sh
set -euo pipefail

DURATION=${DURATION:-600s}        # measured window
WARMUP=${WARMUP:-5s}              # unrecorded warm-up before it
RATE=${RATE:-5000}                # open-loop offered rate, req/s
CAPACITY=${CAPACITY:-500000}      # cache.capacity, read states
BACKEND=${BACKEND:-embedded}      # store.backend; for "scylla", give the [scylla] keys in EXTRA_CONFIG
DELAY_MS=${DELAY_MS:-30000}       # flush.delay_ms
# EXTRA_CONFIG: raw TOML appended to the server's config. The config is written
# with dotted keys and no table headers, so add settings as dotted keys too
# (e.g. 'flush.batch_size = 1024', one per line); keys the script sets already
# (cache.capacity, flush.delay_ms, ...) have their own variables.
EXTRA_CONFIG=${EXTRA_CONFIG:-}
CONNECTIONS=${CONNECTIONS:-4}     # HTTP/2 connections of the generator
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-57051}
METRICS_PORT=${METRICS_PORT:-57464}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}   # seconds between metrics snapshots
GEN_EXTRA=${GEN_EXTRA:-}          # extra generator flags, e.g. --omit-mention-states
SHUTDOWN_WAIT=${SHUTDOWN_WAIT:-120}  # seconds allowed for the server's graceful exit
# SKIP_BUILD=1, READSTATES_BIN, BENCH, QUIET_PCT, QUIET_WAIT: see lib.sh.

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=soak
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
log "machine: nproc=$(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "server $READSTATES_BIN, results go to $OUT"

cat > "$OUT/soak.toml" <<EOF
server.listen_addr = "127.0.0.1:$RS_PORT"
store.backend = "$BACKEND"
store.data_dir = "$WORK/data"
cache.capacity = $CAPACITY
flush.delay_ms = $DELAY_MS
metrics.listen_addr = "127.0.0.1:$METRICS_PORT"
log.level = "info"
$EXTRA_CONFIG
EOF
start_readstates "$OUT/soak.toml" "$OUT/readstates.log"
log "readstates pid $RS_PID on core $SERVER_CORE, port $RS_PORT, metrics on $METRICS_PORT"

# --- metrics snapshots -------------------------------------------------------
# One CSV row per snapshot: the metrics below, summed over their labels; the
# evictions also split into dirty and clean; and the store's latency sum and
# count per operation (store_<operation>_seconds_sum/_count columns, the
# operations found on the first snapshot).
METRICS=(
    readstates_dirty_read_states
    readstates_cache_read_states
    readstates_cache_users
    readstates_cache_hits_total
    readstates_cache_misses_total
    readstates_cache_evictions_total
    readstates_state_changes_total
    readstates_flush_rows_written_total
    readstates_flush_batches_total
    readstates_flush_retries_total
    readstates_store_errors_total
    readstates_process_resident_memory_bytes
)
scrape() { curl -fsS --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null || true; }
# store_ops: the `operation` label values of the store latency histogram.
store_ops() {
    scrape | sed -n 's/^readstates_store_operation_duration_seconds_count{.*operation="\([^"]*\)".*/\1/p' | sort -u
}
# snapshot SECOND OPS...: one CSV row from a scrape.
snapshot() {
    local second=$1
    shift
    scrape | awk -v second="$second" -v names="${METRICS[*]}" -v ops="$*" '
        BEGIN { n = split(names, name, " "); m = split(ops, op, " ") }
        /^#/ { next }
        {
            metric = $1; sub(/\{.*/, "", metric)
            sum[metric] += $NF
            if (metric == "readstates_cache_evictions_total") {
                evicted[($1 ~ /dirty="true"/) ? "dirty" : "clean"] += $NF
            }
            if (metric ~ /^readstates_store_operation_duration_seconds_(sum|count)$/ && match($1, /operation="[^"]*"/)) {
                key = substr($1, RSTART + 11, RLENGTH - 12) "_" (metric ~ /_sum$/ ? "sum" : "count")
                store[key] += $NF
            }
        }
        END {
            line = second
            for (i = 1; i <= n; i++) line = line "," ((name[i] in sum) ? sum[name[i]] : "")
            line = line "," (evicted["dirty"] + 0) "," (evicted["clean"] + 0)
            for (i = 1; i <= m; i++) line = line "," store[op[i] "_sum"] "," store[op[i] "_count"]
            print line
        }'
}

SERIES="$OUT/soak.series.csv"
METRICS_CSV="$OUT/metrics-series.csv"
warmup_s=$(duration_secs "$WARMUP")

wait_quiet
log "run: $BENCH run --target grpc --addr 127.0.0.1:$RS_PORT --rate $RATE --mix realistic --duration $DURATION --warmup $WARMUP $GEN_EXTRA"
start_ns=$(date +%s%N)
taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$RS_PORT" --rate "$RATE" \
    --mix realistic --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
    --server-pid "$RS_PID" --series "$SERIES" $GEN_EXTRA > "$OUT/soak.txt" &
GEN_PID=$!
PIDS+=("$GEN_PID")

# The sampler, on the generator's core so the server's stays undisturbed.
(
    taskset -cp "$GEN_CORE" "$BASHPID" >/dev/null
    mapfile -t ops < <(store_ops)
    header="second"
    for metric in "${METRICS[@]}"; do header="$header,${metric#readstates_}"; done
    header="$header,cache_evictions_dirty,cache_evictions_clean"
    for op in "${ops[@]}"; do header="$header,store_${op}_seconds_sum,store_${op}_seconds_count"; done
    echo "$header" > "$METRICS_CSV"
    k=0
    while kill -0 "$GEN_PID" 2>/dev/null; do
        now_ns=$(date +%s%N)
        second=$(awk -v n="$now_ns" -v s="$start_ns" -v w="$warmup_s" 'BEGIN { printf "%.1f", (n - s) / 1e9 - w }')
        snapshot "$second" "${ops[@]}" >> "$METRICS_CSV"
        k=$((k + 1))
        next_ns=$((start_ns + k * SAMPLE_EVERY * 1000000000))
        now_ns=$(date +%s%N)
        [ "$next_ns" -le "$now_ns" ] || sleep "$(awk -v d=$((next_ns - now_ns)) 'BEGIN { printf "%.3f", d / 1e9 }')"
    done
) &
SAMPLER_PID=$!
PIDS+=("$SAMPLER_PID")

gen_rc=0
wait "$GEN_PID" || gen_rc=$?
wait "$SAMPLER_PID" || true
snapshot "$(awk -v n="$(date +%s%N)" -v s="$start_ns" -v w="$warmup_s" 'BEGIN { printf "%.1f", (n - s) / 1e9 - w }')" \
    $(head -1 "$METRICS_CSV" | tr ',' '\n' | sed -n 's/^store_\(.*\)_seconds_sum$/\1/p') >> "$METRICS_CSV"
cat "$OUT/soak.txt"
[ "$gen_rc" = 0 ] || { log "the generator failed (exit $gen_rc)"; exit 1; }

# --- graceful shutdown -------------------------------------------------------
log "stopping readstates (SIGTERM; it writes back what is dirty)"
stop_started=$SECONDS
kill -TERM "$RS_PID"
for _ in $(seq 1 $((SHUTDOWN_WAIT * 10))); do
    kill -0 "$RS_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$RS_PID" 2>/dev/null; then
    log "readstates did not exit within $SHUTDOWN_WAIT s"
    exit 1
fi
rs_rc=0
wait "$RS_PID" || rs_rc=$?
PIDS=()
shutdown="exit $rs_rc after $((SECONDS - stop_started)) s"

# --- summary -----------------------------------------------------------------
# Per-second p99 over the seconds with completed requests: median, worst, and
# how many seconds exceeded 3x the median.
p99_stats=$(awk -F, 'NR > 1 && $2 > 0 { print $4, $1, $6 }' "$SERIES" | sort -n | awk '
    { p[NR] = $1; sec[NR] = $2; mx[NR] = $3 }
    END {
        if (NR == 0) { print "no data"; exit }
        median = (NR % 2) ? p[(NR + 1) / 2] : (p[NR / 2] + p[NR / 2 + 1]) / 2
        above = 0
        for (i = 1; i <= NR; i++) if (p[i] > 3 * median) above++
        printf "per-second p99: median %.2f ms; worst second %d: p99 %.2f ms, max %.2f ms; %d of %d seconds above 3x the median (%.2f ms)\n",
            median / 1000, sec[NR], p[NR] / 1000, mx[NR] / 1000, above, NR, 3 * median / 1000
    }')
{
    echo
    echo "== soak ($(date -u +%Y-%m-%dT%H:%M:%SZ)): $RATE req/s realistic mix for $DURATION (+$WARMUP warm-up);" \
         "$BACKEND store, cache.capacity $CAPACITY, flush.delay_ms $DELAY_MS; server core $SERVER_CORE, generator core $GEN_CORE"
    [ -z "$EXTRA_CONFIG" ] || echo "extra config: $(echo "$EXTRA_CONFIG" | paste -sd ';' -)"
    [ -z "$GEN_EXTRA" ] || echo "generator flags: $GEN_EXTRA"
    grep '^SUMMARY' "$OUT/soak.txt"
    echo "$p99_stats"
    echo "graceful shutdown: $shutdown"
    echo "server metrics at the end (last row of $METRICS_CSV):"
    paste -d= <(head -1 "$METRICS_CSV" | tr ',' '\n') <(tail -1 "$METRICS_CSV" | tr ',' '\n') | sed 's/^/  /'
    echo "full report, series and config: $OUT"
} | tee "$OUT/summary.txt"

plot "$OUT/soak.png" "soak: $RATE req/s realistic, cache.capacity $CAPACITY, $DURATION: per-second p99 and max (latency from intended start)" \
    "soak=$SERIES" --hline 20ms:"max target 20 ms" \
    --mark-from "$(awk -v d="$DELAY_MS" -v w="$warmup_s" 'BEGIN { print d / 1000 - w }'):timed write-back starts"
[ ! -f "$OUT/soak.png" ] || log "plot: $OUT/soak.png"
[ "$rs_rc" = 0 ] || { log "readstates exited with $rs_rc"; exit 1; }

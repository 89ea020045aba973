#!/usr/bin/env bash
# Overload: what readstates does when offered twice what it can serve.
#
#   1. builds the release binaries (SKIP_BUILD=1 uses READSTATES_BIN and BENCH);
#   2. for each of VARIANTS, IN_FLIGHT:QUEUE_DELAY_MS (limits.max_in_flight_calls
#      and limits.max_queue_delay_ms), starts readstates pinned to SERVER_CORE
#      (embedded store in a temp dir, a cache that holds
#      the whole key space) and:
#        a. measures its closed-loop maximum on the realistic mix
#           (CONCURRENCY workers), the reference;
#        b. offers FACTOR times that maximum in an open loop for DURATION, and
#           reports the admitted calls' latency (from their intended start)
#           and the calls shed, by status code;
#   3. prints a summary and draws the per-second series of the overload runs.
#
# The generator lets up to GEN_MAX_IN_FLIGHT requests be outstanding, so the
# server, not the generator, decides what is shed.
#
# On a small machine one generator core cannot offer twice what a whole server
# core serves. SERVER_CPU_PCT (default 25) caps the server at that share of
# its core with a CPU cgroup (v1 `cpu` or v2 `cpu.max`; needs root), so the
# server saturates first; SERVER_CPU_PCT=100 leaves it uncapped. The cap is
# enforced per CPU_PERIOD_US (default 10 ms): the server runs its share of
# each period, then is frozen for the rest, so a short period (4 ms at 25%:
# the kernel's smallest quota is 1 ms) keeps
# those freezes below the latencies being measured.
#
# Usage: benches/loadgen/overload.sh   (settings below, as environment variables)
set -euo pipefail

DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
FACTOR=${FACTOR:-2}
VARIANTS=${VARIANTS:-"10000:0 10000:20 256:0"}  # max_in_flight_calls:max_queue_delay_ms, one server each
CONCURRENCY=${CONCURRENCY:-256}
SERVER_CPU_PCT=${SERVER_CPU_PCT:-25}
CPU_PERIOD_US=${CPU_PERIOD_US:-10000}
STREAMS=${STREAMS:-1024}          # server.max_concurrent_requests_per_connection (HTTP/2 streams)
OVER_EXTRA=${OVER_EXTRA:-}        # extra generator flags for the overload runs, e.g. --call-timeout 1s
CONNECTIONS=${CONNECTIONS:-4}
GEN_MAX_IN_FLIGHT=${GEN_MAX_IN_FLIGHT:-100000}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-55061}
METRICS_PORT=${METRICS_PORT:-59474}

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-overload/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=overload
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
log "machine: nproc=$(nproc), $(date -u +%Y-%m-%dT%H:%M:%SZ); results go to $OUT"

field() { summary_field "$OUT/$1.txt" "$2"; }

# cap_cpu PID: moves PID into a CPU cgroup capped at SERVER_CPU_PCT of a core.
CGROUP=""
cap_cpu() {
    [ "$SERVER_CPU_PCT" -lt 100 ] || return 0
    local period=$CPU_PERIOD_US quota=$((SERVER_CPU_PCT * CPU_PERIOD_US / 100))
    # The kernel refuses a quota under 1 ms.
    if [ "$quota" -lt 1000 ]; then
        log "SERVER_CPU_PCT% of CPU_PERIOD_US is under 1 ms, which the kernel refuses: raise CPU_PERIOD_US"
        exit 1
    fi
    if [ -z "$CGROUP" ]; then
        if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
            CGROUP=/sys/fs/cgroup/readstates-overload-$$
            mkdir "$CGROUP"
            echo "$quota $period" > "$CGROUP/cpu.max"
        else
            CGROUP=/sys/fs/cgroup/cpu/readstates-overload-$$
            mkdir "$CGROUP"
            echo "$period" > "$CGROUP/cpu.cfs_period_us"
            echo "$quota" > "$CGROUP/cpu.cfs_quota_us"
        fi
    fi
    echo "$1" > "$CGROUP/cgroup.procs"
    log "readstates capped at $SERVER_CPU_PCT% of a core, per ${CPU_PERIOD_US} µs ($CGROUP)"
}
# gen NAME ARGS...: one generator run against readstates, pinned to GEN_CORE.
gen() {
    local name=$1
    shift
    wait_flushed
    wait_quiet
    log "run $name: $BENCH run $*"
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$RS_PORT" \
        --mix realistic --server-pid "$RS_PID" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --series "$OUT/$name.series.csv" "$@" > "$OUT/$name.txt"
    cat "$OUT/$name.txt"
}

for limit in $VARIANTS; do
    in_flight=${limit%%:*}
    queue_delay=${limit#*:}
    cat > "$WORK/readstates-$limit.toml" <<EOF
[server]
listen_addr = "127.0.0.1:$RS_PORT"
max_concurrent_requests_per_connection = $STREAMS

[store]
backend = "embedded"
data_dir = "$WORK/data-$limit"

[cache]
capacity = 20000000

[flush]
delay_ms = 30000
max_dirty_states = 20000000

[limits]
max_in_flight_calls = $in_flight
$([ "$queue_delay" = 0 ] || echo "max_queue_delay_ms = $queue_delay")

[metrics]
listen_addr = "127.0.0.1:$METRICS_PORT"

[log]
level = "info"
EOF
    start_readstates "$WORK/readstates-$limit.toml" "$OUT/readstates-$limit.log"
    log "readstates pid $RS_PID on core $SERVER_CORE, max_in_flight_calls = $in_flight, max_queue_delay_ms = $queue_delay"
    cap_cpu "$RS_PID"
    gen "closed-$limit" --closed --concurrency "$CONCURRENCY"
    max=$(field "closed-$limit" achieved)
    rate=$(awk -v m="$max" -v f="$FACTOR" 'BEGIN { printf "%.0f", m * f }')
    # shellcheck disable=SC2086 # OVER_EXTRA holds separate flags
    gen "over-$limit" --rate "$rate" --max-in-flight "$GEN_MAX_IN_FLIGHT" $OVER_EXTRA
    curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null \
        | grep -E '^readstates_(rpc_duration_seconds_count|runtime_queue_delay_seconds)' \
        > "$OUT/over-$limit.metrics.txt" || true
    kill -TERM "$RS_PID"
    wait "$RS_PID" || true
done
[ -z "$CGROUP" ] || rmdir "$CGROUP" 2>/dev/null || true

{
    echo
    echo "== overload summary ($(date -u +%Y-%m-%dT%H:%M:%SZ); server core $SERVER_CORE capped at $SERVER_CPU_PCT% per ${CPU_PERIOD_US} µs, $STREAMS streams per connection, generator core $GEN_CORE; realistic mix; $DURATION measured; offered ${FACTOR}x the closed-loop maximum)"
    printf '  %-12s %10s %10s %10s %9s %9s %9s %9s  %s\n' "in-flight:ms" "max req/s" "offered" "ok req/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" "refused (code count)"
    for limit in $VARIANTS; do
        refused=$(awk '/^errors \(code, op\)/ {on = 1; next}
            on && /^  [^ ]+, [a-z_]+: [0-9]+$/ {split($0, a, ","); n[a[1]] += $NF}
            on && !/^  / {on = 0}
            END {for (c in n) {gsub(/^ +/, "", c); printf "%s %d; ", c, n["  " c]}}' "$OUT/over-$limit.txt")
        printf '  %-12s %10s %10s %10s %9s %9s %9s %9s  %s\n' "$limit" \
            "$(field closed-$limit achieved)" "$(field over-$limit offered)" \
            "$(awk -v ok="$(field over-$limit ok)" -v d="$(duration_secs "$DURATION")" 'BEGIN { printf "%.0f", ok / d }')" \
            "$(ms "$(field over-$limit p50_us)")" "$(ms "$(field over-$limit p99_us)")" \
            "$(ms "$(field over-$limit p999_us)")" "$(ms "$(field over-$limit max_us)")" "${refused:-none}"
    done
    echo "  (latency of admitted calls only, from their intended start; full reports: $OUT)"
} | tee "$OUT/summary.txt"

args=()
for limit in $VARIANTS; do
    [ -s "$OUT/over-$limit.series.csv" ] && args+=("in flight:queue ms $limit=$OUT/over-$limit.series.csv")
done
[ "${#args[@]}" -eq 0 ] || plot "$OUT/overload.png" "open loop at ${FACTOR}x the closed-loop maximum: admitted calls' per-second p99 and max" "${args[@]}"

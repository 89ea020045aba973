#!/usr/bin/env bash
# Compares readstates with the tonic no-op ceiling and with Redis, in one run:
#
#   1. builds the release binaries (readstates, readstates-bench);
#   2. starts, pinned to SERVER_CORE, the readstates server (embedded store in a
#      temp dir, 30 s flush delay, a cache large enough for the whole key
#      space), the no-op server and, if redis-server is installed
#      (benches/loadgen/install-redis.sh), Redis on loopback;
#   3. runs the generator pinned to GEN_CORE: closed-loop Ack throughput
#      against noop, readstates and Redis, and an open-loop realistic mix at
#      RATE against readstates and Redis; before each readstates run and
#      before the Redis runs it waits until readstates has written back every
#      dirty state, and before each run until no other process keeps the
#      machine busy (a run disturbed by one anyway is repeated);
#   4. then the same closed-loop Ack runs warm: `readstates-bench warm` first
#      creates every state the workload can touch (in readstates, then, after
#      readstates has written them back, in Redis, emptied first), so the acks
#      update existing states as in production instead of inserting new ones;
#   5. prints a summary, draws the open- and closed-loop per-second series as
#      PNGs (if matplotlib is installed: benches/loadgen/install-plot.sh), and
#      stops everything it started (trap on exit).
#
# Usage: benches/loadgen/compare.sh   (settings below, as environment variables)
# Each run's full report is kept under OUT.
set -euo pipefail

DURATION=${DURATION:-20s}         # measured window of each closed-loop run
OPEN_DURATION=${OPEN_DURATION:-40s}  # ...and of each open-loop run: longer than the 30 s
                                  # flush delay, so readstates' write-behind of the
                                  # run's own writes happens inside the window
WARMUP=${WARMUP:-3s}              # unrecorded warm-up before it
RATE=${RATE:-10000}               # open-loop offered rate, req/s
CONCURRENCY=${CONCURRENCY:-256}   # closed-loop workers
CONNECTIONS=${CONNECTIONS:-4}     # HTTP/2 (or Redis) connections
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-55051}
NOOP_PORT=${NOOP_PORT:-55052}
REDIS_PORT=${REDIS_PORT:-56379}
METRICS_PORT=${METRICS_PORT:-59464}
QUIET_PCT=${QUIET_PCT:-15}        # wait for other load to drop below this (% of one core)...
QUIET_WAIT=${QUIET_WAIT:-180}     # ...for at most this many seconds before each run
BUSY_PCT=${BUSY_PCT:-20}          # a run during which others used more than this is repeated...
RUN_TRIES=${RUN_TRIES:-3}         # ...up to this many tries in all
WARM_USERS=${WARM_USERS:-}        # warm users 1..=N only (default: all of them)
WARM_FLUSH_WAIT=${WARM_FLUSH_WAIT:-600}  # at most this many seconds for the warm-up's write-back
# SKIP_BUILD=1 uses the binaries already built (READSTATES_BIN and BENCH, default
# target/release; see lib.sh). SKIP_COLD=1 leaves out the cold readstates and
# Redis runs (closed-noop still runs: the warm ratios need it); SKIP_WARM=1
# leaves out the warm ones.

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=compare
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release

log "machine: nproc=$(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "results go to $OUT"

# --- servers -----------------------------------------------------------------
cat > "$WORK/readstates.toml" <<EOF
[server]
listen_addr = "127.0.0.1:$RS_PORT"

[store]
backend = "embedded"
data_dir = "$WORK/data"

[cache]
capacity = 20000000        # the whole key space (100k users x 100 channels) fits

[flush]
delay_ms = 30000
max_dirty_states = 20000000

[metrics]
listen_addr = "127.0.0.1:$METRICS_PORT"

[log]
level = "info"
EOF
start_readstates "$WORK/readstates.toml" "$OUT/readstates.log"
log "readstates pid $RS_PID on core $SERVER_CORE, port $RS_PORT"

taskset -c "$SERVER_CORE" "$BENCH" noop-server --addr "127.0.0.1:$NOOP_PORT" \
    > "$OUT/noop.log" 2>&1 &
NOOP_PID=$!
PIDS+=("$NOOP_PID")
wait_for_line "$OUT/noop.log" "grpc_addr=" "$NOOP_PID"
log "noop-server pid $NOOP_PID on core $SERVER_CORE, port $NOOP_PORT"

REDIS_PID=""
if command -v redis-server >/dev/null 2>&1; then
    # No persistence: Redis keeps everything in memory only (readstates
    # writes behind to disk within 30 s).
    taskset -c "$SERVER_CORE" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save '' --appendonly no --dir "$WORK" --daemonize no \
        > "$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_for_line "$OUT/redis.log" "Ready to accept connections" "$REDIS_PID"
    log "$(redis-server --version | cut -d' ' -f1-3) pid $REDIS_PID on core $SERVER_CORE, port $REDIS_PORT"
else
    log "redis-server not installed (benches/loadgen/install-redis.sh): skipping Redis"
fi

# --- runs --------------------------------------------------------------------
# field NAME KEY: a value from a run's SUMMARY (or a warm-up's WARM) line.
field() { summary_field "$OUT/$1.txt" "$2"; }
# run NAME SERVER_PID DURATION ARGS...: one generator run, pinned to GEN_CORE. A run
# during which other processes used more than BUSY_PCT% of a core is repeated
# (up to RUN_TRIES times in all); the summary marks one still affected.
run() {
    local name=$1 pid=$2 duration=$3 try other
    shift 3
    for try in $(seq 1 "$RUN_TRIES"); do
        if [ "$pid" = "$RS_PID" ]; then
            wait_flushed
        fi
        wait_quiet
        log "run $name (try $try): $BENCH run $* --server-pid $pid"
        taskset -c "$GEN_CORE" "$BENCH" run "$@" --server-pid "$pid" \
            --duration "$duration" --warmup "$WARMUP" --connections "$CONNECTIONS" \
            --series "$OUT/$name.series.csv" > "$OUT/$name.txt"
        cat "$OUT/$name.txt"
        other=$(field "$name" other_cpu_pct)
        if awk -v o="$other" -v m="$BUSY_PCT" 'BEGIN { exit !(o + 0 <= m + 0) }'; then
            return 0
        fi
        log "other processes used ${other}% of a core during $name"
        cp "$OUT/$name.txt" "$OUT/$name.try$try.txt"
    done
    log "WARNING: $name stayed disturbed by other processes after $RUN_TRIES tries"
}

# Snapshot of readstates' own metrics (cache, dirty states, flushes, store).
rs_metrics() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null \
            | grep -E '^readstates_(cache_(read_states|users|hits_total|misses_total|evictions_total)|dirty_read_states|flush_(lag_seconds|rows_written_total|batches_total|retries_total)|store_errors_total|process_resident_memory_bytes)[ {]' \
            > "$OUT/$1.metrics.txt" || true
    fi
}

# Redis' own view of its stalls: the latency monitor and the slow log.
redis_diag_reset() {
    command -v redis-cli >/dev/null 2>&1 || return 0
    redis-cli -p "$REDIS_PORT" CONFIG SET latency-monitor-threshold 5 >/dev/null
    redis-cli -p "$REDIS_PORT" CONFIG SET slowlog-log-slower-than 5000 >/dev/null
    redis-cli -p "$REDIS_PORT" CONFIG SET slowlog-max-len 100000 >/dev/null
    redis-cli -p "$REDIS_PORT" LATENCY RESET >/dev/null
    redis-cli -p "$REDIS_PORT" SLOWLOG RESET >/dev/null
}
redis_diag() {
    command -v redis-cli >/dev/null 2>&1 || return 0
    {
        echo "redis LATENCY LATEST (event, time, latest ms, max ms):"
        redis-cli -p "$REDIS_PORT" LATENCY LATEST | paste - - - -
        echo "redis SLOWLOG: $(redis-cli -p "$REDIS_PORT" SLOWLOG LEN) commands slower than 5 ms; the slowest:"
        # Entries: 1) id 2) time 3) duration in us 4) the arguments; for a
        # script, the second and third arguments are its SHA and key count.
        redis-cli -p "$REDIS_PORT" --no-raw SLOWLOG GET 100000 | awk '
            $1 == "3)" && $2 == "(integer)" { d = $3 }
            $1 == "4)" && $2 == "1)" && $3 ~ /^"/ {
                c = $3; gsub(/"/, "", c); extra = ""
                if (c == "EVALSHA") { getline; getline; n = $NF; gsub(/"/, "", n); extra = " over " n / 2 " users" }
                print "  " d " us " c extra
            }' | sort -k1,1 -rn | head -5
    } > "$OUT/$1.redis-diag.txt" 2>&1 || true
    cat "$OUT/$1.redis-diag.txt"
}

# warm NAME ARGS...: `readstates-bench warm` (the generator's default key
# space, as in the runs), pinned to GEN_CORE; output in OUT/warm-NAME.txt.
warm() {
    local name=$1
    shift
    local extra=(--connections "$CONNECTIONS")
    [ -z "$WARM_USERS" ] || extra+=(--warm-users "$WARM_USERS")
    wait_quiet
    log "warm-up $name: $BENCH warm $* ${extra[*]}"
    taskset -c "$GEN_CORE" "$BENCH" warm "$@" "${extra[@]}" > "$OUT/warm-$name.txt"
    cat "$OUT/warm-$name.txt"
}

closed=(--closed --concurrency "$CONCURRENCY" --mix ack-only)
open=(--rate "$RATE" --mix realistic)
rs=(--target grpc --addr "127.0.0.1:$RS_PORT")
redis=(--target redis --redis-url "redis://127.0.0.1:$REDIS_PORT")
run closed-noop "$NOOP_PID" "$DURATION" --target grpc --addr "127.0.0.1:$NOOP_PORT" "${closed[@]}"
# The open loop against the no-op server is the floor of this machine, the
# framework and the generator: a spike it shows is not readstates' own.
run open-noop "$NOOP_PID" "$OPEN_DURATION" --target grpc --addr "127.0.0.1:$NOOP_PORT" "${open[@]}"
if [ "${SKIP_COLD:-0}" != 1 ]; then
    run closed-readstates "$RS_PID" "$DURATION" "${rs[@]}" "${closed[@]}"
    run open-readstates "$RS_PID" "$OPEN_DURATION" "${rs[@]}" "${open[@]}"
    rs_metrics open-readstates
    log "waiting for readstates to write back the open-loop run's states"
    wait_flushed
    if [ -n "$REDIS_PID" ]; then
        run closed-redis "$REDIS_PID" "$DURATION" "${redis[@]}" "${closed[@]}"
        redis_diag_reset
        run open-redis "$REDIS_PID" "$OPEN_DURATION" "${redis[@]}" "${open[@]}"
        redis_diag open-redis
    fi
fi

# Warm: the same closed-loop Ack runs, but on states that all exist already.
if [ "${SKIP_WARM:-0}" != 1 ]; then
    warm readstates "${rs[@]}"
    log "waiting for readstates to write back the warm-up's states"
    wait_flushed "$WARM_FLUSH_WAIT"
    run closed-readstates-warm "$RS_PID" "$DURATION" "${rs[@]}" "${closed[@]}"
    rs_metrics closed-readstates-warm
    if [ -n "$REDIS_PID" ]; then
        log "waiting for readstates to write back the warm run's states"
        wait_flushed
        # Redis starts the warm-up empty, so every user is created from its
        # guild's template (seconds) rather than field by field over the cold
        # runs' hashes (minutes); the end state is the same.
        if command -v redis-cli >/dev/null 2>&1; then
            redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
        else
            log "no redis-cli: warming Redis over the cold runs' data (slower)"
        fi
        warm redis "${redis[@]}"
        run closed-redis-warm "$REDIS_PID" "$DURATION" "${redis[@]}" "${closed[@]}"
    fi
fi

# --- summary -----------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v us="$1" 'BEGIN { if (us == "-" || us == "") print "-"; else printf "%.2f", us / 1000 }'; }

{
    echo
    echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ); server core $SERVER_CORE, generator core $GEN_CORE; warm-up $WARMUP, then $DURATION measured (closed loop) or $OPEN_DURATION (open loop))"
    echo
    echo "closed loop, Ack only, concurrency $CONCURRENCY, $CONNECTIONS connections:"
    printf '  %-11s %10s %9s %9s %9s %12s %10s %8s\n' target "req/s" "p50 ms" "p99 ms" "gen cpu%" "server cpu%" "us cpu/req" "other%"
    for t in noop readstates redis; do
        [ -f "$OUT/closed-$t.txt" ] || continue
        printf '  %-11s %10s %9s %9s %9s %12s %10s %8s\n' "$t" \
            "$(field closed-$t achieved)" "$(ms "$(field closed-$t p50_us)")" "$(ms "$(field closed-$t p99_us)")" \
            "$(field closed-$t gen_cpu_pct)" "$(field closed-$t server_cpu_pct)" \
            "$(field closed-$t server_us_per_req)" "$(field closed-$t other_cpu_pct)"
    done
    echo "  readstates / noop  throughput: $(ratio "$(field closed-readstates achieved)" "$(field closed-noop achieved)")x" \
         " server CPU per request: $(ratio "$(field closed-readstates server_us_per_req)" "$(field closed-noop server_us_per_req)")x"
    if [ -f "$OUT/closed-redis.txt" ]; then
        echo "  readstates / redis throughput: $(ratio "$(field closed-readstates achieved)" "$(field closed-redis achieved)")x" \
             " server CPU per request: $(ratio "$(field closed-readstates server_us_per_req)" "$(field closed-redis server_us_per_req)")x"
    fi
    echo
    echo "open loop, realistic mix, offered $RATE req/s (latency from intended start):"
    printf '  %-11s %8s %8s %8s %8s %8s %7s %9s %9s %12s %7s\n' target "req/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" errors "gen cpu%" "gen busy%" "server cpu%" "other%"
    for t in noop readstates redis; do
        [ -f "$OUT/open-$t.txt" ] || continue
        printf '  %-11s %8s %8s %8s %8s %8s %7s %9s %9s %12s %7s\n' "$t" \
            "$(field open-$t achieved)" "$(ms "$(field open-$t p50_us)")" "$(ms "$(field open-$t p99_us)")" \
            "$(ms "$(field open-$t p999_us)")" "$(ms "$(field open-$t max_us)")" "$(field open-$t errors)" \
            "$(field open-$t gen_cpu_pct)" "$(field open-$t gen_busy_pct)" "$(field open-$t server_cpu_pct)" \
            "$(field open-$t other_cpu_pct)"
    done
    echo "  (gen busy% = generator CPU minus its idle spin-wait; dispatch lag p99 us:" \
         "noop $(field open-noop lag_p99_us), readstates $(field open-readstates lag_p99_us), redis $(field open-redis lag_p99_us))"
    if [ -s "$OUT/open-readstates.metrics.txt" ]; then
        echo
        echo "readstates metrics after the open-loop run:"
        sed 's/^/  /' "$OUT/open-readstates.metrics.txt"
    fi
    if [ -f "$OUT/closed-readstates-warm.txt" ] || [ -f "$OUT/closed-redis-warm.txt" ]; then
        echo
        echo "closed loop, Ack only, warm (every state the workload can touch created first), concurrency $CONCURRENCY, $CONNECTIONS connections:"
        for t in readstates redis; do
            [ -f "$OUT/warm-$t.txt" ] || continue
            echo "  warm-up of $t: $(field warm-$t users) users, $(field warm-$t states) states in $(field warm-$t seconds) s"
        done
        printf '  %-16s %10s %9s %9s %9s %12s %10s %8s\n' target "req/s" "p50 ms" "p99 ms" "gen cpu%" "server cpu%" "us cpu/req" "other%"
        for t in readstates-warm redis-warm; do
            [ -f "$OUT/closed-$t.txt" ] || continue
            printf '  %-16s %10s %9s %9s %9s %12s %10s %8s\n' "$t" \
                "$(field closed-$t achieved)" "$(ms "$(field closed-$t p50_us)")" "$(ms "$(field closed-$t p99_us)")" \
                "$(field closed-$t gen_cpu_pct)" "$(field closed-$t server_cpu_pct)" \
                "$(field closed-$t server_us_per_req)" "$(field closed-$t other_cpu_pct)"
        done
        echo "  readstates-warm / noop       throughput: $(ratio "$(field closed-readstates-warm achieved)" "$(field closed-noop achieved)")x" \
             " server CPU per request: $(ratio "$(field closed-readstates-warm server_us_per_req)" "$(field closed-noop server_us_per_req)")x"
        if [ -f "$OUT/closed-redis-warm.txt" ]; then
            echo "  readstates-warm / redis-warm throughput: $(ratio "$(field closed-readstates-warm achieved)" "$(field closed-redis-warm achieved)")x" \
                 " server CPU per request: $(ratio "$(field closed-readstates-warm server_us_per_req)" "$(field closed-redis-warm server_us_per_req)")x"
        fi
    fi
    echo
    echo "full reports and per-second series: $OUT"
} | tee "$OUT/summary.txt"

# --- plots -------------------------------------------------------------------
# series LABEL NAME...: LABEL=OUT/NAME.series.csv for each run that wrote one.
series() {
    local name
    for name in "$@"; do
        [ -s "$OUT/$name.series.csv" ] && printf '%s=%s\n' "${name#*-}" "$OUT/$name.series.csv"
    done
    return 0
}
mapfile -t open_series < <(series open-noop open-readstates open-redis)
if [ "${#open_series[@]}" -gt 0 ]; then
    # readstates writes back the run's first changes 30 s (flush.delay_ms)
    # after they were made, the warm-up included.
    plot "$OUT/open.png" "open loop, realistic mix, offered $RATE req/s: per-second p99 and max (latency from intended start)" \
        "${open_series[@]}" \
        --mark-from "$(awk -v w="$(duration_secs "$WARMUP")" 'BEGIN { print 30 - w }'):readstates write-back starts"
fi
mapfile -t closed_series < <(series closed-noop closed-readstates closed-redis closed-readstates-warm closed-redis-warm)
if [ "${#closed_series[@]}" -gt 0 ]; then
    plot "$OUT/closed.png" "closed loop, Ack only, concurrency $CONCURRENCY: per-second p99 and max (latency from actual start)" \
        "${closed_series[@]}"
fi
ls "$OUT"/*.png 2>/dev/null | sed 's/^/plot: /' >&2 || true

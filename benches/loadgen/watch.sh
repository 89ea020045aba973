#!/usr/bin/env bash
# What change streams cost the server, in one run on one server process:
#
#   1. builds the release binaries and copies them aside (a rebuild by someone
#      else during the run then changes nothing);
#   2. starts readstates pinned to SERVER_CORE (embedded store in a temp dir,
#      30 s flush delay, a cache large enough for the whole key space, as
#      compare.sh does); the generator and the watcher run on GEN_CORE;
#   3. with WARM=1 (the default), creates every state the workload can touch
#      (`readstates-bench warm`: 100 per user) and waits for their write-back,
#      so acks update states and a catch-up carries a user's 100 states;
#   4. a first `readstates-bench watch --exit-when-caught-up` subscribes every
#      user and leaves: every user is then in the cache, and the allocator
#      holds the catch-up's transient memory, so the resident memory read
#      next is the baseline;
#   5. open-loop runs at RATE, the Ack-only mix then (REALISTIC=1) the
#      realistic mix, in the order without, with, with, without subscribers
#      (ABBA, so a linear drift of the machine cancels): the "with" runs under
#      one `readstates-bench watch` that follows users 1..=USERS over STREAMS
#      streams, started after the first "without" runs; memory per subscribed
#      user is the resident memory once it has caught up, less the baseline;
#   6. the server's delivery lag over the "with" runs from its histogram
#      readstates_watch_delivery_lag_seconds (prom_quantiles.py), the
#      watcher's own (arrival minus the state's updated_at_ms), and the
#      catch-up's time and server CPU;
#   7. with PERF=1, one more Ack-only run with subscribers and one without,
#      each under `perf record -e cpu-clock -g` of the server (not in the
#      figures: perf costs CPU), and their top frames;
#   8. prints a summary and stops everything it started (trap on exit).
#
# The generator draws users from 1..=100000 (its --users default), so USERS
# (default the same) covers every user the runs touch.
#
# Usage: benches/loadgen/watch.sh   (settings below, as environment variables)
set -euo pipefail

DURATION=${DURATION:-30s}         # measured window of each open-loop run
WARMUP=${WARMUP:-3s}              # unrecorded warm-up before it
RATE=${RATE:-5000}                # offered rate, req/s
CONNECTIONS=${CONNECTIONS:-4}     # the generator's HTTP/2 connections
USERS=${USERS:-100000}            # subscribed users 1..=USERS
STREAMS=${STREAMS:-4}             # the watcher's streams
REALISTIC=${REALISTIC:-1}         # also run the realistic mix
WARM=${WARM:-1}                   # create every state first (see above)
PERF=${PERF:-0}                   # profile the server in two extra runs
PERF_SECONDS=${PERF_SECONDS:-20}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-55061}
METRICS_PORT=${METRICS_PORT:-59474}
BUSY_PCT=${BUSY_PCT:-20}          # a run during which others (the watcher not counted)
RUN_TRIES=${RUN_TRIES:-2}         # used more than this % of a core is repeated, up to RUN_TRIES
CATCH_UP_WAIT=${CATCH_UP_WAIT:-600}      # at most this many seconds for a catch-up
WARM_FLUSH_WAIT=${WARM_FLUSH_WAIT:-900}  # ...and for the warm-up's write-back

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-watch/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=watch
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
BENCH_NAME=$BENCH                 # as the summary shows the commands
cp "$READSTATES_BIN" "$WORK/readstates"
cp "$BENCH" "$WORK/readstates-bench"
READSTATES_BIN=$WORK/readstates
BENCH=$WORK/readstates-bench

log "machine: nproc=$(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "results go to $OUT"

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

# --- helpers -----------------------------------------------------------------
scrape() { curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics"; }
# metric NAME: the value of an unlabelled series, as an integer.
metric() { { scrape || true; } | awk -v n="$1" '$1 == n { printf "%.0f\n", $2 }'; }
# The server's CPU time (utime + stime), in clock ticks.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$RS_PID/stat"; }
HZ=$(getconf CLK_TCK)
field() { summary_field "$OUT/$1.txt" "$2"; }
# watch_field NAME KEY: a value from a watcher's WATCH line.
watch_field() {
    grep '^WATCH ' "$OUT/$1.txt" 2>/dev/null | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'
}

# wait_subscriptions N: waits until the server counts N subscriptions.
wait_subscriptions() {
    local n=""
    for _ in $(seq 1 $((CATCH_UP_WAIT * 2))); do
        n=$(metric readstates_watch_subscriptions)
        [ "${n:-x}" = "$1" ] && return 0
        sleep 0.5
    done
    log "timed out: the server counts ${n:-?} subscriptions, not $1"
    return 1
}

WATCH_PID=""
# run NAME ARGS...: one open-loop run pinned to GEN_CORE, after the write-back
# of the previous one and a quiet machine. A run during which other processes
# (the watcher's own CPU not counted) used more than BUSY_PCT% of a core is
# repeated, up to RUN_TRIES tries in all.
run() {
    local name=$1 try other watcher_before watcher_pct start
    shift
    for try in $(seq 1 "$RUN_TRIES"); do
        wait_flushed
        wait_quiet
        log "run $name (try $try): $BENCH run $* --server-pid $RS_PID"
        watcher_before=$([ -n "$WATCH_PID" ] && awk '{ print $14 + $15 }' "/proc/$WATCH_PID/stat" || echo 0)
        start=$(date +%s.%N)
        scrape > "$OUT/$name.before.prom"
        taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$RS_PORT" "$@" \
            --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
            --server-pid "$RS_PID" > "$OUT/$name.txt"
        watcher_pct=0
        if [ -n "$WATCH_PID" ]; then
            watcher_pct=$(awk -v a="$watcher_before" -v b="$(awk '{ print $14 + $15 }' "/proc/$WATCH_PID/stat")" \
                -v hz="$HZ" -v t0="$start" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", (b - a) / hz * 100 / (t1 - t0) }')
        fi
        echo "WATCHER cpu_pct=$watcher_pct" >> "$OUT/$name.txt"
        scrape > "$OUT/$name.after.prom"
        echo "SERVER_LAG $(python3 "$LOADGEN_DIR/prom_quantiles.py" readstates_watch_delivery_lag_seconds \
            "$OUT/$name.before.prom" "$OUT/$name.after.prom" 0.5 0.99 0.999)" >> "$OUT/$name.txt"
        grep '^SUMMARY' "$OUT/$name.txt" >&2
        other=$(awk -v o="$(field "$name" other_cpu_pct)" -v w="$watcher_pct" 'BEGIN { printf "%.1f", o - w }')
        if awk -v o="$other" -v m="$BUSY_PCT" 'BEGIN { exit !(o + 0 <= m + 0) }'; then
            return 0
        fi
        log "other processes used ${other}% of a core during $name (the watcher's ${watcher_pct}% aside)"
        cp "$OUT/$name.txt" "$OUT/$name.try$try.txt"
    done
    log "WARNING: $name stayed disturbed by other processes after $RUN_TRIES tries"
}
# runs SUFFIX: the Ack-only run, then the realistic one.
runs() {
    run "ack-$1" --mix ack-only
    [ "$REALISTIC" != 1 ] || run "realistic-$1" --mix realistic
}

# start_watcher NAME ARGS...: `readstates-bench watch` in the background on
# GEN_CORE; sets WATCH_PID.
start_watcher() {
    local name=$1
    shift
    log "watcher $name: $BENCH watch --addr 127.0.0.1:$RS_PORT --users $USERS --streams $STREAMS $*"
    taskset -c "$GEN_CORE" "$BENCH" watch --addr "127.0.0.1:$RS_PORT" --users "$USERS" \
        --streams "$STREAMS" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log" &
    WATCH_PID=$!
    PIDS+=("$WATCH_PID")
}

# catch_up NAME: waits until the watcher NAME has every catch-up (and, unless
# it leaves then, until the server counts USERS subscriptions); records the
# server CPU it took since CATCH_UP_TICKS was set.
catch_up() {
    [ "$1" = watch-first ] || wait_subscriptions "$USERS"
    for _ in $(seq 1 $((CATCH_UP_WAIT * 10))); do
        grep -q 'caught up' "$OUT/$1.log" && break
        kill -0 "$WATCH_PID" 2>/dev/null || grep -q '^WATCH ' "$OUT/$1.txt" || { cat "$OUT/$1.log" >&2; return 1; }
        sleep 0.1
    done
    awk -v t="$(( $(server_ticks) - CATCH_UP_TICKS ))" -v hz="$HZ" -v u="$USERS" \
        'BEGIN { printf "server_cpu_s=%.2f server_us_per_user=%.1f\n", t / hz, t / hz * 1e6 / u }' > "$OUT/$1.cpu"
    log "$1: $(grep 'caught up' "$OUT/$1.log"); $(cat "$OUT/$1.cpu")"
}

# profile NAME: one Ack-only run with the server under perf (not a figure).
profile() {
    command -v perf >/dev/null 2>&1 || { log "no perf: skipping the profile"; return 0; }
    wait_flushed
    wait_quiet
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$RS_PORT" --mix ack-only \
        --rate "$RATE" --duration "$((PERF_SECONDS + 5))s" --warmup 2s --connections "$CONNECTIONS" \
        > "$OUT/perf-$1.run.txt" &
    local gen=$!
    sleep 3
    taskset -c "$GEN_CORE" perf record -q -e cpu-clock -g -p "$RS_PID" -o "$OUT/perf-$1.data" \
        -- sleep "$PERF_SECONDS" > /dev/null 2>&1 || log "perf record failed"
    wait "$gen" || true
    perf report -i "$OUT/perf-$1.data" --no-children --stdio --percent-limit 1.5 -g none \
        --sort symbol 2> /dev/null | grep -v '^#' | grep -v '^$' | head -25 > "$OUT/perf-$1.top.txt" || true
    perf report -i "$OUT/perf-$1.data" --children --stdio --percent-limit 3 -g none \
        --sort symbol 2> /dev/null | grep -v '^#' | grep -v '^$' | head -40 > "$OUT/perf-$1.children.txt" || true
}

rss() { metric readstates_process_resident_memory_bytes; }

# --- 1. warm-up and the first catch-up ---------------------------------------
if [ "$WARM" = 1 ]; then
    wait_quiet
    log "warm-up: $BENCH warm --addr 127.0.0.1:$RS_PORT --connections $CONNECTIONS"
    taskset -c "$GEN_CORE" "$BENCH" warm --target grpc --addr "127.0.0.1:$RS_PORT" \
        --connections "$CONNECTIONS" > "$OUT/warm.txt"
    cat "$OUT/warm.txt" >&2
    log "waiting for the warm-up's write-back"
    wait_flushed "$WARM_FLUSH_WAIT"
fi
wait_quiet
CATCH_UP_TICKS=$(server_ticks)
start_watcher watch-first --exit-when-caught-up --duration "${CATCH_UP_WAIT}s"
catch_up watch-first
wait "$WATCH_PID" || true
WATCH_PID=""
wait_subscriptions 0
sleep 3
RSS_BASE=$(rss)
log "resident memory, no subscriptions, before the runs: $RSS_BASE bytes"

# --- 2. without, with, with, without -------------------------------------------
runs without-1

wait_flushed
wait_quiet
RSS_BEFORE=$(rss)
log "resident memory, no subscriptions: $RSS_BEFORE bytes"
CATCH_UP_TICKS=$(server_ticks)
start_watcher watch --duration 86400s
catch_up watch
sleep 3
RSS_WITH=$(rss)
log "resident memory, $USERS subscriptions: $RSS_WITH bytes"
scrape > "$OUT/with-before.prom"
runs with-1
runs with-2
scrape > "$OUT/with-after.prom"
[ "$PERF" != 1 ] || profile with
kill -TERM "$WATCH_PID"
wait "$WATCH_PID" || log "the watcher exited with $?"
WATCH_PID=""
cat "$OUT/watch.txt" >&2
wait_subscriptions 0
RSS_AFTER=$(rss)

runs without-2
[ "$PERF" != 1 ] || profile without

# --- summary -----------------------------------------------------------------
mean() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.2f", (a + b) / 2 }'; }
server_lag=$(python3 "$LOADGEN_DIR/prom_quantiles.py" readstates_watch_delivery_lag_seconds \
    "$OUT/with-before.prom" "$OUT/with-after.prom" 0.5 0.99 0.999)
{
    echo
    echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ); server core $SERVER_CORE, generator and watcher core $GEN_CORE;" \
         "open loop $RATE req/s, warm-up $WARMUP then $DURATION measured, $CONNECTIONS connections; warm=$WARM)"
    echo
    echo "server CPU per call (us), without and with $USERS subscribed users on $STREAMS streams, in run order:"
    printf '  %-10s %10s %10s %10s %10s %8s %9s %9s %9s\n' mix without-1 with-1 with-2 without-2 "with/w/o" "p99 w/o" "p99 with" "other%"
    mixes=(ack)
    [ "$REALISTIC" != 1 ] || mixes+=(realistic)
    for m in "${mixes[@]}"; do
        w1=$(field "$m-without-1" server_us_per_req); s1=$(field "$m-with-1" server_us_per_req)
        s2=$(field "$m-with-2" server_us_per_req); w2=$(field "$m-without-2" server_us_per_req)
        printf '  %-10s %10s %10s %10s %10s %8s %9s %9s %9s\n' "$m" "$w1" "$s1" "$s2" "$w2" \
            "$(ratio "$(mean "$s1" "$s2")" "$(mean "$w1" "$w2")")x" \
            "$(ms "$(field "$m-without-1" p99_us)")/$(ms "$(field "$m-without-2" p99_us)")" \
            "$(ms "$(field "$m-with-1" p99_us)")/$(ms "$(field "$m-with-2" p99_us)")" \
            "$(for r in without-1 with-1 with-2 without-2; do printf '%s/' "$(field "$m-$r" other_cpu_pct)"; done | sed 's,/$,,')"
    done
    echo "  (ratio: mean of the two with runs over the mean of the two without runs; p99 in ms;" \
         "other% includes the watcher's CPU, which each run's WATCHER line gives)"
    echo
    echo "memory: resident $RSS_BASE bytes after the first catch-up, $RSS_BEFORE before the watcher," \
         "$RSS_WITH with $USERS subscriptions, $RSS_AFTER after they ended:" \
         "$(awk -v a="$RSS_BEFORE" -v b="$RSS_WITH" -v u="$USERS" 'BEGIN { printf "%.0f", (b - a) / u }') bytes per subscribed user"
    echo "catch-up of $USERS users (since_version 0), watcher to caught up:" \
         "first $(watch_field watch-first caught_up_s) s ($(cat "$OUT/watch-first.cpu"))," \
         "second $(watch_field watch caught_up_s) s ($(cat "$OUT/watch.cpu")); states carried: $(watch_field watch catch_up_states)"
    echo "delivery lag over the with runs: server (change applied to event handed to the connection): $server_lag"
    for m in "${mixes[@]}"; do
        for r in with-1 with-2; do
            echo "  $m-$r: $(grep '^SERVER_LAG' "$OUT/$m-$r.txt" | cut -d' ' -f2-)"
        done
    done
    echo "  watcher (arrival minus updated_at_ms, ms resolution): p50 $(watch_field watch lag_p50_ms) ms," \
         "p99 $(watch_field watch lag_p99_ms) ms, max $(watch_field watch lag_max_ms) ms over $(watch_field watch changed) changed events"
    echo "  watcher: $(grep '^WATCH ' "$OUT/watch.txt")"
    echo "  server: fell behind $(scrape | awk '$1 == "readstates_watch_fell_behind_total" { print $2 }') times," \
         "$(scrape | awk '$1 == "readstates_watch_resets_total" { print $2 }') resets"
    if [ "$PERF" = 1 ]; then
        for p in with without; do
            [ -s "$OUT/perf-$p.top.txt" ] || continue
            echo
            echo "perf, Ack-only run $p subscribers (self time, top frames; $OUT/perf-$p.data):"
            sed 's/^/  /' "$OUT/perf-$p.top.txt"
        done
    fi
    echo
    echo "commands: $BENCH_NAME run --target grpc --addr 127.0.0.1:$RS_PORT --mix ack-only|realistic --rate $RATE" \
         "--duration $DURATION --warmup $WARMUP --connections $CONNECTIONS --server-pid <pid>;"
    echo "  $BENCH_NAME watch --addr 127.0.0.1:$RS_PORT --users $USERS --streams $STREAMS;" \
         "full reports under $OUT"
} | tee "$OUT/summary.txt"

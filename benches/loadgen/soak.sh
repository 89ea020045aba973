#!/usr/bin/env bash
# The soak of BENCHMARKS.md ("Soak: 10 minutes with a cache smaller than the
# working set"), in one command:
#
#   1. builds the release binaries (unless SKIP_BUILD=1);
#   2. starts readstates pinned to SERVER_CORE with the embedded store in a
#      fresh temp dir, cache.capacity = CAPACITY (500,000: about 5% of the
#      workload's 10 million states, so it evicts and loads all the time),
#      flush.delay_ms = DELAY_MS and metrics on METRICS_PORT;
#   3. runs the generator pinned to GEN_CORE, open loop at RATE req/s of the
#      realistic mix for DURATION, writing the per-second series to
#      OUT/soak.series.csv, while every SAMPLE_EVERY seconds the server's
#      metrics go to OUT/metrics-series.csv (column `second` is on the same
#      clock as the series: 0 = start of the measured window; SAMPLE_EVERY=0,
#      the default in pairs, takes only the last snapshot, at the end);
#   4. stops the server with SIGTERM (it writes back what is dirty) and checks
#      that it exits 0;
#   5. prints the generator's SUMMARY line, the per-second p99's median, the
#      worst second and how many seconds exceeded 3x the median, the server's
#      threads' CPU and run-queue wait (OUT/threads.txt; threads.sh), and draws
#      OUT/soak.png (if matplotlib is installed: benches/loadgen/install-plot.sh).
#
# Pairs (PAIRS=N with N > 1, or NOOP=1): the machine is noisy, so read a
# readstates soak against a no-op soak run right beside it ("the tail against
# the floor, measured in pairs"). The script then runs N pairs, each one soak
# of readstates as above (a fresh server and data dir every time) and one of
# `readstates-bench noop-server` (also pinned to SERVER_CORE, on NOOP_PORT)
# with the same generator settings (RATE, DURATION, WARMUP, CONNECTIONS,
# GEN_EXTRA, cores), alternating which runs first: pair 1 readstates first,
# pair 2 the no-op first, pair 3 readstates first, and so on. Each run writes
# OUT/pair<P>-<readstates|noop>.{txt,series.csv,threads.txt,log,summary.txt,png} (and, for
# readstates, .toml and .metrics-series.csv); OUT/pair<P>.png draws both runs
# of a pair. At the end benches/loadgen/soak_pairs.py prints, and writes to
# OUT/pairs.md, each pair's p50, p99, p99.9 and max for readstates and the
# no-op with their ratio, the median of each ratio over the pairs, and per run
# the achieved rate, errors, server CPU and other processes' CPU. OUT/summary.txt
# collects every run's summary and that report. PAIRS>1 implies NOOP=1
# (NOOP=0 with PAIRS>1 is refused); NOOP=1 alone runs one pair. PAIRS=1
# without NOOP=1 (the default) is the single soak above, files as named there.
#
# Usage: benches/loadgen/soak.sh   (settings below, as environment variables)
#   DURATION=120s benches/loadgen/soak.sh                      # a shorter soak
#   READSTATES_BIN=/tmp/old/readstates SKIP_BUILD=1 benches/loadgen/soak.sh   # an older server
#   EXTRA_CONFIG='flush.batch_size = 1024' benches/loadgen/soak.sh
#   PAIRS=3 DURATION=240s benches/loadgen/soak.sh   # three interleaved pairs with the no-op
#   (pairs take no metrics snapshot until the generator is done, SAMPLE_EVERY=0:
#   each snapshot forks curl and awk on the generator's core and the no-op runs
#   have none; sampling every second raised readstates' p99 from 1.6 to 4.4 ms.
#   Take the metrics series from runs of their own)
#   NOOP=1 DURATION=240s benches/loadgen/soak.sh                # one pair: readstates, then the no-op
#   NOOP_IO_PAGES=70 PAIRS=3 DURATION=120s benches/loadgen/soak.sh  # a no-op that writes the disk as readstates does
#
# NOOP_IO_PAGES=N (N > 0) runs benches/loadgen/page_writer.py beside each no-op
# run, on the server's core under SCHED_IDLE as the store's writer runs: N random
# 4-KiB pages of a 128-MiB file and an fdatasync every NOOP_IO_INTERVAL_S (0.1 s,
# flush.tick_ms). Set N to readstates' own pages per round (its write_bytes in
# /proc/<pid>/io over a soak, divided by 4096 and by the rounds) to read the tail
# against a floor that pays the same disk writes on this machine.
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
NOOP_PORT=${NOOP_PORT:-57052}     # the no-op server's, in pairs
METRICS_PORT=${METRICS_PORT:-57464}
SAMPLE_EVERY=${SAMPLE_EVERY:-}   # seconds between metrics snapshots (0: one, at the end; default 5, 0 in pairs)
GEN_EXTRA=${GEN_EXTRA:-}          # extra generator flags, e.g. --omit-mention-states
SHUTDOWN_WAIT=${SHUTDOWN_WAIT:-120}  # seconds allowed for the server's graceful exit
PAIRS=${PAIRS:-1}                 # pairs of soaks (readstates and the no-op); >1 implies NOOP=1
NOOP=${NOOP:-}                    # 1: pair the readstates soak(s) with no-op soaks
NOOP_IO_PAGES=${NOOP_IO_PAGES:-0} # pages the no-op runs' disk writer writes a round (0: none)
NOOP_IO_INTERVAL_S=${NOOP_IO_INTERVAL_S:-0.1}
# SKIP_BUILD=1, READSTATES_BIN, BENCH, QUIET_PCT, QUIET_WAIT: see lib.sh.

case $PAIRS in
    '' | *[!0-9]* | 0*) echo "[soak] PAIRS must be a positive integer, not '$PAIRS'" >&2; exit 2 ;;
esac
case $NOOP_IO_PAGES in
    '' | *[!0-9]*) echo "[soak] NOOP_IO_PAGES must be a whole number, not '$NOOP_IO_PAGES'" >&2; exit 2 ;;
esac
if [ "$PAIRS" -gt 1 ] && [ "$NOOP" = 0 ]; then
    echo "[soak] PAIRS=$PAIRS needs the no-op runs: leave NOOP unset (or NOOP=1)" >&2
    exit 2
fi
PAIRED=0
if [ "$PAIRS" -gt 1 ] || [ "$NOOP" = 1 ]; then
    PAIRED=1
fi
if [ -z "$SAMPLE_EVERY" ]; then
    if [ "$PAIRED" = 1 ]; then SAMPLE_EVERY=0; else SAMPLE_EVERY=5; fi
fi
case $SAMPLE_EVERY in
    '' | *[!0-9]*) echo "[soak] SAMPLE_EVERY must be a whole number of seconds, not '$SAMPLE_EVERY'" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=soak
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
log "machine: nproc=$(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "server $READSTATES_BIN, results go to $OUT"

# shellcheck source=benches/loadgen/metrics_series.sh
. benches/loadgen/metrics_series.sh
# shellcheck source=benches/loadgen/threads.sh
. benches/loadgen/threads.sh

warmup_s=$(duration_secs "$WARMUP")
# --- one soak ----------------------------------------------------------------
# A soak's files are in CONFIG, SERVER_LOG, SERIES, METRICS_CSV, GEN_TXT,
# THREADS, SUMMARY and PNG; soak_files NAME sets them all to OUT/NAME.*.
soak_files() {
    CONFIG="$OUT/$1.toml"
    SERVER_LOG="$OUT/$1.log"
    SERIES="$OUT/$1.series.csv"
    METRICS_CSV="$OUT/$1.metrics-series.csv"
    GEN_TXT="$OUT/$1.txt"
    THREADS="$OUT/$1.threads.txt"
    SUMMARY="$OUT/$1.summary.txt"
    PNG="$OUT/$1.png"
}

write_config() {
    cat > "$CONFIG" <<EOF
server.listen_addr = "127.0.0.1:$RS_PORT"
store.backend = "$BACKEND"
store.data_dir = "$WORK/data"
cache.capacity = $CAPACITY
flush.delay_ms = $DELAY_MS
metrics.listen_addr = "127.0.0.1:$METRICS_PORT"
log.level = "info"
$EXTRA_CONFIG
EOF
}

# start_server readstates|noop: starts the server pinned to SERVER_CORE
# (readstates on a fresh data dir, with CONFIG) and sets SERVER_PID and
# SERVER_ADDR.
start_server() {
    case $1 in
        readstates)
            rm -rf "$WORK/data"
            write_config
            start_readstates "$CONFIG" "$SERVER_LOG"
            SERVER_PID=$RS_PID
            SERVER_ADDR=127.0.0.1:$RS_PORT
            log "readstates pid $RS_PID on core $SERVER_CORE, port $RS_PORT, metrics on $METRICS_PORT"
            ;;
        noop)
            taskset -c "$SERVER_CORE" "$BENCH" noop-server --addr "127.0.0.1:$NOOP_PORT" > "$SERVER_LOG" 2>&1 &
            SERVER_PID=$!
            PIDS+=("$SERVER_PID")
            wait_for_line "$SERVER_LOG" "grpc_addr=" "$SERVER_PID"
            SERVER_ADDR=127.0.0.1:$NOOP_PORT
            log "noop-server pid $SERVER_PID on core $SERVER_CORE, port $NOOP_PORT"
            ;;
    esac
}

# measure readstates|noop: once the machine is quiet, the generator against
# the server, writing GEN_TXT and SERIES; against readstates, the metrics
# sampler beside it writes METRICS_CSV. THREADS gets the server's threads'
# CPU and run-queue wait over the run (warm-up included). Exits if the
# generator fails.
measure() {
    local target=$1 start_ns gen_pid sampler_pid="" gen_rc=0
    local -a ops
    wait_quiet
    if [ "$target" = noop ] && [ "$NOOP_IO_PAGES" -gt 0 ]; then
        rm -f "$WORK/pages.dat"
        taskset -c "$SERVER_CORE" chrt --idle 0 python3 "$LOADGEN_DIR/page_writer.py" \
            "$WORK/pages.dat" "$NOOP_IO_PAGES" "$NOOP_IO_INTERVAL_S" &
        NOOP_WRITER_PID=$!
        PIDS+=("$NOOP_WRITER_PID")
        log "disk writer pid $NOOP_WRITER_PID: $NOOP_IO_PAGES pages every $NOOP_IO_INTERVAL_S s"
    fi
    thread_times "$SERVER_PID" > "$WORK/threads.before"
    log "run: $BENCH run --target grpc --addr $SERVER_ADDR --rate $RATE --mix realistic --duration $DURATION --warmup $WARMUP $GEN_EXTRA"
    start_ns=$(date +%s%N)
    # shellcheck disable=SC2086 # GEN_EXTRA holds flags: split on purpose
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "$SERVER_ADDR" --rate "$RATE" \
        --mix realistic --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
        --server-pid "$SERVER_PID" --series "$SERIES" $GEN_EXTRA > "$GEN_TXT" &
    gen_pid=$!
    PIDS+=("$gen_pid")
    if [ "$target" = readstates ]; then
        sample_metrics "$gen_pid" "$start_ns" &
        sampler_pid=$!
        PIDS+=("$sampler_pid")
    fi
    wait "$gen_pid" || gen_rc=$?
    thread_times "$SERVER_PID" > "$WORK/threads.after"
    thread_report "$WORK/threads.before" "$WORK/threads.after" > "$THREADS"
    if [ -n "$sampler_pid" ]; then
        wait "$sampler_pid" || true
        # The last snapshot, at the end, with the operations of the header.
        mapfile -t ops < <(head -1 "$METRICS_CSV" | tr ',' '\n' | sed -n 's/^store_\(.*\)_seconds_sum$/\1/p')
        snapshot "$(window_second "$start_ns")" "${ops[@]}" >> "$METRICS_CSV"
    fi
    cat "$GEN_TXT"
    [ "$gen_rc" = 0 ] || { log "the generator failed (exit $gen_rc)"; exit 1; }
}

# stop_server readstates|noop: SIGTERM (readstates writes back what is dirty),
# at most SHUTDOWN_WAIT s for the exit; sets SERVER_RC and SHUTDOWN.
stop_server() {
    local stop_started=$SECONDS
    [ "$1" != readstates ] || log "stopping readstates (SIGTERM; it writes back what is dirty)"
    if [ -n "${NOOP_WRITER_PID:-}" ]; then
        kill "$NOOP_WRITER_PID" 2>/dev/null || true
        wait "$NOOP_WRITER_PID" 2>/dev/null || true
        NOOP_WRITER_PID=""
    fi
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 $((SHUTDOWN_WAIT * 10))); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        log "$1 did not exit within $SHUTDOWN_WAIT s"
        exit 1
    fi
    SERVER_RC=0
    wait "$SERVER_PID" || SERVER_RC=$?
    PIDS=()
    SHUTDOWN="exit $SERVER_RC after $((SECONDS - stop_started)) s"
}

# p99_stats: per-second p99 over SERIES' seconds with completed requests:
# median, worst, and how many seconds exceeded 3x the median.
p99_stats() {
    awk -F, 'NR > 1 && $2 > 0 { print $4, $1, $6 }' "$SERIES" | sort -n | awk '
        { p[NR] = $1; sec[NR] = $2; mx[NR] = $3 }
        END {
            if (NR == 0) { print "no data"; exit }
            median = (NR % 2) ? p[(NR + 1) / 2] : (p[NR / 2] + p[NR / 2 + 1]) / 2
            above = 0
            for (i = 1; i <= NR; i++) if (p[i] > 3 * median) above++
            printf "per-second p99: median %.2f ms; worst second %d: p99 %.2f ms, max %.2f ms; %d of %d seconds above 3x the median (%.2f ms)\n",
                median / 1000, sec[NR], p[NR] / 1000, mx[NR] / 1000, above, NR, 3 * median / 1000
        }'
}

# summarize readstates|noop NAME: the soak's summary, to SUMMARY and stdout.
summarize() {
    local target=$1 name=$2 stats server
    stats=$(p99_stats)
    if [ "$target" = readstates ]; then
        server="$BACKEND store, cache.capacity $CAPACITY, flush.delay_ms $DELAY_MS"
    else
        server="no-op server$(noop_io_note)"
    fi
    {
        echo
        echo "== $name ($(date -u +%Y-%m-%dT%H:%M:%SZ)): $RATE req/s realistic mix for $DURATION (+$WARMUP warm-up);" \
             "$server; server core $SERVER_CORE, generator core $GEN_CORE"
        [ "$target" != readstates ] || [ -z "$EXTRA_CONFIG" ] || echo "extra config: $(echo "$EXTRA_CONFIG" | paste -sd ';' -)"
        [ -z "$GEN_EXTRA" ] || echo "generator flags: $GEN_EXTRA"
        grep '^SUMMARY' "$GEN_TXT"
        echo "$stats"
        echo "server threads over the run (warm-up included), from /proc/<pid>/task/*/schedstat:"
        sed 's/^/  /' "$THREADS"
        echo "graceful shutdown: $SHUTDOWN"
        if [ "$target" = readstates ]; then
            echo "server metrics at the end (last row of $METRICS_CSV):"
            paste -d= <(head -1 "$METRICS_CSV" | tr ',' '\n') <(tail -1 "$METRICS_CSV" | tr ',' '\n') | sed 's/^/  /'
        fi
        echo "full report, series and config: $OUT"
    } | tee "$SUMMARY"
}

# noop_io_note: how the no-op runs write the disk, if they do.
noop_io_note() {
    [ "$NOOP_IO_PAGES" = 0 ] || echo " with a disk writer of $NOOP_IO_PAGES pages every $NOOP_IO_INTERVAL_S s"
}

# The moment readstates' timed write-back starts, in seconds of the window.
write_back_from() { awk -v d="$DELAY_MS" -v w="$warmup_s" 'BEGIN { print d / 1000 - w }'; }

# plot_soak readstates|noop NAME: PNG, the soak's per-second p99 and max.
plot_soak() {
    local target=$1 name=$2 server="no-op server" marks=()
    if [ "$target" = readstates ]; then
        server="cache.capacity $CAPACITY"
        marks=(--mark-from "$(write_back_from):timed write-back starts")
    fi
    plot "$PNG" "$name: $RATE req/s realistic, $server, $DURATION: per-second p99 and max (latency from intended start)" \
        "$name=$SERIES" --hline 20ms:"max target 20 ms" "${marks[@]}"
    [ ! -f "$PNG" ] || log "plot: $PNG"
}

# soak readstates|noop NAME: one soak, start to plot. A server that exits with
# an error is counted in FAILED (the run is kept).
FAILED=()
soak() {
    local target=$1 name=$2
    start_server "$target"
    measure "$target"
    stop_server "$target"
    summarize "$target" "$name"
    plot_soak "$target" "$name"
    [ "$SERVER_RC" = 0 ] || { log "$target exited with $SERVER_RC"; FAILED+=("$name: $target exited with $SERVER_RC"); }
}

# --- the runs ----------------------------------------------------------------
if [ "$PAIRED" = 0 ]; then
    CONFIG="$OUT/soak.toml"
    SERVER_LOG="$OUT/readstates.log"
    SERIES="$OUT/soak.series.csv"
    METRICS_CSV="$OUT/metrics-series.csv"
    GEN_TXT="$OUT/soak.txt"
    THREADS="$OUT/threads.txt"
    SUMMARY="$OUT/summary.txt"
    PNG="$OUT/soak.png"
    soak readstates soak
else
    log "$PAIRS pair(s) of soaks, readstates and the no-op server$(noop_io_note) (port $NOOP_PORT), alternating which runs first"
    : > "$OUT/summary.txt"
    runs=()   # the runs' reports, in the order they ran
    for pair in $(seq 1 "$PAIRS"); do
        if [ $((pair % 2)) = 1 ]; then order=(readstates noop); else order=(noop readstates); fi
        log "pair $pair of $PAIRS: ${order[0]} first, then ${order[1]}"
        for target in "${order[@]}"; do
            soak_files "pair$pair-$target"
            soak "$target" "pair$pair-$target"
            cat "$SUMMARY" >> "$OUT/summary.txt"
            runs+=("$GEN_TXT")
        done
        plot "$OUT/pair$pair.png" "pair $pair ($RATE req/s realistic, $DURATION; ${order[0]} first): per-second p99 and max (latency from intended start)" \
            "readstates=$OUT/pair$pair-readstates.series.csv" "noop=$OUT/pair$pair-noop.series.csv" \
            --hline 20ms:"max target 20 ms" --mark-from "$(write_back_from):timed write-back starts"
        [ ! -f "$OUT/pair$pair.png" ] || log "plot: $OUT/pair$pair.png"
    done
    echo
    python3 "$LOADGEN_DIR/soak_pairs.py" -o "$OUT/pairs.md" \
        --title "$RATE req/s realistic mix for $DURATION (+$WARMUP warm-up), $CONNECTIONS connections${GEN_EXTRA:+, generator flags $GEN_EXTRA};
readstates: $BACKEND store, cache.capacity $CAPACITY, flush.delay_ms $DELAY_MS${EXTRA_CONFIG:+, extra config $(echo "$EXTRA_CONFIG" | paste -sd ';' -)};
no-op server$(noop_io_note);
server core $SERVER_CORE, generator core $GEN_CORE; results in $OUT" \
        "${runs[@]}" | tee -a "$OUT/summary.txt"
    log "pairs report: $OUT/pairs.md"
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    log "failed: ${FAILED[*]}"
    exit 1
fi

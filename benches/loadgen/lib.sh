# Shell helpers shared by benches/loadgen/compare.sh and soak.sh; sourced,
# not run. The sourcing script sets `set -euo pipefail`, cds to the repository
# root, and may set LOG_TAG (the log prefix) and METRICS_PORT (readstates'
# metrics, for wait_flushed) first.
#
# On source it creates WORK (a temp dir, removed on exit) and PIDS (the
# processes to stop on exit: append to it), and sets the EXIT/INT/TERM traps.

LOG_TAG=${LOG_TAG:-loadgen}
QUIET_PCT=${QUIET_PCT:-15}        # wait for other load to drop below this (% of one core)...
QUIET_WAIT=${QUIET_WAIT:-180}     # ...for at most this many seconds before each run
# READSTATES_BIN / BENCH: the server and generator binaries (defaults: this
# tree's release build); point READSTATES_BIN at an older build to measure it
# as the reference.
READSTATES_BIN=${READSTATES_BIN:-target/release/readstates}
BENCH=${BENCH:-target/release/readstates-bench}
LOADGEN_DIR=benches/loadgen

WORK=$(mktemp -d -t "readstates-$LOG_TAG.XXXXXX")
PIDS=()

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

# Stops every process in PIDS (SIGTERM, then SIGKILL after 10 s) and removes
# WORK.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # readstates flushes on SIGTERM; give it a moment, then insist.
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build_release: builds the release binaries, unless SKIP_BUILD=1.
build_release() {
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        log "SKIP_BUILD=1: using the existing binaries ($READSTATES_BIN, $BENCH)"
    else
        log "building release binaries"
        cargo build --release --features loadgen --bin readstates --bin readstates-bench >&2
    fi
    local bin
    for bin in "$READSTATES_BIN" "$BENCH"; do
        [ -x "$bin" ] || { log "no executable $bin"; return 1; }
    done
}

# wait_for_line FILE PATTERN PID: waits until FILE contains PATTERN, or fails
# after 30 s or when PID dies.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3
    for _ in $(seq 1 300); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { log "process $pid died:"; cat "$file" >&2; return 1; }
        sleep 0.1
    done
    log "timed out waiting for '$pattern' in $file"
    return 1
}

# start_readstates CONFIG LOGFILE: starts READSTATES_BIN pinned to SERVER_CORE,
# waits until it serves, and sets RS_PID (also added to PIDS).
start_readstates() {
    taskset -c "$SERVER_CORE" "$READSTATES_BIN" --config "$1" > "$2" 2>&1 &
    RS_PID=$!
    PIDS+=("$RS_PID")
    wait_for_line "$2" "grpc_addr=" "$RS_PID"
}

# Busy ticks of the whole machine (user nice system irq softirq steal).
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# Waits until the machine (idle servers included) stays under QUIET_PCT% of one
# core for a second, so another build or test run does not skew the figures.
wait_quiet() {
    local hz deadline before after pct
    hz=$(getconf CLK_TCK)
    deadline=$((SECONDS + QUIET_WAIT))
    while :; do
        before=$(busy_ticks); sleep 1; after=$(busy_ticks)
        pct=$(( (after - before) * 100 / hz ))
        if [ "$pct" -le "$QUIET_PCT" ]; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "WARNING: machine still ${pct}% busy (of one core) with other work; running anyway"
            return 0
        fi
        log "machine ${pct}% busy with other work; waiting for it to settle"
        sleep 4
    done
}

# wait_flushed [SECONDS]: waits (default 180 s at most) until readstates, its
# metrics on METRICS_PORT, has written back every dirty state, so its
# write-behind neither spills into the next run nor competes with another
# target for the server core.
wait_flushed() {
    local dirty="" limit=${1:-180}
    command -v curl >/dev/null 2>&1 || { log "no curl: sleeping 40 s for the flush instead"; sleep 40; return 0; }
    for _ in $(seq 1 "$limit"); do
        dirty=$(curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null \
            | awk '$1 == "readstates_dirty_read_states" {print $2}')
        if [ "${dirty:-x}" = 0 ]; then
            return 0
        fi
        sleep 1
    done
    log "WARNING: readstates still reports ${dirty:-?} dirty states"
}

# summary_field FILE KEY: a value from the SUMMARY (or WARM) line in FILE, or -.
summary_field() {
    [ -f "$1" ] || { echo "-"; return; }
    grep -E '^(SUMMARY|WARM) ' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v us="$1" 'BEGIN { if (us == "-" || us == "") print "-"; else printf "%.2f", us / 1000 }'; }

# duration_secs 3s|500ms|1m|2.5: seconds, as the generator parses durations.
duration_secs() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /ms$/) { sub(/ms$/, "", d); print d / 1000 }
        else if (d ~ /s$/) { sub(/s$/, "", d); print d + 0 }
        else if (d ~ /m$/) { sub(/m$/, "", d); print d * 60 }
        else print d + 0
    }'
}

# plot OUT.png TITLE ARGS...: runs plot_series.py if matplotlib is installed,
# else says how to install it. Never fails the calling script.
plot() {
    local png=$1 title=$2
    shift 2
    if ! python3 -c 'import matplotlib' 2>/dev/null; then
        log "no plots: matplotlib is not installed (benches/loadgen/install-plot.sh installs it)"
        return 0
    fi
    python3 "$LOADGEN_DIR/plot_series.py" -o "$png" --title "$title" "$@" >&2 \
        || log "WARNING: plotting $png failed"
}

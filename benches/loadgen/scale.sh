#!/usr/bin/env bash
# The embedded store as it grows (BENCHMARKS.md, "Cost as the work grows"), in
# one command. For each size in SIZES (stored states), in increasing order:
#
#   1. extends one store under DIR to that size (`readstates-bench store fill`,
#      the flusher's write path in key order), timing it;
#   2. times SAMPLES loads of random users with the file in the page cache
#      (read through once) and store.cache_mib = CACHE_MIB;
#   3. drops the page cache and times SAMPLES loads again inside a memory
#      cgroup allowed a tenth of the file plus BASE_MIB for the process itself,
#      with store.cache_mib = LIMITED_CACHE_MIB;
#   4. times write-back batches of the flusher's shape, 4 in flight (rows/s)
#      and 1 in flight (one fsynced commit each: commits/s);
#   5. starts the server on the store and times it from exec to SERVING on the
#      health check: after a clean shutdown, and after a SIGKILL (a crash);
#
# then writes OUT/scale.csv and draws OUT/scale.png (matplotlib:
# benches/loadgen/install-plot.sh).
#
# Needs root (drop_caches, the cgroup v1 memory controller) and disk: about
# 70 bytes per state, 7 GB at 100 million. DIR is kept (FRESH=1 starts over).
#
# Usage:
#   benches/loadgen/scale.sh
#   SIZES="1000000 10000000" SAMPLES=500 benches/loadgen/scale.sh
set -euo pipefail

SIZES=${SIZES:-"1000000 10000000 100000000"}
SAMPLES=${SAMPLES:-2000}
CACHE_MIB=${CACHE_MIB:-128}            # store.cache_mib with the file in the page cache
LIMITED_CACHE_MIB=${LIMITED_CACHE_MIB:-16}
BASE_MIB=${BASE_MIB:-48}               # the process's own memory inside the cgroup
SERVER_CORE=${SERVER_CORE:-0}
RS_PORT=${RS_PORT:-58051}
FRESH=${FRESH:-0}

cd "$(dirname "$0")/../.."
DIR=${DIR:-target/loadgen-scale/store}
OUT=${OUT:-target/loadgen-scale/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=scale
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

build_release
[ "$FRESH" = 1 ] && rm -rf "$DIR"
mkdir -p "$DIR"
log "machine: nproc=$(nproc), $(free -g | awk '/Mem:/{print $2}') GiB, $(date -u +%Y-%m-%dT%H:%M:%SZ); store in $DIR, results in $OUT"

CGROUP=/sys/fs/cgroup/memory/readstates-scale
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
file_bytes() { stat -c %s "$DIR/readstates.redb"; }
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

# limited LIMIT_BYTES CMD...: runs CMD in a fresh memory cgroup of that limit.
limited() {
    local limit=$1; shift
    [ -d "$CGROUP" ] && rmdir "$CGROUP"
    mkdir "$CGROUP"
    echo "$limit" > "$CGROUP/memory.limit_in_bytes"
    sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$CGROUP" "$@"
    log "cgroup peak $(( $(cat "$CGROUP/memory.max_usage_in_bytes") >> 20 )) MiB of $(( limit >> 20 )) MiB; page cache at the end $(( $(awk '$1 == "cache" {print $2}' "$CGROUP/memory.stat") >> 20 )) MiB"
}

# serving_ms: starts the server on DIR and prints the ms from exec to SERVING.
serving_ms() {
    local started line
    cat > "$WORK/server.toml" <<EOF
server.listen_addr = "127.0.0.1:$RS_PORT"
store.data_dir = "$DIR"
metrics.listen_addr = "127.0.0.1:0"
EOF
    started=$(date +%s%N)
    taskset -c "$SERVER_CORE" "$READSTATES_BIN" --config "$WORK/server.toml" > "$OUT/server.log" 2>&1 &
    RS_PID=$!
    PIDS+=("$RS_PID")
    line=$("$BENCH" store wait-serving --addr "127.0.0.1:$RS_PORT" --started-ns "$started")
    field "$line" after_ms
}

stop_server() {
    kill "-$1" "$RS_PID"
    wait "$RS_PID" 2>/dev/null || true
}

echo "states,users,fill_s,fill_rows_per_s,file_bytes,bytes_per_state,cached_p50_us,cached_p99_us,cached_max_us,limited_p50_us,limited_p99_us,limited_max_us,limit_mib,writeback_rows_per_s,commits_per_s,serving_clean_ms,serving_crash_ms" > "$OUT/scale.csv"
for size in $SIZES; do
    log "filling to $size states"
    line=$("$BENCH" store fill --dir "$DIR" --states "$size")
    echo "$line" | tee -a "$OUT/log.txt"
    bytes=$(file_bytes)

    cat "$DIR/readstates.redb" > /dev/null
    cached=$("$BENCH" store loads --dir "$DIR" --samples "$SAMPLES" --cache-mib "$CACHE_MIB")
    echo "cached:  $cached" | tee -a "$OUT/log.txt"

    limit=$(( bytes / 10 + (BASE_MIB << 20) ))
    drop_caches
    lim=$(limited "$limit" "$BENCH" store loads --dir "$DIR" --samples "$SAMPLES" --cache-mib "$LIMITED_CACHE_MIB" --seed 2)
    echo "limited: $lim" | tee -a "$OUT/log.txt"

    cat "$DIR/readstates.redb" > /dev/null
    wb4=$("$BENCH" store writeback --dir "$DIR" --in-flight 4 --batches 400)
    wb1=$("$BENCH" store writeback --dir "$DIR" --in-flight 1 --batches 200)
    echo "$wb4" | tee -a "$OUT/log.txt"
    echo "$wb1" | tee -a "$OUT/log.txt"

    # (Not in a subshell: RS_PID must reach stop_server.)
    serving_ms > "$WORK/ms"; clean=$(cat "$WORK/ms")
    # A crash: the file is left open, as after a power loss or an OOM kill.
    stop_server KILL
    serving_ms > "$WORK/ms"; crash=$(cat "$WORK/ms")
    stop_server TERM
    log "SERVING after a clean shutdown: $clean ms; after a SIGKILL: $crash ms"

    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' \
        "$(field "$line" states)" "$(field "$line" users)" "$(field "$line" seconds)" "$(field "$line" rows_per_s)" \
        "$bytes" "$(awk -v b="$bytes" -v s="$(field "$line" states)" 'BEGIN{printf "%.1f", b/s}')" \
        "$(field "$cached" p50_us)" "$(field "$cached" p99_us)" "$(field "$cached" max_us)" \
        "$(field "$lim" p50_us)" "$(field "$lim" p99_us)" "$(field "$lim" max_us)" "$(( limit >> 20 ))" \
        "$(field "$wb4" rows_per_s)" "$(field "$wb1" batches_per_s)" "$clean" "$crash" >> "$OUT/scale.csv"
done
[ -d "$CGROUP" ] && rmdir "$CGROUP"
column -s, -t < "$OUT/scale.csv" >&2
python3 benches/loadgen/plot_scale.py "$OUT/scale.csv" "$OUT/scale.png" \
    || log "no plot (benches/loadgen/install-plot.sh installs matplotlib)"

# shellcheck shell=bash disable=SC2154
# Server metrics as a per-second series, shared by soak.sh and restart.sh;
# sourced after lib.sh, not run. The sourcing script sets METRICS_PORT (the
# server's metrics), GEN_CORE (where the sampler runs), SAMPLE_EVERY
# (seconds between snapshots), warmup_s (the generator's warm-up, in
# seconds) and, before each sample_metrics, METRICS_CSV (where it writes).

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
    readstates_mentions_deferred_waiting
    readstates_flush_write_age_seconds
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

# window_second START_NS: now, in seconds of the measured window (0 = its
# start) of a generator started at START_NS.
window_second() {
    awk -v n="$(date +%s%N)" -v s="$1" -v w="$warmup_s" 'BEGIN { printf "%.1f", (n - s) / 1e9 - w }'
}

# metrics_header OPS...: the CSV header of the snapshots.
metrics_header() {
    local header="second" metric op
    for metric in "${METRICS[@]}"; do header="$header,${metric#readstates_}"; done
    header="$header,cache_evictions_dirty,cache_evictions_clean"
    for op in "$@"; do header="$header,store_${op}_seconds_sum,store_${op}_seconds_count"; done
    echo "$header"
}

# sample_metrics GEN_PID START_NS: snapshots to METRICS_CSV every SAMPLE_EVERY
# seconds while GEN_PID runs (with SAMPLE_EVERY=0, only the header: the caller
# takes its snapshot once the generator is done); run it in the background. It
# moves itself to the generator's core so the server's stays undisturbed.
#
# Between snapshots it forks nothing: it waits on a pipe nobody writes to
# (`read -t`) and reads the time from bash (`EPOCHREALTIME`, bash 5). A
# process forked on the generator's core takes the core for about 1.5 ms on
# this project's VMs (fork and exec), and the generator's latencies count from
# the intended start: a wait of `sleep`, `date` and `awk` each second put
# three such stalls into every second of the series (BENCHMARKS.md, "The
# sampler's idle second").
sample_metrics() {
    local gen_pid=$1 start_ns=$2 k=0 next_ns now wait_ns wait_s wait_fd
    local -a ops
    taskset -cp "$GEN_CORE" "$BASHPID" >/dev/null
    exec {wait_fd}<> <(:)
    mapfile -t ops < <(store_ops)
    metrics_header "${ops[@]}" > "$METRICS_CSV"
    while kill -0 "$gen_pid" 2>/dev/null; do
        if [ "$SAMPLE_EVERY" -gt 0 ]; then
            snapshot "$(window_second "$start_ns")" "${ops[@]}" >> "$METRICS_CSV"
            k=$((k + 1))
            next_ns=$((start_ns + k * SAMPLE_EVERY * 1000000000))
        else
            now=${EPOCHREALTIME/./}
            next_ns=$((now * 1000 + 1000000000))
        fi
        # Waits in slices of at most a second, so a long SAMPLE_EVERY ends
        # with the generator rather than after it.
        while kill -0 "$gen_pid" 2>/dev/null; do
            now=${EPOCHREALTIME/./}
            wait_ns=$((next_ns - now * 1000))
            [ "$wait_ns" -gt 0 ] || break
            [ "$wait_ns" -le 1000000000 ] || wait_ns=1000000000
            printf -v wait_s '%d.%06d' $((wait_ns / 1000000000)) $((wait_ns % 1000000000 / 1000))
            read -r -t "$wait_s" -u "$wait_fd" || true
        done
    done
    exec {wait_fd}<&-
}

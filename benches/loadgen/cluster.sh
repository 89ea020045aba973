#!/usr/bin/env bash
# Several instances over one keyspace beside one instance (BENCHMARKS.md,
# "Scale-out"): the same open-loop load through all of them, with the share
# of calls an instance forwarded to the owner of their users, sent by a
# client that does not know the owners or by one that does.
#
# Needs a running ScyllaDB or Cassandra (CONTACT, default 127.0.0.1:9042;
# e.g. `docker compose up -d scylla`). For each variant in VARIANTS:
#   1. creates a fresh keyspace (the first instance migrates it);
#   2. starts that many instances with the cluster on, all pinned to
#      SERVER_CORES, and waits until their owned slots add up to SLOTS;
#   3. runs the generator pinned to GEN_CORE, open loop at RATE req/s of the
#      realistic mix for DURATION, with the variant's client: `naive`, its
#      connections spread round-robin over the instances (a client that
#      does not know the owners), or `smart` (readstates-bench --client
#      smart: readstates-client, each call straight to its user's owner,
#      fan-outs split by owner, no retries), so forwards per call read ~0;
#   4. reports the generator's SUMMARY, the instances' CPU per call, and the
#      forwards (readstates_cluster_forwards_total) per call sent (calls
#      answered, readstates_rpc_duration_seconds_count, less the forwards;
#      a fan-out the smart client splits counts once per part here, once in
#      the generator's calls), then stops them with SIGTERM and checks that
#      each exits 0.
# At the end it prints one row per variant: instances, client, calls/s,
# forwards per call, the instances' CPU per call and its ratio to the first
# 1-instance variant's, p50 and p99.
#
# VARIANTS: space-separated, each `N` (N instances, naive client) or
# `N:CLIENT` (CLIENT naive or smart), measured in order; a variant's files
# and log lines are labelled N-CLIENT (run-3-smart.txt, ...).
#
# Usage: benches/loadgen/cluster.sh        (settings below, as environment variables)
#   VARIANTS="3 3:smart" RATE=1000 DURATION=30s SKIP_BUILD=1 benches/loadgen/cluster.sh
# Each variant leaves its keyspace (readstates_bench_cluster_<n>_<client>_<time>)
# for inspection; drop it with cqlsh when done.
set -euo pipefail

VARIANTS=${VARIANTS:-"1 3 3:smart"}  # instance counts[:client] to measure, in order
DURATION=${DURATION:-60s}
WARMUP=${WARMUP:-5s}
RATE=${RATE:-2000}
CAPACITY=${CAPACITY:-500000}      # cache.capacity of each instance
DELAY_MS=${DELAY_MS:-30000}       # flush.delay_ms
SLOTS=${SLOTS:-1024}
CONTACT=${CONTACT:-127.0.0.1:9042}
DC=${DC:-datacenter1}
CONNECTIONS=${CONNECTIONS:-6}     # generator connections, spread over the instances
                                  # (smart: ceil(CONNECTIONS / N) clients, one connection
                                  # per instance each)
SERVER_CORES=${SERVER_CORES:-0}
GEN_CORE=${GEN_CORE:-1}
BASE_PORT=${BASE_PORT:-57151}     # instance i listens on BASE_PORT+i, metrics on BASE_PORT+100+i
GEN_EXTRA=${GEN_EXTRA:-}          # extra generator flags, e.g. --omit-mention-states
# SKIP_BUILD=1, READSTATES_BIN, BENCH, QUIET_PCT, QUIET_WAIT: see lib.sh.

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-cluster/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=cluster
SERVER_CORE=$SERVER_CORES
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

# parse_variant N[:CLIENT]: sets n and client (naive by default), or fails.
parse_variant() {
    n=${1%%:*} client=naive
    [ "$1" = "$n" ] || client=${1#*:}
    case "$n" in
        '' | *[!0-9]* | 0*) log "bad variant '$1': N must be a positive instance count"; return 1 ;;
    esac
    case "$client" in
        naive | smart) ;;
        *) log "bad variant '$1': the client is naive or smart (N or N:smart)"; return 1 ;;
    esac
}
# Every variant is checked before anything starts.
for variant in $VARIANTS; do parse_variant "$variant" || exit 2; done

build_release
log "machine: nproc=$(nproc), $(date -u +%Y-%m-%dT%H:%M:%SZ); results go to $OUT"

# sum_metric PORT NAME: a metric summed over its labels, 0 if absent.
sum_metric() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk -v name="$2" '/^#/ { next } { m = $1; sub(/\{.*/, "", m); if (m == name) s += $NF } END { print s + 0 }'
}
# cpu_ticks PID...: user + system ticks of the processes.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# The final table's rows, one per variant.
rows=()
base_us=""                         # CPU per call of the first 1-instance variant
for variant in $VARIANTS; do
    parse_variant "$variant"
    label="$n-$client"
    keyspace="readstates_bench_cluster_${n}_${client}_$(date +%s)"
    addrs=() pids=() metric_ports=()
    for i in $(seq 1 "$n"); do
        port=$((BASE_PORT + i)) metrics_port=$((BASE_PORT + 100 + i))
        config="$OUT/instance-$label-$i.toml"
        cat > "$config" <<EOF
server.listen_addr = "127.0.0.1:$port"
metrics.listen_addr = "127.0.0.1:$metrics_port"
store.backend = "scylla"
cache.capacity = $CAPACITY
flush.delay_ms = $DELAY_MS
log.level = "info"
scylla.contact_points = ["$CONTACT"]
scylla.local_datacenter = "$DC"
scylla.keyspace = "$keyspace"
scylla.replication = "{'class': 'NetworkTopologyStrategy', '$DC': 1}"
scylla.migrate_on_start = true
cluster.enabled = true
cluster.instance_id = "bench-$i"
cluster.advertise_addr = "127.0.0.1:$port"
cluster.slots = $SLOTS
EOF
        # One at a time: the first migrates the keyspace.
        start_readstates "$config" "$OUT/instance-$label-$i.log"
        addrs+=("127.0.0.1:$port") pids+=("$RS_PID") metric_ports+=("$metrics_port")
    done
    log "$label: $n instance(s) up (pids ${pids[*]}); waiting until they hold all $SLOTS slots"
    for _ in $(seq 1 120); do
        owned=0
        for port in "${metric_ports[@]}"; do
            owned=$((owned + $(sum_metric "$port" readstates_cluster_owned_slots | cut -d. -f1)))
        done
        [ "$owned" -ge "$SLOTS" ] && break
        sleep 1
    done
    [ "$owned" -ge "$SLOTS" ] || { log "$label: only $owned of $SLOTS slots held after 120 s"; exit 1; }

    wait_quiet
    addr_list=$(IFS=,; echo "${addrs[*]}")
    calls_before=0 forwarded_before=0
    for port in "${metric_ports[@]}"; do
        calls_before=$((calls_before + $(sum_metric "$port" readstates_rpc_duration_seconds_count)))
        forwarded_before=$((forwarded_before + $(sum_metric "$port" readstates_cluster_forwards_total)))
    done
    ticks_before=$(cpu_ticks "${pids[@]}")
    log "$label run: $BENCH run --client $client --addr $addr_list --rate $RATE --duration $DURATION $GEN_EXTRA"
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --client "$client" --addr "$addr_list" \
        --rate "$RATE" --mix realistic --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --series "$OUT/series-$label.csv" $GEN_EXTRA \
        > "$OUT/run-$label.txt"
    ticks_after=$(cpu_ticks "${pids[@]}")
    calls_after=0 forwarded_after=0
    for port in "${metric_ports[@]}"; do
        calls_after=$((calls_after + $(sum_metric "$port" readstates_rpc_duration_seconds_count)))
        forwarded_after=$((forwarded_after + $(sum_metric "$port" readstates_cluster_forwards_total)))
    done
    calls=$((calls_after - calls_before)) forwarded=$((forwarded_after - forwarded_before))
    run="$OUT/run-$label.txt"
    ok=$(summary_field "$run" ok)
    us_per_call=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" -v ok="$ok" \
        'BEGIN { if (ok > 0) printf "%.1f", t / hz * 1e6 / ok; else print "-" }')
    forwards_per_call=$(ratio "$forwarded" $((calls - forwarded)))
    {
        echo "== $label: $n instance(s), $client client, $RATE req/s for $DURATION; keyspace $keyspace"
        grep '^SUMMARY' "$run"
        echo "$label: instances' CPU per generator call: $us_per_call us (all instances together)"
        # A forwarded call is counted by the instance it reached and by its
        # owner; a fan-out sends one forward per other owner.
        echo "$label: calls the instances answered (warm-up included): $calls, of them $forwarded forwards; forwards per call sent: $forwards_per_call"
    } | tee -a "$OUT/summary.txt"
    if [ "$n" = 1 ] && [ -z "$base_us" ] && [ "$us_per_call" != "-" ]; then
        base_us=$us_per_call
    fi
    rows+=("$n $client $(summary_field "$run" achieved) $forwards_per_call $us_per_call $(ms "$(summary_field "$run" p50_us)") $(ms "$(summary_field "$run" p99_us)")")

    for pid in "${pids[@]}"; do kill -TERM "$pid"; done
    for pid in "${pids[@]}"; do
        if ! wait "$pid"; then log "$label: instance $pid did not exit cleanly"; exit 1; fi
    done
done

# One row per variant; the CPU ratio is to the first 1-instance variant's.
{
    echo
    echo "== $RATE req/s offered, realistic mix, $DURATION each; CPU per call over the whole tier"
    printf '%-9s %-6s %9s %13s %15s %9s %9s %9s\n' \
        instances client calls/s fwd/call cpu_us/call cpu_ratio p50_ms p99_ms
    for row in "${rows[@]}"; do
        read -r r_n r_client r_rate r_fwd r_us r_p50 r_p99 <<< "$row"
        printf '%-9s %-6s %9s %13s %15s %9s %9s %9s\n' \
            "$r_n" "$r_client" "$r_rate" "$r_fwd" "$r_us" "$(ratio "$r_us" "${base_us:-0}")" "$r_p50" "$r_p99"
    done
} | tee -a "$OUT/summary.txt"
log "summary: $OUT/summary.txt"

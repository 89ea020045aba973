#!/usr/bin/env bash
# "Big users and big fan-outs" of BENCHMARKS.md, in one command: what a user
# with many states costs to read, cold and cached, and what a mention fan-out
# to many cold users costs, with and without omit_read_states, looking for
# what grows worse than linearly.
#
#   1. builds the release binaries (unless SKIP_BUILD=1);
#   2. starts readstates pinned to SERVER_CORE with the embedded store in a
#      temp dir, a cache (CAPACITY, PARTITIONS) that holds every state of the
#      benchmark even if all of them hashed to one partition, so nothing is
#      evicted and users are cold only because of the restart, and a flush
#      delay (DELAY_MS) longer than the whole run, so no write-back falls into
#      a measured phase;
#   3. `readstates-bench big-users --phase setup`, pinned to GEN_CORE, creates
#      through the API USERS_PER_SIZE users of each size in SIZES (states per
#      user), a warm-up group, and 2 x FANOUT_REPEATS populations (plus two
#      warm-up ones) of FANOUT_USERS users with one state each;
#   4. stops the server with SIGTERM (it writes back every dirty state) and
#      checks that it exits 0, then starts it again on the same data directory
#      (with DROP_CACHES=1, as root, after dropping the OS page cache, so the
#      store's reads come from the disk rather than from memory);
#   5. `--phase measure`: for each size, the first GetUserReadStates of each
#      user (from the store) and REPEATS more of each (from the cache), then
#      each fan-out population once with AddMentions (calls of at most
#      MAX_MENTION_USERS users, the server's limits.max_mention_users), with
#      and without omit_read_states; prints latency (p50, p99, max) and the
#      server's CPU per state (per user for fan-outs), with each size's
#      per-state cost over the smallest size's;
#   6. stops the server again (SIGTERM, exit 0 checked) and prints the summary
#      (OUT/summary.txt); every output, log and config stays under OUT.
#
# The server's CPU is the run time of its threads (/proc/PID/task/*/schedstat)
# over each phase, read by the generator (see benches/loadgen/big_users/).
#
# Usage: benches/loadgen/big_users.sh   (settings below, as environment variables)
#   SIZES=100,1000 USERS_PER_SIZE=2 REPEATS=5 FANOUT_USERS=1000 FANOUT_REPEATS=1 \
#       benches/loadgen/big_users.sh                                   # a quick try
#   SIZES=100,1000,10000,100000 benches/loadgen/big_users.sh           # one size more
#   READSTATES_BIN=/tmp/old/readstates SKIP_BUILD=1 benches/loadgen/big_users.sh  # an older server
set -euo pipefail

SIZES=${SIZES:-100,1000,10000}    # states per big user, comma-separated
USERS_PER_SIZE=${USERS_PER_SIZE:-10}
REPEATS=${REPEATS:-50}            # cached reads of each big user after its cold one
FANOUT_USERS=${FANOUT_USERS:-10000}   # users per fan-out, all cold
FANOUT_REPEATS=${FANOUT_REPEATS:-5}   # fan-outs per mode, each to its own population
MAX_MENTION_USERS=${MAX_MENTION_USERS:-10000}  # limits.max_mention_users (server and generator)
PARTITIONS=${PARTITIONS:-64}      # cache.partitions
# CAPACITY: cache.capacity; default PARTITIONS x every state of the benchmark
# (each partition holds capacity / partitions states). DELAY_MS: flush.delay_ms.
DELAY_MS=${DELAY_MS:-3600000}
IN_FLIGHT=${IN_FLIGHT:-256}       # setup calls in flight
CONNECTIONS=${CONNECTIONS:-4}     # setup connections (the measurement uses one)
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
RS_PORT=${RS_PORT:-54151}
METRICS_PORT=${METRICS_PORT:-54564}
SHUTDOWN_WAIT=${SHUTDOWN_WAIT:-300}  # seconds allowed for each graceful exit
DROP_CACHES=${DROP_CACHES:-0}     # 1: drop the OS page cache before the measurement (root)
# EXTRA_CONFIG: raw TOML appended to the server's config, as dotted keys (e.g.
# 'store.reader_threads = 4', one per line). GEN_EXTRA: extra generator flags
# for both phases.
EXTRA_CONFIG=${EXTRA_CONFIG:-}
GEN_EXTRA=${GEN_EXTRA:-}
# SKIP_BUILD=1, READSTATES_BIN, BENCH, QUIET_PCT, QUIET_WAIT: see lib.sh.

cd "$(dirname "$0")/../.."
OUT=${OUT:-target/loadgen-big-users/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG_TAG=big-users
# shellcheck source=benches/loadgen/lib.sh
. benches/loadgen/lib.sh

# Every state the setup creates: the big users (a warm-up group at the smallest
# size included) and the fan-out users (two warm-up populations of at most
# 1,000 users included).
TOTAL_STATES=$(awk -v sizes="$SIZES" -v u="$USERS_PER_SIZE" -v f="$FANOUT_USERS" -v r="$FANOUT_REPEATS" 'BEGIN {
    n = split(sizes, s, ","); sum = 0; min = -1
    for (i = 1; i <= n; i++) { sum += s[i]; if (min < 0 || s[i] + 0 < min) min = s[i] + 0 }
    warm = (f < 1000) ? f : 1000
    printf "%d", u * (sum + min) + 2 * warm + 2 * r * f
}')
CAPACITY=${CAPACITY:-$(( PARTITIONS * TOTAL_STATES > 1000000 ? PARTITIONS * TOTAL_STATES : 1000000 ))}
MAX_DIRTY=$(( 2 * TOTAL_STATES + 1000000 ))

build_release
log "machine: nproc=$(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "server $READSTATES_BIN, results go to $OUT; $TOTAL_STATES states, cache.capacity $CAPACITY over $PARTITIONS partitions"

cat > "$OUT/big-users.toml" <<EOF
server.listen_addr = "127.0.0.1:$RS_PORT"
server.request_timeout_ms = 120000
server.shutdown_timeout_ms = $((SHUTDOWN_WAIT * 1000))
store.backend = "embedded"
store.data_dir = "$WORK/data"
cache.capacity = $CAPACITY
cache.partitions = $PARTITIONS
flush.delay_ms = $DELAY_MS
flush.tombstone_grace_ms = $DELAY_MS
flush.max_dirty_states = $MAX_DIRTY
limits.max_mention_users = $MAX_MENTION_USERS
metrics.listen_addr = "127.0.0.1:$METRICS_PORT"
log.level = "info"
$EXTRA_CONFIG
EOF

SHAPE=(--addr "127.0.0.1:$RS_PORT" --sizes "$SIZES" --users-per-size "$USERS_PER_SIZE"
       --fanout-users "$FANOUT_USERS" --fanout-repeats "$FANOUT_REPEATS"
       --max-mention-users "$MAX_MENTION_USERS")

# stop_readstates: SIGTERM to RS_PID, waits SHUTDOWN_WAIT s for its exit and
# fails unless it exits 0; sets STOPPED (what happened, in words).
stop_readstates() {
    local started=$SECONDS rc=0
    kill -TERM "$RS_PID"
    for _ in $(seq 1 $((SHUTDOWN_WAIT * 10))); do
        kill -0 "$RS_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$RS_PID" 2>/dev/null; then
        log "readstates did not exit within $SHUTDOWN_WAIT s"
        return 1
    fi
    wait "$RS_PID" || rc=$?
    PIDS=()
    STOPPED="exit $rc after $((SECONDS - started)) s"
    [ "$rc" = 0 ] || { log "readstates exited with $rc"; return 1; }
}

# --- setup -------------------------------------------------------------------
start_readstates "$OUT/big-users.toml" "$OUT/readstates-setup.log"
log "readstates pid $RS_PID on core $SERVER_CORE, port $RS_PORT; setup..."
# shellcheck disable=SC2086  # GEN_EXTRA is a list of flags
taskset -c "$GEN_CORE" "$BENCH" big-users --phase setup "${SHAPE[@]}" \
    --in-flight "$IN_FLIGHT" --connections "$CONNECTIONS" $GEN_EXTRA > "$OUT/setup.txt"
cat "$OUT/setup.txt"
log "stopping readstates (SIGTERM: it writes back every state of the setup)"
stop_readstates
setup_stop=$STOPPED
log "setup server: $setup_stop; data dir $(du -sh "$WORK/data" | cut -f1)"

# --- measure -----------------------------------------------------------------
if [ "$DROP_CACHES" = 1 ]; then
    log "dropping the OS page cache"
    sync
    echo 3 > /proc/sys/vm/drop_caches
fi
start_readstates "$OUT/big-users.toml" "$OUT/readstates-measure.log"
log "readstates restarted: pid $RS_PID on core $SERVER_CORE; every user is cold"
wait_quiet
# shellcheck disable=SC2086
taskset -c "$GEN_CORE" "$BENCH" big-users --phase measure "${SHAPE[@]}" --repeats "$REPEATS" \
    --server-pid "$RS_PID" --metrics-addr "127.0.0.1:$METRICS_PORT" $GEN_EXTRA > "$OUT/measure.txt"
log "stopping readstates (SIGTERM: it writes back the mentions)"
stop_readstates
measure_stop=$STOPPED

# --- summary -----------------------------------------------------------------
{
    echo
    echo "== big users and big fan-outs ($(date -u +%Y-%m-%dT%H:%M:%SZ)): sizes $SIZES x $USERS_PER_SIZE users," \
         "$REPEATS cached reads each; fan-outs to $FANOUT_USERS cold users x $FANOUT_REPEATS per mode;" \
         "embedded store, cache.capacity $CAPACITY ($PARTITIONS partitions), flush.delay_ms $DELAY_MS;" \
         "server core $SERVER_CORE, generator core $GEN_CORE; OS page cache $([ "$DROP_CACHES" = 1 ] && echo dropped || echo kept) before the measurement"
    [ -z "$EXTRA_CONFIG" ] || echo "extra config: $(echo "$EXTRA_CONFIG" | paste -sd ';' -)"
    [ -z "$GEN_EXTRA" ] || echo "generator flags: $GEN_EXTRA"
    grep '^SETUP' "$OUT/setup.txt"
    cat "$OUT/measure.txt"
    echo "graceful shutdowns: after the setup $setup_stop; after the measurement $measure_stop"
    echo "outputs, logs and config: $OUT"
} | tee "$OUT/summary.txt"

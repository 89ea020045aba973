#!/usr/bin/env bash
# The no-op server's tail beside a disk writer and nothing else: how much of
# a soak's tail is the machine's cost of the store's page writes, whatever
# process makes them (BENCHMARKS.md, "The write-back sweep").
#
# For each PAGES value (a space-separated list; 0 = no writer), runs the
# soak's generator against `readstates-bench noop-server` for DURATION, with
# benches/loadgen/page_writer.py writing PAGES random 4-KiB pages and an
# fdatasync every INTERVAL_S on the server's core under SCHED_IDLE (as the
# store's writer thread runs), and prints each run's SUMMARY line.
#
#   PAGES="0 110 450 0 110 450" benches/loadgen/noop_io.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG_TAG=noop-io
PAGES=${PAGES:-0 450}
INTERVAL_S=${INTERVAL_S:-0.1}
DURATION=${DURATION:-40s}
RATE=${RATE:-5000}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
NOOP_PORT=${NOOP_PORT:-57052}
# shellcheck source=benches/loadgen/lib.sh
source benches/loadgen/lib.sh
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --features loadgen --bin readstates-bench >&2

for pages in $PAGES; do
    taskset -c "$SERVER_CORE" "$BENCH" noop-server --addr "127.0.0.1:$NOOP_PORT" > "$WORK/server.log" 2>&1 &
    server=$!
    PIDS+=("$server")
    wait_for_line "$WORK/server.log" "grpc_addr=" "$server"
    writer=""
    if [ "$pages" -gt 0 ]; then
        taskset -c "$SERVER_CORE" chrt --idle 0 python3 "$LOADGEN_DIR/page_writer.py" "$WORK/pages.dat" "$pages" "$INTERVAL_S" &
        writer=$!
        PIDS+=("$writer")
    fi
    taskset -c "$GEN_CORE" "$BENCH" run --target grpc --addr "127.0.0.1:$NOOP_PORT" --rate "$RATE" \
        --mix realistic --duration "$DURATION" --warmup 5s --connections 4 --server-pid "$server" \
        --omit-mention-states > "$WORK/gen.txt"
    [ -z "$writer" ] || kill "$writer"
    kill "$server"
    wait "$server" 2>/dev/null || true
    echo "pages_per_${INTERVAL_S}s=$pages $(grep '^SUMMARY' "$WORK/gen.txt")"
done

#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 60) and prints libFuzzer's
# final figures (executions, exec/s, coverage, features); exits non-zero on a
# crash, whose input lands in fuzz/artifacts/<target>/. SECONDS = 0 skips.
# Needs the nightly toolchain and cargo-fuzz; without them it says so and
# skips: `cargo test` runs the stable equivalent (tests/fuzz_requests) anyway.
# The first build instruments every dependency and takes a while (about 18
# minutes on a busy 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if [ "$seconds" = 0 ]; then
    echo "fuzz: skipped (0 seconds); tests/fuzz_requests is the stable equivalent"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped: needs the nightly toolchain and cargo-fuzz" \
        "(rustup toolchain install nightly; cargo install cargo-fuzz)"
    exit 0
fi

# Its own target directory: the instrumented build's flags differ from the
# main build's, and sharing one would rebuild both every time.
unset CARGO_TARGET_DIR
for target in rpc row_codec; do
    cargo +nightly fuzz run --target-dir fuzz/target "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096
done

#!/usr/bin/env bash
# Run every fuzz target for a bounded time (FUZZ_SECONDS each, default 20).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build
for t in $targets; do
    echo "-- fuzz $t (${secs}s)"
    cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=0 2>&1 | tail -n 2
done
echo "fuzz: $(echo $targets | wc -w) targets, ${secs}s each, no crash"

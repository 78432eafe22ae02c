#!/usr/bin/env bash
# Start-up benchmark (issue #11): N fresh starts of a gateway pair in network namespaces,
# half started simultaneously, half staggered by 0–490 ms. Reports time from process start
# to "peer up" in `status` (p50, p99, max), stuck starts (> 10 s) and sync restarts.
# Needs root (netns, raw sockets).
#
#   scripts/startup-bench.sh [N]        # default N = 200
#   STARTUP_HOLD_MS=7000 scripts/startup-bench.sh 20   # hold each pair 7 s (catches the
#                                                      # 5 s handshake retransmission)
# CI runs the cheap variant: cargo test --release --test netns_startup (N = 10).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
OUT="${STARTUP_OUT:-target/startup-bench.txt}"
STARTUP_N="$N" STARTUP_OUT="$(pwd)/$OUT" \
    cargo test --release --test netns_startup -- --ignored --nocapture --exact startup_bench
echo "== figures (also in $OUT)"
cat "$OUT"

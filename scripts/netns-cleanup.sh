#!/usr/bin/env bash
# Remove network namespaces and temp dirs left by aborted netns test runs (pgw-<pid>-*),
# only those whose test process is gone. Tests do this themselves on start; this is for
# manual use after a killed `cargo test`.
set -euo pipefail
for ns in $(ip netns list | awk '{print $1}' | grep '^pgw-' || true); do
    pid=${ns#pgw-}; pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
        ip netns del "$ns" && echo "deleted $ns"
    fi
done

#!/usr/bin/env bash
# The project's whole test suite: unit, property and CLI tests, the network-namespace
# suite (as root; skipped with a printed reason otherwise), bounded fuzzing of every
# parser, and the docker-compose testbed (when Docker is available).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (release)"
cargo test --release

if [ -x scripts/fuzz.sh ]; then
    echo "== fuzz (bounded)"
    scripts/fuzz.sh
fi

if [ -x scripts/compose-test.sh ]; then
    if [ "$(id -u)" = 0 ] && docker info >/dev/null 2>&1; then
        echo "== docker-compose testbed"
        scripts/compose-test.sh
    else
        echo "== docker-compose testbed SKIPPED: needs root and a running Docker engine"
    fi
fi

#!/usr/bin/env bash
# End-to-end check of the docker-compose testbed (docker-compose.yml), offline:
#   build the static binary and a FROM-scratch image, generate keys and configs in a temp
#   dir, start fw-a/gw-a/gw-b/fw-b, wait for the tunnel, start the attackers, let the
#   emulated firewalls churn, then wait for convergence and assert from the containers' own
#   status output:
#   - both firewall tables and both gateway mirrors have one digest and non-zero states;
#   - gw-b counted the attackers' handshakes as drops, and no state with an attacker's
#     creator ids reached any firewall or gateway.
# Always tears down (containers, networks, volumes, the image it built, the temp dir).
# Prints one line "compose-test: PASS" or "compose-test: FAIL: <reason>"; exit code 0/1.
# Needs root (or docker group) and a Docker engine; nothing is pulled from a registry.
#
# Environment: STATIC_TARGET_DIR (cargo target dir of the static build, default
# target/static), PFSYNC_GW_BIN (use this static binary, skip the build), CHURN (seconds of
# churn, default 20), SETTLE (seconds allowed for convergence, default 30), RATE (states/s
# per firewall, default 200), DIALECT_A / DIALECT_B (default openbsd-v6 / freebsd-1400),
# KEEP=1 (leave the testbed running for inspection; tear down by hand).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
t0=$(date +%s)
CHURN=${CHURN:-20}
SETTLE=${SETTLE:-30}
export CHURN RATE=${RATE:-200} DIALECT_A=${DIALECT_A:-openbsd-v6} DIALECT_B=${DIALECT_B:-freebsd-1400}

log() { printf '[%3ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }
reason=""
fail() {
    reason=$*
    exit 1
}

project=pfsync-gw-test-$$
export PFSYNC_GW_IMAGE=pfsync-gw-testbed:$project
PFSYNC_GW_RUN=$(mktemp -d /tmp/pfsync-gw-compose.XXXXXX)
export PFSYNC_GW_RUN
compose=()
dc() { [ ${#compose[@]} -gt 0 ] || return 1; "${compose[@]}" -p "$project" -f "$repo/docker-compose.yml" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" != 0 ]; then
        log "logs (last lines per container):"
        dc logs --no-color --tail=25 2>&1 | sed 's/^/    /' >&2 || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "KEEP=1: left running; clean up with: PFSYNC_GW_RUN=$PFSYNC_GW_RUN PFSYNC_GW_IMAGE=$PFSYNC_GW_IMAGE ${compose[*]} -p $project -f $repo/docker-compose.yml down -v; docker rmi $PFSYNC_GW_IMAGE"
    else
        dc down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
        docker rmi -f "$PFSYNC_GW_IMAGE" >/dev/null 2>&1 || true
        rm -rf "$PFSYNC_GW_RUN"
    fi
    if [ "$rc" = 0 ]; then
        echo "compose-test: PASS ($(($(date +%s) - t0)) s)"
    else
        echo "compose-test: FAIL: ${reason:-exit code $rc} ($(($(date +%s) - t0)) s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
command -v jq >/dev/null || fail "jq is required"
docker info >/dev/null 2>&1 || fail "no Docker engine (needs root or the docker group)"

# --- build, image, keys and configs ------------------------------------------------------
log "building the static binary and the image $PFSYNC_GW_IMAGE"
"$repo/docker/setup.sh" "$PFSYNC_GW_RUN" >&2 || fail "docker/setup.sh failed"

# --- bring up the firewalls and gateways -------------------------------------------------
log "starting fw-a, gw-a, gw-b, fw-b"
out=$(dc up -d --no-build fw-a gw-a gw-b fw-b 2>&1) || fail "compose up failed: $(tail -3 <<<"$out")"
cid() { dc ps -q "$1"; }
declare -A C
for s in fw-a gw-a gw-b fw-b; do
    C[$s]=$(cid "$s")
    [ -n "${C[$s]}" ] || fail "no container for $s"
done

# The configs name the sync interface eth0: check Docker numbered the interfaces as
# docker-compose.yml expects (alphabetical by network name) before trusting anything else.
check_if() { # service ifname address
    local pid
    pid=$(docker inspect -f '{{.State.Pid}}' "${C[$1]}")
    [ "$pid" -gt 0 ] 2>/dev/null || fail "$1 is not running: $(docker logs --tail 5 "${C[$1]}" 2>&1)"
    if command -v nsenter >/dev/null; then
        nsenter -t "$pid" -n ip -4 -o addr show dev "$2" 2>/dev/null | grep -qw "$3" ||
            fail "$1: $2 does not carry $3 (interface order changed?): $(nsenter -t "$pid" -n ip -4 -o addr 2>&1 | awk '{print $2, $4}' | tr '\n' ' ')"
    fi
}
check_if gw-a eth0 10.87.1.3
check_if gw-a eth1 10.87.0.10
check_if gw-b eth0 10.87.2.3
check_if gw-b eth1 10.87.0.11
check_if fw-a eth0 10.87.1.2
check_if fw-b eth0 10.87.2.2

status() { docker exec "${C[$1]}" /pfsync-gw status --json 2>/dev/null; }
emu() { cat "$PFSYNC_GW_RUN/state/$1.json" 2>/dev/null; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "${C[$1]}" 2>/dev/null)" = true ]; }

why=""   # set by the polled commands: what they saw last
wait_for() { # seconds poll-interval description command...
    local limit=$1 every=$2 what=$3 end=$(($(date +%s) + $1))
    shift 3
    until "$@"; do
        for s in "${!C[@]}"; do
            running "$s" || fail "$s exited while waiting for $what: $(docker logs --tail 5 "${C[$s]}" 2>&1 | tr '\n' ' ')"
        done
        [ "$(date +%s)" -lt "$end" ] || fail "timed out after ${limit}s waiting for $what${why:+: $why}"
        sleep "$every"
    done
}

tunnel_up() {
    local a b
    a=$(status gw-a | jq -r '.peers[0].established') || return 1
    b=$(status gw-b | jq -r '.peers[0].established') || return 1
    [ "$a" = true ] && [ "$b" = true ]
}
log "waiting for the tunnel gw-a <-> gw-b"
wait_for 30 0.5 "the tunnel to come up" tunnel_up
log "tunnel up"

# --- the attack --------------------------------------------------------------------------
tunnel_drops() { status gw-b | jq '[.drops | to_entries[] | select(.key | startswith("tunnel_")) | .value] | add // 0'; }
drops_before=$(tunnel_drops)
attackers=(attacker attacker-unicast attacker-gw)
log "starting the attackers (raw pfsync floods on transit, an unauthorised gateway); gw-b tunnel drops so far: $drops_before"
out=$(dc up -d --no-build "${attackers[@]}" 2>&1) || fail "compose up (attackers) failed: $(tail -3 <<<"$out")"
for s in "${attackers[@]}"; do
    C[$s]=$(cid "$s")
done
check_if attacker eth0 10.87.0.66

# --- churn -------------------------------------------------------------------------------
# The emulated firewalls churn for CHURN seconds from their start (--churn-for), then only
# apply what they receive.
churning() { [ "$(emu fw-a | jq .churning)" = true ] || [ "$(emu fw-b | jq .churning)" = true ]; }
log "churning (${CHURN}s from the firewalls' start)"
end=$(($(date +%s) + CHURN + 20))
n=0
while churning; do
    [ "$(date +%s)" -lt "$end" ] || fail "the emulated firewalls still churn after ${CHURN}s"
    sleep 1
    for s in "${!C[@]}"; do
        running "$s" || fail "$s exited during churn: $(docker logs --tail 5 "${C[$s]}" 2>&1 | tr '\n' ' ')"
    done
    [ $((++n % 5)) = 0 ] || continue
    log "fw-a $(emu fw-a | jq -c '{states, digest: (.digest // "" | .[0:12])}' 2>/dev/null) gw-a $(status gw-a | jq -c '{states, digest: (.digest[0:12])}') gw-b $(status gw-b | jq -c '{states, digest: (.digest[0:12])}') fw-b $(emu fw-b | jq -c '{states, digest: (.digest // "" | .[0:12])}' 2>/dev/null)"
done

# --- convergence -------------------------------------------------------------------------
digests() {
    local fa ga gb fb
    fa=$(emu fw-a | jq -r '"\(.states) \(.digest)"') || return 1
    ga=$(status gw-a | jq -r '"\(.states) \(.digest)"') || return 1
    gb=$(status gw-b | jq -r '"\(.states) \(.digest)"') || return 1
    fb=$(emu fw-b | jq -r '"\(.states) \(.digest)"') || return 1
    printf '%s\n' "fw-a $fa" "gw-a $ga" "gw-b $gb" "fw-b $fb"
}
last=""
converged() {
    local d
    d=$(digests) || return 1
    why="$(tr '\n' ';' <<<"$d") own states: fw-a $(emu fw-a | jq .own_states), fw-b $(emu fw-b | jq .own_states)"
    # one distinct "states digest" pair, non-zero states, and unchanged since the last poll
    [ "$(awk '{print $2, $3}' <<<"$d" | sort -u | wc -l)" = 1 ] || { last=""; return 1; }
    [ "$(awk 'NR==1 {print $2}' <<<"$d")" -gt 0 ] || return 1
    [ "$d" = "$last" ] && return 0
    last=$d
    return 1
}
# Poll fast: after churn ends, states still expire by their pf timeouts, in each emulator and
# each mirror on its own clock, so the tables can differ for a moment at each expiry.
log "churn over; waiting up to ${SETTLE}s for convergence"
wait_for "$SETTLE" 0.3 "convergence" converged
log "converged: $(digests | awk '{printf "%s %s states %s; ", $1, $2, substr($3, 1, 16)}')"

# --- the attack was rejected --------------------------------------------------------------
# The attack must have happened for its rejection to mean anything.
for a in attacker attacker-unicast; do
    sent=$(emu "$a" | jq '.sent_packets // 0')
    [ "$sent" -gt 0 ] || fail "$a sent no raw pfsync (status: $(emu "$a" | head -c 300))"
    log "$a: $sent raw pfsync packets sent"
done
drops_after=$(tunnel_drops)
log "gw-b tunnel drops: $drops_before -> $drops_after ($(status gw-b | jq -c '.drops | with_entries(select(.value > 0))'))"
[ "$drops_after" -gt "$drops_before" ] || fail "gw-b's tunnel drop counters did not increase under the unauthenticated handshakes"
up=$(status attacker-gw | jq '[.peers[] | select(.established)] | length') || fail "no status from attacker-gw"
[ "$up" = 0 ] || fail "the attacker's gateway established a session with gw-b"

# --- nothing of the attacker's got in ------------------------------------------------------
# The attackers kept going until now. The emulators report their own states: with one
# digest everywhere, a firewall holding exactly fw-a's plus fw-b's own states holds no state
# of any other creator (the attackers use 0xbadbad01..03).
states=$(emu fw-b | jq .states)
own_a=$(emu fw-a | jq .own_states)
own_b=$(emu fw-b | jq .own_states)
[ "$own_a" -gt 0 ] && [ "$own_b" -gt 0 ] || fail "a firewall has no states of its own (fw-a $own_a, fw-b $own_b)"
[ "$states" = $((own_a + own_b)) ] ||
    fail "fw-b holds $states states but fw-a and fw-b created only $own_a + $own_b: foreign states got in"
log "no foreign state: fw-a and fw-b hold $states = $own_a (fw-a) + $own_b (fw-b) states"

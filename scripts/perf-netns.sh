#!/usr/bin/env bash
# Namespace benchmark (root): fw-a -> gw-a => gw-b -> fw-b, offered-load sweep for large
# (17 UPD_C) and small (2 UPD_C) OpenBSD v6 packets, pfsync-gw side by side with a plain
# relay (raw 240 <-> UDP, no crypto) on the same path. See docs/PERFORMANCE.md.
#
#   scripts/perf-netns.sh                 full sweep (10 s per point, ~5 minutes)
#   scripts/perf-netns.sh --smoke         one tiny point per mode (CI, a few seconds)
#   options: --secs S  --rates LIST  --sizes LIST  --states N  --runs N
#            --modes plain,gw,boringtun (plain-link: the plain relay capturing and injecting
#            as the gateway does)
#            --nice N (every relay's priority, default -10 = the gateway's default [node] nice)
#            --sched fifo|other (default fifo = the gateway's default [node] scheduler: every
#            relay at SCHED_FIFO --rt-priority, fw-a's sender one above, fw-b's receiver two
#            above, as a kernel's receive is; other: everything time-shared, relays and the
#            receiver at --nice, the sender at nice 0)
#            --rt-priority N (default 1 = the gateway's default [node] rt_priority)
#            --pin (fw-a's sender and fw-b's receiver on the first allowed CPU; the relays on
#            the others: the firewalls on a core of their
#            own, as on hosts of their own, so the relays' CPU does not shrink as the offered
#            load grows; what the sender offers then depends on what the receiver leaves it;
#            default: everything floats on all CPUs)
#   env: PFSYNC_GW_DAEMON=<binary> (gateway build to measure), PERF_MTU (tunnel mtu, 1472),
#        PERF_NO_OFFLOAD=1 (udp_offload = false), PERF_RECORD=<prefix> (perf record both),
#        PERF_LABEL (mode column), PERF_NO_FIREWALLS=1 (builds before `firewalls`),
#        PERF_STATUS=<prefix> (both gateways' status --json after each mode),
#        PERF_SHED_TARGET=<ms> ([local] shed_target_ms; 0 = kernel shedding off),
#        PERF_RX_COALESCE=<µs> ([node] rx_coalesce_us; 0 = off; builds before it lack it),
#        PERF_INJECT=ip|link ([local] inject_path; builds before it lack it),
#        PERF_CAPTURE=ip|link ([local] capture_path; likewise),
#        PERF_RT_UNTHROTTLED=1 (kernel.sched_rt_runtime_us = -1 for the run, restored on
#        exit: tells the kernel's real-time throttling from the relays in the age tail)
#
# Mode `boringtun` (in the default --modes) runs userspace WireGuard between the gateways when
# `boringtun-cli` and `wg` are installed (cargo install boringtun-cli; apt install
# wireguard-tools); fw-a's packets are then routed through it to fw-b's address.
set -euo pipefail

BIN=${PFSYNC_GW:-$(dirname "$0")/../target/release/pfsync-gw}
# The gateway daemon to measure (default: the same binary; e.g. an older build to compare).
GWBIN=${PFSYNC_GW_DAEMON:-$BIN}
SECS=10
RATES=5000,20000,50000,100000,200000,0
SIZES=17,2
STATES=10200
MODES=plain,gw,boringtun
RUNS=1
NICE=-10
SCHED=fifo
RTPRIO=1
PIN=
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SECS=1; RATES=2000; SIZES=17; STATES=200 ;;
        --secs) SECS=$2; shift ;;
        --rates) RATES=$2; shift ;;
        --sizes) SIZES=$2; shift ;;
        --states) STATES=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --nice) NICE=$2; shift ;;
        --sched) SCHED=$2; shift ;;
        --rt-priority) RTPRIO=$2; shift ;;
        --pin) PIN=1 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "perf-netns: needs root (namespaces, raw sockets)" >&2; exit 2; }
if [ -n "$PIN" ]; then
    # The CPUs this script may use (a cpuset or taskset may restrict them): the first for
    # the firewalls, the others for the relays.
    ALLOWED=()
    for r in $(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status | tr ',' ' '); do
        if [[ $r == *-* ]]; then ALLOWED+=($(seq "${r%-*}" "${r#*-}")); else ALLOWED+=("$r"); fi
    done
    [ "${#ALLOWED[@]}" -ge 2 ] || { echo "perf-netns: --pin needs two CPUs or more" >&2; exit 2; }
    FW_CPU=${ALLOWED[0]}
    RELAY_CPUS=$(IFS=,; echo "${ALLOWED[*]:1}")
fi
[ -x "$BIN" ] || { echo "perf-netns: build first (cargo build --release) or set PFSYNC_GW" >&2; exit 2; }

# Names like the test labs' (pgw-<pid>-...), so scripts/netns-cleanup.sh knows them.
ID=pgw-$$-perf
DIR=$(mktemp -d /tmp/$ID.XXXX)
FWA=$ID-fwa GWA=$ID-gwa GWB=$ID-gwb FWB=$ID-fwb
PIDS=()

RT_RUNTIME_WAS=
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "$RT_RUNTIME_WAS" ] || echo "$RT_RUNTIME_WAS" >/proc/sys/kernel/sched_rt_runtime_us
    for ns in $FWA $GWA $GWB $FWB; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
if [ -n "${PERF_RT_UNTHROTTLED:-}" ]; then
    # Attribution only: four real-time threads on two cores (sender, receiver, both
    # gateways) pass a core's real-time budget together, which one gateway on its own host
    # does not; the kernel then stops them all for the rest of the second.
    RT_RUNTIME_WAS=$(cat /proc/sys/kernel/sched_rt_runtime_us)
    echo -1 >/proc/sys/kernel/sched_rt_runtime_us
    echo "# real-time throttling off for the run (was $RT_RUNTIME_WAS µs a second)"
fi

for ns in $FWA $GWA $GWB $FWB; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv4.ip_forward=0
done
ip -n $FWA link add sync0 type veth peer name sync0 netns $GWA
ip -n $FWB link add sync0 type veth peer name sync0 netns $GWB
ip -n $GWA link add tr0 type veth peer name tr0 netns $GWB
for ns in $FWA $GWA $GWB $FWB; do ip -n "$ns" link set sync0 up; done
for ns in $GWA $GWB; do ip -n "$ns" link set tr0 up; done
ip -n $FWA addr add 10.1.0.2/24 dev sync0
ip -n $GWA addr add 10.1.0.1/24 dev sync0
ip -n $GWB addr add 10.2.0.1/24 dev sync0
ip -n $FWB addr add 10.2.0.2/24 dev sync0
ip -n $GWA addr add 10.99.0.1/24 dev tr0
ip -n $GWB addr add 10.99.0.2/24 dev tr0

echo "# perf-netns: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
# What a wakeup costs here decides much of a relay's CPU per packet at moderate rates (a VM
# whose idle vCPUs halt without polling pays an exit and a host wakeup for each one): a
# two-process pipe ping-pong free to use every CPU and on one, as perf's benchmark does it.
if command -v perf >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pp() { "$@" perf bench sched pipe -l 5000 2>/dev/null | sed -n 's/^ *\([0-9]*\.[0-9]\)[0-9]* usecs\/op.*/\1/p'; }
    echo "# wakeup round trip (perf bench sched pipe): $(pp) µs free to use every CPU, $(pp taskset -c "$(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status | cut -d, -f1 | cut -d- -f1)") µs on one; guest halt polling $(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || echo n/a) ns"
fi
case $SCHED in
    fifo)
        [ "$RTPRIO" -le 97 ] || { echo "perf-netns: --rt-priority must be <= 97 (fw-b's receiver runs two above)" >&2; exit 2; }
        echo "# relays at SCHED_FIFO $RTPRIO, fw-a's sender at SCHED_FIFO $((RTPRIO + 1)), fw-b's receiver (a packet ring) at SCHED_FIFO $((RTPRIO + 2))" ;;
    other) RTPRIO=0 ;;
    *) echo "perf-netns: --sched fifo or other" >&2; exit 2 ;;
esac
echo "# relays at nice $NICE; $SECS s per point, $STATES states, sizes $SIZES UPD_C per packet, rates $RATES (0 = unthrottled)"
if [ -n "$PIN" ]; then
    echo "# pinned: fw-a's sender and fw-b's receiver on CPU $FW_CPU, relays on CPUs $RELAY_CPUS"
fi

start_plain() {  # $1: how it injects and captures (ip or link)
    ip netns exec $GWA "$BIN" perf-relay --inject "$1" --capture "$1" --listen 10.99.0.1:51900 --peer 10.99.0.2:51900 >"$DIR/plain-a.log" 2>&1 &
    PIDS+=($!); PA=$!
    ip netns exec $GWB "$BIN" perf-relay --inject "$1" --capture "$1" --listen 10.99.0.2:51900 --peer 10.99.0.1:51900 >"$DIR/plain-b.log" 2>&1 &
    PIDS+=($!); PB=$!
    sleep 0.3
}

start_gw() {
    rm -f "$DIR"/gw-*.key "$DIR"/gw-*.sock
    for s in a b; do
        "$BIN" keygen --out "$DIR/gw-$s.key"
        "$BIN" pubkey <"$DIR/gw-$s.key" >"$DIR/gw-$s.pub"
    done
    for s in a b; do
        if [ $s = a ]; then me=1 other=b oaddr=2; else me=2 other=a oaddr=1; fi
        # Builds before the firewall source filter (issue 9) refuse this field:
        # PERF_NO_FIREWALLS=1 leaves it out for them.
        fwline="firewalls = [\"10.$me.0.2\"]"
        [ -n "${PERF_NO_FIREWALLS:-}" ] && fwline=""
        cat >"$DIR/gw-$s.toml" <<EOF
[node]
name = "gw-$s"
private_key_file = "$DIR/gw-$s.key"
listen = "10.99.0.$me:51900"
control_socket = "$DIR/gw-$s.sock"
# Largest UDP payload on a 1500-byte path: a large pfsync packet still needs two datagrams.
mtu = ${PERF_MTU:-1472}
${PERF_NO_OFFLOAD:+udp_offload = false}
${PERF_RX_COALESCE:+rx_coalesce_us = $PERF_RX_COALESCE}

[local]
mode = "raw"
interface = "sync0"
dialect = "openbsd-v6"
$fwline
${PERF_SHED_TARGET:+shed_target_ms = $PERF_SHED_TARGET}
${PERF_INJECT:+inject_path = \"$PERF_INJECT\"}
${PERF_CAPTURE:+capture_path = \"$PERF_CAPTURE\"}

[[peer]]
name = "gw-$other"
public_key = "$(cat "$DIR/gw-$other.pub")"
endpoint = "10.99.0.$oaddr:51900"
EOF
    done
    ip netns exec $GWA "$GWBIN" run --config "$DIR/gw-a.toml" >"$DIR/gw-a.log" 2>&1 &
    PIDS+=($!); PA=$!
    ip netns exec $GWB "$GWBIN" run --config "$DIR/gw-b.toml" >"$DIR/gw-b.log" 2>&1 &
    PIDS+=($!); PB=$!
    # Wait until both see their peer up (tunnel and sync epoch).
    for _ in $(seq 100); do
        if "$BIN" status --socket "$DIR/gw-a.sock" --json 2>/dev/null | grep -q '"established": *true' &&
           "$BIN" status --socket "$DIR/gw-b.sock" --json 2>/dev/null | grep -q '"established": *true'; then
            return 0
        fi
        sleep 0.1
    done
    echo "perf-netns: gateways did not come up; logs:" >&2
    tail -n 20 "$DIR"/gw-*.log >&2
    return 1
}

BTUN=$(command -v boringtun-cli || command -v boringtun || true)

# boringtun (userspace WireGuard, one thread per side) between gw-a and gw-b; fw-a's packets
# are routed to fw-b's address through it (TTL 253 on arrival: perf-load does not check it).
start_boringtun() {
    rm -f /var/run/wireguard/wga.sock /var/run/wireguard/wgb.sock
    for s in a b; do
        (umask 077; wg genkey >"$DIR/wg-$s.key")
        wg pubkey <"$DIR/wg-$s.key" >"$DIR/wg-$s.pub"
    done
    for s in a b; do
        if [ $s = a ]; then ns=$GWA me=1 other=b oaddr=2; else ns=$GWB me=2 other=a oaddr=1; fi
        ip netns exec $ns sysctl -qw net.ipv4.ip_forward=1
        WG_SUDO=1 ip netns exec $ns "$BTUN" --foreground --threads 1 --disable-drop-privileges \
            wg$s >"$DIR/btun-$s.log" 2>&1 &
        PIDS+=($!)
        [ $s = a ] && PA=$! || PB=$!
    done
    for s in a b; do
        if [ $s = a ]; then ns=$GWA me=1 other=b oaddr=2; else ns=$GWB me=2 other=a oaddr=1; fi
        for _ in $(seq 50); do [ -S /var/run/wireguard/wg$s.sock ] && break; sleep 0.1; done
        ip netns exec $ns wg set wg$s private-key "$DIR/wg-$s.key" listen-port 51820 \
            peer "$(cat "$DIR/wg-$other.pub")" endpoint 10.99.0.$oaddr:51820 \
            allowed-ips 10.$oaddr.0.0/24
        # MTU 1500: full pfsync packets (DF set, as pf sends them) fit; the outer datagram is
        # then IP-fragmented, like the gateway's two datagrams per large packet.
        ip -n $ns link set wg$s mtu 1500 up
        ip -n $ns route add 10.$oaddr.0.0/24 dev wg$s
    done
    ip -n $FWA route replace 10.2.0.0/24 via 10.1.0.1
    ip -n $FWB route replace 10.1.0.0/24 via 10.2.0.1
    sleep 0.5
}

stop_relays() {
    kill "$PA" "$PB" 2>/dev/null || true
    wait "$PA" "$PB" 2>/dev/null || true
    PIDS=()
}

for run in $(seq "$RUNS"); do
    for mode in ${MODES//,/ }; do
        case $mode in
            plain) start_plain ip ;;
            plain-link) start_plain link ;;
            gw) start_gw ;;
            boringtun)
                if [ -z "$BTUN" ] || ! command -v wg >/dev/null; then
                    echo "# boringtun: boringtun-cli or wg not installed, not measured"
                    continue
                fi
                start_boringtun ;;
            *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
        # Every relay at the gateway's default priority ([node] nice = -10; --nice changes
        # it for all, older gateway builds included), so the side by side differs only in
        # the relay.
        for t in /proc/$PA/task/* /proc/$PB/task/*; do renice -n "$NICE" -p "${t##*/}" >/dev/null; done
        # Likewise the policy: --sched other puts a gateway that took SCHED_FIFO itself back.
        for p in $PA $PB; do
            if [ "$RTPRIO" -gt 0 ]; then chrt -f -R -a -p "$RTPRIO" "$p"; else chrt -o -a -p 0 "$p"; fi
        done
        PINARGS=()
        if [ -n "$PIN" ]; then
            # Every relay thread on the relays' CPUs, fw-a's sender and fw-b's receiver on
            # the firewalls' (perf-load reports where its threads run).
            for p in $PA $PB; do
                taskset -a -p -c "$RELAY_CPUS" "$p" >/dev/null
                echo "# relay $p: threads on CPUs $(for t in /proc/$p/task/*; do taskset -pc "${t##*/}" | sed 's/.*: //'; done | sort -u | tr '\n' ' ')"
            done
            PINARGS=(--pin "$FW_CPU,$FW_CPU")
        fi
        TO=()
        [ $mode = boringtun ] && TO=(--to 10.2.0.2)
        REC=()
        if [ -n "${PERF_RECORD:-}" ] && [ $mode = gw ]; then
            # Profile both gateways for the whole sweep (perf report -i $PERF_RECORD-a.data).
            perf record -g -o "$PERF_RECORD-a.data" -p "$PA" >/dev/null 2>&1 & REC+=($!)
            perf record -g -o "$PERF_RECORD-b.data" -p "$PB" >/dev/null 2>&1 & REC+=($!)
        fi
        "$BIN" perf-load --tx-ns $FWA --rx-ns $FWB --states "$STATES" --per-packet "$SIZES" \
            --rates "$RATES" --secs "$SECS" --pids "$PA,$PB" --label "${PERF_LABEL:-$mode}" --rt-priority "$RTPRIO" "${PINARGS[@]}" "${TO[@]}" |
            tee -a "$DIR/results"
        for r in "${REC[@]:-}"; do [ -n "$r" ] && kill -INT "$r" && wait "$r" || true; done
        if [ $mode = gw ]; then
            for s in a b; do
                # PERF_STATUS=<prefix>: every counter of both gateways, as JSON.
                [ -n "${PERF_STATUS:-}" ] && "$BIN" status --socket "$DIR/gw-$s.sock" --json >"$PERF_STATUS-$s.json" 2>/dev/null
                echo "# gw-$s counters: $("$BIN" status --socket "$DIR/gw-$s.sock" --json 2>/dev/null |
                    tr -d '\n ' | grep -o '"\(shed_[a-z_]*\|captured\|injected\|tunnel_send_failed\|inject_failed\)":[0-9]*' | tr '\n' ' ')"
            done
        fi
        stop_relays
    done
done

# Several runs: the median of each column per point (what docs/PERFORMANCE.md reports).
if [ "$RUNS" -gt 1 ]; then
    echo "# medians of $RUNS runs"
    awk '$2 ~ /^[0-9]+$/ && NF == 13 { k = $1 " " $2 " " $3; n[k]++; if (!(k in seen)) { seen[k] = 1; order[++m] = k }
             for (c = 4; c <= 13; c++) { v = $c; sub(/%$/, "", v); val[k, c, n[k]] = v + 0 } }
         END { for (i = 1; i <= m; i++) { k = order[i]; line = k
                 for (c = 4; c <= 13; c++) { cnt = n[k]
                     for (a = 1; a <= cnt; a++) x[a] = val[k, c, a]
                     for (a = 1; a <= cnt; a++) for (b = a + 1; b <= cnt; b++) if (x[b] < x[a]) { t = x[a]; x[a] = x[b]; x[b] = t }
                     med = (cnt % 2) ? x[(cnt + 1) / 2] : (x[cnt / 2] + x[cnt / 2 + 1]) / 2
                     line = line sprintf(c == 8 ? " %.1f" : " %.0f", med) }
                 print line } }' "$DIR/results" | column -t
fi

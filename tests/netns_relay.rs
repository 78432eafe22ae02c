//! Secure relay over real namespaces: what one firewall sends arrives at the others as
//! the same bytes, with TTL 255, on their sync interfaces; and the tunnel survives a
//! gateway restart.

#[path = "common/lab.rs"]
mod common;

use std::time::{Duration, Instant};

use common::capture::{ipv4_packet, IpPkt, LinkCapture, RawPf, PFSYNC_GROUP};
use common::gw::{drop_count, local_count, Net, SYNC_IF};
use common::netns::skip_unless_root;
use common::pf::{packet, tcp_state, upd_c};
use pfsync_gw::wire::{Dialect, Message, Packet};

/// Distinct packets from firewall `creator`: INS of two states, then INS + UPD_C.
fn test_packets(creator: u32, base: u64) -> Vec<Vec<u8>> {
    let s1 = tcp_state(base + 1, creator);
    let s2 = tcp_state(base + 2, creator);
    let s3 = tcp_state(base + 3, creator);
    vec![
        packet(&[Message::Ins(s1)]),
        packet(&[Message::Ins(s2), Message::UpdC(upd_c(&s1, 100))]),
        packet(&[
            Message::Ins(s3),
            Message::UpdC(upd_c(&s2, 7)),
            Message::UpdC(upd_c(&s1, 200)),
        ]),
    ]
}

/// Wait for a packet with exactly `payload` on `rx`; other packets (e.g. the gateway's
/// own bulk requests) are returned for the diagnostics.
fn expect_relayed(
    rx: &RawPf,
    payload: &[u8],
    strict: bool,
    timeout: Duration,
) -> Result<(IpPkt, Duration), Vec<IpPkt>> {
    let start = Instant::now();
    let mut other = Vec::new();
    while let Some(left) = timeout.checked_sub(start.elapsed()) {
        match rx.recv(left) {
            Some(p) if p.payload == payload || (!strict && same_states(&p.payload, payload)) => {
                return Ok((p, start.elapsed()))
            }
            Some(p) => other.push(p),
            None => break,
        }
    }
    Err(other)
}

/// First differing byte offset and the two bytes there (diagnostics).
fn first_diff(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, *x, *y))
}

/// The same messages, reading a full-state UPD as the INS it may stand for (in a mesh a
/// gateway that already heard of a state by another path injects it as an update, which
/// pf imports like an insert).
fn same_states(got: &[u8], want: &[u8]) -> bool {
    let norm = |b: &[u8]| -> Option<Vec<Message>> {
        let p = Packet::new_checked(b, Dialect::OpenbsdV6).ok()?;
        Some(
            p.messages()
                .map(|m| match m {
                    Message::Upd(s) => Message::Ins(s),
                    m => m,
                })
                .collect(),
        )
    };
    matches!((norm(got), norm(want)), (Some(a), Some(b)) if a == b)
}

fn check_relay(net: &Net, from: usize, to: &[usize], pkts: &[Vec<u8>]) {
    check_relay_as(net, from, to, pkts, true)
}

fn check_relay_as(net: &Net, from: usize, to: &[usize], pkts: &[Vec<u8>], strict: bool) {
    let tx = RawPf::open(&net.site(from).fw_ns, SYNC_IF, true);
    let rxs: Vec<RawPf> = to
        .iter()
        .map(|&i| RawPf::open(&net.site(i).fw_ns, SYNC_IF, true))
        .collect();
    for (k, p) in pkts.iter().enumerate() {
        tx.send(p, PFSYNC_GROUP);
        for (rx, &i) in rxs.iter().zip(to) {
            match expect_relayed(rx, p, strict, Duration::from_secs(5)) {
                Ok((got, took)) => {
                    assert_eq!(got.ttl, 255, "fw-{} got TTL {}", net.site(i).name, got.ttl);
                    assert_eq!(got.proto, 240);
                    assert_eq!(got.src, net.site(i).gw_sync_addr, "injected from the gateway");
                    assert_eq!(got.dst, PFSYNC_GROUP);
                    // What pf(4)'s own pfsync sends: lowdelay, DF, a valid header.
                    assert_eq!(got.tos, 0x10, "TOS");
                    assert!(got.df_only && got.checksum_ok, "{got:?}");
                    // Atomic datagrams: Linux's raw socket sends id 0, and so do we.
                    assert_eq!(got.ident, 0, "IP id");
                    net.lab.log(&format!(
                        "packet {k} ({} B) fw-{} -> fw-{}: {:.1} ms{}",
                        p.len(),
                        net.site(from).name,
                        net.site(i).name,
                        took.as_secs_f64() * 1e3,
                        if got.payload == *p { "" } else { " (INS as UPD)" }
                    ));
                }
                Err(other) => panic!(
                    "packet {k} from fw-{} never reached fw-{} byte-identical; got instead {} packet(s): {:?}\nstatus of gw-{}: {:?}",
                    net.site(from).name,
                    net.site(i).name,
                    other.len(),
                    other.iter().map(|o| (o.ttl, o.src, o.payload.len(), first_diff(&o.payload, p))).collect::<Vec<_>>(),
                    net.site(i).name,
                    net.status(i)
                ),
            }
        }
    }
}

#[test]
fn relay_both_ways_byte_identical_with_ttl_255() {
    if skip_unless_root("relay_both_ways_byte_identical_with_ttl_255") {
        return;
    }
    relay_both_ways("rel", "", Path::Link, Path::Link);
}

/// The link path writes the source address itself: when the sync interface is
/// readdressed, injected pfsync follows the new address within a couple of seconds, as the
/// raw socket's would.
#[test]
fn readdressed_sync_interface_becomes_the_injected_source() {
    if skip_unless_root("readdressed_sync_interface_becomes_the_injected_source") {
        return;
    }
    let net = Net::new("readdr", 2, false);
    for i in 0..2 {
        net.start_gw(i);
    }
    net.wait_established(&[0, 1], Duration::from_secs(15));
    check_relay(&net, 0, &[1], &test_packets(0xd, 0x3000));

    let (gw_ns, old) = (&net.site(1).gw_ns, net.site(1).gw_sync_addr);
    let o = old.octets();
    // Another subnet: deleting a primary address takes its subnet's secondaries with it.
    let new = std::net::Ipv4Addr::new(o[0], o[1], o[2] + 1, 77);
    net.lab
        .addr(gw_ns, common::gw::SYNC_IF, &format!("{new}/24"));
    common::netns::ip(&[
        "-n",
        gw_ns,
        "addr",
        "del",
        &format!("{old}/24"),
        "dev",
        "sync0",
    ]);

    let tx = RawPf::open(&net.site(0).fw_ns, common::gw::SYNC_IF, true);
    let rx = RawPf::open(&net.site(1).fw_ns, common::gw::SYNC_IF, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut k = 0u64;
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "injected sources seen: {seen:?}");
        let p = &test_packets(0xe, 0x4000 + 0x10 * k)[0];
        k += 1;
        tx.send(p, PFSYNC_GROUP);
        if let Ok((got, _)) = expect_relayed(&rx, p, true, Duration::from_millis(500)) {
            if got.src == new {
                break;
            }
            seen.push(got.src);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    net.lab.log(&format!(
        "injected from {new} after readdressing (before: {seen:?})"
    ));
}

/// The gateway's packet sockets (`/proc/<pid>/net/packet`): (type, protocol, running,
/// receive memory) each.
fn packet_sockets(pid: u32) -> Vec<(u32, u32, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/packet")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(2)?.parse().ok()?,
                u32::from_str_radix(f.get(3)?, 16).ok()?,
                f.get(5)?.parse().ok()?,
                f.get(6)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The same through the raw socket's injection (`inject_path = "ip"`): both paths put the
/// same packets on the wire.
#[test]
fn relay_both_ways_injecting_by_the_raw_socket() {
    if skip_unless_root("relay_both_ways_injecting_by_the_raw_socket") {
        return;
    }
    relay_both_ways("rip", "inject_path = \"ip\"", Path::Link, Path::Ip);
}

/// The same capturing by the raw socket (`capture_path = "ip"`), which joins the group.
#[test]
fn relay_both_ways_capturing_by_the_raw_socket() {
    if skip_unless_root("relay_both_ways_capturing_by_the_raw_socket") {
        return;
    }
    relay_both_ways("rcip", "capture_path = \"ip\"", Path::Ip, Path::Link);
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Link,
    Ip,
}

impl Path {
    /// How the gateway's start-up log names it.
    fn logged(self) -> &'static str {
        match self {
            Path::Link => "link-layer frames",
            Path::Ip => "raw IPv4 socket",
        }
    }
}

fn relay_both_ways(name: &str, extra_local: &str, capture: Path, inject: Path) {
    let net = Net::new(name, 2, false);
    for i in 0..2 {
        net.write_gw_config(i, extra_local);
        net.start_gw(i);
    }
    let took = net.wait_established(&[0, 1], Duration::from_secs(15));
    net.lab
        .log(&format!("tunnel up after {:.2}s", took.as_secs_f64()));

    check_relay(&net, 0, &[1], &test_packets(0xa, 0x1000));
    check_relay(&net, 1, &[0], &test_packets(0xb, 0x2000));
    for i in 0..2 {
        let log = net.lab.log_tail(&net.site(i).gw(), 200);
        for (what, path) in [("capturing", capture), ("injecting", inject)] {
            let line = log.lines().find(|l| l.contains(&format!("{what} pfsync")));
            let want = format!("path=\"{}\"", path.logged());
            assert!(line.is_some_and(|l| l.contains(&want)), "{what}: {log}");
        }
        let pid = net.lab.pid(&net.site(i).gw()).expect("gateway running");
        let mut want = Vec::new();
        if inject == Path::Link {
            // The injection's socket only sends: protocol 0, no receive hook.
            want.push((libc::SOCK_DGRAM as u32, 0, 0, 0));
        }
        if capture == Path::Link {
            // Capture and the foreign-source watch: IPv4 frames, all read by now.
            let ipv4 = (libc::SOCK_DGRAM as u32, libc::ETH_P_IP as u32, 1, 0);
            want.extend([ipv4, ipv4]);
        }
        let mut got = packet_sockets(pid);
        got.sort();
        assert_eq!(got, want, "gw-{}", net.site(i).name);
        // The link capture leaves the group unjoined: the kernel then drops its own copy
        // of each packet at the first route lookup.
        let igmp = std::fs::read_to_string(format!("/proc/{pid}/net/igmp")).unwrap();
        let joined = igmp.contains(&format!("{:08X}", u32::from(PFSYNC_GROUP).swap_bytes()));
        assert_eq!(
            joined,
            capture == Path::Ip,
            "gw-{} joined: {igmp}",
            net.site(i).name
        );
    }

    let (a, b) = (net.status(0), net.status(1));
    assert!(
        a.peers[0].rx_packets > 0 && b.peers[0].rx_packets > 0,
        "{a:?}\n{b:?}"
    );
}

#[test]
fn mesh_of_three_relays_from_any_node_to_both_others() {
    if skip_unless_root("mesh_of_three_relays_from_any_node_to_both_others") {
        return;
    }
    let net = Net::new("mesh", 3, false);
    for i in 0..3 {
        net.start_gw(i);
    }
    let took = net.wait_established(&[0, 1, 2], Duration::from_secs(20));
    net.lab
        .log(&format!("mesh up after {:.2}s", took.as_secs_f64()));
    for from in 0..3 {
        let to: Vec<usize> = (0..3).filter(|&i| i != from).collect();
        let creator = 0xc0 + from as u32;
        check_relay_as(
            &net,
            from,
            &to,
            &test_packets(creator, 0x100 * (from as u64 + 1)),
            false,
        );
    }
}

#[test]
fn peer_restart_tunnel_returns_and_relaying_resumes() {
    if skip_unless_root("peer_restart_tunnel_returns_and_relaying_resumes") {
        return;
    }
    let net = Net::new("rst", 2, false);
    net.start_gw(0);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    check_relay(&net, 0, &[1], &test_packets(0xa, 0x10)[..1]);

    for (round, sig) in [(1u64, libc::SIGKILL), (2, libc::SIGTERM)] {
        net.kill_gw(1, sig);
        net.lab.log(&format!("gw-b stopped with signal {sig}"));
        let restarted = Instant::now();
        net.start_gw(1);
        // gw-a must complete a handshake with the new gw-b process (its old session
        // is useless: gw-b lost the keys).
        let (_, took) = common::poll::wait_for(
            "tunnel back after restart",
            Duration::from_secs(15),
            |last| {
                let a = common::gw::status(&net.control_socket(0)).ok()?;
                let b = common::gw::status(&net.control_socket(1)).ok()?;
                let fresh =
                    |h: Option<f64>| h.is_some_and(|s| s < restarted.elapsed().as_secs_f64());
                *last = format!("a: {:?} b: {:?}", a.peers, b.peers);
                (a.peers[0].established
                    && b.peers[0].established
                    && fresh(a.peers[0].last_handshake_secs))
                .then_some(())
            },
        );
        net.lab.log(&format!(
            "round {round}: tunnel back {:.2}s after restart",
            took.as_secs_f64()
        ));
        assert!(took < Duration::from_secs(10), "took {took:?}");
        // Fresh states each round (an UPD_C needs its INS first).
        check_relay(&net, 0, &[1], &test_packets(0xa, 0x100 * round));
        check_relay(&net, 1, &[0], &test_packets(0xb, 0x100 * round));
    }
}

/// The link capture reads frames before the IP layer, so it must refuse what the IP layer
/// and the raw socket's binding would: a bad header checksum, a fragment, a destination
/// that is neither the group nor the gateway (on a frame to its MAC), a multicast frame to
/// another group, a broadcast, a frame for a device stacked on the sync interface.
/// The firewall's unicast to the gateway is still relayed, and no refused packet is.
#[test]
fn the_link_capture_refuses_what_the_ip_layer_would() {
    if skip_unless_root("the_link_capture_refuses_what_the_ip_layer_would") {
        return;
    }
    let net = Net::new("lcap", 2, false);
    for i in 0..2 {
        net.start_gw(i);
    }
    net.wait_established(&[0, 1], Duration::from_secs(15));
    let (a, b) = (net.site(0), net.site(1));
    let frames = LinkCapture::open(&a.fw_ns, SYNC_IF);
    let rx = RawPf::open(&b.fw_ns, SYNC_IF, true);
    let gw_mac = mac_of(&a.gw_ns, SYNC_IF);
    let group_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xf0];
    let before = net.status(0);

    let refused = test_packets(0xd, 0x5000);
    let ip = |dst, frag, payload: &[u8]| ipv4_packet(a.fw_addr, dst, 255, frag, payload);
    let mut bad_sum = ip(PFSYNC_GROUP, 0x4000, &refused[0]);
    bad_sum[10] ^= 0x5a;
    let stranger = std::net::Ipv4Addr::new(10, 1, 0, 99);
    // Counted as bad IP: what reaches the read.
    let counted = [
        (bad_sum, group_mac),
        (ip(PFSYNC_GROUP, 0x2000, &refused[1]), group_mac), // first fragment
        (ip(stranger, 0x4000, &refused[2]), gw_mac),
    ];
    // Dropped by the kernel filter: never read, never counted.
    let filtered = [
        (
            ip(std::net::Ipv4Addr::new(224, 0, 0, 18), 0x4000, &refused[0]),
            group_mac,
        ),
        (ip(PFSYNC_GROUP, 0x4000, &refused[1]), [0xff; 6]),
    ];
    for (p, mac) in counted.iter().chain(&filtered) {
        frames.send_ip(p, *mac);
    }
    // A macvlan stacked on gw-a's sync interface, as a VLAN device would be: the kernel
    // hands frames for it to the sync interface's packet sockets too. (Added after the
    // fragment was sent: a macvlan's lower device holds multicast fragments to reassemble.)
    common::netns::ip(&[
        "-n", &a.gw_ns, "link", "add", "mv0", "link", SYNC_IF, "type", "macvlan", "mode", "bridge",
    ]);
    common::netns::ip(&["-n", &a.gw_ns, "link", "set", "mv0", "up"]);
    let stacked = ip(PFSYNC_GROUP, 0x4000, &refused[2]);
    frames.send_ip(&stacked, mac_of(&a.gw_ns, "mv0"));
    // The same hand-made frame, valid, is relayed: the refusals are the checks' doing.
    let good = test_packets(0xd, 0x6000);
    frames.send_ip(&ip(PFSYNC_GROUP, 0x4000, &good[0]), group_mac);
    // And the firewall's unicast to the gateway (NetBSD's update requests go so).
    let tx = RawPf::open(&a.fw_ns, SYNC_IF, true);
    tx.send(&good[1], a.gw_sync_addr);

    let arrived = rx.collect(Duration::from_secs(2));
    for (k, p) in good[..2].iter().enumerate() {
        let n = arrived.iter().filter(|a| a.payload == *p).count();
        assert_eq!(n, 1, "good packet {k} relayed {n} times");
    }
    for p in &arrived {
        assert!(
            !refused.contains(&p.payload),
            "a refused packet was relayed"
        );
    }
    let after = net.status(0);
    let bad_ip = drop_count(&after, "local_bad_ip") - drop_count(&before, "local_bad_ip");
    assert_eq!(bad_ip, counted.len() as u64, "{after:?}");
    // Nothing else was read as the firewall's pfsync: the stacked device's frame never was.
    let captured = local_count(&after, "captured") - local_count(&before, "captured");
    assert_eq!(captured, 2, "{after:?}");
}

/// The MAC address of `ifname` in `ns`.
fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let out = common::netns::ip(&["-n", ns, "-br", "link", "show", "dev", ifname]);
    let text = out.split_whitespace().nth(2).expect("a MAC address");
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

/// A gateway whose sync interface disappears stops with an error naming it (a supervisor
/// restarts it once the interface is back) instead of running on, blind.
#[test]
fn a_removed_sync_interface_stops_the_gateway() {
    if skip_unless_root("a_removed_sync_interface_stops_the_gateway") {
        return;
    }
    let net = Net::new("gone", 2, false);
    for i in 0..2 {
        net.start_gw(i);
    }
    net.wait_established(&[0, 1], Duration::from_secs(15));
    let b = net.site(1);
    common::netns::ip(&["-n", &b.gw_ns, "link", "del", SYNC_IF]);
    let code = net.lab.wait_exit(&b.gw(), Duration::from_secs(5));
    let log = net.lab.log_tail(&b.gw(), 20);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("sync interface `{SYNC_IF}`")) && log.contains("is gone"),
        "{log}"
    );
    // The other gateway runs on.
    net.lab.check_running(&net.site(0).gw()).unwrap();
}

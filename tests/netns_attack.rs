//! Nothing an attacker on the transit link sends is ever injected into a firewall, while
//! legitimate relaying keeps working in the same run (so "nothing arrived" can fail).

#[path = "common/lab.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::capture::{udp_recv, udp_socket, Dir, IpPkt, LinkCapture, RawPf, PFSYNC_GROUP};
use common::gw::{bin, drop_count, keygen, Net, ATTACKER_ADDR, SYNC_IF, TRANSIT_IF, TUNNEL_PORT};
use common::netns::skip_unless_root;
use common::pf::{packet, tcp_state};
use common::poll::wait_for;
use pfsync_gw::wire::{Dialect, Message, Packet};
use rand_core::RngCore;

/// Creator id of everything the attacker forges.
const EVIL_CREATOR: u32 = 0x0bad_0bad;

/// Creator ids of every state mentioned in a pfsync packet (undecodable: `None`).
fn creators(payload: &[u8]) -> Option<Vec<u32>> {
    let p = Packet::new_checked(payload, Dialect::OpenbsdV6).ok()?;
    Some(
        p.messages()
            .filter_map(|m: Message| m.state_id().map(|id| id.creator))
            .collect(),
    )
}

/// Wait until `payload` shows up on `rx`, returning everything else seen meanwhile.
fn wait_payload(rx: &RawPf, payload: &[u8], what: &str) -> Vec<IpPkt> {
    let mut other = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv(left) {
            Some(p) if p.payload == payload => return other,
            Some(p) => other.push(p),
            None => break,
        }
    }
    panic!(
        "{what}: legitimate packet not relayed (channel broken); other packets: {}",
        other.len()
    );
}

/// The attacker's socket must receive nothing: no handshake response, no cookie, no data.
fn no_reply(udp: &std::net::UdpSocket, after: &str) {
    if let Some((from, d)) = udp_recv(udp, Duration::from_millis(500)) {
        panic!(
            "gw-b answered the attacker after {after}: {} bytes from {from}, type {}",
            d.len(),
            d[0]
        );
    }
}

#[test]
fn spoofed_forged_replayed_and_unknown_key_traffic_is_never_injected() {
    if skip_unless_root("spoofed_forged_replayed_and_unknown_key_traffic_is_never_injected") {
        return;
    }
    let net = Net::new("atk", 2, true);
    let (a, b) = (net.site(0).clone(), net.site(1).clone());
    let atk = net.attacker().to_string();

    // Capture gw-a's transit side from before its first handshake, for the replays.
    // gw-b starts first so that every initiation gw-a sends reaches a running gw-b: an
    // initiation gw-b never processed is, by design (as in WireGuard), answered when
    // replayed, since its timestamp is still the newest gw-b has seen.
    net.start_gw(1);
    let tap = LinkCapture::open(&a.gw_ns, TRANSIT_IF);
    net.start_gw(0);
    net.wait_established(&[0, 1], Duration::from_secs(15));

    let fw_a = RawPf::open(&a.fw_ns, SYNC_IF, true);
    let fw_b = RawPf::open(&b.fw_ns, SYNC_IF, true);
    // Every frame reaching fw-b's sync interface, whatever socket would (not) take it.
    let fw_b_link = LinkCapture::open(&b.fw_ns, SYNC_IF);

    let legit1 = packet(&[Message::Ins(tcp_state(1, 0xa))]);
    fw_a.send(&legit1, PFSYNC_GROUP);
    wait_payload(&fw_b, &legit1, "before the attack");

    let tunnel: Vec<Vec<u8>> = tap
        .collect(Duration::from_millis(300), |d, p| {
            d == Dir::Out
                && p.dst == b.gw_transit
                && p.udp().is_some_and(|(_, dp, _)| dp == TUNNEL_PORT)
        })
        .into_iter()
        .map(|(_, p)| p.udp().unwrap().2.to_vec())
        .collect();
    let kinds: Vec<u8> = tunnel.iter().map(|d| d[0]).collect();
    net.lab.log(&format!(
        "captured {} tunnel datagrams gw-a -> gw-b, types {kinds:?}",
        tunnel.len()
    ));
    assert!(
        kinds.contains(&4),
        "no transport datagram captured to replay"
    );

    let before_b = net.status(1);
    let before_a = net.status(0);
    fw_b_link.drain();

    // 1. Raw pfsync on the transit link: unicast to gw-b, to its sync address (routed),
    //    and to the pfsync group, all with TTL 255 as a firewall would send them.
    let evil = packet(&[Message::Ins(tcp_state(0x666, EVIL_CREATOR))]);
    net.lab.log("attack 1: raw proto 240 on the transit link");
    common::netns::ip(&[
        "-n",
        &atk,
        "route",
        "add",
        "10.2.0.0/24",
        "via",
        &b.gw_transit.to_string(),
    ]);
    let raw = RawPf::open(&atk, TRANSIT_IF, false);
    for _ in 0..5 {
        raw.send(&evil, b.gw_transit);
        raw.send(&evil, PFSYNC_GROUP);
        raw.send(&evil, b.gw_sync_addr);
        raw.send(&evil, b.fw_addr);
    }

    // 2. Forged datagrams to the tunnel port, from the attacker's own socket (which
    //    must never get an answer).
    net.lab.log("attack 2: forged tunnel datagrams");
    let udp = udp_socket(&atk, SocketAddr::from((ATTACKER_ADDR, 0)));
    let to = b.tunnel_addr();
    let mut rng = rand_core::OsRng;
    let mut forged = 0u64;
    for (ty, len) in [
        (1u8, 148usize),
        (2, 92),
        (4, 64),
        (4, 1200),
        (3, 64),
        (9, 40),
        (1, 10),
    ] {
        for _ in 0..20 {
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            d[0] = ty;
            d[1..4].fill(0);
            udp.send_to(&d, to).unwrap();
            forged += 1;
        }
    }
    for _ in 0..20 {
        let mut d = vec![0u8; 1 + (rng.next_u32() % 300) as usize];
        rng.fill_bytes(&mut d);
        udp.send_to(&d, to).unwrap();
        forged += 1;
    }

    no_reply(&udp, "forged datagrams");

    // 3. Replays of the real tunnel datagrams gw-a sent (handshake and transport).
    net.lab.log("attack 3: replays");
    for _ in 0..3 {
        for d in &tunnel {
            udp.send_to(d, to).unwrap();
        }
    }
    let replayed = 3 * tunnel.len() as u64;
    no_reply(&udp, "replays");

    // 4. A real pfsync-gw with its own key, configured with gw-b as its peer.
    net.lab.log("attack 4: handshakes from an unknown key");
    let evil_keys = keygen(&net.lab, "attacker");
    net.lab.lone_link(&atk, "sync0");
    let cfg = net.lab.path("attacker.toml");
    let sock = net.lab.path("attacker.sock");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"mallory\"\nprivate_key_file = \"{}\"\nlisten = \"{ATTACKER_ADDR}:{TUNNEL_PORT}\"\ncontrol_socket = \"{}\"\n\n\
             [local]\nmode = \"raw\"\ninterface = \"sync0\"\ndialect = \"openbsd-v6\"\nfirewalls = [\"10.66.0.2\"]\n\n\
             [[peer]]\nname = \"gw-b\"\npublic_key = \"{}\"\nendpoint = \"{}\"\npersistent_keepalive = 1\n",
            evil_keys.private_file.display(),
            sock.display(),
            b.keys.public,
            b.tunnel_addr()
        ),
    )
    .unwrap();
    net.lab.spawn(
        "mallory",
        &atk,
        bin(),
        &["run", "--config", cfg.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    wait_for(
        "gw-b to drop the unknown key's handshakes",
        Duration::from_secs(15),
        |last| {
            let n = drop_count(&net.status(1), "tunnel_unknown_key");
            *last = format!("tunnel_unknown_key = {n}");
            (n > drop_count(&before_b, "tunnel_unknown_key")).then_some(())
        },
    );
    let m = common::gw::status(&sock).expect("attacker daemon status");
    assert!(
        !m.peers[0].established,
        "attacker established a session: {m:?}"
    );

    // 5. A firewall-side packet that crossed a router (TTL 254) is not relayed.
    net.lab.log("attack 5: TTL 254 on the sync link");
    let routed = packet(&[Message::Ins(tcp_state(0x667, EVIL_CREATOR))]);
    fw_a.send_ttl(&routed, PFSYNC_GROUP, 254);

    // The channel still works after all that (replays did not hijack the endpoint).
    let legit2 = packet(&[Message::Ins(tcp_state(2, 0xa))]);
    fw_a.send(&legit2, PFSYNC_GROUP);
    wait_payload(&fw_b, &legit2, "after the attack");

    // Everything that reached fw-b's sync link since the attack began: only legit2 (and
    // whatever else the gateway itself says), nothing with the attacker's creator id.
    let seen = fw_b_link.collect(Duration::from_secs(2), |d, p| {
        d == Dir::In && p.proto == 240
    });
    let mut legit_seen = false;
    for (_, p) in &seen {
        legit_seen |= p.payload == legit2;
        assert_ne!(p.payload, evil, "forged packet injected into fw-b");
        assert_ne!(p.payload, routed, "TTL 254 packet relayed to fw-b");
        assert_eq!(p.ttl, 255);
        assert_eq!(
            p.src, b.gw_sync_addr,
            "pfsync on fw-b's link not from gw-b: {p:?}"
        );
        let c =
            creators(&p.payload).unwrap_or_else(|| panic!("undecodable pfsync injected: {p:?}"));
        assert!(
            !c.contains(&EVIL_CREATOR),
            "attacker's state injected: {c:x?}"
        );
    }
    assert!(
        legit_seen,
        "AF_PACKET capture on fw-b missed the legitimate packet"
    );
    no_reply(&udp, "the whole attack");

    let after_b = net.status(1);
    let after_a = net.status(0);
    let delta = |r: &str| drop_count(&after_b, r) - drop_count(&before_b, r);
    let deltas: Vec<(String, u64)> = after_b
        .drops
        .keys()
        .map(|k| (k.clone(), delta(k)))
        .filter(|(_, v)| *v > 0)
        .collect();
    net.lab.log(&format!(
        "gw-b drop deltas: {deltas:?} (forged {forged}, replayed {replayed})"
    ));
    for r in [
        "tunnel_bad_mac1",
        "tunnel_unknown_key",
        "tunnel_replayed_counter",
    ] {
        assert!(delta(r) > 0, "{r} did not increase: {deltas:?}");
    }
    let tunnel_total: u64 = deltas
        .iter()
        .filter(|(k, _)| k.starts_with("tunnel_"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        tunnel_total >= forged + replayed,
        "every forged/replayed datagram must be counted as a drop: {tunnel_total} < {}",
        forged + replayed
    );
    let ttl = drop_count(&after_a, "local_bad_ttl") - drop_count(&before_a, "local_bad_ttl");
    assert!(
        ttl >= 1,
        "gw-a did not count the TTL 254 packet: {:?}",
        after_a.drops
    );
    assert!(after_b.peers[0].established && after_a.peers[0].established);
}

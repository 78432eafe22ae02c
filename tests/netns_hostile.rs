//! A rogue host on a firewall's sync LAN (issue 9, item 1): the gateway trusts only the
//! firewall address(es) of `[local] firewalls`. A host at another address on site A's sync
//! LAN tries what worked before: inserting states with its own creator id, clearing fw-b's
//! states with a `CLR` naming fw-b's host id, and pulling gw-a's whole mirror with one
//! `UPD_REQ 0/0`. Legitimate relaying is checked in the same run, so "nothing arrived" can
//! fail.
//!
//! Before (main at 384c085, issue 9): >1,000 forged states reached fw-b; one CLR took fw-b
//! from 139 to 28 states in 1.5 s; one 56-byte UPD_REQ 0/0 got ≈2,300× its size back.

#[path = "common/lab.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::capture::{Dir, LinkCapture, RawPf, PFSYNC_GROUP};
use common::gw::{bin, drop_count, Net, SYNC_IF};
use common::netns::{ip, skip_unless_root};
use common::pf::{packet, tcp_state};
use common::poll::wait_for;
use pfsync_gw::wire::{Dialect, Message, Packet, StateId};

const ROGUE_CREATOR: u32 = 0x0bad_0bad;
const FW_A: u32 = 0xa;
const FW_B: u32 = 0xb;
/// The rogue host's address on site A's sync LAN (10.1.0.0/24).
const ROGUE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 66);

fn messages(payload: &[u8]) -> Vec<Message> {
    Packet::new_checked(payload, Dialect::OpenbsdV6)
        .map(|p| p.messages().collect())
        .unwrap_or_default()
}

/// Wait until `payload` arrives at `rx` (proves the channel works).
fn expect_relayed(rx: &RawPf, payload: &[u8], what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv(left) {
            Some(p) if p.payload == payload => return,
            Some(_) => {}
            None => break,
        }
    }
    panic!("{what}: legitimate packet not relayed");
}

#[test]
fn a_rogue_sync_lan_host_injects_clears_and_pulls_nothing() {
    if skip_unless_root("a_rogue_sync_lan_host_injects_clears_and_pulls_nothing") {
        return;
    }
    let net = Net::new("hst", 2, false);
    let (a, b) = (net.site(0).clone(), net.site(1).clone());
    net.start_gw(0);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));

    let fw_a = RawPf::open(&a.fw_ns, SYNC_IF, true);
    let fw_b = RawPf::open(&b.fw_ns, SYNC_IF, true);
    // The rogue host shares site A's sync LAN (another address on the same link).
    ip(&[
        "-n",
        &a.fw_ns,
        "addr",
        "add",
        &format!("{ROGUE}/24"),
        "dev",
        SYNC_IF,
    ]);
    let rogue = RawPf::open(&a.fw_ns, SYNC_IF, false);
    rogue.bind_source(ROGUE);

    // fw-b's own states reach gw-a's mirror (and fw-a): 20 of them.
    for k in 0..4u64 {
        let msgs: Vec<Message> = (0..5)
            .map(|i| Message::Ins(tcp_state(0x100 + k * 5 + i, FW_B)))
            .collect();
        let p = packet(&msgs);
        fw_b.send(&p, PFSYNC_GROUP);
        expect_relayed(&fw_a, &p, "fw-b -> fw-a");
    }
    let legit = packet(&[Message::Ins(tcp_state(1, FW_A))]);
    fw_a.send(&legit, PFSYNC_GROUP);
    expect_relayed(&fw_b, &legit, "before the attack");
    wait_for(
        "both mirrors hold 21 states",
        Duration::from_secs(10),
        |last| {
            let (sa, sb) = (net.status(0).states, net.status(1).states);
            *last = format!("gw-a {sa}, gw-b {sb}");
            (sa == 21 && sb == 21).then_some(())
        },
    );
    let before_a = net.status(0);

    let link_a = LinkCapture::open(&a.fw_ns, SYNC_IF);
    let link_b = LinkCapture::open(&b.fw_ns, SYNC_IF);

    // 1. 1,000 states with the rogue's own creator id (200 packets), to the group and
    //    unicast to gw-a.
    net.lab
        .log("attack 1: 1,000 forged INS from the rogue host");
    let mut sent_ins = 0u64;
    for k in 0..200u64 {
        let msgs: Vec<Message> = (0..5)
            .map(|i| Message::Ins(tcp_state(0x6000 + k * 5 + i, ROGUE_CREATOR)))
            .collect();
        let dst = if k % 2 == 0 {
            PFSYNC_GROUP
        } else {
            a.gw_sync_addr
        };
        rogue.send(&packet(&msgs), dst);
        sent_ins += 1;
    }
    // 2. A CLR naming fw-b's host id (and fw-a's), all interfaces.
    net.lab
        .log("attack 2: CLR naming fw-b's and fw-a's creator ids");
    for c in [FW_B, FW_A] {
        rogue.send(
            &packet(&[Message::Clr {
                ifname: [0; 16],
                creator: c,
            }]),
            PFSYNC_GROUP,
        );
    }
    // 3. A bulk request, as a firewall whose sync link came up would send it.
    net.lab.log("attack 3: UPD_REQ 0/0 from the rogue host");
    let bulk_req = packet(&[Message::UpdReq(StateId::BULK)]);
    rogue.send(&bulk_req, PFSYNC_GROUP);
    rogue.send(&bulk_req, a.gw_sync_addr);

    // The channel still works afterwards.
    let legit2 = packet(&[Message::Ins(tcp_state(2, FW_A))]);
    fw_a.send(&legit2, PFSYNC_GROUP);
    expect_relayed(&fw_b, &legit2, "after the attack");

    // Nothing from the rogue reached fw-b's link: no rogue creator id, no CLR.
    let seen_b = link_b.collect(Duration::from_secs(2), |d, p| {
        d == Dir::In && p.proto == 240
    });
    for (_, p) in &seen_b {
        for m in messages(&p.payload) {
            assert!(!matches!(m, Message::Clr { .. }), "CLR reached fw-b: {m:?}");
            if let Some(id) = m.state_id() {
                assert_ne!(id.creator, ROGUE_CREATOR, "rogue state reached fw-b");
            }
        }
    }
    // gw-a answered the rogue's bulk request with nothing: no BUS, no bulk UPD stream.
    let seen_a = link_a.collect(Duration::from_millis(500), |d, p| {
        d == Dir::In && p.proto == 240 && p.src == a.gw_sync_addr
    });
    let answer_bytes: usize = seen_a.iter().map(|(_, p)| p.payload.len()).sum();
    for (_, p) in &seen_a {
        for m in messages(&p.payload) {
            assert!(
                !matches!(m, Message::Bus { .. }),
                "gw-a answered a bulk request: {m:?}"
            );
        }
    }
    net.lab.log(&format!(
        "gw-a put {answer_bytes} bytes on site A's link after the rogue's bulk request"
    ));

    // No state removed anywhere, none added but legit2.
    let (after_a, after_b) = (net.status(0), net.status(1));
    assert_eq!(
        after_a.states, 22,
        "gw-a mirror changed: {}",
        after_a.states
    );
    wait_for(
        "gw-b mirror holds 22 states",
        Duration::from_secs(5),
        |last| {
            let n = net.status(1).states;
            *last = format!("{n}");
            (n == 22).then_some(())
        },
    );
    let foreign = drop_count(&after_a, "local_foreign_source")
        - drop_count(&before_a, "local_foreign_source");
    net.lab.log(&format!(
        "gw-a local_foreign_source +{foreign}, gw-b states {}",
        after_b.states
    ));
    assert!(
        foreign >= sent_ins + 4,
        "gw-a counted {foreign} foreign packets, sent {}",
        sent_ins + 4
    );

    // The firewall itself: its bulk request is answered, but at most once per interval.
    let before = net.status(0);
    fw_a.send(&bulk_req, PFSYNC_GROUP);
    fw_a.send(&bulk_req, PFSYNC_GROUP);
    fw_a.send(&bulk_req, PFSYNC_GROUP);
    wait_for(
        "one bulk answer, the rest refused",
        Duration::from_secs(5),
        |last| {
            let st = net.status(0);
            let answered = st.local.get("bulk_answers").copied().unwrap_or(0)
                - before.local.get("bulk_answers").copied().unwrap_or(0);
            let refused =
                drop_count(&st, "local_bulk_refused") - drop_count(&before, "local_bulk_refused");
            *last = format!("answered {answered}, refused {refused}");
            (answered == 1 && refused == 2).then_some(())
        },
    );
}

/// Raw mode without `[local] firewalls` is refused by `check` (file, field, reason, exit 2).
#[test]
fn raw_config_without_firewalls_is_refused() {
    let dir = std::env::temp_dir().join(format!("pfsync-gw-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k.key");
    let o = Command::new(bin())
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let base = format!(
        "[node]\nprivate_key_file = \"{}\"\n\n[local]\nmode = \"raw\"\ninterface = \"lo\"\ndialect = \"openbsd-v6\"\n",
        key.display()
    );
    let check = |text: &str| {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        let o = Command::new(bin())
            .args(["check", "--config", p.to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = check(&base);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("c.toml") && err.contains("local.firewalls") && err.contains("required"),
        "{err}"
    );
    let (code, err) = check(&format!("{base}firewalls = [\"224.0.0.240\"]\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("local.firewalls[0]"), "{err}");
    let (code, err) = check(&format!(
        "{base}firewalls = [\"10.0.0.1\"]\n\n[[peer]]\nname = \"p\"\npublic_key = \"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"\ncreators = [0]\n"
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("peer[0].creators[0]"), "{err}");
    let (code, err) = check(&format!("{base}firewalls = [\"10.0.0.1\"]\n"));
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

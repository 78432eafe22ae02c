//! Simulated-time tests of the emulated kernel.

use super::*;
use std::collections::HashMap;

const BUF: usize = 9000;

fn cfg(dialect: Dialect, hostid: u32, seed: u64) -> EmulatorConfig {
    EmulatorConfig {
        dialect,
        hostid,
        rate: 100,
        max_states: 5000,
        maxupd: 128,
        seed,
        ifname: "em1".into(),
        mtu: 1480,
    }
}

/// Every packet the emulator wants to send now, each checked against the dialect's codec.
fn drain(e: &mut Emulator) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; BUF];
    while let Some(n) = e.poll_transmit(&mut buf) {
        assert!(n <= e.config().mtu, "packet of {n} bytes over the mtu");
        let d = e.config().dialect;
        if let Err(err) = Packet::new_checked(&buf[..n], d) {
            panic!("{d}: emitted packet fails validation: {err}");
        }
        out.push(buf[..n].to_vec());
        assert!(out.len() < 100_000, "poll_transmit never ends");
    }
    out
}

fn msgs(d: Dialect, pkt: &[u8]) -> Vec<Message> {
    Packet::new_checked(pkt, d)
        .unwrap()
        .messages()
        .filter(|m| *m != Message::Eof)
        .collect()
}

fn all_msgs(d: Dialect, pkts: &[Vec<u8>]) -> Vec<Message> {
    pkts.iter().flat_map(|p| msgs(d, p)).collect()
}

/// Deliver packets to `e` as from the sync interface with the right TTL.
fn deliver(e: &mut Emulator, pkts: &[Vec<u8>], now: Instant) {
    for p in pkts {
        e.on_receive(p, 255, true, now).expect("accepted");
    }
}

/// Change an own state as a churn step would (seqlo advances), at `at`.
fn bump(e: &mut Emulator, id: StateId, at: Instant) {
    e.now = e.now.max(at);
    let mut s = e.table.get(id).unwrap().raw();
    s.src.seqlo = s.src.seqlo.wrapping_add(100);
    let u = e.upd_c_of(&s);
    e.table.apply(&Message::UpdC(u), at);
    e.note_change(id);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn churn_sends_ins_then_upd_c_then_del_c_and_valid_packets_in_every_dialect() {
    for d in Dialect::ALL {
        let t0 = Instant::now();
        let mut e = Emulator::new(cfg(d, 0x0a0a_0a0a, 7), t0);
        let mut seen: HashMap<StateId, Vec<&'static str>> = HashMap::new();
        let mut t = t0;
        let mut sizes = 0usize;
        let mut packets = 0usize;
        while t < t0 + Duration::from_secs(30) {
            t += ms(10);
            e.handle_timeout(t);
            for p in drain(&mut e) {
                sizes += p.len();
                packets += 1;
                for m in msgs(d, &p) {
                    if let Some(id) = m.state_id() {
                        seen.entry(id).or_default().push(m.action_name());
                    }
                }
            }
        }
        assert!(e.stats().created > 2000, "{d}: {:?}", e.stats());
        assert!(e.stats().deleted > 500, "{d}: {:?}", e.stats());
        let mut full_lives = 0;
        for (id, acts) in &seen {
            assert_eq!(acts[0], "ins", "{d} {id}: {acts:?}");
            assert_eq!(
                acts.iter().filter(|a| **a == "ins").count(),
                1,
                "{d} {id}: {acts:?}"
            );
            if let Some(p) = acts.iter().position(|a| *a == "del_c") {
                assert_eq!(p, acts.len() - 1, "{d} {id}: message after DEL_C: {acts:?}");
            }
            assert!(
                acts.iter().all(|a| matches!(*a, "ins" | "upd_c" | "del_c")),
                "{d} {id}: {acts:?}"
            );
            if acts.contains(&"upd_c") && acts.last() == Some(&"del_c") {
                full_lives += 1;
            }
        }
        assert!(
            full_lives > 100,
            "{d}: only {full_lives} INS→UPD_C→DEL_C lives"
        );
        // Batching: packets are well filled on average, not one message each.
        if d != Dialect::NetbsdV3 {
            assert!(
                sizes / packets > 400,
                "{d}: avg packet {} B",
                sizes / packets
            );
        }
        // Some IPv6, several protocols.
        let protos: std::collections::HashSet<(AddrFamilyKey, u8)> = e
            .table()
            .iter()
            .map(|x| (AddrFamilyKey::of(x.raw().af), x.raw().proto))
            .collect();
        assert!(protos.len() >= 5, "{d}: {protos:?}");
    }
}

#[derive(Debug, Hash, PartialEq, Eq)]
enum AddrFamilyKey {
    V4,
    V6,
    Other,
}
impl AddrFamilyKey {
    fn of(af: crate::wire::AddrFamily) -> Self {
        match af {
            crate::wire::AddrFamily::Inet => AddrFamilyKey::V4,
            crate::wire::AddrFamily::Inet6 => AddrFamilyKey::V6,
            _ => AddrFamilyKey::Other,
        }
    }
}

#[test]
fn changes_collapse_into_one_upd_c_flushed_within_a_second() {
    let t0 = Instant::now();
    let mut e = Emulator::new(cfg(Dialect::OpenbsdV6, 1, 1), t0);
    e.set_churn(false);
    e.create_states(1);
    let id = e.table().iter().next().unwrap().raw().id;
    assert!(drain(&mut e).is_empty(), "INS waits for the flush timer");
    e.handle_timeout(t0 + FLUSH_INTERVAL);
    let ins = all_msgs(Dialect::OpenbsdV6, &drain(&mut e));
    assert!(
        matches!(ins[..], [Message::Ins(s)] if s.id == id),
        "{ins:?}"
    );

    let t1 = t0 + Duration::from_secs(5);
    for i in 0..10 {
        bump(&mut e, id, t1 + ms(i * 50));
        e.handle_timeout(t1 + ms(i * 50));
        assert!(drain(&mut e).is_empty(), "no flush before the timer");
    }
    let want = e.table().get(id).unwrap().raw().src.seqlo;
    assert_eq!(e.poll_timeout(), Some(t1 + FLUSH_INTERVAL));
    e.handle_timeout(t1 + FLUSH_INTERVAL);
    let got = all_msgs(Dialect::OpenbsdV6, &drain(&mut e));
    assert_eq!(got.len(), 1, "{got:?}");
    match got[0] {
        Message::UpdC(u) => {
            assert_eq!(u.id, id);
            assert_eq!(u.src.seqlo, want, "carries the latest values");
        }
        ref m => panic!("{m:?}"),
    }
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn maxupd_forces_an_immediate_flush() {
    let t0 = Instant::now();
    let mut c = cfg(Dialect::Freebsd1400, 1, 1);
    c.maxupd = 4;
    let mut e = Emulator::new(c, t0);
    e.set_churn(false);
    e.create_states(2);
    e.handle_timeout(t0 + FLUSH_INTERVAL);
    drain(&mut e);
    let id = e.table().iter().next().unwrap().raw().id;
    let t1 = t0 + Duration::from_secs(3);
    // The first change queues the entry; maxupd further changes force it out.
    for i in 0..4 {
        bump(&mut e, id, t1);
        assert!(
            drain(&mut e).is_empty(),
            "flushed early after {} changes",
            i + 1
        );
    }
    bump(&mut e, id, t1);
    let got = all_msgs(Dialect::Freebsd1400, &drain(&mut e));
    assert!(
        matches!(got[..], [Message::UpdC(u)] if u.id == id),
        "{got:?}"
    );
}

/// Two emulators wired back to back; returns them after churn stopped and all settled.
fn back_to_back(d: Dialect, churn_secs: u64) -> (Emulator, Emulator) {
    let t0 = Instant::now();
    let mut a = Emulator::new(cfg(d, 0xaaaa_0001, 11), t0);
    let mut b = Emulator::new(cfg(d, 0xbbbb_0002, 22), t0);
    let mut t = t0;
    let end = t0 + Duration::from_secs(churn_secs);
    while t < end + Duration::from_secs(3) {
        t += ms(10);
        if t >= end {
            a.set_churn(false);
            b.set_churn(false);
        }
        a.handle_timeout(t);
        b.handle_timeout(t);
        loop {
            let pa = drain(&mut a);
            let pb = drain(&mut b);
            if pa.is_empty() && pb.is_empty() {
                break;
            }
            deliver(&mut b, &pa, t);
            deliver(&mut a, &pb, t);
        }
    }
    (a, b)
}

#[test]
fn back_to_back_emulators_converge_in_every_dialect() {
    for d in Dialect::ALL {
        let (mut a, mut b) = back_to_back(d, 15);
        assert!(a.own_states() > 100 && b.own_states() > 100, "{d}");
        assert_eq!(a.table().len(), a.own_states() + b.own_states(), "{d}");
        assert_eq!(a.table().len(), b.table().len(), "{d}");
        assert_eq!(a.digest(), b.digest(), "{d}");
        assert_eq!(a.digest(), a.table().recompute_digest());
        for s in [a.stats(), b.stats()] {
            assert_eq!(s.drops, DropStats::default(), "{d}: {s:?}");
            assert_eq!(s.oerrors, 0, "{d}: {s:?}");
            assert_eq!(s.upd_req_sent, 0, "{d}: lossless link needs no requests");
        }
    }
}

#[test]
fn wrong_ttl_or_interface_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut a = Emulator::new(cfg(Dialect::OpenbsdV6, 1, 1), t0);
    a.set_churn(false);
    a.create_states(5);
    a.handle_timeout(t0 + FLUSH_INTERVAL);
    let pkts = drain(&mut a);
    assert_eq!(pkts.len(), 1);
    let mut b = Emulator::new(cfg(Dialect::OpenbsdV6, 2, 2), t0);
    b.set_churn(false);
    assert_eq!(b.on_receive(&pkts[0], 254, true, t0), Err(RecvDrop::BadTtl));
    assert_eq!(b.on_receive(&pkts[0], 255, false, t0), Err(RecvDrop::BadIf));
    assert_eq!(
        b.on_receive(&pkts[0][..10], 255, true, t0),
        Err(RecvDrop::Short)
    );
    let mut other = pkts[0].clone();
    other[0] = 5;
    assert_eq!(b.on_receive(&other, 255, true, t0), Err(RecvDrop::BadVer));
    assert_eq!(b.table().len(), 0);
    let s = b.stats();
    assert_eq!(
        (
            s.drops.badttl,
            s.drops.badif,
            s.drops.hdrops,
            s.drops.badver
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(s.received_packets, 4);
    assert!(b.poll_transmit(&mut [0u8; BUF]).is_none());
    // The same packet with the right envelope is applied.
    b.on_receive(&pkts[0], 255, true, t0).unwrap();
    assert_eq!(b.digest(), a.digest());
}

#[test]
fn unknown_upd_c_is_requested_and_answered_with_a_full_update() {
    for d in Dialect::ALL {
        let t0 = Instant::now();
        let mut a = Emulator::new(cfg(d, 0xa, 1), t0);
        let mut b = Emulator::new(cfg(d, 0xb, 2), t0);
        a.set_churn(false);
        b.set_churn(false);
        a.create_states(1);
        let id = a.table().iter().next().unwrap().raw().id;
        a.handle_timeout(t0 + FLUSH_INTERVAL);
        drain(&mut a); // the INS is lost
        let t1 = t0 + Duration::from_secs(2);
        bump(&mut a, id, t1);
        a.handle_timeout(t1 + FLUSH_INTERVAL);
        let upd_c = drain(&mut a);
        deliver(&mut b, &upd_c, t1);
        assert_eq!(b.table().len(), 0);
        let req = drain(&mut b);
        assert_eq!(all_msgs(d, &req), vec![Message::UpdReq(id)], "{d}");
        assert_eq!(b.stats().upd_req_sent, 1);
        deliver(&mut a, &req, t1);
        let ans = drain(&mut a);
        let m = all_msgs(d, &ans);
        assert!(
            matches!(m[..], [Message::Upd(s)] if s.id == id),
            "{d}: {m:?}"
        );
        deliver(&mut b, &ans, t1);
        assert_eq!(b.digest(), a.digest(), "{d}");
        assert_eq!(a.stats().upd_req_answered, 1);
    }
}

#[test]
fn bulk_update_brings_a_fresh_emulator_up_to_date() {
    for d in Dialect::ALL {
        let t0 = Instant::now();
        let mut a = Emulator::new(cfg(d, 0xa, 1), t0);
        a.set_churn(false);
        a.create_states(300);
        a.handle_timeout(t0 + FLUSH_INTERVAL);
        drain(&mut a);
        let t1 = t0 + Duration::from_secs(10);
        let mut b = Emulator::new(cfg(d, 0xb, 2), t1);
        b.set_churn(false);
        b.request_bulk();
        let req = drain(&mut b);
        assert_eq!(
            all_msgs(d, &req),
            vec![Message::UpdReq(StateId::BULK)],
            "{d}"
        );
        deliver(&mut a, &req, t1);
        let bulk = drain(&mut a);
        let m = all_msgs(d, &bulk);
        assert!(
            matches!(
                m[0],
                Message::Bus {
                    status: BusStatus::Start,
                    creator: 0xa,
                    ..
                }
            ),
            "{d}: {:?}",
            m[0]
        );
        assert!(matches!(
            m[m.len() - 1],
            Message::Bus {
                status: BusStatus::End,
                ..
            }
        ));
        assert_eq!(m.len(), 302, "{d}");
        assert!(m[1..301].iter().all(|x| matches!(x, Message::Upd(_))));
        assert!(bulk.len() > 1, "{d}: a bulk spans packets");
        deliver(&mut b, &bulk, t1);
        assert_eq!(b.table().len(), 300);
        assert_eq!(b.digest(), a.digest(), "{d}");
        assert!(b.stats().bulk_done);
        assert_eq!(a.stats().bulk_sent, 1);
        // No more retries once the bulk is in.
        b.handle_timeout(t1 + Duration::from_secs(60));
        assert!(drain(&mut b).is_empty());
    }
}

#[test]
fn bulk_request_is_retried_then_given_up() {
    let t0 = Instant::now();
    let mut b = Emulator::new(cfg(Dialect::Freebsd1400, 0xb, 2), t0);
    b.set_churn(false);
    b.request_bulk();
    assert_eq!(drain(&mut b).len(), 1);
    let mut t = t0;
    let mut requests = 1;
    for _ in 0..100 {
        t += Duration::from_secs(1);
        b.handle_timeout(t);
        requests += drain(&mut b).len();
    }
    assert_eq!(requests, MAX_BULK_TRIES as usize);
    assert_eq!(b.stats().bulk_requests, MAX_BULK_TRIES as u64);
    assert!(
        b.stats().bulk_done,
        "gives up (pretends OK) after the last try"
    );
}

#[test]
fn stale_update_is_refused_and_corrected() {
    let d = Dialect::OpenbsdV6;
    let t0 = Instant::now();
    let mut a = Emulator::new(cfg(d, 0xa, 1), t0);
    let mut b = Emulator::new(cfg(d, 0xb, 2), t0);
    a.set_churn(false);
    b.set_churn(false);
    a.create_states(20);
    // Seqlo regressions are stale for TCP only.
    let id = a
        .table()
        .iter()
        .find(|e| e.raw().proto == 6)
        .unwrap()
        .raw()
        .id;
    let mut t = t0 + FLUSH_INTERVAL;
    a.handle_timeout(t);
    deliver(&mut b, &drain(&mut a), t);
    let mut upd = Vec::new();
    for _ in 0..2 {
        t += Duration::from_secs(2);
        bump(&mut a, id, t);
        a.handle_timeout(t + FLUSH_INTERVAL);
        upd.push(drain(&mut a));
    }
    // Newer first, then the older one (reordered on the way).
    deliver(&mut b, &upd[1], t);
    deliver(&mut b, &upd[0], t);
    assert_eq!(b.stats().drops.stale, 1);
    assert_eq!(b.digest(), a.digest(), "older update not applied");
    let fix = all_msgs(d, &drain(&mut b));
    assert!(
        matches!(fix[..], [Message::UpdC(u)] if u.id == id),
        "{fix:?}"
    );
}

#[test]
fn peer_delete_and_clear_stop_churn_of_those_states() {
    let d = Dialect::OpenbsdV6;
    let t0 = Instant::now();
    let mut a = Emulator::new(cfg(d, 0xa, 1), t0);
    a.set_churn(false);
    a.create_states(10);
    assert_eq!(a.own_states(), 10);
    let mut buf = [0u8; 1480];
    let mut w = PacketWriter::new(d, &mut buf);
    w.push(&Message::Clr {
        ifname: [0; 16],
        creator: 0xa,
    })
    .unwrap();
    let n = w.finish();
    a.on_receive(&buf[..n], 255, true, t0).unwrap();
    assert_eq!(a.table().len(), 0);
    assert_eq!(a.own_states(), 0);
    // Queued INS of removed states are not sent.
    a.handle_timeout(t0 + FLUSH_INTERVAL);
    assert!(all_msgs(d, &drain(&mut a)).is_empty());
}

#[test]
fn deterministic_for_a_seed() {
    let (mut a1, _) = back_to_back(Dialect::Freebsd1301, 5);
    let (mut a2, _) = back_to_back(Dialect::Freebsd1301, 5);
    assert_eq!(a1.digest(), a2.digest());
    assert_eq!(a1.stats(), a2.stats());
}

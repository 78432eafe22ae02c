//! Handshake flood defences, cookies, low-order keys, roaming limits and key rotation,
//! driven through the public `Endpoint` API with simulated time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use pfsync_gw::tunnel::{
    DropReason, Endpoint, Identity, Recv, Send, COOKIE_BURST, COOKIE_QUEUE, COOKIE_RATE,
    COOKIE_REPLY_LEN, HANDSHAKE_BUDGET_BURST, HANDSHAKE_BUDGET_RATE, INITIATION_LEN,
    MSG_COOKIE_REPLY, MSG_INITIATION, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, ROAM_BUDGET_FACTOR,
    TRANSPORT_OVERHEAD,
};
use rand_core::OsRng;

fn sa(n: u32) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | n), 51820))
}

/// Drain `from`'s transmits into `to` (as if sent from `src`), returning what was sent.
fn pump(
    from: &mut Endpoint,
    src: SocketAddr,
    to: &mut Endpoint,
    now: Instant,
) -> Vec<(SocketAddr, Vec<u8>, Recv)> {
    let mut wire = vec![0u8; 4096];
    let mut plain = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Some(t) = from.poll_transmit(now, &mut wire) {
        let r = to.handle_datagram(src, &wire[..t.len], now, &mut plain);
        out.push((t.to, wire[..t.len].to_vec(), r));
    }
    out
}

fn pair(now: Instant) -> (Endpoint, Endpoint, SocketAddr, SocketAddr) {
    let (a_addr, b_addr) = (sa(1), sa(2));
    let mut a = Endpoint::new(Identity::from_private([1; 32]), OsRng, now);
    let mut b = Endpoint::new(Identity::from_private([2; 32]), OsRng, now);
    let (pa, pb) = (a.public(), b.public());
    a.add_peer(0, pb, None, Some(b_addr), None);
    b.add_peer(0, pa, None, Some(a_addr), None);
    (a, b, a_addr, b_addr)
}

fn establish(
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    now: Instant,
) {
    let mut wire = vec![0u8; 4096];
    assert_eq!(a.send(0, b"hello", now, &mut wire), Send::Queued);
    for _ in 0..3 {
        pump(a, a_addr, b, now);
        pump(b, b_addr, a, now);
    }
    assert!(a.peer_status(0).unwrap().established);
    assert!(b.peer_status(0).unwrap().established);
}

/// Valid-mac1 initiations from `n` random static keys, addressed to `victim`.
fn attacker_initiations(victim: [u8; 32], n: usize, now: Instant) -> Vec<Vec<u8>> {
    let mut wire = vec![0u8; 4096];
    (0..n)
        .map(|_| {
            let mut e = Endpoint::new(Identity::generate(&mut OsRng), OsRng, now);
            e.add_peer(0, victim, None, Some(sa(99)), None);
            assert_eq!(e.send(0, b"x", now, &mut wire), Send::Queued);
            let t = e.poll_transmit(now, &mut wire).expect("initiation");
            assert_eq!(t.len, INITIATION_LEN);
            wire[..t.len].to_vec()
        })
        .collect()
}

#[test]
fn flood_is_bounded_before_diffie_hellman_and_answered_with_cookies() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    establish(&mut a, &mut b, a_addr, b_addr, now);
    let inits = attacker_initiations(b.public(), 64, now);
    let mut plain = vec![0u8; 4096];
    let mut wire = vec![0u8; 4096];
    // 20,000 initiations within 200 ms from 20,000 spoofed sources (100,000/s).
    let n = 20_000u32;
    let mut cookie_replies = 0usize;
    for i in 0..n {
        let t = now + Duration::from_micros(u64::from(i) * 10);
        let r = b.handle_datagram(
            sa(1000 + i),
            &inits[i as usize % inits.len()],
            t,
            &mut plain,
        );
        assert!(matches!(r, Recv::Dropped(_)), "{r:?}");
        if i % 1000 == 999 {
            // The driver drains transmits once per wakeup; the ring bounds each drain.
            let mut k = 0;
            while let Some(tx) = b.poll_transmit(t, &mut wire) {
                assert_eq!(tx.len, COOKIE_REPLY_LEN);
                assert_eq!(wire[0], MSG_COOKIE_REPLY);
                assert!(tx.to.port() == 51820 && tx.to != a_addr);
                k += 1;
            }
            assert!(k <= COOKIE_QUEUE);
            cookie_replies += k;
        }
        // Transport data keeps flowing meanwhile.
        if i % 2000 == 0 {
            let Send::Datagram(tx) = a.send(0, b"data", t, &mut wire) else {
                panic!("a lost its session")
            };
            let r = b.handle_datagram(a_addr, &wire[..tx.len], t, &mut plain);
            assert_eq!(r, Recv::Data { peer: 0, len: 4 });
        }
    }
    let stats = b.dos_stats();
    let d = b.drops();
    assert!(stats.under_load);
    // Diffie-Hellman work: the global budget's burst plus its rate over 0.2 s at most.
    let bound = u64::from(HANDSHAKE_BUDGET_BURST) + u64::from(HANDSHAKE_BUDGET_RATE) / 5 + 1;
    assert!(stats.handshakes_processed <= bound, "{stats:?}");
    // Before load set in, spoofed sources are processed (up to the budget) and fail as
    // unknown keys; after, they need mac2 and get cookies.
    assert!(
        d.under_load + d.cookie_queue_full + d.cookie_rate > u64::from(n) * 9 / 10,
        "{d:?}"
    );
    // Cookie replies to these non-peer sources: at most the rate's burst plus its rate
    // over the 0.2 s of flood.
    let cookie_bound = u64::from(COOKIE_BURST) + u64::from(COOKIE_RATE) / 5 + 1;
    assert!(stats.cookie_replies_sent <= cookie_bound, "{stats:?}");
    assert_eq!(cookie_replies as u64, stats.cookie_replies_sent);
    assert_eq!(stats.cookie_replies_sent, d.under_load);
    assert!(d.unknown_key <= stats.handshakes_processed);
}

#[test]
fn legitimate_peer_gets_through_a_flood_with_a_cookie() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    let inits = attacker_initiations(b.public(), 8, now);
    let mut plain = vec![0u8; 4096];
    let mut wire = vec![0u8; 4096];
    // Put b under load.
    for i in 0..200u32 {
        b.handle_datagram(sa(5000 + i), &inits[i as usize % 8], now, &mut plain);
    }
    assert!(b.dos_stats().under_load);
    while b.poll_transmit(now, &mut wire).is_some() {}
    // a's first initiation: answered by a cookie, not processed.
    assert_eq!(a.send(0, b"hello", now, &mut wire), Send::Queued);
    let sent = pump(&mut a, a_addr, &mut b, now);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].2, Recv::Dropped(DropReason::UnderLoad));
    let back = pump(&mut b, b_addr, &mut a, now);
    assert_eq!(back.len(), 1, "exactly one cookie reply");
    assert_eq!(back[0].1[0], MSG_COOKIE_REPLY);
    assert_eq!(back[0].2, Recv::Cookie { peer: 0 });
    // A replayed cookie reply is refused (single use).
    assert_eq!(
        a.handle_datagram(b_addr, &back[0].1, now, &mut plain),
        Recv::Dropped(DropReason::BadCookieReply)
    );
    // Keep b under load; a retransmits with mac2 after REKEY_TIMEOUT and gets through.
    let t = now + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX;
    for i in 0..50u32 {
        b.handle_datagram(sa(9000 + i), &inits[i as usize % 8], t, &mut plain);
    }
    while b.poll_transmit(t, &mut wire).is_some() {}
    assert!(b.dos_stats().under_load);
    a.handle_timeout(t);
    let sent = pump(&mut a, a_addr, &mut b, t);
    assert_eq!(sent[0].1[0], MSG_INITIATION);
    assert_eq!(sent[0].2, Recv::Handshake { peer: 0 });
    assert_eq!(b.dos_stats().mac2_accepted, 1);
    for _ in 0..3 {
        pump(&mut b, b_addr, &mut a, t);
        pump(&mut a, a_addr, &mut b, t);
    }
    assert!(a.peer_status(0).unwrap().established);
    assert!(b.peer_status(0).unwrap().established);
}

#[test]
fn per_source_bucket_limits_one_address() {
    let now = Instant::now();
    let (_, mut b, _, _) = pair(now);
    let inits = attacker_initiations(b.public(), 10, now);
    let mut plain = vec![0u8; 4096];
    let src = sa(77);
    let verdicts: Vec<Recv> = inits
        .iter()
        .map(|m| b.handle_datagram(src, m, now, &mut plain))
        .collect();
    // Burst of 5 reaches DH (unknown keys), the next is refused before it and puts b
    // under load, so the rest need a cookie.
    assert_eq!(b.drops().unknown_key, 5, "{verdicts:?}");
    assert_eq!(b.drops().source_rate, 1);
    assert_eq!(b.drops().under_load, 4);
    assert!(b.dos_stats().under_load);
}

fn mac1_key(public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"mac1----");
    h.update(public);
    h.finalize().into()
}

#[test]
fn low_order_ephemeral_is_rejected() {
    let now = Instant::now();
    let (_, mut b, _, _) = pair(now);
    // Initiation whose ephemeral key is the zero point (small order): es = 0.
    let mut msg = [0u8; INITIATION_LEN];
    msg[0] = MSG_INITIATION;
    msg[4..8].copy_from_slice(&7u32.to_le_bytes());
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(&mac1_key(&b.public())).unwrap();
    m.update(&msg[..116]);
    msg[116..132].copy_from_slice(&m.finalize().into_bytes());
    let mut plain = vec![0u8; 4096];
    assert_eq!(
        b.handle_datagram(sa(3), &msg, now, &mut plain),
        Recv::Dropped(DropReason::LowOrderKey)
    );
}

#[test]
fn roamed_endpoint_gets_at_most_its_budget_until_proven() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    establish(&mut a, &mut b, a_addr, b_addr, now);
    let mut wire = vec![0u8; 4096];
    let mut plain = vec![0u8; 4096];
    // An attacker captures one of a's packets and gets it to b first, from a victim address.
    let Send::Datagram(tx) = a.send(0, b"small request", now, &mut wire) else {
        panic!()
    };
    let captured = wire[..tx.len].to_vec();
    let victim = sa(666);
    assert!(matches!(
        b.handle_datagram(victim, &captured, now, &mut plain),
        Recv::Data { .. }
    ));
    let st = b.peer_status(0).unwrap();
    assert_eq!(st.endpoint, Some(victim));
    assert!(st.endpoint_unproven);
    // b answers with a lot of data: only ROAM_BUDGET_FACTOR × the request reaches the
    // victim; the rest goes to a's proven address.
    let mut to_victim = 0u64;
    for _ in 0..100 {
        let Send::Datagram(t) = b.send(0, &[0u8; 1000], now, &mut wire) else {
            panic!()
        };
        if t.to == victim {
            to_victim += t.len as u64;
        } else {
            assert_eq!(t.to, a_addr);
        }
    }
    assert!(
        to_victim <= ROAM_BUDGET_FACTOR * captured.len() as u64,
        "{to_victim}"
    );
    assert!(b.dos_stats().roam_fallbacks >= 99);
    // The genuine packet is now a replay; a's next packet from its own address moves the
    // endpoint back, unrestricted.
    let Send::Datagram(tx) = a.send(0, b"next", now, &mut wire) else {
        panic!()
    };
    b.handle_datagram(a_addr, &wire[..tx.len], now, &mut plain);
    let st = b.peer_status(0).unwrap();
    assert_eq!(st.endpoint, Some(a_addr));
    assert!(!st.endpoint_unproven);
}

#[test]
fn genuine_roam_is_proven_by_a_handshake() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    establish(&mut a, &mut b, a_addr, b_addr, now);
    let new_addr = sa(42);
    // a moves; its initiation from the new address reaches b, b's response goes there,
    // a's first packet on the new session proves the new address receives.
    let t = now + Duration::from_secs(130);
    a.handle_timeout(t);
    let mut wire = vec![0u8; 4096];
    let _ = a.send(0, b"after move", t, &mut wire);
    for _ in 0..3 {
        pump(&mut a, new_addr, &mut b, t);
        pump(&mut b, b_addr, &mut a, t);
    }
    let st = b.peer_status(0).unwrap();
    assert_eq!(st.endpoint, Some(new_addr));
    assert!(!st.endpoint_unproven, "{st:?}");
}

#[test]
fn key_rotation_keeps_sessions_and_rehandshakes_with_the_new_key() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    establish(&mut a, &mut b, a_addr, b_addr, now);
    let old_a = a.public();
    let new_a = Identity::from_private([11; 32]);
    let new_pub = new_a.public();
    // 1. b accepts a's next key as well.
    b.set_peer_keys(0, old_a, Some(new_pub));
    assert!(b.peer_status(0).unwrap().established, "b kept its session");
    // 2. a switches its private key: sessions stay, a handshake with the new key starts.
    a.set_identity(new_a);
    let mut wire = vec![0u8; 4096];
    let mut plain = vec![0u8; 4096];
    let Send::Datagram(tx) = a.send(0, b"during", now, &mut wire) else {
        panic!("a kept its session")
    };
    assert_eq!(tx.len, 6 + TRANSPORT_OVERHEAD);
    let pending = wire[..tx.len].to_vec();
    let t = now + Duration::from_millis(10);
    for _ in 0..3 {
        pump(&mut a, a_addr, &mut b, t);
        pump(&mut b, b_addr, &mut a, t);
    }
    assert!(a.peer_status(0).unwrap().established);
    assert_eq!(b.drops().unknown_key, 0);
    // The packet sealed on the old session still decrypts (previous session kept).
    assert!(matches!(
        b.handle_datagram(a_addr, &pending, t, &mut plain),
        Recv::Data { .. }
    ));
    // 3. b drops the old key: the new one is primary, sessions kept.
    b.set_peer_keys(0, new_pub, None);
    assert!(b.peer_status(0).unwrap().established);
    assert_eq!(b.peer_status(0).unwrap().public, new_pub);
    let Send::Datagram(tx) = b.send(0, b"after", t, &mut wire) else {
        panic!()
    };
    assert!(matches!(
        a.handle_datagram(b_addr, &wire[..tx.len], t, &mut plain),
        Recv::Data { .. }
    ));
    // A later rekey initiated by b goes to the new key.
    let t2 = t + Duration::from_secs(200);
    b.handle_timeout(t2);
    let _ = b.send(0, b"rekey", t2, &mut wire);
    for _ in 0..3 {
        pump(&mut b, b_addr, &mut a, t2);
        pump(&mut a, a_addr, &mut b, t2);
    }
    assert!(b.peer_status(0).unwrap().established);
    assert_eq!(a.drops().bad_mac1, 0);
}

#[test]
fn attackers_with_cookies_cannot_use_up_the_peers_handshakes() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    let mut plain = vec![0u8; 4096];
    let mut wire = vec![0u8; 4096];
    let mut w2 = vec![0u8; 4096];
    // b under load.
    let junk = attacker_initiations(b.public(), 8, now);
    for i in 0..100u32 {
        b.handle_datagram(sa(5000 + i), &junk[i as usize % 8], now, &mut plain);
    }
    while b.poll_transmit(now, &mut wire).is_some() {}
    assert!(b.dos_stats().under_load);
    // 60 attackers at real addresses get cookies, like a does.
    let mut attackers = Vec::new();
    for k in 0..60u32 {
        let src = sa(20_000 + k);
        let mut e = Endpoint::new(Identity::generate(&mut OsRng), OsRng, now);
        e.add_peer(0, b.public(), None, Some(b_addr), None);
        assert_eq!(e.send(0, b"x", now, &mut wire), Send::Queued);
        let t = e.poll_transmit(now, &mut wire).unwrap();
        assert_eq!(
            b.handle_datagram(src, &wire[..t.len], now, &mut plain),
            Recv::Dropped(DropReason::UnderLoad)
        );
        while let Some(tx) = b.poll_transmit(now, &mut w2) {
            assert_eq!(tx.to, src);
            assert_eq!(
                e.handle_datagram(b_addr, &w2[..tx.len], now, &mut plain),
                Recv::Cookie { peer: 0 }
            );
        }
        attackers.push((src, e));
    }
    assert_eq!(a.send(0, b"hello", now, &mut wire), Send::Queued);
    pump(&mut a, a_addr, &mut b, now);
    let back = pump(&mut b, b_addr, &mut a, now);
    assert_eq!(back[0].2, Recv::Cookie { peer: 0 });
    // All retransmit with mac2; each attacker's message arrives 5 times (its burst).
    let t1 = now + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX;
    for (src, e) in &mut attackers {
        e.handle_timeout(t1);
        let t = e.poll_transmit(t1, &mut wire).unwrap();
        for _ in 0..5 {
            b.handle_datagram(*src, &wire[..t.len], t1, &mut plain);
        }
    }
    assert!(b.drops().handshake_budget > 200, "{:?}", b.drops());
    // a comes from a configured peer's address: its reserved bucket is untouched.
    a.handle_timeout(t1);
    let sent = pump(&mut a, a_addr, &mut b, t1);
    assert_eq!(sent[0].2, Recv::Handshake { peer: 0 });
}

/// A host that receives at one peer's IP on another port (behind the same NAT, a user on
/// that peer's host) floods us with cookie-carrying initiations of its own key. The reserved
/// buckets are per peer and match the whole address: another peer still gets its handshake
/// through (a single bucket shared by all peers' IPs was drained for everyone before).
#[test]
fn a_host_at_a_peers_ip_cannot_starve_the_peers_handshakes() {
    let now = Instant::now();
    let (a_addr, b_addr, c_addr) = (sa(1), sa(2), sa(3));
    let (ia, ib, ic) = (
        Identity::from_private([1; 32]),
        Identity::from_private([2; 32]),
        Identity::from_private([3; 32]),
    );
    let mut b = Endpoint::new(ib.clone(), OsRng, now);
    b.add_peer(0, ia.public(), None, Some(a_addr), None);
    b.add_peer(1, ic.public(), None, Some(c_addr), None);
    let mut c = Endpoint::new(ic, OsRng, now);
    c.add_peer(0, ib.public(), None, Some(b_addr), None);
    let (mut wire, mut w2, mut plain) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
    // The attacker: A's IP, another port, a key nobody configured.
    let att_src = SocketAddr::from((a_addr.ip(), 40000));
    let mut e = Endpoint::new(Identity::generate(&mut OsRng), OsRng, now);
    e.add_peer(0, b.public(), None, Some(b_addr), None);
    assert_eq!(e.send(0, b"x", now, &mut wire), Send::Queued);
    let tx = e.poll_transmit(now, &mut wire).unwrap();
    for _ in 0..20 {
        b.handle_datagram(att_src, &wire[..tx.len], now, &mut plain);
    }
    assert!(b.dos_stats().under_load);
    // Its cookie, then its retransmission (valid mac2) resent 200 times a second.
    while let Some(t) = b.poll_transmit(now, &mut w2) {
        if t.to == att_src {
            e.handle_datagram(b_addr, &w2[..t.len], now, &mut plain);
        }
    }
    let t0 = now + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX;
    e.handle_timeout(t0);
    let atx = e.poll_transmit(t0, &mut wire).unwrap();
    let att = wire[..atx.len].to_vec();
    assert_eq!(c.send(0, b"hello", now, &mut wire), Send::Queued);
    let mut t = now;
    while t < now + Duration::from_secs(30) && !c.peer_status(0).unwrap().established {
        t += Duration::from_millis(5);
        b.handle_datagram(att_src, &att, t, &mut plain);
        while b.poll_transmit(t, &mut w2).is_some() {}
        c.handle_timeout(t);
        pump(&mut c, c_addr, &mut b, t);
        pump(&mut b, b_addr, &mut c, t);
    }
    assert!(
        c.peer_status(0).unwrap().established,
        "the other peer never got through: {:?}",
        b.drops()
    );
}

/// During a key rotation an eavesdropper holds an initiation made with each of a peer's
/// keys. Replayed, one is refused — and must not turn the key we initiate to back to the
/// one the peer no longer answers to (it did: our handshakes then failed at the peer).
#[test]
fn a_replayed_initiation_does_not_swap_the_rotation_key() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr) = pair(now);
    let pa = a.public();
    let mut wire = vec![0u8; 4096];
    let mut plain = vec![0u8; 4096];
    assert_eq!(a.send(0, b"hello", now, &mut wire), Send::Queued);
    let old_init = pump(&mut a, a_addr, &mut b, now)[0].1.clone();
    for _ in 0..3 {
        pump(&mut b, b_addr, &mut a, now);
        pump(&mut a, a_addr, &mut b, now);
    }
    assert!(b.peer_status(0).unwrap().established);
    // Rotation: b accepts both keys; a moves to its new one and handshakes.
    let new_a = Identity::from_private([11; 32]);
    let new_pub = new_a.public();
    b.set_peer_keys(0, new_pub, Some(pa));
    a.set_identity(new_a);
    let t1 = now + Duration::from_secs(1);
    assert_eq!(
        pump(&mut a, a_addr, &mut b, t1)[0].2,
        Recv::Handshake { peer: 0 }
    );
    assert_eq!(b.peer_status(0).unwrap().public, new_pub);
    let r = b.handle_datagram(sa(666), &old_init, t1 + Duration::from_secs(1), &mut plain);
    assert_eq!(r, Recv::Dropped(DropReason::ReplayedHandshake));
    assert_eq!(
        b.peer_status(0).unwrap().public,
        new_pub,
        "a refused replay changed the key we initiate to"
    );
}

//! The transport hot path (`send` with a session, `handle_datagram` of a transport
//! message) must not allocate. Own test binary: it installs a counting global allocator.

#[path = "common/alloc.rs"]
mod counting;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use counting::allocs;
use pfsync_gw::tunnel::{Endpoint, Identity, Recv, Send};
use rand_core::OsRng;

#[test]
fn transport_path_does_not_allocate() {
    let now = Instant::now();
    let sa: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let sb: SocketAddr = "192.0.2.2:1".parse().unwrap();
    let mut a = Endpoint::new(Identity::from_private([1; 32]), OsRng, now);
    let mut b = Endpoint::new(Identity::from_private([2; 32]), OsRng, now);
    let (pa, pb) = (a.public(), b.public());
    a.add_peer(0, pb, None, Some(sb), None);
    b.add_peer(0, pa, None, Some(sa), None);
    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    assert_eq!(a.send(0, b"hi", now, &mut wire), Send::Queued);
    // Handshake (allowed to allocate).
    for _ in 0..4 {
        while let Some(t) = a.poll_transmit(now, &mut wire) {
            b.handle_datagram(sa, &wire[..t.len], now, &mut plain);
        }
        while let Some(t) = b.poll_transmit(now, &mut wire) {
            a.handle_datagram(sb, &wire[..t.len], now, &mut plain);
        }
    }
    let payload = [0x5au8; 1200];
    let before = allocs();
    for i in 0..1000u64 {
        let t = now + Duration::from_millis(i);
        let Send::Datagram(tx) = a.send(0, &payload, t, &mut wire) else {
            panic!("no session")
        };
        let r = b.handle_datagram(sa, &wire[..tx.len], t, &mut plain);
        assert_eq!(
            r,
            Recv::Data {
                peer: 0,
                len: payload.len()
            }
        );
        let Send::Datagram(tx) = b.send(0, &payload[..100], t, &mut wire) else {
            panic!()
        };
        let r = a.handle_datagram(sb, &wire[..tx.len], t, &mut plain);
        assert_eq!(r, Recv::Data { peer: 0, len: 100 });
    }
    assert_eq!(allocs() - before, 0, "hot path allocated");
}

/// Unauthenticated traffic allocates nothing: a flood of valid-mac1 initiations under
/// load (answered by cookie replies), over the budgets, and junk.
#[test]
fn handshake_flood_path_does_not_allocate() {
    let now = Instant::now();
    let mut b = Endpoint::new(Identity::from_private([2; 32]), OsRng, now);
    b.add_peer(
        0,
        Identity::from_private([1; 32]).public(),
        None,
        None,
        None,
    );
    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    // A handful of valid-mac1 initiations from unknown keys.
    let inits: Vec<Vec<u8>> = (0..8u8)
        .map(|i| {
            let mut e = Endpoint::new(Identity::from_private([10 + i; 32]), OsRng, now);
            e.add_peer(
                0,
                b.public(),
                None,
                Some("192.0.2.9:9".parse().unwrap()),
                None,
            );
            assert_eq!(e.send(0, b"x", now, &mut wire), Send::Queued);
            let t = e.poll_transmit(now, &mut wire).unwrap();
            wire[..t.len].to_vec()
        })
        .collect();
    let src = |i: u32| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7));
    // Get under load (the first ones reach Diffie-Hellman and may allocate).
    for i in 0..64u32 {
        b.handle_datagram(src(i), &inits[i as usize % 8], now, &mut plain);
    }
    assert!(b.dos_stats().under_load);
    while b.poll_transmit(now, &mut wire).is_some() {}
    let mut junk = [0u8; 100];
    junk[0] = 4;
    let before = allocs();
    for i in 0..5000u32 {
        let t = now + Duration::from_micros(u64::from(i) * 100);
        let r = b.handle_datagram(src(1000 + i), &inits[i as usize % 8], t, &mut plain);
        assert!(matches!(r, Recv::Dropped(_)));
        junk[4] = i as u8;
        b.handle_datagram(src(i), &junk, t, &mut plain);
        b.handle_datagram(src(i), &junk[..37], t, &mut plain);
        if i % 100 == 0 {
            while b.poll_transmit(t, &mut wire).is_some() {}
        }
    }
    assert_eq!(allocs() - before, 0, "flood path allocated");
    assert!(b.dos_stats().cookie_replies_sent > 1000);
}

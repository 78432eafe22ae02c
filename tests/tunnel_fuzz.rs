//! Arbitrary and forged datagrams: always dropped, never answered, never a panic.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use pfsync_gw::tunnel::{Endpoint, Identity, Recv, Send, INITIATION_LEN, RESPONSE_LEN};
use proptest::prelude::*;
use rand_core::OsRng;

fn src() -> SocketAddr {
    "192.0.2.1:51820".parse().unwrap()
}

struct Fixture {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
    /// Genuine datagrams captured from a handshake and some data (A -> B unless noted).
    initiation: Vec<u8>,
    transport: Vec<u8>,
}

fn drain(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let mut v = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        v.push(buf[..t.len].to_vec());
    }
    v
}

fn fresh_pair(now: Instant) -> (Endpoint, Endpoint) {
    let wall = SystemTime::now();
    let mut a = Endpoint::with_wall_clock(Identity::from_private([1; 32]), OsRng, now, wall);
    let mut b = Endpoint::with_wall_clock(Identity::from_private([2; 32]), OsRng, now, wall);
    let (pa, pb) = (a.public(), b.public());
    a.add_peer(0, pb, None, Some(src()), None);
    b.add_peer(0, pa, None, Some(src()), None);
    (a, b)
}

/// A and B with a confirmed session, plus the genuine datagrams that built it.
fn fixture() -> Fixture {
    let now = Instant::now();
    let (mut a, mut b) = fresh_pair(now);
    let mut out = vec![0u8; 2048];
    assert_eq!(a.send(0, b"q", now, &mut out), Send::Queued);
    let initiation = drain(&mut a, now).remove(0);
    assert_eq!(initiation.len(), INITIATION_LEN);
    assert!(matches!(
        b.handle_datagram(src(), &initiation, now, &mut out),
        Recv::Handshake { .. }
    ));
    let response = drain(&mut b, now).remove(0);
    assert_eq!(response.len(), RESPONSE_LEN);
    assert!(matches!(
        a.handle_datagram(src(), &response, now, &mut out),
        Recv::Handshake { .. }
    ));
    let transport = drain(&mut a, now).remove(0);
    assert!(matches!(
        b.handle_datagram(src(), &transport, now, &mut out),
        Recv::Data { .. }
    ));
    Fixture {
        a,
        b,
        now,
        initiation,
        transport,
    }
}

fn assert_dropped_silently(ep: &mut Endpoint, bytes: &[u8], now: Instant) {
    let before = ep.drops().total();
    let mut out = vec![0u8; bytes.len().max(16)];
    let r = ep.handle_datagram(src(), bytes, now, &mut out);
    assert!(
        matches!(r, Recv::Dropped(_)),
        "accepted forged datagram: {r:?}"
    );
    assert_eq!(ep.drops().total(), before + 1);
    assert!(drain(ep, now).is_empty(), "replied to a forged datagram");
}

fn typed_datagram() -> impl Strategy<Value = Vec<u8>> {
    let lens = prop_oneof![
        Just(INITIATION_LEN),
        Just(RESPONSE_LEN),
        Just(32usize),
        Just(64usize),
        0usize..200,
        1000usize..1500,
    ];
    (0u8..8, lens, any::<bool>(), any::<u64>()).prop_flat_map(|(ty, len, zero_reserved, _)| {
        proptest::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
            if !v.is_empty() {
                v[0] = ty;
            }
            if zero_reserved {
                for b in v.iter_mut().skip(1).take(3) {
                    *b = 0;
                }
            }
            v
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes against an endpoint with live sessions.
    #[test]
    fn never_panics_on_arbitrary_datagrams(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut f = fixture();
        let now = f.now;
        assert_dropped_silently(&mut f.b, &bytes, now);
        assert_dropped_silently(&mut f.a, &bytes, now);
    }

    /// Well-framed messages of every type and length with random contents.
    #[test]
    fn forged_typed_datagrams_dropped(bytes in typed_datagram()) {
        let mut f = fixture();
        let now = f.now + Duration::from_secs(1);
        assert_dropped_silently(&mut f.b, &bytes, now);
    }

    /// A valid receiver index with a forged body must still fail the tag.
    #[test]
    fn forged_transport_with_valid_index(body in proptest::collection::vec(any::<u8>(), 16..200), counter in any::<u64>()) {
        let mut f = fixture();
        let mut bytes = f.transport[..8].to_vec();
        bytes.extend_from_slice(&counter.to_le_bytes());
        bytes.extend_from_slice(&body);
        assert_dropped_silently(&mut f.b, &bytes, f.now);
    }

    /// Any single-bit flip of a genuine message (outside the unused mac2) is rejected.
    #[test]
    fn bit_flips_rejected(which in 0usize..3, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let now = Instant::now();
        match which {
            0 => {
                // Fresh responder that has never seen this initiation.
                let mut b = Endpoint::new(Identity::from_private([2; 32]), OsRng, now);
                let f = fixture();
                b.add_peer(0, f.a.public(), None, None, None);
                let mut m = f.initiation.clone();
                let i = pos.index(INITIATION_LEN - 16);
                m[i] ^= 1 << bit;
                assert_dropped_silently(&mut b, &m, now);
            }
            1 => {
                // A with a pending handshake whose genuine response we hold.
                let (mut a, mut b) = fresh_pair(now);
                let mut out = vec![0u8; 2048];
                assert_eq!(a.send(0, b"x", now, &mut out), Send::Queued);
                let init = drain(&mut a, now).remove(0);
                b.handle_datagram(src(), &init, now, &mut out);
                let response = drain(&mut b, now).remove(0);
                let mut m = response.clone();
                let i = pos.index(RESPONSE_LEN - 16);
                m[i] ^= 1 << bit;
                assert_dropped_silently(&mut a, &m, now);
                // The forgery did not disturb the handshake.
                let r = a.handle_datagram(src(), &response, now, &mut out);
                assert!(matches!(r, Recv::Handshake { .. }), "{r:?}");
            }
            _ => {
                let mut f = fixture();
                let mut m = f.transport.clone();
                let i = pos.index(m.len());
                m[i] ^= 1 << bit;
                assert_dropped_silently(&mut f.b, &m, f.now);
            }
        }
    }
}

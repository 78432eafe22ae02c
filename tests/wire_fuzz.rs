//! Fuzz-style properties on stable: arbitrary and mutated input never panics, and whatever is
//! accepted re-emits to packets that parse to the same messages.

mod common;

use common::*;
use pfsync_gw::wire::ipv4::{emit_ipv4_header, Ipv4Packet};
use pfsync_gw::wire::*;
use proptest::prelude::*;

/// Parse `buf` as `d`; if accepted, re-emit and compare messages.
fn accept_implies_stable(d: Dialect, buf: &[u8]) {
    let Ok(p) = Packet::new_checked(buf, d) else {
        return;
    };
    assert!(p.len() <= buf.len());
    let msgs: Vec<Message> = p.messages().collect();
    for m in &msgs {
        let _ = m.to_string();
    }
    if d.is_freebsd() {
        assert_eq!(msgs.last(), Some(&Message::Eof));
    }
    let body: Vec<Message> = msgs.into_iter().filter(|m| *m != Message::Eof).collect();
    let mut again = Vec::new();
    for pkt in emit_all(d, &body, 65535, p.checksum()) {
        again.extend(parse_body(d, &pkt).expect("re-emitted packet must parse"));
    }
    assert_eq!(again, body, "{d}");
}

fn everything(buf: &[u8]) {
    let _ = detect_dialect(buf);
    for d in Dialect::ALL {
        accept_implies_stable(d, buf);
    }
    if let Ok(ip) = Ipv4Packet::new_checked(buf) {
        let _ = (ip.src(), ip.dst(), ip.ttl(), ip.verify_checksum());
        assert!(ip.payload().len() <= buf.len());
    }
}

/// A valid packet of `d` from random bytes, as mutation seed.
fn seed(d: Dialect, picks: &[u8], pool: &[u8]) -> Vec<u8> {
    let mut p = Pool(pool, 0);
    let ks = kinds(d);
    let first = ks[usize::from(picks[0]) % ks.len()];
    let msgs: Vec<Message> = picks
        .iter()
        .map(|&i| {
            // NetBSD packets hold one action: keep the first kind.
            let k = if d == Dialect::NetbsdV3 {
                first
            } else {
                ks[usize::from(i) % ks.len()]
            };
            message(d, k, &mut p)
        })
        .collect();
    emit_all(d, &msgs, 1480, [0; 16]).swap_remove(0)
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Insert(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Extend),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let n = buf.len().max(1);
    match m {
        Mutation::Set(i, v) => {
            if let Some(b) = buf.get_mut(i % n) {
                *b = *v
            }
        }
        Mutation::Flip(i, bit) => {
            if let Some(b) = buf.get_mut(i % n) {
                *b ^= 1 << bit
            }
        }
        Mutation::Truncate(i) => buf.truncate(i % n),
        Mutation::Extend(v) => buf.extend_from_slice(v),
        Mutation::Insert(i, v) => buf.insert(i % n, *v),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(
        version in prop::sample::select(vec![3u8, 5, 6, 0x45, 0]),
        mut buf in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        everything(&buf);
        if let Some(b) = buf.first_mut() {
            *b = version;
        }
        // Make header.len plausible half the time so framing gets exercised.
        if buf.len() >= 4 && version != 3 && buf[1] & 1 == 0 {
            let n = buf.len() as u16;
            buf[2..4].copy_from_slice(&n.to_be_bytes());
        }
        everything(&buf);
    }

    #[test]
    fn mutated_valid_packets(
        d in prop::sample::select(Dialect::ALL.to_vec()),
        picks in prop::collection::vec(any::<u8>(), 1..6),
        pool in prop::collection::vec(any::<u8>(), 4096),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut buf = seed(d, &picks, &pool);
        accept_implies_stable(d, &buf);
        for m in &muts {
            apply(&mut buf, m);
            everything(&buf);
        }
    }

    #[test]
    fn ipv4_wrapped(
        d in prop::sample::select(Dialect::ALL.to_vec()),
        picks in prop::collection::vec(any::<u8>(), 1..4),
        pool in prop::collection::vec(any::<u8>(), 4096),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let inner = seed(d, &picks, &pool);
        let mut buf = vec![0u8; 20];
        emit_ipv4_header(&mut buf, "192.0.2.1".parse().unwrap(), PFSYNC_GROUP, inner.len(), PFSYNC_DFLTTL).unwrap();
        buf.extend_from_slice(&inner);
        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(ip.verify_checksum());
        prop_assert_eq!(ip.payload(), &inner[..]);
        prop_assert!(Packet::new_checked(ip.payload(), d).is_ok());
        for m in &muts {
            apply(&mut buf, m);
        }
        everything(&buf);
    }
}

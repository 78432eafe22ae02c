#![no_main]
//! Arbitrary datagrams at a tunnel endpoint with one configured peer: never a panic, and
//! nothing unauthenticated ever yields plaintext, a cookie, or a reply other than a
//! 64-byte cookie reply (only possible under load, for a valid mac1).
//! Input: a sequence of datagrams, each prefixed by a 1-byte length; they alternate between
//! the copying and the in-place receive path.
use libfuzzer_sys::fuzz_target;
use pfsync_gw::tunnel::{Endpoint, Identity, Recv, COOKIE_REPLY_LEN, MSG_COOKIE_REPLY};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut ep = Endpoint::new(Identity::from_private([7u8; 32]), rand_core::OsRng, now);
    let peer = Identity::from_private([9u8; 32]).public();
    ep.add_peer(0, peer, None, None, None);
    let src = "192.0.2.1:51900".parse().unwrap();
    let mut out = vec![0u8; 256.max(data.len())];
    let mut buf = vec![0u8; 2048];
    let mut rest = data;
    let mut place = vec![0u8; 256];
    for i in 0..64 {
        let Some((&n, tail)) = rest.split_first() else { break };
        let (dgram, tail) = tail.split_at((n as usize).min(tail.len()));
        rest = tail;
        // Both receive paths: copying into `out`, and opening in the receive buffer.
        let r = if i % 2 == 0 {
            ep.handle_datagram(src, dgram, now, &mut out)
        } else {
            place[..dgram.len()].copy_from_slice(dgram);
            ep.handle_datagram_in_place(src, &mut place[..dgram.len()], now)
        };
        assert!(!matches!(
            r,
            Recv::Data { .. } | Recv::Keepalive { .. } | Recv::Cookie { .. } | Recv::Handshake { .. }
        ));
        while let Some(t) = ep.poll_transmit(now, &mut buf) {
            assert_eq!(t.len, COOKIE_REPLY_LEN, "only cookie replies to unauthenticated input");
            assert_eq!(buf[0], MSG_COOKIE_REPLY);
        }
    }
});

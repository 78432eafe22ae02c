#![no_main]
//! Arbitrary datagrams at a tunnel endpoint with one configured peer: never a panic, and
//! nothing unauthenticated ever yields plaintext or a reply.
use libfuzzer_sys::fuzz_target;
use pfsync_gw::tunnel::{Endpoint, Identity, Recv};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut ep = Endpoint::new(Identity::from_private([7u8; 32]), rand_core::OsRng, now);
    let peer = Identity::from_private([9u8; 32]).public();
    ep.add_peer(0, peer, None, None, None);
    let src = "192.0.2.1:51900".parse().unwrap();
    let mut out = vec![0u8; data.len().max(64)];
    let r = ep.handle_datagram(src, data, now, &mut out);
    assert!(!matches!(r, Recv::Data { .. } | Recv::Keepalive { .. }));
    let mut buf = vec![0u8; 2048];
    assert!(ep.poll_transmit(now, &mut buf).is_none(), "no reply to unauthenticated input");
});

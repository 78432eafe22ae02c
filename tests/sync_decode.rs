//! Strict decoding: arbitrary bytes never panic, neither in the codec nor in a Replica.

use std::time::Instant;

use pfsync_gw::sync::{Replica, ReplicaConfig, SyncMsg};
use pfsync_gw::wire::Dialect;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = SyncMsg::decode(&bytes);
    }

    /// Valid headers followed by garbage reach deeper into every message type.
    #[test]
    fn typed_garbage_never_panics(ty in 0u8..14, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut b = vec![ty, 1];
        b.extend_from_slice(&body);
        let _ = SyncMsg::decode(&b);
    }

    #[test]
    fn replica_survives_garbage(msgs in proptest::collection::vec(
        (0u8..14, proptest::collection::vec(any::<u8>(), 0..300)), 1..20)) {
        let now = Instant::now();
        let mut r = Replica::new(ReplicaConfig::new(1, Dialect::OpenbsdV6), now);
        r.on_peer_up(7, now);
        let mut out = vec![0u8; 1500];
        for (ty, body) in msgs {
            let mut b = vec![ty, 1];
            b.extend_from_slice(&body);
            let _ = r.on_peer_datagram(7, &b, now);
            while r.poll_peer_transmit(7, now, &mut out).is_some() {}
            while r.poll_local_inject(&mut out).is_some() {}
            r.handle_timeout(now);
        }
    }
}

#[test]
fn unknown_peer_is_an_error() {
    let now = Instant::now();
    let mut r = Replica::new(ReplicaConfig::new(1, Dialect::OpenbsdV6), now);
    assert!(r.on_peer_datagram(3, &[8, 1], now).is_err());
}

//! The sync relay path (capture → DATA → peer → injection), once warmed up, allocates
//! nothing per packet: queues are byte rings, fragments are borrowed or reuse buffers.
//! Own test binary: it installs a counting global allocator.

#[path = "common/pf.rs"]
mod pf;

#[path = "common/alloc.rs"]
mod counting;

use std::time::Instant;

use counting::allocs;
use pf::{packet, tcp_state, upd_c};
use pfsync_gw::sync::{Replica, ReplicaConfig};
use pfsync_gw::wire::{Dialect, Message};

/// Move every datagram each side has for the other, both ways, until quiet.
fn shuttle(a: &mut Replica, b: &mut Replica, buf: &mut [u8], now: Instant) {
    loop {
        let mut moved = false;
        while let Some(n) = a.poll_peer_transmit(0, now, buf) {
            let _ = b.on_peer_datagram(0, &buf[..n], now);
            moved = true;
        }
        while let Some(n) = b.poll_peer_transmit(0, now, buf) {
            let _ = a.on_peer_datagram(0, &buf[..n], now);
            moved = true;
        }
        while b.poll_local_inject(buf).is_some() {}
        while a.poll_local_inject(buf).is_some() {}
        if !moved {
            return;
        }
    }
}

#[test]
fn relay_path_does_not_allocate_per_packet() {
    let now = Instant::now();
    let mut a = Replica::new(ReplicaConfig::new(1, Dialect::OpenbsdV6), now);
    let mut b = Replica::new(ReplicaConfig::new(2, Dialect::OpenbsdV6), now);
    a.add_peer(0, now);
    b.add_peer(0, now);
    a.on_peer_up(0, now);
    b.on_peer_up(0, now);
    let mut buf = vec![0u8; 1400];
    for _ in 0..8 {
        shuttle(&mut a, &mut b, &mut buf, now);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    let states: Vec<_> = (1..=34u64).map(|i| tcp_state(i, 0xfeed)).collect();
    for chunk in states.chunks(4) {
        let msgs: Vec<Message> = chunk.iter().map(|s| Message::Ins(*s)).collect();
        a.on_local_pfsync(&packet(&msgs), now).unwrap();
    }
    shuttle(&mut a, &mut b, &mut buf, now);
    assert_eq!(b.table().len(), 34, "inserts relayed");

    // Large packets (17 UPD_C: two DATA fragments) and small ones (2 UPD_C: one).
    let mk = |step: u32, from: usize, n: usize| {
        let msgs: Vec<Message> = states[from..from + n]
            .iter()
            .map(|s| Message::UpdC(upd_c(s, step)))
            .collect();
        packet(&msgs)
    };
    let pkts: Vec<Vec<u8>> = (1..=2000u32)
        .map(|i| {
            if i % 2 == 0 {
                mk(i * 10, 0, 17)
            } else {
                mk(i * 10, (i as usize) % 30, 2)
            }
        })
        .collect();
    // Warm-up: queues and rings reach their working size.
    for p in &pkts[..1000] {
        a.on_local_pfsync(p, now).unwrap();
        shuttle(&mut a, &mut b, &mut buf, now);
    }
    let before = allocs();
    for p in &pkts[1000..] {
        a.on_local_pfsync(p, now).unwrap();
        shuttle(&mut a, &mut b, &mut buf, now);
    }
    let n = allocs() - before;
    eprintln!("{n} allocations for 1000 relayed packets");
    let st = b.peer_stats(0).unwrap();
    assert!(st.rx_data >= 2000, "packets relayed: {}", st.rx_data);
    assert!(
        n <= 10,
        "{n} allocations for 1000 relayed packets (expected none per packet)"
    );
}

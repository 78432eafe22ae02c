//! The transport hot path (`send` with a session, `handle_datagram` of a transport
//! message) must not allocate. Own test binary: it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pfsync_gw::tunnel::{Endpoint, Identity, Recv, Send};
use rand_core::OsRng;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

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

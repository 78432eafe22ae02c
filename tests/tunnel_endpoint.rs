//! Endpoint behaviour with simulated time: endpoints exchange datagrams in memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pfsync_gw::tunnel::{
    DropReason, Endpoint, Event, Identity, PeerId, Recv, Send, KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX, TRANSPORT_OVERHEAD,
};
use rand_core::{CryptoRng, RngCore};

/// Deterministic RNG (splitmix64) for indexes and jitter. Tests only.
struct TestRng(u64);

impl RngCore for TestRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

fn key(n: u8) -> [u8; 32] {
    [n; 32]
}

fn addr(n: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n as u8], 51820 + n))
}

#[derive(Debug, Clone)]
struct Datagram {
    from: usize,
    src: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    at: Instant,
}

impl Datagram {
    fn kind(&self) -> u8 {
        self.bytes[0]
    }
}

struct Node {
    ep: Endpoint,
    addr: SocketAddr,
    private: [u8; 32],
    received: Vec<(Recv, Vec<u8>)>,
    events: Vec<Event>,
}

type Filter = Box<dyn FnMut(&Datagram) -> bool>;

struct Net {
    t0: Instant,
    wall0: SystemTime,
    now: Instant,
    nodes: Vec<Node>,
    /// Returns false to lose a datagram.
    filter: Filter,
    /// Every datagram put on the wire (before the filter).
    log: Vec<Datagram>,
}

impl Net {
    fn new() -> Net {
        let t0 = Instant::now();
        Net {
            t0,
            wall0: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            now: t0,
            nodes: Vec::new(),
            filter: Box::new(|_| true),
            log: Vec::new(),
        }
    }

    fn wall(&self) -> SystemTime {
        self.wall0 + (self.now - self.t0)
    }

    /// Add a node with identity `key(n)` listening on `addr(n)`.
    fn node(&mut self, n: u8) -> usize {
        let private = key(n);
        let ep = Endpoint::with_wall_clock(
            Identity::from_private(private),
            TestRng(u64::from(n) * 1000 + self.nodes.len() as u64),
            self.now,
            self.wall(),
        );
        self.nodes.push(Node {
            ep,
            addr: addr(u16::from(n)),
            private,
            received: Vec::new(),
            events: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn public(&self, i: usize) -> [u8; 32] {
        self.nodes[i].ep.public()
    }

    /// Make `a` and `b` peers of each other (PeerId = the other node's index).
    fn connect(&mut self, a: usize, b: usize, keepalive: Option<Duration>) {
        let (pa, pb) = (self.public(a), self.public(b));
        let (aa, ab) = (self.nodes[a].addr, self.nodes[b].addr);
        self.nodes[a]
            .ep
            .add_peer(b, pb, Some([7; 32]), Some(ab), keepalive);
        self.nodes[b]
            .ep
            .add_peer(a, pa, Some([7; 32]), Some(aa), keepalive);
    }

    /// Restart node `i`: a fresh endpoint with the same key and peers, wall clock moved on.
    fn restart(&mut self, i: usize, peers: &[(PeerId, usize)], keepalive: Option<Duration>) {
        let wall = self.wall();
        let private = self.nodes[i].private;
        let mut ep = Endpoint::with_wall_clock(
            Identity::from_private(private),
            TestRng(99 + i as u64),
            self.now,
            wall,
        );
        for &(id, node) in peers {
            ep.add_peer(
                id,
                self.public(node),
                Some([7; 32]),
                Some(self.nodes[node].addr),
                keepalive,
            );
        }
        self.nodes[i].ep = ep;
        self.nodes[i].received.clear();
        self.nodes[i].events.clear();
    }

    fn index_of(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == a)
    }

    /// Deliver one datagram; returns what the receiver made of it.
    fn deliver(&mut self, d: &Datagram) -> Option<Recv> {
        let to = self.index_of(d.to)?;
        let mut out = vec![0u8; d.bytes.len()];
        let now = self.now;
        let node = &mut self.nodes[to];
        let r = node.ep.handle_datagram(d.src, &d.bytes, now, &mut out);
        let data = match r {
            Recv::Data { len, .. } => out[..len].to_vec(),
            _ => Vec::new(),
        };
        node.received.push((r, data));
        Some(r)
    }

    fn collect_transmits(&mut self) -> Vec<Datagram> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].ep.poll_transmit(self.now, &mut buf) {
                out.push(Datagram {
                    from: i,
                    src: self.nodes[i].addr,
                    to: t.to,
                    bytes: buf[..t.len].to_vec(),
                    at: self.now,
                });
            }
            while let Some(e) = self.nodes[i].ep.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
        out
    }

    /// Exchange datagrams until quiet (zero latency).
    fn pump(&mut self) {
        self.pump_with(Vec::new());
    }

    fn pump_with(&mut self, mut flight: Vec<Datagram>) {
        for _ in 0..10_000 {
            flight.extend(self.collect_transmits());
            if flight.is_empty() {
                return;
            }
            for d in std::mem::take(&mut flight) {
                self.log.push(d.clone());
                if (self.filter)(&d) {
                    self.deliver(&d);
                }
            }
        }
        panic!("network did not settle");
    }

    /// Advance simulated time, firing timers on the way.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next = self.nodes.iter().filter_map(|n| n.ep.poll_timeout()).min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in &mut self.nodes {
                        n.ep.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    /// `send` from node `i` to peer `p`; a direct datagram goes through the network.
    fn send(&mut self, i: usize, p: PeerId, payload: &[u8]) -> Send {
        let mut buf = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
        let now = self.now;
        let r = self.nodes[i].ep.send(p, payload, now, &mut buf);
        let mut flight = Vec::new();
        if let Send::Datagram(t) = r {
            flight.push(Datagram {
                from: i,
                src: self.nodes[i].addr,
                to: t.to,
                bytes: buf[..t.len].to_vec(),
                at: now,
            });
        }
        self.pump_with(flight);
        r
    }

    /// Encrypt without delivering (for replay and in-flight tests).
    fn capture(&mut self, i: usize, p: PeerId, payload: &[u8]) -> Datagram {
        let mut buf = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
        let now = self.now;
        match self.nodes[i].ep.send(p, payload, now, &mut buf) {
            Send::Datagram(t) => Datagram {
                from: i,
                src: self.nodes[i].addr,
                to: t.to,
                bytes: buf[..t.len].to_vec(),
                at: now,
            },
            other => panic!("expected a datagram, got {other:?}"),
        }
    }

    fn data(&self, i: usize) -> Vec<Vec<u8>> {
        self.nodes[i]
            .received
            .iter()
            .filter(|(r, _)| matches!(r, Recv::Data { .. }))
            .map(|(_, d)| d.clone())
            .collect()
    }

    fn last_recv(&self, i: usize) -> Recv {
        self.nodes[i].received.last().expect("something received").0
    }

    /// Status is as of the endpoint's latest input; tick it to `now` first, as the driver does.
    fn established(&mut self, i: usize, p: PeerId) -> bool {
        let now = self.now;
        self.nodes[i].ep.handle_timeout(now);
        self.nodes[i].ep.peer_status(p).unwrap().established
    }
}

fn pair() -> (Net, usize, usize) {
    let mut net = Net::new();
    let a = net.node(1);
    let b = net.node(2);
    net.connect(a, b, None);
    (net, a, b)
}

/// A and B with a confirmed session (A initiated).
fn established_pair() -> (Net, usize, usize) {
    let (mut net, a, b) = pair();
    assert_eq!(net.send(a, b, b"hello"), Send::Queued);
    assert!(net.established(a, b) && net.established(b, a));
    (net, a, b)
}

#[test]
fn handshake_and_data_both_ways() {
    let (mut net, a, b) = pair();
    assert_eq!(net.send(a, b, b"first"), Send::Queued);
    // initiation, response, queued data (confirms the responder).
    let kinds: Vec<u8> = net.log.iter().map(Datagram::kind).collect();
    assert_eq!(kinds, vec![1, 2, 4]);
    assert_eq!(net.data(b), vec![b"first".to_vec()]);
    assert!(net.nodes[a].events.contains(&Event::SessionEstablished(b)));
    assert!(net.nodes[b].events.contains(&Event::SessionEstablished(a)));
    assert!(matches!(net.send(b, a, b"reply"), Send::Datagram(_)));
    assert!(matches!(net.send(a, b, b"again"), Send::Datagram(_)));
    assert_eq!(net.data(a), vec![b"reply".to_vec()]);
    assert_eq!(net.data(b).len(), 2);
    let st = net.nodes[a].ep.peer_status(b).unwrap();
    assert!(st.established && st.last_handshake.is_some());
    assert_eq!(st.endpoint, Some(net.nodes[b].addr));
    assert_eq!(st.tx_packets, 3); // initiation + 2 data
    assert_eq!(net.nodes[a].ep.drops().total(), 0);
    assert_eq!(net.nodes[b].ep.drops().total(), 0);
}

/// `send_in_place` (the payload already in the buffer after the transport header) is `send`
/// without the copy: queued like it before the session (the payload copied out), sealed in
/// the caller's buffer after, and the peer receives the same bytes.
#[test]
fn send_in_place_is_send_without_the_copy() {
    use pfsync_gw::tunnel::TRANSPORT_HEADER_LEN;
    let (mut net, a, b) = pair();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
    let now = net.now;
    let mut buf = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
    buf[TRANSPORT_HEADER_LEN..][..payload.len()].copy_from_slice(&payload);
    let r = net.nodes[a]
        .ep
        .send_in_place(b, payload.len(), now, &mut buf);
    assert_eq!(r, Send::Queued);
    net.pump();
    assert_eq!(
        net.data(b),
        vec![payload.clone()],
        "queued payload delivered"
    );

    let mut twin = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
    for round in 0..3u8 {
        let p: Vec<u8> = payload.iter().map(|x| x ^ round).collect();
        buf.fill(0xee);
        buf[TRANSPORT_HEADER_LEN..][..p.len()].copy_from_slice(&p);
        let now = net.now;
        let src = net.nodes[a].addr;
        let from_a = |to, bytes: &[u8]| Datagram {
            from: a,
            src,
            to,
            bytes: bytes.to_vec(),
            at: now,
        };
        let Send::Datagram(t) = net.nodes[a].ep.send_in_place(b, p.len(), now, &mut buf) else {
            panic!("session is up");
        };
        assert_eq!(t.len, p.len() + TRANSPORT_OVERHEAD);
        assert_eq!(
            net.deliver(&from_a(t.to, &buf[..t.len])),
            Some(Recv::Data {
                peer: a,
                len: p.len()
            })
        );
        assert_eq!(net.data(b).last(), Some(&p));
        // `send` of the same payload: same header layout (next counter), same length.
        let Send::Datagram(u) = net.nodes[a].ep.send(b, &p, now, &mut twin) else {
            panic!("session is up");
        };
        assert_eq!(u.len, t.len);
        assert_eq!(twin[..8], buf[..8], "type and receiver index");
        let counter = |d: &[u8]| u64::from_le_bytes(d[8..16].try_into().unwrap());
        assert_eq!(counter(&twin), counter(&buf) + 1);
        net.deliver(&from_a(u.to, &twin[..u.len]));
        assert_eq!(net.data(b).last(), Some(&p));
    }
    // A buffer that cannot hold the payload and its overhead is refused, not read past.
    let now = net.now;
    assert_eq!(
        net.nodes[a]
            .ep
            .send_in_place(b, 100, now, &mut buf[..100 + TRANSPORT_OVERHEAD - 1]),
        Send::Dropped(DropReason::BufferTooSmall)
    );
    assert_eq!(net.nodes[b].ep.drops().total(), 0);
}

/// `handle_datagram_in_place` opens a transport message where it lies, with the same
/// checks as `handle_datagram`: a replay and a forgery are dropped and leave the session
/// usable.
#[test]
fn receive_in_place_opens_where_it_lies() {
    use pfsync_gw::tunnel::TRANSPORT_HEADER_LEN;
    let (mut net, a, b) = established_pair();
    let payload = vec![0x5au8; 900];
    let d = net.capture(a, b, &payload);
    let now = net.now;
    let mut buf = d.bytes.clone();
    let r = net.nodes[b]
        .ep
        .handle_datagram_in_place(d.src, &mut buf, now);
    assert_eq!(r, Recv::Data { peer: a, len: 900 });
    assert_eq!(buf[TRANSPORT_HEADER_LEN..][..900], payload[..]);
    let mut again = d.bytes.clone();
    assert_eq!(
        net.nodes[b]
            .ep
            .handle_datagram_in_place(d.src, &mut again, now),
        Recv::Dropped(DropReason::ReplayedCounter)
    );
    let d2 = net.capture(a, b, &payload);
    let mut forged = d2.bytes.clone();
    forged[TRANSPORT_HEADER_LEN + 3] ^= 1;
    assert_eq!(
        net.nodes[b]
            .ep
            .handle_datagram_in_place(d2.src, &mut forged, now),
        Recv::Dropped(DropReason::DecryptFailed)
    );
    let mut genuine = d2.bytes.clone();
    assert_eq!(
        net.nodes[b]
            .ep
            .handle_datagram_in_place(d2.src, &mut genuine, now),
        Recv::Data { peer: a, len: 900 },
        "the forgery did not mark its counter"
    );
    // Handshake messages go the usual way (here: a stray initiation copy is a replay).
    let mut init = net.log[0].bytes.clone();
    assert!(matches!(
        net.nodes[b]
            .ep
            .handle_datagram_in_place(net.log[0].src, &mut init, now),
        Recv::Dropped(_)
    ));
}

#[test]
fn initiator_sends_keepalive_when_nothing_queued() {
    let (mut net, a, b) = pair();
    // Handshake driven by a keepalive-only start (persistent keepalive).
    net.nodes[a]
        .ep
        .update_peer(b, Some([7; 32]), None, Some(Duration::from_secs(30)));
    net.advance(Duration::from_secs(31));
    let kinds: Vec<u8> = net.log.iter().map(Datagram::kind).collect();
    assert_eq!(&kinds[..3], &[1, 2, 4]);
    assert!(matches!(net.nodes[b].received[1].0, Recv::Keepalive { .. }));
    assert!(net.established(b, a));
}

#[test]
fn passive_keepalive_after_keepalive_timeout() {
    let (mut net, a, b) = established_pair();
    let before = net.log.len();
    net.advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(net.log.len(), before, "nothing before KEEPALIVE_TIMEOUT");
    net.advance(Duration::from_millis(1));
    let sent: Vec<_> = net.log[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].from, sent[0].bytes.len()), (b, TRANSPORT_OVERHEAD));
    assert!(matches!(net.last_recv(a), Recv::Keepalive { peer } if peer == b));
    // No further keepalives on an idle link without persistent keepalive.
    net.advance(Duration::from_secs(60));
    assert_eq!(net.log.len(), before + 1);
}

#[test]
fn rekey_after_rekey_after_time_keeps_data_flowing() {
    let (mut net, a, b) = established_pair();
    let first = net.nodes[a]
        .ep
        .peer_status(b)
        .unwrap()
        .last_handshake
        .unwrap();
    for i in 0..250u32 {
        net.advance(Duration::from_secs(1));
        let r = net.send(a, b, &i.to_le_bytes());
        assert!(matches!(r, Send::Datagram(_)), "send {i} at rekey: {r:?}");
        if i % 3 == 0 {
            assert!(matches!(net.send(b, a, b"ack"), Send::Datagram(_)));
        }
    }
    assert_eq!(net.data(b).len(), 251);
    let initiations: Vec<_> = net.log.iter().filter(|d| d.kind() == 1).collect();
    assert!(initiations.len() >= 3, "rekeyed at ~120 s and ~240 s");
    let second = initiations[1].at - net.t0;
    assert!(second >= REKEY_AFTER_TIME && second < REKEY_AFTER_TIME + Duration::from_secs(2));
    let last = net.nodes[a]
        .ep
        .peer_status(b)
        .unwrap()
        .last_handshake
        .unwrap();
    assert!(last > first);
    assert_eq!(net.nodes[b].ep.drops().total(), 0);
    assert_eq!(net.nodes[a].ep.drops().total(), 0);
}

#[test]
fn old_session_decrypts_in_flight_packets_after_rekey() {
    let (mut net, a, b) = established_pair();
    net.advance(REKEY_AFTER_TIME);
    // Encrypted on the old session; held "in flight" while the rekey happens.
    let late = net.capture(a, b, b"in flight");
    net.pump(); // the send triggered a rekey: initiation, response, keepalive
    assert_eq!(net.log.iter().filter(|d| d.kind() == 1).count(), 2);
    let fresh = net.capture(a, b, b"new session");
    assert_ne!(
        late.bytes[4..8],
        fresh.bytes[4..8],
        "different receiver index"
    );
    assert!(matches!(net.deliver(&fresh), Some(Recv::Data { .. })));
    assert!(matches!(net.deliver(&late), Some(Recv::Data { .. })));
    assert_eq!(net.data(b).last().unwrap(), b"in flight");
}

#[test]
fn session_rejected_after_reject_after_time_without_rekey() {
    let (mut net, a, b) = established_pair();
    net.filter = Box::new(|d| d.kind() == 4); // all handshakes lost from now on
    net.advance(REJECT_AFTER_TIME - Duration::from_secs(1));
    let held = net.capture(a, b, b"late"); // still valid to send at 179 s
    net.advance(Duration::from_secs(2));
    assert_eq!(
        net.deliver(&held),
        Some(Recv::Dropped(DropReason::ExpiredSession))
    );
    assert_eq!(net.nodes[b].ep.drops().expired_session, 1);
    assert!(!net.established(a, b));
    assert_eq!(net.send(a, b, b"after"), Send::Queued);
    assert_eq!(net.send(b, a, b"after"), Send::Queued);
}

#[test]
fn handshake_retries_with_jitter_then_gives_up() {
    let (mut net, a, b) = pair();
    net.filter = Box::new(|_| false); // everything lost
    assert_eq!(net.send(a, b, b"x"), Send::Queued);
    net.advance(Duration::from_secs(200));
    let times: Vec<Duration> = net
        .log
        .iter()
        .filter(|d| d.from == a && d.kind() == 1)
        .map(|d| d.at - net.t0)
        .collect();
    assert!(times.len() >= 17, "{times:?}");
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX,
            "{gap:?}"
        );
    }
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().any(|g| *g != gaps[0]), "jitter varies");
    let last = *times.last().unwrap();
    assert!(
        last < REKEY_ATTEMPT_TIME,
        "no initiation after giving up: {last:?}"
    );
    assert_eq!(net.nodes[a].events, vec![Event::PeerUnreachable(b)]);
    let st = net.nodes[a].ep.peer_status(b).unwrap();
    assert_eq!(st.queued, 0);
    assert_eq!(net.nodes[a].ep.drops().no_session, 1);
    // Giving up is not permanent: new data starts a new attempt series.
    net.filter = Box::new(|_| true);
    assert_eq!(net.send(a, b, b"y"), Send::Queued);
    assert_eq!(net.data(b), vec![b"y".to_vec()]);
    assert_eq!(
        net.nodes[a].events.last(),
        Some(&Event::SessionEstablished(b))
    );
}

#[test]
fn peer_restart_reestablishes_when_restarted_side_sends() {
    let (mut net, a, b) = established_pair();
    net.advance(Duration::from_secs(30));
    net.restart(b, &[(a, a)], None);
    assert_eq!(net.send(b, a, b"i am back"), Send::Queued);
    assert_eq!(net.data(a), vec![b"i am back".to_vec()]);
    assert!(matches!(net.send(a, b, b"welcome"), Send::Datagram(_)));
    assert_eq!(net.data(b), vec![b"welcome".to_vec()]);
    assert_eq!(net.nodes[a].ep.drops().total(), 0);
}

#[test]
fn peer_restart_detected_by_the_surviving_side() {
    let (mut net, a, b) = established_pair();
    net.advance(Duration::from_secs(30));
    net.restart(b, &[(a, a)], None);
    // A still uses the old session: B has no such index and drops silently.
    assert!(matches!(net.send(a, b, b"lost"), Send::Datagram(_)));
    assert_eq!(net.last_recv(b), Recv::Dropped(DropReason::UnknownIndex));
    // Nothing comes back, so A re-handshakes after KEEPALIVE + REKEY_TIMEOUT.
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert!(net.established(a, b));
    assert!(matches!(net.send(a, b, b"resumed"), Send::Datagram(_)));
    assert_eq!(net.data(b), vec![b"resumed".to_vec()]);
}

#[test]
fn replayed_transport_packet_rejected() {
    let (mut net, a, b) = established_pair();
    let d = net.capture(a, b, b"once");
    assert!(matches!(net.deliver(&d), Some(Recv::Data { .. })));
    assert_eq!(
        net.deliver(&d),
        Some(Recv::Dropped(DropReason::ReplayedCounter))
    );
    assert_eq!(net.nodes[b].ep.drops().replayed_counter, 1);
    assert!(net.collect_transmits().is_empty(), "no reply to a replay");
}

#[test]
fn replay_window_edges_through_the_endpoint() {
    let (mut net, a, b) = established_pair();
    let held: Vec<Datagram> = (0..3).map(|i| net.capture(a, b, &[i])).collect();
    // Out of order within the window: each accepted once.
    for i in [2, 0, 1] {
        assert!(matches!(net.deliver(&held[i]), Some(Recv::Data { .. })));
    }
    assert_eq!(
        net.deliver(&held[0]),
        Some(Recv::Dropped(DropReason::ReplayedCounter))
    );
    // Too old: more than the window behind the newest.
    let old = net.capture(a, b, b"old");
    let mut newest = None;
    for _ in 0..pfsync_gw::tunnel::REPLAY_WINDOW + 1 {
        newest = Some(net.capture(a, b, b""));
    }
    assert!(matches!(
        net.deliver(&newest.unwrap()),
        Some(Recv::Keepalive { .. })
    ));
    assert_eq!(
        net.deliver(&old),
        Some(Recv::Dropped(DropReason::ReplayedCounter))
    );
    // A forged packet with a huge counter fails the tag and does not move the window.
    let mut forged = net.capture(a, b, b"forge");
    let genuine = forged.clone();
    forged.bytes[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert_eq!(
        net.deliver(&forged),
        Some(Recv::Dropped(DropReason::DecryptFailed))
    );
    assert!(matches!(net.deliver(&genuine), Some(Recv::Data { .. })));
}

#[test]
fn replayed_initiation_rejected() {
    let (mut net, a, b) = pair();
    net.filter = Box::new(|_| false);
    net.send(a, b, b"x");
    net.filter = Box::new(|_| true);
    let init = net.log.iter().find(|d| d.kind() == 1).unwrap().clone();
    assert_eq!(net.deliver(&init), Some(Recv::Handshake { peer: a }));
    assert_eq!(net.collect_transmits().len(), 1, "response");
    net.now += Duration::from_secs(1);
    assert_eq!(
        net.deliver(&init),
        Some(Recv::Dropped(DropReason::ReplayedHandshake))
    );
    assert!(net.collect_transmits().is_empty());
    assert_eq!(net.nodes[b].ep.drops().replayed_handshake, 1);
}

#[test]
fn initiation_flood_rate_limited() {
    let mut net = Net::new();
    let a = net.node(1);
    let b = net.node(2);
    net.connect(a, b, None);
    // A second instance with A's key and a clock one second ahead (so its timestamp is
    // newer) initiates 10 ms later.
    let a2 = net.node(1);
    net.nodes[a2].addr = addr(9);
    let wall = net.wall() + Duration::from_secs(1);
    net.nodes[a2].ep =
        Endpoint::with_wall_clock(Identity::from_private(key(1)), TestRng(5), net.now, wall);
    let pb = net.public(b);
    let ab = net.nodes[b].addr;
    net.nodes[a2]
        .ep
        .add_peer(b, pb, Some([7; 32]), Some(ab), None);
    net.filter = Box::new(|d| d.kind() != 1);
    net.send(a, b, b"x");
    net.now += Duration::from_millis(10);
    net.send(a2, b, b"y");
    let inits: Vec<Datagram> = net.log.iter().filter(|d| d.kind() == 1).cloned().collect();
    assert_eq!(net.deliver(&inits[0]), Some(Recv::Handshake { peer: a }));
    assert_eq!(
        net.deliver(&inits[1]),
        Some(Recv::Dropped(DropReason::HandshakeRate))
    );
    net.now += Duration::from_millis(20);
    // The same initiation, now outside the rate window, is accepted (newer timestamp).
    assert_eq!(net.deliver(&inits[1]), Some(Recv::Handshake { peer: a }));
}

#[test]
fn initiation_from_unknown_key_dropped_without_reply() {
    let mut net = Net::new();
    let a = net.node(1);
    let b = net.node(2);
    let c = net.node(3);
    net.connect(a, b, None);
    // C knows B's key, B does not know C.
    let pb = net.public(b);
    let ab = net.nodes[b].addr;
    net.nodes[c].ep.add_peer(b, pb, None, Some(ab), None);
    assert_eq!(net.send(c, b, b"let me in"), Send::Queued);
    assert_eq!(net.last_recv(b), Recv::Dropped(DropReason::UnknownKey));
    assert!(net.log.iter().all(|d| d.from == c), "B never answers");
    assert_eq!(net.nodes[b].ep.drops().unknown_key, 1);
}

#[test]
fn bad_mac1_gets_no_reply() {
    let mut net = Net::new();
    let a = net.node(1);
    let b = net.node(2);
    net.connect(a, b, None);
    // C thinks B has another public key: its mac1 is wrong.
    let c = net.node(3);
    let ab = net.nodes[b].addr;
    net.nodes[c]
        .ep
        .add_peer(b, [0x55; 32], None, Some(ab), None);
    net.send(c, b, b"x");
    assert_eq!(net.last_recv(b), Recv::Dropped(DropReason::BadMac1));
    // A flipped mac1 bit on a genuine initiation.
    net.filter = Box::new(|_| false);
    net.send(a, b, b"x");
    net.filter = Box::new(|_| true);
    let mut init = net
        .log
        .iter()
        .rfind(|d| d.from == a && d.kind() == 1)
        .unwrap()
        .clone();
    init.bytes[120] ^= 1;
    assert_eq!(net.deliver(&init), Some(Recv::Dropped(DropReason::BadMac1)));
    assert!(net.collect_transmits().is_empty());
    assert_eq!(net.nodes[b].ep.drops().bad_mac1, 2);
    assert!(net.log.iter().all(|d| d.from != b));
}

#[test]
fn endpoint_roams_to_last_authenticated_source() {
    let (mut net, a, b) = established_pair();
    let new_addr: SocketAddr = "[2001:db8::2]:4000".parse().unwrap();
    net.nodes[b].addr = new_addr;
    assert!(matches!(
        net.send(b, a, b"from elsewhere"),
        Send::Datagram(_)
    ));
    assert_eq!(
        net.nodes[a].ep.peer_status(b).unwrap().endpoint,
        Some(new_addr)
    );
    match net.send(a, b, b"follow") {
        Send::Datagram(t) => assert_eq!(t.to, new_addr),
        other => panic!("{other:?}"),
    }
    assert_eq!(net.data(b).last().unwrap(), b"follow");
    // An unauthenticated datagram from a third address must not move the endpoint.
    let mut forged = net.capture(b, a, b"zz");
    forged.src = "192.0.2.66:1".parse().unwrap();
    forged.bytes[20] ^= 0xff;
    assert_eq!(
        net.deliver(&forged),
        Some(Recv::Dropped(DropReason::DecryptFailed))
    );
    assert_eq!(
        net.nodes[a].ep.peer_status(b).unwrap().endpoint,
        Some(new_addr)
    );
}

#[test]
fn three_node_mesh() {
    let mut net = Net::new();
    let ids: Vec<usize> = (1..=3).map(|n| net.node(n)).collect();
    for i in 0..3 {
        for j in (i + 1)..3 {
            net.connect(ids[i], ids[j], Some(Duration::from_secs(5)));
        }
    }
    net.advance(Duration::from_secs(1));
    for &i in &ids {
        for &j in &ids {
            if i != j {
                assert!(net.established(i, j), "{i}->{j}");
                let msg = format!("{i}->{j}");
                assert!(matches!(net.send(i, j, msg.as_bytes()), Send::Datagram(_)));
            }
        }
    }
    for &j in &ids {
        let mut got: Vec<String> = net
            .data(j)
            .into_iter()
            .map(|d| String::from_utf8(d).unwrap())
            .collect();
        got.sort();
        let want: Vec<String> = ids
            .iter()
            .filter(|&&i| i != j)
            .map(|i| format!("{i}->{j}"))
            .collect();
        assert_eq!(got, want);
    }
    // Stays up over several rekeys with only keepalives.
    net.advance(Duration::from_secs(400));
    for &i in &ids {
        assert!(net.nodes[i]
            .events
            .iter()
            .all(|e| !matches!(e, Event::PeerUnreachable(_))));
        for &j in &ids {
            if i != j {
                assert!(net.established(i, j));
            }
        }
        assert_eq!(net.nodes[i].ep.drops().total(), 0, "node {i}");
    }
}

#[test]
fn persistent_keepalive_detects_dead_peer_and_recovers() {
    let mut net = Net::new();
    let a = net.node(1);
    let b = net.node(2);
    let ka = Duration::from_secs(5);
    net.connect(a, b, Some(ka));
    net.advance(Duration::from_secs(60));
    assert!(net.established(a, b));
    assert!(net.nodes[a]
        .events
        .iter()
        .all(|e| matches!(e, Event::SessionEstablished(_))));
    let from_b = net
        .log
        .iter()
        .filter(|d| d.from == b && d.kind() == 4)
        .count();
    assert!(from_b >= 10, "B keeps sending keepalives: {from_b}");
    // Cut the link.
    net.filter = Box::new(|_| false);
    let cut = net.now;
    net.advance(Duration::from_secs(30));
    let down_at = net.nodes[a]
        .events
        .iter()
        .position(|e| *e == Event::PeerUnreachable(b));
    assert!(down_at.is_some(), "{:?}", net.nodes[a].events);
    let last_rx = net.nodes[a]
        .ep
        .peer_status(b)
        .unwrap()
        .last_authenticated_rx
        .unwrap();
    assert!(last_rx <= cut);
    // Restore: the handshake retries reconnect without operator action.
    net.filter = Box::new(|_| true);
    net.advance(Duration::from_secs(10));
    assert_eq!(
        net.nodes[a].events.last(),
        Some(&Event::SessionEstablished(b))
    );
    assert!(net.established(a, b) && net.established(b, a));
}

#[test]
fn update_peer_keeps_session_unless_psk_changes() {
    let (mut net, a, b) = established_pair();
    let hs = net.nodes[a].ep.peer_status(b).unwrap().last_handshake;
    net.nodes[a].ep.update_peer(b, Some([7; 32]), None, None);
    net.pump();
    assert_eq!(net.nodes[a].ep.peer_status(b).unwrap().last_handshake, hs);
    assert!(matches!(net.send(a, b, b"still"), Send::Datagram(_)));
    // Different PSK on one side only: its handshakes fail at the other side.
    net.now += Duration::from_secs(1);
    net.nodes[a].ep.update_peer(b, Some([8; 32]), None, None);
    assert!(!net.established(a, b));
    net.pump();
    assert!(!net.established(a, b));
    assert!(net.nodes[a].ep.drops().handshake_failed >= 1);
    // Both sides updated: a new session.
    net.nodes[b].ep.update_peer(a, Some([8; 32]), None, None);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert!(net.established(a, b));
    assert!(matches!(net.send(a, b, b"new psk"), Send::Datagram(_)));
    assert_eq!(net.data(b).last().unwrap(), b"new psk");
}

#[test]
fn remove_peer_forgets_sessions() {
    let (mut net, a, b) = established_pair();
    let d = net.capture(a, b, b"x");
    net.nodes[b].ep.remove_peer(a);
    assert_eq!(
        net.deliver(&d),
        Some(Recv::Dropped(DropReason::UnknownIndex))
    );
    assert_eq!(net.send(b, a, b"x"), Send::Dropped(DropReason::UnknownPeer));
    assert!(net.nodes[b].ep.peer_status(a).is_none());
}

#[test]
fn send_limits() {
    let (mut net, a, b) = pair();
    net.filter = Box::new(|_| false);
    for i in 0..pfsync_gw::tunnel::MAX_QUEUED_PAYLOADS {
        assert_eq!(net.send(a, b, &[i as u8]), Send::Queued);
    }
    assert_eq!(net.send(a, b, b"x"), Send::Dropped(DropReason::QueueFull));
    let big = vec![0u8; pfsync_gw::tunnel::MAX_PAYLOAD + 1];
    let mut out = vec![0u8; big.len() + 64];
    let now = net.now;
    assert_eq!(
        net.nodes[a].ep.send(b, &big, now, &mut out),
        Send::Dropped(DropReason::PayloadTooLarge)
    );
    // Queue drains in order once the handshake completes.
    net.filter = Box::new(|_| true);
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let got = net.data(b);
    assert_eq!(got.len(), pfsync_gw::tunnel::MAX_QUEUED_PAYLOADS);
    assert!(got.iter().enumerate().all(|(i, d)| d == &[i as u8]));
}

#[test]
fn datagram_counters_are_wire_sizes() {
    let (net, a, b) = established_pair();
    let st = net.nodes[b].ep.peer_status(a).unwrap();
    // initiation (148) + data "hello" (5 + 32)
    assert_eq!((st.rx_packets, st.rx_bytes), (2, 148 + 37));
}

#[test]
fn responder_waits_for_key_confirmation() {
    let (mut net, a, b) = pair();
    // Lose all transport messages (so A's confirmation) and B's own initiations:
    // B must not send on the unconfirmed session.
    net.filter = Box::new(move |d| d.kind() != 4 && !(d.from == b && d.kind() == 1));
    assert_eq!(net.send(a, b, b"lost"), Send::Queued);
    assert!(net.established(a, b));
    assert!(!net.established(b, a));
    assert_eq!(net.send(b, a, b"early"), Send::Queued);
    assert!(!net.log.iter().any(|d| d.from == b && d.kind() == 4));
    // Once A's transport gets through, B confirms and flushes its queue.
    net.filter = Box::new(|_| true);
    assert!(matches!(net.send(a, b, b"confirm"), Send::Datagram(_)));
    assert!(net.established(b, a));
    assert_eq!(net.data(a), vec![b"early".to_vec()]);
    assert!(net.nodes[b].events.contains(&Event::SessionEstablished(a)));
}

#[test]
fn keys_erased_after_three_reject_times() {
    let (mut net, a, b) = established_pair();
    let old = net.capture(a, b, b"x");
    net.filter = Box::new(|_| false);
    net.advance(REJECT_AFTER_TIME);
    assert_eq!(
        net.deliver(&old),
        Some(Recv::Dropped(DropReason::ExpiredSession))
    );
    net.advance(REJECT_AFTER_TIME * 2 + Duration::from_secs(1));
    // Session and its index are gone.
    assert_eq!(
        net.deliver(&old),
        Some(Recv::Dropped(DropReason::UnknownIndex))
    );
}

fn sessions_established(net: &Net, i: usize) -> usize {
    net.nodes[i]
        .events
        .iter()
        .filter(|e| matches!(e, Event::SessionEstablished(_)))
        .count()
}

/// Issue #11: A's first initiation is lost (B not listening yet); B's own handshake then
/// establishes the session. A's pending initiation must not be retransmitted after
/// REKEY_TIMEOUT and complete a second session 5 s later.
#[test]
fn peer_handshake_supersedes_our_lost_initiation() {
    let (mut net, a, b) = pair();
    let mut first = true;
    net.filter = Box::new(move |d| {
        let lost = first && d.from == 0 && d.kind() == 1;
        if lost {
            first = false;
        }
        !lost
    });
    assert_eq!(net.send(a, b, b"from a"), Send::Queued);
    assert_eq!(net.send(b, a, b"from b"), Send::Queued);
    assert_eq!(net.data(a), vec![b"from b".to_vec()]);
    assert_eq!(net.data(b), vec![b"from a".to_vec()]);
    net.advance(REKEY_TIMEOUT * 4);
    let inits_from_a = net
        .log
        .iter()
        .filter(|d| d.from == a && d.kind() == 1)
        .count();
    assert_eq!(inits_from_a, 1, "A retransmitted a superseded initiation");
    assert_eq!(sessions_established(&net, a), 1);
    assert_eq!(sessions_established(&net, b), 1);
    assert!(net.established(a, b) && net.established(b, a));
}

/// Both sides initiate at once and both handshakes complete: data flows at once, and no
/// third handshake follows.
#[test]
fn crossed_initiations_complete_at_once() {
    let (mut net, a, b) = pair();
    let now = net.now;
    let mut buf = vec![0u8; 256];
    assert_eq!(net.nodes[a].ep.send(b, b"x", now, &mut buf), Send::Queued);
    assert_eq!(net.nodes[b].ep.send(a, b"y", now, &mut buf), Send::Queued);
    net.pump(); // both initiations are on the wire together
    assert_eq!(net.data(a), vec![b"y".to_vec()]);
    assert_eq!(net.data(b), vec![b"x".to_vec()]);
    net.advance(REKEY_TIMEOUT * 4);
    assert_eq!(net.log.iter().filter(|d| d.kind() == 1).count(), 2);
    for i in [a, b] {
        assert!(sessions_established(&net, i) <= 2);
    }
}

/// The rekey test aid: the initiator rekeys after the configured interval, not 120 s.
#[test]
fn rekey_interval_test_aid() {
    let (mut net, a, b) = established_pair();
    net.nodes[a]
        .ep
        .set_rekey_after(Some(Duration::from_secs(2)));
    for _ in 0..10 {
        net.advance(Duration::from_millis(500));
        net.send(a, b, b"tick");
        net.send(b, a, b"tock");
    }
    let n = sessions_established(&net, a);
    assert!((2..=4).contains(&n), "{n} sessions in 5 s with a 2 s rekey");
    assert!(net.established(a, b) && net.established(b, a));
}

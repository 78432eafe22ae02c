//! A compromised peer (it holds a configured key, so everything it sends is authenticated)
//! against the sync layer, in-process and deterministic: each attack from issue 9 is
//! repeated and must leave the replica responsive, bounded and correct.

#[path = "common/pf.rs"]
#[allow(dead_code)] // shared helpers; this file uses a subset
mod pf;
mod sync_sim;

use std::time::{Duration, Instant};

use pf::{packet, tcp_state};
use pfsync_gw::sync::proto::{encode_record, msg_type, Record, RECORDS_HDR, SYNC_VERSION};
use pfsync_gw::sync::{
    PeerId, Replica, ReplicaConfig, SyncMsg, SyncNote, CLEAR_WALKS_BURST, CLEAR_WALKS_PER_SEC,
    CLOCK_CREDIT_MAX, CLOCK_REFILL,
};
use pfsync_gw::table::Version;
use pfsync_gw::wire::{Dialect, Message, StateId};

const OB: Dialect = Dialect::OpenbsdV6;
const EVIL: PeerId = 0;
const HONEST: PeerId = 1;
const EVIL_NODE: u32 = 0xee;
const EVIL_EPOCH: u32 = 0x1234;
/// Our own firewall's creator id.
const LOCAL_FW: u32 = 0xa;
/// The honest peer's firewall's creator id (configured).
const HONEST_FW: u32 = 0xb;
/// The compromised site's own firewall.
const EVIL_FW: u32 = 0xe;

struct Lab {
    r: Replica,
    now: Instant,
    /// The epoch our replica sends to the attacker under.
    our_epoch: u32,
    next_seq: u32,
    /// Bytes the attacker sent / received.
    sent: u64,
    received: u64,
}

fn enc(m: &SyncMsg) -> Vec<u8> {
    let mut b = vec![0u8; 1500];
    let n = m.encode(&mut b).expect("encodable");
    b.truncate(n);
    b
}

impl Lab {
    fn new(tweak: impl FnOnce(&mut ReplicaConfig)) -> Lab {
        let now = Instant::now();
        let mut cfg = ReplicaConfig::new(1, OB);
        cfg.initial_clock = 1_000_000;
        tweak(&mut cfg);
        let mut r = Replica::new(cfg, now);
        r.add_peer(EVIL, now);
        r.add_peer(HONEST, now);
        r.set_peer_creators(HONEST, &[HONEST_FW]);
        // Our firewall announces itself (its INS teaches the replica its creator id).
        r.on_local_pfsync(&packet(&[Message::Ins(tcp_state(1, LOCAL_FW))]), now)
            .unwrap();
        r.on_peer_up(EVIL, now);
        let mut lab = Lab {
            r,
            now,
            our_epoch: 0,
            next_seq: 1,
            sent: 0,
            received: 0,
        };
        lab.r.handle_timeout(now);
        for d in lab.drain() {
            if let Ok(SyncMsg::Hello { epoch, .. }) = SyncMsg::decode(&d) {
                lab.our_epoch = epoch;
            }
        }
        let clock = lab.r.clock();
        lab.send(&SyncMsg::Hello {
            node: EVIL_NODE,
            epoch: EVIL_EPOCH,
            clock,
            start_seq: 1,
            incarnation: EVIL_EPOCH,
        });
        let e = lab.our_epoch;
        lab.send(&SyncMsg::HelloAck {
            node: EVIL_NODE,
            epoch: e,
            clock,
            incarnation: EVIL_EPOCH,
        });
        assert!(lab.r.peer_stats(EVIL).unwrap().established);
        lab.drain();
        lab.sent = 0;
        lab.received = 0;
        lab
    }

    fn send(&mut self, m: &SyncMsg) {
        let d = enc(m);
        self.send_raw(&d);
    }

    fn send_raw(&mut self, d: &[u8]) {
        self.sent += d.len() as u64;
        let _ = self.r.on_peer_datagram(EVIL, d, self.now);
    }

    /// Everything the replica has to say to the attacker now.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1500];
        while let Some(n) = self.r.poll_peer_transmit(EVIL, self.now, &mut buf) {
            self.received += n as u64;
            out.push(buf[..n].to_vec());
        }
        while self.r.poll_local_inject(&mut buf).is_some() {}
        out
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.r.handle_timeout(self.now);
    }

    /// One DATA carrying a whole pfsync packet from the attacker's "firewall".
    fn data(&mut self, pkt: &[u8], clock: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.data_at(seq, pkt, clock);
    }

    /// The same with a sequence number of our choosing.
    fn data_at(&mut self, seq: u32, pkt: &[u8], clock: u64) {
        self.send(&SyncMsg::Data {
            epoch: EVIL_EPOCH,
            seq,
            clock,
            dialect: OB,
            offset: 0,
            total_len: pkt.len() as u16,
            chunk: pkt,
        });
    }

    fn records(&mut self, seq: u32, recs: &[Record]) {
        self.send_raw(&records_msg(seq, recs));
    }

    fn clock(&self) -> u64 {
        self.r.clock()
    }
}

/// A RECORDS message of the attacker's epoch, encoded by hand (`recs` may not decode).
fn records_msg(seq: u32, recs: &[Record]) -> Vec<u8> {
    let mut b = vec![0u8; 1400];
    let mut pos = RECORDS_HDR;
    for r in recs {
        pos += encode_record(r, &mut b[pos..]).expect("fits");
    }
    b[0] = msg_type::RECORDS;
    b[1] = SYNC_VERSION;
    b[2..6].copy_from_slice(&EVIL_EPOCH.to_be_bytes());
    b[6..10].copy_from_slice(&seq.to_be_bytes());
    b[10] = pfsync_gw::sync::proto::RECORD_VERSION;
    b[11..13].copy_from_slice(&(recs.len() as u16).to_be_bytes());
    b.truncate(pos);
    b
}

fn has(r: &Replica, id: u64, creator: u32) -> bool {
    r.table().get(StateId::new(id, creator)).is_some()
}

#[test]
fn far_sequence_numbers_cost_constant_time() {
    let mut lab = Lab::new(|_| {});
    let clock = lab.clock();
    let t = Instant::now();
    // Five 48-byte messages froze a gateway ≈16 s each before (RxWindow walked ~2^31 seqs).
    for k in 0..5u32 {
        let far = 1u32.wrapping_add(0x7fff_fff0).wrapping_add(k * 0x1000_0000);
        lab.records(far, &[]);
        let pkt = packet(&[Message::Ins(tcp_state(100 + k as u64, EVIL_FW))]);
        lab.data_at(far.wrapping_add(7), &pkt, clock);
        lab.drain();
    }
    let took = t.elapsed();
    eprintln!("10 far-seq messages handled in {took:?}");
    assert!(took < Duration::from_millis(500), "far seqs took {took:?}");
    // Still a working link: the data itself was applied.
    assert!(has(&lab.r, 104, EVIL_FW));
}

#[test]
fn a_clock_at_the_end_of_its_range_is_refused_and_never_wraps() {
    let mut lab = Lab::new(|_| {});
    let before = lab.clock();
    lab.send(&SyncMsg::Hello {
        node: EVIL_NODE,
        epoch: EVIL_EPOCH,
        clock: u64::MAX,
        start_seq: 1,
        incarnation: EVIL_EPOCH,
    });
    let digest = lab.r.digest();
    lab.send(&SyncMsg::Summary {
        digest,
        count: 0,
        leaves_log2: lab.r.table().config().leaves_log2,
        want_reply: false,
        clock: u64::MAX - 1,
    });
    // A DATA and a record whose versions carry the huge clock: not applied either.
    let pkt = packet(&[Message::Ins(tcp_state(7, EVIL_FW))]);
    lab.data(&pkt, u64::MAX);
    let seq = lab.next_seq;
    lab.next_seq += 1;
    lab.records(
        seq,
        &[Record::State(
            Version::new(u64::MAX, EVIL_NODE),
            tcp_state(8, EVIL_FW),
        )],
    );
    // The refusals moved our clock as far as clocks just within reach would have, until
    // the peer's clock credit was spent.
    assert_eq!(
        lab.clock(),
        before + CLOCK_CREDIT_MAX * (1 << 32),
        "a peer moved our clock to the end"
    );
    assert!(!has(&lab.r, 7, EVIL_FW) && !has(&lab.r, 8, EVIL_FW));
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.clock_refused, 4, "{st:?}");
    // The first refusal is noted for the log (one note: the 10th would be next).
    let notes: Vec<_> = std::iter::from_fn(|| lab.r.poll_note())
        .filter(|(_, n)| matches!(n, SyncNote::ClockRefused { .. }))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        matches!(notes[0].1, SyncNote::ClockRefused { ahead, count: 1 } if ahead == u64::MAX - before),
        "{notes:?}"
    );
    // A clock within reach still merges (the link keeps working) once the credit has
    // refilled for it: a millisecond is ≈ 72,000 ticks.
    lab.advance(Duration::from_millis(1));
    let c = lab.clock();
    lab.data(&pkt, c + 1000);
    assert!(has(&lab.r, 7, EVIL_FW));
    assert_eq!(lab.clock(), c + 1000);
    // Local changes saturate instead of wrapping even at the top (debug builds panicked).
    let mut r = Replica::new(
        ReplicaConfig {
            initial_clock: u64::MAX,
            ..ReplicaConfig::new(2, OB)
        },
        lab.now,
    );
    r.on_local_pfsync(&packet(&[Message::Ins(tcp_state(1, 3))]), lab.now)
        .unwrap();
    assert_eq!(r.clock(), u64::MAX);
}

#[test]
fn a_peer_inserts_and_clears_only_in_its_own_creator_space() {
    let mut lab = Lab::new(|_| {});
    let clock = lab.clock() + 1;
    // The honest peer's site has states in the mirror (configured creator 0xb).
    lab.r.table_mut().apply_versioned(
        &Message::Ins(tcp_state(50, HONEST_FW)),
        lab.now,
        Version::new(clock, 2),
    );
    // Its own firewall's first INS pins 0xe to the attacker's site.
    lab.data(&packet(&[Message::Ins(tcp_state(1, EVIL_FW))]), clock);
    assert!(has(&lab.r, 1, EVIL_FW));
    assert_eq!(lab.r.peer_creators(EVIL), vec![EVIL_FW]);
    // States claiming our firewall's or the honest site's creator id: refused.
    lab.data(
        &packet(&[
            Message::Ins(tcp_state(2, LOCAL_FW)),
            Message::Ins(tcp_state(3, HONEST_FW)),
        ]),
        clock,
    );
    let seq = lab.next_seq;
    lab.next_seq += 1;
    lab.records(
        seq,
        &[
            Record::State(Version::new(clock, EVIL_NODE), tcp_state(4, LOCAL_FW)),
            Record::State(Version::new(clock, EVIL_NODE), tcp_state(5, HONEST_FW)),
        ],
    );
    for (id, c) in [(2, LOCAL_FW), (3, HONEST_FW), (4, LOCAL_FW), (5, HONEST_FW)] {
        assert!(!has(&lab.r, id, c), "state {id:x}/{c:x} got in");
    }
    // A rogue CLR naming our firewall or the honest site removes nothing.
    lab.data(
        &packet(&[
            Message::Clr {
                ifname: [0; 16],
                creator: LOCAL_FW,
            },
            Message::Clr {
                ifname: [0; 16],
                creator: HONEST_FW,
            },
        ]),
        clock + 10,
    );
    let seq = lab.next_seq;
    lab.next_seq += 1;
    lab.records(
        seq,
        &[Record::Clear {
            creator: HONEST_FW,
            ifname: [0; 16],
            version: Version::new(clock + 20, EVIL_NODE),
        }],
    );
    assert!(
        has(&lab.r, 1, LOCAL_FW),
        "rogue CLR removed our firewall's state"
    );
    assert!(
        has(&lab.r, 50, HONEST_FW),
        "rogue CLR removed the honest site's state"
    );
    // Nothing of it reached our firewall either.
    let mut buf = vec![0u8; 2000];
    while let Some(n) = lab.r.poll_local_inject(&mut buf) {
        let p = pfsync_gw::wire::Packet::new_checked(&buf[..n], OB).unwrap();
        for m in p.messages() {
            if let Some(id) = m.state_id() {
                assert_eq!(id.creator, EVIL_FW, "injected {m:?}");
            }
            assert!(!matches!(m, Message::Clr { .. }), "CLR injected");
        }
    }
    // Its own CLR works.
    lab.data(
        &packet(&[Message::Clr {
            ifname: [0; 16],
            creator: EVIL_FW,
        }]),
        clock + 30,
    );
    assert!(!has(&lab.r, 1, EVIL_FW));
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert!(st.foreign_refused >= 7, "{st:?}");
    assert!(st.creator_conflicts >= 7, "{st:?}");
    // Learning is bounded: fresh creator ids beyond MAX_LEARNED_CREATORS are refused.
    for c in 0..20u32 {
        lab.data(
            &packet(&[Message::Ins(tcp_state(9, 0x100 + c))]),
            clock + 40,
        );
    }
    let learned = lab.r.peer_creators(EVIL).len();
    assert_eq!(learned, pfsync_gw::sync::MAX_LEARNED_CREATORS);
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn three_hundred_thousand_states_from_one_peer_hit_the_cap() {
    const CAP: usize = 100_000;
    const SENT: u64 = 300_000;
    let mut lab = Lab::new(|c| c.peer_max_states = CAP);
    let clock = lab.clock() + 1;
    let rss0 = rss_kb();
    let t = Instant::now();
    let mut id = 1u64;
    while id <= SENT {
        let msgs: Vec<Message> = (0..5)
            .map(|k| Message::Ins(tcp_state(id + k, EVIL_FW)))
            .collect();
        lab.data(&packet(&msgs), clock);
        id += 5;
        if id % 5_000 == 1 {
            lab.drain();
        }
    }
    lab.drain();
    let took = t.elapsed();
    let st = lab.r.peer_stats(EVIL).unwrap();
    let rss1 = rss_kb();
    eprintln!(
        "{SENT} states sent in {took:?}: mirror {} states, refused {}, RSS {} -> {} MB",
        lab.r.table().len(),
        st.states_refused,
        rss0 / 1024,
        rss1 / 1024
    );
    assert_eq!(lab.r.table().creator_len(EVIL_FW), CAP);
    assert_eq!(st.states_refused, SENT - CAP as u64);
    // Updates of held states still apply; the honest peer is unaffected by this peer's cap.
    assert!(lab.r.table().len() <= CAP + 1);
    // Global cap: a table limit refuses new states whoever sends them.
    let mut lab = Lab::new(|c| c.table.max_states = 10);
    for k in 0..20u64 {
        lab.data(
            &packet(&[Message::Ins(tcp_state(1000 + k, EVIL_FW))]),
            clock,
        );
    }
    assert_eq!(lab.r.table().len(), 10);
    assert_eq!(lab.r.table().stats().refused_full, 11);
}

/// Every kind of request a compromised peer can send, each repeated for 5 simulated
/// seconds against the DEFAULT configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// LEAF_REQ for every leaf, 256 per datagram.
    LeafReq,
    /// STATE_REQ for every state, 100 per datagram.
    StateReq,
    /// ACKs NACKing every sequence number we ever sent (and far older ones).
    Nack,
    /// SUMMARYs with ever different digests, with and without want_reply.
    Summary,
    /// RANGES with random digests, top level (64 child RANGES each) and leaf level.
    Ranges,
    /// ALIVE while 32 gaps are open in our receive window (ACK with 32 NACK ranges).
    Alive,
    /// HELLO of its current epoch (HELLO_ACK each).
    Hello,
    /// DATA of an epoch we never saw (HELLO_REQ).
    UnknownEpoch,
    /// PAD{want = 2^32−1} after RECORDS: asks us to pay.
    PayMe,
    /// All of the above, interleaved.
    Mixed,
}

const ASKS: [Ask; 10] = [
    Ask::LeafReq,
    Ask::StateReq,
    Ask::Nack,
    Ask::Summary,
    Ask::Ranges,
    Ask::Alive,
    Ask::Hello,
    Ask::UnknownEpoch,
    Ask::PayMe,
    Ask::Mixed,
];

/// What one attack cost the attacker and what it got.
#[derive(Debug, Default)]
struct Pull {
    /// Bytes the attacker sent.
    sent: u64,
    /// Bytes we sent it, all messages.
    got: u64,
    /// Of which PAD (our payment for its RECORDS/RANGES, not an answer).
    pad: u64,
    /// Of which sent by our own timers (HELLO, ALIVE, SUMMARY{want_reply}).
    timers: u64,
    /// The replica's own accounting over the peer's life (set-up included): answer bytes
    /// and bytes received from the peer…
    answer_bytes: u64,
    rx_bytes: u64,
    /// …and the answer budget left from the set-up (the attack starts with it).
    carried: u64,
}

impl Pull {
    /// Bytes of answers (everything but our timers and PAD) per byte sent.
    fn ratio(&self) -> f64 {
        (self.got - self.pad - self.timers) as f64 / self.sent as f64
    }
}

/// A xorshift64 generator: repeatable pseudo-random values for the floods.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn attack(ask: Ask, tweak: impl FnOnce(&mut ReplicaConfig)) -> Pull {
    let mut lab = Lab::new(tweak);
    fill_own_states(&mut lab);
    lab.sent = 0;
    lab.received = 0;
    let st0 = lab.r.peer_stats(EVIL).unwrap();
    let leaves = lab.r.table().leaf_count() as u32;
    let log2 = lab.r.table().config().leaves_log2;
    let e = lab.our_epoch;
    let mut pull = Pull::default();
    let mut rand = xorshift(0x9e37_79b9_7f4a_7c15);
    let (mut l, mut sid, mut top_seq) = (0u32, 10u64, 0u32);
    if ask == Ask::Alive || ask == Ask::Mixed {
        // 32 gaps in our receive window: empty RECORDS at odd sequence numbers.
        for k in 0..32 {
            lab.records(2 * k + 2, &[]);
        }
        lab.next_seq = 100;
    }
    for round in 0..500u32 {
        let this = match ask {
            Ask::Mixed => ASKS[round as usize % 9],
            a => a,
        };
        match this {
            Ask::LeafReq => {
                let mut b = vec![msg_type::LEAF_REQ, SYNC_VERSION];
                b.extend_from_slice(&256u16.to_be_bytes());
                for _ in 0..256 {
                    b.extend_from_slice(&(l % leaves).to_be_bytes());
                    l += 1;
                }
                lab.send_raw(&b);
            }
            Ask::StateReq => {
                let mut ids = Vec::new();
                for _ in 0..100 {
                    ids.extend_from_slice(&sid.to_be_bytes());
                    ids.extend_from_slice(&LOCAL_FW.to_be_bytes());
                    sid = if sid >= 20_009 { 10 } else { sid + 1 };
                }
                lab.send(&SyncMsg::StateReq { ids: &ids });
            }
            Ask::Nack => {
                if round % 50 == 0 {
                    // Something to NACK: a few records.
                    let mut ids = Vec::new();
                    for k in 0..100u64 {
                        ids.extend_from_slice(&(10 + k + u64::from(round)).to_be_bytes());
                        ids.extend_from_slice(&LOCAL_FW.to_be_bytes());
                    }
                    lab.send(&SyncMsg::StateReq { ids: &ids });
                }
                let mut nacks = Vec::new();
                for k in 0..32u32 {
                    let first = 1 + k * (top_seq / 32 + 1);
                    nacks.extend_from_slice(&first.to_be_bytes());
                    nacks.extend_from_slice(&(first + top_seq / 32).to_be_bytes());
                }
                lab.send(&SyncMsg::Ack {
                    epoch: e,
                    cum: 1,
                    delay: Default::default(),
                    nacks: &nacks,
                });
            }
            Ask::Summary => {
                let clock = lab.clock();
                lab.send(&SyncMsg::Summary {
                    digest: pfsync_gw::table::Digest(u128::from(rand()) << 64 | 1),
                    count: 1,
                    leaves_log2: log2,
                    want_reply: round % 2 == 0,
                    clock,
                });
            }
            Ask::Ranges => {
                let d: Vec<u8> = (0..64 * 16).map(|_| rand() as u8).collect();
                let (first, span) = if round % 2 == 0 {
                    (0, leaves / 64)
                } else {
                    ((rand() as u32 % 64) * 64, 1)
                };
                lab.send(&SyncMsg::Ranges {
                    first,
                    span,
                    digests: &d,
                });
            }
            Ask::Alive => lab.send(&SyncMsg::Alive {
                epoch: EVIL_EPOCH,
                next_seq: 1000,
            }),
            Ask::Hello => {
                let clock = lab.clock();
                lab.send(&SyncMsg::Hello {
                    node: EVIL_NODE,
                    epoch: EVIL_EPOCH,
                    clock,
                    start_seq: 1,
                    incarnation: EVIL_EPOCH,
                });
            }
            Ask::UnknownEpoch => lab.send(&SyncMsg::Data {
                epoch: EVIL_EPOCH + 1,
                seq: round,
                clock: 1,
                dialect: OB,
                offset: 0,
                total_len: 1,
                chunk: &[0],
            }),
            Ask::PayMe => {
                if round % 10 == 0 {
                    let seq = lab.next_seq;
                    lab.next_seq += 1;
                    lab.records(seq, &[]);
                }
                lab.send(&SyncMsg::Pad {
                    want: u32::MAX,
                    len: 0,
                });
            }
            Ask::Mixed => unreachable!(),
        }
        // Take everything, and ACK every RECORDS at once to keep our window open.
        for d in lab.drain() {
            let timer = match SyncMsg::decode(&d) {
                Ok(SyncMsg::Records { seq, .. }) => {
                    top_seq = top_seq.max(seq);
                    false
                }
                Ok(SyncMsg::Pad { .. }) => {
                    pull.pad += d.len() as u64;
                    false
                }
                Ok(SyncMsg::Alive { .. } | SyncMsg::Hello { .. }) => true,
                Ok(SyncMsg::Summary { want_reply, .. }) => want_reply,
                _ => false,
            };
            if timer {
                pull.timers += d.len() as u64;
            }
        }
        if top_seq > 0 && this != Ask::Nack {
            lab.send(&SyncMsg::Ack {
                epoch: e,
                cum: top_seq + 1,
                delay: Default::default(),
                nacks: &[],
            });
        }
        lab.advance(Duration::from_millis(10));
    }
    lab.drain();
    let st = lab.r.peer_stats(EVIL).unwrap();
    pull.sent = lab.sent;
    pull.got = lab.received;
    assert_eq!(
        st.rx_bytes - st0.rx_bytes,
        lab.sent,
        "every byte sent is counted"
    );
    pull.answer_bytes = st.answer_bytes;
    pull.rx_bytes = st.rx_bytes;
    pull.carried = 10 * st0.rx_bytes - st0.answer_bytes;
    pull
}

#[test]
fn no_request_is_answered_beyond_ten_times_its_size_at_the_defaults() {
    use pfsync_gw::sync::ANSWER_INITIAL;
    let mut worst = (0.0f64, Ask::Hello);
    for ask in ASKS {
        let p = attack(ask, |_| {});
        eprintln!(
            "{ask:?}: sent {} B, answered {} B ({:.2}x; {:.2}x beyond the {} B allowance), \
             PAD {} B, timers {} B",
            p.sent,
            p.got - p.pad - p.timers,
            p.ratio(),
            (p.got - p.pad - p.timers).saturating_sub(ANSWER_INITIAL) as f64 / p.sent as f64,
            ANSWER_INITIAL,
            p.pad,
            p.timers
        );
        // The rule, as the replica counts it (docs/SYNC.md, Requester pays).
        assert!(
            p.answer_bytes <= 10 * p.rx_bytes + ANSWER_INITIAL,
            "{ask:?}: {p:?}"
        );
        // On the wire: everything but our timers and our PAD is an answer. (Our audit
        // SUMMARY, every 3 s, looks like a reply: 2 × 34 B of slack.)
        assert!(
            p.got - p.pad - p.timers <= 10 * p.sent + ANSWER_INITIAL + p.carried + 68,
            "{ask:?}: {p:?}"
        );
        // Our payment is never more than a quarter of what it paid us with.
        assert!(p.pad <= p.sent / 4, "{ask:?}: {p:?}");
        // 5 s of timers: HELLO, ALIVE, a resync SUMMARY per second.
        assert!(p.timers < 2_000, "{ask:?}: {p:?}");
        if p.ratio() > worst.0 {
            worst = (p.ratio(), ask);
        }
    }
    eprintln!("worst: {:?} at {:.2}x", worst.1, worst.0);
    // The budget still lets answers through (it is a bound, not a wall).
    let p = attack(Ask::LeafReq, |_| {});
    assert!(p.got > 5 * p.sent, "{p:?}");
}

#[test]
fn without_the_budget_the_same_requests_amplify() {
    // The test above can fail: with the old free repair rate the LEAF_REQ flood pulls the
    // whole mirror (≈ 5 MB) for a few KB.
    let p = attack(Ask::LeafReq, |c| {
        c.answer_rate = 8 << 20;
        c.answer_cap = 8 << 20;
    });
    eprintln!("LeafReq with repair_rate 8 MiB/s: {:.1}x", p.ratio());
    assert!(p.ratio() > 50.0, "{p:?}");
}

/// Requester pays: a gateway receiving answers pads back, so a resync at the defaults is
/// not paced by the budget; one that never pads (a peer that predates PAD) is paced by its
/// own bytes, but never stalls.
#[test]
fn a_resync_is_paid_by_padding_and_never_stalls_without() {
    use sync_sim::{assert_table_equals, config, Firewall, Net, Rng};
    let run = |pad_divisor: u64, n: u64, max: Duration| {
        let mut b = config(2, OB);
        b.pad_divisor = pad_divisor;
        let mut net = Net::new(vec![config(1, OB), b], 3);
        let now = net.now;
        let mut fw = Firewall::new(0xa, OB);
        let mut rng = Rng::new(5);
        for _ in 0..n {
            let s = fw.new_state(&mut rng);
            net.nodes[0].table_mut().apply(&Message::Ins(s), now);
        }
        net.all_up();
        let took = net.converge(max).expect("converged");
        assert_table_equals(&fw, &net.nodes[1]);
        let a = net.nodes[0].peer_stats(1).unwrap();
        let b = net.nodes[1].peer_stats(0).unwrap();
        eprintln!(
            "late join of {n} states, pad 1/{pad_divisor}: {took:?} simulated; \
             A answered {} B for {} B received, B padded {} B, {} pay requests",
            a.answer_bytes, a.rx_bytes, b.pad_tx_bytes, a.pay_requests
        );
        assert!(a.answer_bytes <= 10 * a.rx_bytes + pfsync_gw::sync::ANSWER_INITIAL);
        (took, a, b)
    };
    // 20,000 states (≈ 5.4 MB of records): as fast as without a budget.
    let (took, a, b) = run(8, 20_000, Duration::from_secs(30));
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(b.pad_tx_bytes >= a.answer_bytes / 10, "{a:?} {b:?}");
    // A peer that never pads (one that predates PAD): after the budget its RANGES paid
    // for, records keep arriving, paced by its ACKs, ALIVEs and SUMMARYs.
    let mut b = config(2, OB);
    b.pad_divisor = 0;
    let mut net = Net::new(vec![config(1, OB), b], 3);
    let now = net.now;
    let mut fw = Firewall::new(0xa, OB);
    let mut rng = Rng::new(5);
    for _ in 0..20_000 {
        let s = fw.new_state(&mut rng);
        net.nodes[0].table_mut().apply(&Message::Ins(s), now);
    }
    net.all_up();
    net.run_for(Duration::from_secs(10));
    let at10 = net.nodes[1].table().len();
    net.run_for(Duration::from_secs(60));
    let at70 = net.nodes[1].table().len();
    let a = net.nodes[0].peer_stats(1).unwrap();
    eprintln!(
        "no padding: {at10} of 20000 states after 10 s, {at70} after 70 s ({:.1} states/s); \
         A answered {} B for {} B received, {} pay requests",
        (at70 - at10) as f64 / 60.0,
        a.answer_bytes,
        a.rx_bytes,
        a.pay_requests
    );
    assert!(at10 < 20_000, "not paced: {at10}");
    assert!(at70 > at10 + 60, "stalled: {at10} -> {at70}");
    assert!(a.answer_bytes <= 10 * a.rx_bytes + pfsync_gw::sync::ANSWER_INITIAL);
}

/// Issue 10.3: a SUMMARY that arrives while repairs we sent are unacknowledged is not
/// ignored: it is counted as deferred, answered with no RANGES while the repair is in
/// flight, and once the repair is acked our own SUMMARY{want_reply} goes out (the peer
/// answers that with RANGES, so the comparison happens).
#[test]
fn a_summary_during_unacked_repairs_is_deferred_then_answered() {
    use pfsync_gw::table::{StateTable, TableConfig};
    let mut lab = Lab::new(|_| {});
    // The peer asks for our firewall's state: the answer is a RECORDS repair, unacked.
    let mut ids = 1u64.to_be_bytes().to_vec();
    ids.extend_from_slice(&LOCAL_FW.to_be_bytes());
    lab.send(&SyncMsg::StateReq { ids: &ids });
    let repairs: Vec<u32> = lab
        .drain()
        .iter()
        .filter_map(|d| match SyncMsg::decode(d) {
            Ok(SyncMsg::Records { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect();
    assert!(!repairs.is_empty(), "no RECORDS answered the STATE_REQ");

    let other = StateTable::new(TableConfig::default()).digest();
    assert_ne!(other, lab.r.digest());
    let clock = lab.r.clock();
    lab.send(&SyncMsg::Summary {
        digest: other,
        count: 0,
        leaves_log2: lab.r.table().config().leaves_log2,
        want_reply: true,
        clock,
    });
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.summaries_deferred, 1, "{st:?}");
    assert!(st.resync_in_progress);
    let during = lab.drain();
    assert!(
        !during
            .iter()
            .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::Ranges { .. }))),
        "RANGES sent while the repair was unacked"
    );

    let epoch = lab.our_epoch;
    let cum = repairs.iter().max().unwrap() + 1;
    lab.send(&SyncMsg::Ack {
        epoch,
        cum,
        delay: Default::default(),
        nacks: &[],
    });
    let mut answered = false;
    for _ in 0..50 {
        lab.advance(Duration::from_millis(100));
        answered |= lab.drain().iter().any(|d| {
            matches!(
                SyncMsg::decode(d),
                Ok(SyncMsg::Summary {
                    want_reply: true,
                    ..
                })
            )
        });
        if answered {
            break;
        }
    }
    assert!(answered, "the deferred SUMMARY was never answered");
}

/// A datagram is checked whole before any of it acts: one bad record refuses the records
/// before it, and a bad RECORDS message in a BUNDLE refuses the DATA bundled with it.
#[test]
fn a_datagram_with_one_bad_record_acts_in_no_part() {
    let mut lab = Lab::new(|_| {});
    let clock = lab.clock() + 1;
    let v = Version::new(clock, EVIL_NODE);
    // Creator id 0 does not decode.
    let good = Record::State(v, tcp_state(7, EVIL_FW));
    let bad = Record::State(v, tcp_state(8, 0));
    let seq = lab.next_seq;
    lab.next_seq += 1;
    lab.records(seq, &[good, bad]);
    assert!(
        !has(&lab.r, 7, EVIL_FW),
        "the record before the bad one acted"
    );
    // Counted once, as malformed (not also as a bad value).
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!((st.malformed, st.bad_datagrams), (1, 0));

    // The same bad RECORDS bundled after a good DATA.
    let pkt = packet(&[Message::Ins(tcp_state(9, EVIL_FW))]);
    let data = enc(&SyncMsg::Data {
        epoch: EVIL_EPOCH,
        seq: lab.next_seq,
        clock,
        dialect: OB,
        offset: 0,
        total_len: pkt.len() as u16,
        chunk: &pkt,
    });
    let records = records_msg(lab.next_seq + 1, &[good, bad]);
    let mut bundle = vec![msg_type::BUNDLE, SYNC_VERSION];
    for m in [&data, &records] {
        bundle.extend_from_slice(&(m.len() as u16).to_be_bytes());
        bundle.extend_from_slice(m);
    }
    lab.send_raw(&bundle);
    assert!(
        !has(&lab.r, 9, EVIL_FW),
        "the DATA bundled with a bad RECORDS acted"
    );
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!((st.malformed, st.bad_datagrams), (2, 0));
    // And on its own the DATA acts (the test can fail).
    lab.send_raw(&data);
    assert!(has(&lab.r, 9, EVIL_FW));
}

/// Every CLR naming a creator that holds states walks the whole mirror: a peer flooding
/// CLRs of its own creator id (naming an interface none of its states uses, so nothing is
/// ever removed) gets a bounded number of walks a second; its real CLRs still work.
#[test]
fn a_flood_of_clears_walks_the_table_a_bounded_number_of_times() {
    let mut lab = Lab::new(|_| {});
    let clock = lab.clock() + 1;
    let states: Vec<Message> = (100..400)
        .map(|i| Message::Ins(tcp_state(i, EVIL_FW)))
        .collect();
    for chunk in states.chunks(4) {
        lab.data(&packet(chunk), clock);
    }
    assert!(has(&lab.r, 399, EVIL_FW));
    let walks_before = lab.r.table().stats().clears;
    let mut ifname = [0u8; 16];
    ifname[..5].copy_from_slice(b"nope0");
    let clr = Message::Clr {
        ifname,
        creator: EVIL_FW,
    };
    // 100 packets of 60 CLRs each, all at one instant.
    for _ in 0..100 {
        lab.data(&packet(&[clr; 60]), clock + 1);
    }
    let walks = lab.r.table().stats().clears - walks_before;
    assert_eq!(walks, u64::from(CLEAR_WALKS_BURST), "walks of the mirror");
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.clears_refused, 6000 - walks, "{st:?}");
    let noted: Vec<u64> = std::iter::from_fn(|| lab.r.poll_note())
        .filter_map(|(_, n)| match n {
            SyncNote::ClearsRefused(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(noted, [1, 10, 100, 1000], "logged at powers of ten");
    assert!(
        has(&lab.r, 399, EVIL_FW),
        "a CLR of another interface removed a state"
    );
    // CLRs of a creator holding nothing cost no walk and are not refused.
    let refused = st.clears_refused;
    lab.data(
        &packet(&[Message::Clr {
            ifname: [0; 16],
            creator: EVIL_FW + 0x100,
        }]),
        clock + 2,
    );
    assert_eq!(lab.r.peer_stats(EVIL).unwrap().clears_refused, refused);
    // The budget refills: a real CLR a second later removes the peer's states.
    lab.now += std::time::Duration::from_secs_f64(1.0 / f64::from(CLEAR_WALKS_PER_SEC));
    lab.data(
        &packet(&[Message::Clr {
            ifname: [0; 16],
            creator: EVIL_FW,
        }]),
        clock + 3,
    );
    assert!(
        !has(&lab.r, 399, EVIL_FW),
        "the peer's own CLR after the refill"
    );
}

/// Requests a peer makes up cannot grow our queues: STATE_REQs for ids we lack queue
/// nothing, `UPD_C`s for unknown states queue at most MAX_STATE_REQS requests (the rest is
/// left to a resync), also while the peer never acknowledges our HELLO (nothing drains).
#[test]
fn made_up_requests_and_unknown_updates_queue_a_bounded_amount() {
    let mut lab = Lab::new(|_| {});
    let clock = lab.clock() + 1;
    let mut ids = Vec::new();
    for i in 0..116u64 {
        ids.extend_from_slice(&(0xdead_0000 + i).to_be_bytes());
        ids.extend_from_slice(&EVIL_FW.to_be_bytes());
    }
    for round in 0..200u64 {
        for (k, chunk) in ids.chunks_mut(12).enumerate() {
            chunk[..8].copy_from_slice(&(round << 20 | k as u64).to_be_bytes());
        }
        lab.send(&SyncMsg::StateReq { ids: &ids });
    }
    // Our firewall's one state can be asked for; 23,200 made-up ids cannot.
    let mut held = Vec::new();
    held.extend_from_slice(&1u64.to_be_bytes());
    held.extend_from_slice(&LOCAL_FW.to_be_bytes());
    lab.send(&SyncMsg::StateReq { ids: &held });
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert!(st.dirty <= 1, "{st:?}");
    // 17 × 2,000 UPD_Cs of states nobody has.
    for p in 0..2_000u64 {
        let msgs: Vec<Message> = (0..17)
            .map(|i| {
                let s = tcp_state(1 << 40 | p << 8 | i, EVIL_FW);
                Message::UpdC(pf::upd_c(&s, 5))
            })
            .collect();
        lab.data(&packet(&msgs), clock);
    }
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert!(st.requests <= 16_384, "{st:?}");
    assert!(
        st.requests >= 16_000,
        "the cap, not something else, stopped it: {st:?}"
    );
    assert!(
        st.resync_in_progress,
        "the overflow left to a resync: {st:?}"
    );
}

/// A peer's UPD_REQ for a state the mirror holds is answered from the mirror (a RECORDS,
/// paid from its budget), not injected: our firewall would answer each 12-byte request
/// with a full UPD that we relay to every peer. One the mirror lacks is still forwarded.
#[test]
fn a_peers_state_requests_are_answered_from_the_mirror_not_by_our_firewall() {
    let mut lab = Lab::new(|_| {});
    let mut buf = vec![0u8; 2000];
    let local: Vec<Message> = (2..22)
        .map(|i| Message::Ins(tcp_state(i, LOCAL_FW)))
        .collect();
    for chunk in local.chunks(5) {
        lab.r.on_local_pfsync(&packet(chunk), lab.now).unwrap();
    }
    while lab.r.poll_local_inject(&mut buf).is_some() {}
    let reqs: Vec<Message> = (1..22)
        .map(|i| Message::UpdReq(StateId::new(i, LOCAL_FW)))
        .chain([Message::UpdReq(StateId::new(999, LOCAL_FW))])
        .collect();
    let clock = lab.clock() + 1;
    lab.data(&packet(&reqs), clock);
    let mut injected = Vec::new();
    while let Some(n) = lab.r.poll_local_inject(&mut buf) {
        let p = pfsync_gw::wire::Packet::new_checked(&buf[..n], OB).unwrap();
        injected.extend(p.messages());
    }
    assert_eq!(
        injected,
        vec![Message::UpdReq(StateId::new(999, LOCAL_FW))],
        "only the request the mirror cannot answer reaches our firewall"
    );
    assert_eq!(
        lab.r.peer_stats(EVIL).unwrap().dirty,
        21,
        "answered as RECORDS"
    );
}

/// A HELLO of an epoch the same process already replaced (any peer's HELLOs can be reordered
/// on the way, or one re-sent just before a newer epoch) does not take us back to that
/// stream: it is not answered, the current stream's DATA is still applied and nothing asks
/// the peer for yet another epoch. The list survives our own new epoch; a restarted process
/// (a new incarnation) starts a list of its own; an entry expires after `keepalive ×
/// dead_after`, so a sender that did open that epoch again is not shut out for good; a late
/// HELLO_ACK from the old process does not bring its incarnation back.
#[test]
fn a_straggler_hello_does_not_replace_the_current_stream() {
    let mut lab = Lab::new(|_| {});
    let first_ours = lab.our_epoch;
    let clock = lab.r.clock();
    let hello = |epoch, incarnation| SyncMsg::Hello {
        node: EVIL_NODE,
        epoch,
        clock,
        start_seq: 1,
        incarnation,
    };
    let acked = |out: &[Vec<u8>]| {
        out.iter()
            .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::HelloAck { .. })))
    };
    let stats = |lab: &Lab| lab.r.peer_stats(EVIL).unwrap();
    let newer = EVIL_EPOCH + 1;
    lab.send(&hello(newer, EVIL_EPOCH));
    // Our side opens a new epoch meanwhile (the peer's state is carried into it).
    lab.r.on_peer_down(EVIL, lab.now);
    lab.r.on_peer_up(EVIL, lab.now);
    lab.drain();
    let before = stats(&lab);
    lab.send(&hello(EVIL_EPOCH, EVIL_EPOCH));
    let after = stats(&lab);
    assert_eq!(
        after.rx_epochs, before.rx_epochs,
        "went back to the old stream"
    );
    assert_eq!(after.epoch_mismatch, before.epoch_mismatch + 1);
    assert!(!acked(&lab.drain()), "a straggler was acknowledged");

    let pkt = packet(&[Message::Ins(tcp_state(77, EVIL_FW))]);
    lab.send(&SyncMsg::Data {
        epoch: newer,
        seq: 1,
        clock,
        dialect: OB,
        offset: 0,
        total_len: pkt.len() as u16,
        chunk: &pkt,
    });
    assert!(
        lab.r.table().get(StateId::new(77, EVIL_FW)).is_some(),
        "the current stream's DATA was not applied"
    );
    lab.advance(Duration::from_millis(600));
    let asked = lab
        .drain()
        .iter()
        .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::HelloReq { .. })));
    assert!(!asked, "asked the peer for a new epoch");

    // The peer restarts; its new process opens epochs numbered like the old process's
    // current and replaced ones: new streams (its list holds none of the old one's epochs).
    let (inc2, fresh) = (EVIL_EPOCH + 7, EVIL_EPOCH + 2);
    lab.send(&hello(fresh, inc2));
    let restarted = stats(&lab);
    assert_eq!(restarted.rx_epochs, after.rx_epochs + 1);
    assert_eq!(restarted.peer_restarts, after.peer_restarts + 1);
    lab.send(&hello(newer, inc2));
    lab.send(&hello(EVIL_EPOCH, inc2));
    assert_eq!(stats(&lab).rx_epochs, restarted.rx_epochs + 2);
    // A late HELLO_ACK of our first epoch, from the old process: not its incarnation back.
    lab.send(&SyncMsg::HelloAck {
        node: EVIL_NODE,
        epoch: first_ours,
        clock,
        incarnation: EVIL_EPOCH,
    });
    lab.send(&hello(EVIL_EPOCH, inc2));
    assert_eq!(
        stats(&lab).peer_restarts,
        restarted.peer_restarts,
        "a spurious restart"
    );
    // `fresh` is now a replaced epoch of this process: a straggler at once, a stream again
    // once the window has passed.
    let n = stats(&lab).rx_epochs;
    lab.send(&hello(fresh, inc2));
    assert_eq!(stats(&lab).rx_epochs, n);
    lab.advance(Duration::from_secs(6));
    lab.send(&hello(fresh, inc2));
    assert_eq!(stats(&lab).rx_epochs, n + 1, "shut out after the window");
}

/// An ACK due when the credit affords its 13-byte header but not one NACK range: it goes
/// without NACKs, within the credit. (The NACK list was then uncapped: with more than 32
/// gaps it overran the list's buffer and the daemon panicked; with fewer, the credit went
/// below zero.) A peer with holes in its sequence numbers and a tight budget is enough.
#[test]
fn an_ack_the_credit_barely_affords_carries_no_nacks() {
    let mut lab = Lab::new(|c| {
        c.answer_factor = 0;
        c.answer_rate = 1_000_000;
        c.answer_cap = 20;
    });
    // 100 gaps: RECORDS at even sequence numbers only.
    for k in 0..100 {
        lab.records(2 * k + 2, &[]);
    }
    let mut acks = 0;
    for _ in 0..20 {
        lab.advance(Duration::from_millis(30));
        for d in lab.drain() {
            if let Ok(SyncMsg::Ack { nacks, .. }) = SyncMsg::decode(&d) {
                acks += 1;
                assert!(
                    d.len() <= 20,
                    "ACK of {} bytes beyond a 20-byte credit",
                    d.len()
                );
                assert!(
                    nacks.is_empty(),
                    "{} bytes of NACKs unaffordable",
                    nacks.len()
                );
            }
        }
    }
    assert!(acks > 0, "no ACK went out");
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.nacks_tx, 0);
}

/// A gateway whose clock a compromised peer pushed more than `max_clock_ahead` beyond ours
/// (two steps just under the bound): what it sends is refused at first, but each refusal
/// brings our clock closer, and within a few of its messages it is heard again. Before,
/// it was refused for good: its firewall's states never reached us again.
#[test]
fn a_gateway_pushed_out_of_reach_is_caught_up_with() {
    let mut lab = Lab::new(|_| {});
    let ahead = lab.clock() + (2 << 32) + 50;
    let pkt = packet(&[Message::Ins(tcp_state(7, EVIL_FW))]);
    lab.data(&pkt, ahead);
    assert!(!has(&lab.r, 7, EVIL_FW), "a clock 2^33 ahead was accepted");
    let digest = lab.r.digest();
    let leaves_log2 = lab.r.table().config().leaves_log2;
    lab.send(&SyncMsg::Summary {
        digest,
        count: 0,
        leaves_log2,
        want_reply: false,
        clock: ahead,
    });
    // Two refusals later the clock is within reach (the peer's clock credit, two steps,
    // spent; a second refills plenty for the rest): the next DATA applies and merges.
    lab.advance(Duration::from_secs(1));
    lab.data(&pkt, ahead + 1);
    assert!(has(&lab.r, 7, EVIL_FW), "still cut off");
    assert_eq!(lab.clock(), ahead + 1);
    assert_eq!(lab.r.peer_stats(EVIL).unwrap().clock_refused, 2);
}

/// A compromised peer that keeps pushing our clock (every SUMMARY just within reach, as
/// fast as it sends) moves it only as far as its clock credit allows: two steps of
/// `max_clock_ahead` at once, one more a minute. Before, each message moved it 2^32: honest
/// peers, catching up 2^32 per message of ours, refused all we sent while it kept on.
#[test]
fn a_peer_pushing_our_clock_for_ever_moves_it_only_as_its_credit_allows() {
    let mut lab = Lab::new(|_| {});
    let (start, bound) = (lab.clock(), 1u64 << 32);
    let digest = lab.r.digest();
    let leaves_log2 = lab.r.table().config().leaves_log2;
    for k in 0..1000u64 {
        if k % 100 == 0 {
            lab.advance(Duration::from_millis(100));
        }
        let clock = lab.clock() + bound;
        lab.send(&SyncMsg::Summary {
            digest,
            count: 0,
            leaves_log2,
            want_reply: false,
            clock,
        });
    }
    // 1 s passed: the burst of two steps, and 1/60 of a step refilled.
    let (moved, burst) = (lab.clock() - start, CLOCK_CREDIT_MAX * bound);
    let refill = bound / CLOCK_REFILL.as_secs();
    assert!(moved <= burst + refill + 1, "moved {moved}");
    assert!(
        moved >= burst,
        "the burst (a restarted peer's lead) was not taken: {moved}"
    );
    let refused = lab.r.peer_stats(EVIL).unwrap().clock_refused;
    assert!(refused >= 990, "{refused}");
    // An honest pace (a clock a few thousand ahead) is heard again within the refill.
    lab.advance(Duration::from_secs(1));
    let pkt = packet(&[Message::Ins(tcp_state(9, EVIL_FW))]);
    let c = lab.clock() + 5_000;
    lab.data(&pkt, c);
    assert!(
        has(&lab.r, 9, EVIL_FW),
        "an honest step refused after the refill"
    );
}

/// The messages (EOF aside) of the packets queued for our firewall.
fn injected(r: &mut Replica) -> Vec<Message> {
    let mut buf = vec![0u8; 1500];
    let mut msgs = Vec::new();
    while let Some(n) = r.poll_local_inject(&mut buf) {
        let p = pfsync_gw::wire::Packet::new_checked(&buf[..n], OB).unwrap();
        msgs.extend(p.messages().filter(|m| *m != Message::Eof));
    }
    msgs
}

/// The DEL_Cs a packet injected into our firewall carries.
fn injected_deletes(r: &mut Replica) -> Vec<StateId> {
    injected(r)
        .into_iter()
        .filter_map(|m| match m {
            Message::DelC(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// pf's state ids are sequential, so a compromised peer knows our firewall's and the other
/// sites' next ones. Deleting them before they exist (DEL_C in DATA, tombstone records)
/// writes no tombstone: the states, once created, are mirrored and relayed, and our
/// firewall is not told to delete them. The DEL_C still reaches our firewall (it may hold a
/// state our mirror lacks; pf ignores one it lacks), and a peer deletes unknown states of
/// its own creator ids as before.
#[test]
fn a_peer_cannot_delete_states_before_they_exist() {
    let mut lab = Lab::new(|_| {});
    let future = [StateId::new(100, LOCAL_FW), StateId::new(100, HONEST_FW)];
    let records = [StateId::new(200, LOCAL_FW), StateId::new(200, HONEST_FW)];
    let c = lab.clock() + 1000;
    lab.data(&packet(&future.map(Message::DelC)), c);
    assert_eq!(injected_deletes(&mut lab.r), future, "DEL_C not passed on");
    let seq = lab.next_seq;
    lab.next_seq += 1;
    let tombs = records.map(|id| Record::Tombstone(id, Version::new(c, EVIL_NODE)));
    lab.records(seq, &tombs);
    for id in future.iter().chain(&records) {
        assert!(lab.r.table().tombstone(*id).is_none(), "{id:?} pre-deleted");
    }
    assert_eq!(lab.r.peer_stats(EVIL).unwrap().foreign_refused, 4);
    // Our firewall creates them: mirrored, and not deleted in the firewall.
    let ins = [tcp_state(100, LOCAL_FW), tcp_state(200, LOCAL_FW)].map(Message::Ins);
    lab.r.on_local_pfsync(&packet(&ins), lab.now).unwrap();
    assert!(has(&lab.r, 100, LOCAL_FW) && has(&lab.r, 200, LOCAL_FW));
    assert_eq!(
        injected_deletes(&mut lab.r),
        [],
        "our firewall told to delete"
    );
    // The peer's own creator ids (pinned by its first INS): deleted ahead as before.
    lab.data(&packet(&[Message::Ins(tcp_state(1, EVIL_FW))]), c + 1);
    lab.data(&packet(&[Message::DelC(StateId::new(300, EVIL_FW))]), c + 2);
    assert!(lab
        .r
        .table()
        .tombstone(StateId::new(300, EVIL_FW))
        .is_some());
}

/// ACKs can cross on the way: an older one naming gaps that a newer one has since
/// acknowledged is stale, not a sign that the resend queue lost them (which would start a
/// needless resync of the whole table).
#[test]
fn an_ack_overtaken_by_a_newer_one_starts_no_resync() {
    let mut lab = Lab::new(|_| {});
    for k in 0..10 {
        let pkt = packet(&[Message::Ins(tcp_state(1000 + k, LOCAL_FW))]);
        lab.r.on_local_pfsync(&pkt, lab.now).unwrap();
    }
    // The highest seq we sent (DATA and RECORDS alike), as the peer would see it.
    let mut top = 0;
    for d in lab.drain() {
        for m in pfsync_gw::sync::proto::datagram_parts(&d).unwrap() {
            match SyncMsg::decode(m) {
                Ok(SyncMsg::Data { seq, .. }) => top = top.max(seq),
                Ok(SyncMsg::Records { seq, .. }) => top = top.max(seq),
                _ => {}
            }
        }
    }
    assert!(top > 6, "{top}");
    let e = lab.our_epoch;
    let before = lab.r.peer_stats(EVIL).unwrap();
    fn ack(epoch: u32, cum: u32, nacks: &[u8]) -> SyncMsg<'_> {
        SyncMsg::Ack {
            epoch,
            cum,
            delay: Default::default(),
            nacks,
        }
    }
    lab.send(&ack(e, top + 1, &[]));
    let mut stale = Vec::new();
    stale.extend_from_slice(&3u32.to_be_bytes());
    stale.extend_from_slice(&5u32.to_be_bytes());
    lab.send(&ack(e, 3, &stale));
    lab.drain();
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.unacked, 0);
    assert_eq!(st.overflows, before.overflows, "taken for purged: {st:?}");
    assert_eq!(st.retransmits, before.retransmits);
    assert_eq!(st.skips_tx, before.skips_tx);
}

/// What a peer can trigger again and again (here: sequence numbers beyond our receive
/// window, each a resync) does not pull a SUMMARY — which no answer budget pays for — each
/// time: a resync under way keeps its pace of one per `resync_interval`.
#[test]
fn repeated_resync_triggers_pull_one_summary() {
    let mut lab = Lab::new(|_| {});
    let mut summaries = 0;
    for k in 1..=50u32 {
        lab.records(k * 10_000, &[]);
        lab.r.handle_timeout(lab.now);
        for d in lab.drain() {
            for m in pfsync_gw::sync::proto::datagram_parts(&d).unwrap() {
                if let Ok(SyncMsg::Summary { .. }) = SyncMsg::decode(m) {
                    summaries += 1;
                }
            }
        }
    }
    assert!(lab.r.peer_stats(EVIL).unwrap().resyncs >= 1);
    assert_eq!(summaries, 1, "a SUMMARY per trigger");
}

/// The victim's mirror of the request floods: 20,000 states of its own firewall.
fn fill_own_states(lab: &mut Lab) {
    let mut id = 10u64;
    while id < 20_010 {
        let msgs: Vec<Message> = (0..5)
            .map(|k| Message::Ins(tcp_state(id + k, LOCAL_FW)))
            .collect();
        lab.r.on_local_pfsync(&packet(&msgs), lab.now).unwrap();
        id += 5;
    }
    lab.drain();
}

/// A BUNDLE of `parts` (each an encoded message).
fn bundle(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![msg_type::BUNDLE, SYNC_VERSION];
    for p in parts {
        b.extend_from_slice(&(p.len() as u16).to_be_bytes());
        b.extend_from_slice(p);
    }
    b
}

/// splitmix64's finaliser (docs/SYNC.md, *Digest*) and its inverse: a peer can choose ids
/// that all fall in one leaf (the leaf hash is public; it must be, peers compare leaves).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
fn unmix(mut z: u64) -> u64 {
    let inv = |a: u64| {
        // Newton's iteration for the inverse of an odd number modulo 2^64.
        let mut x = a;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        }
        x
    };
    let unshift = |z: u64, s: u32| {
        let mut x = z;
        for _ in 0..64 / s + 1 {
            x = z ^ (x >> s);
        }
        x
    };
    z = unshift(z, 31).wrapping_mul(inv(0x94d0_49bb_1331_11eb));
    z = unshift(z, 27).wrapping_mul(inv(0xbf58_476d_1ce4_e5b9));
    unshift(z, 30)
}

/// The `k`-th id of `creator` in leaf `leaf` of `2^12` leaves.
fn id_in_leaf(leaf: u64, k: u64, creator: u32) -> StateId {
    let salt = mix(u64::from(creator) ^ 0x7066_7379_6e63_2d67);
    StateId::new(unmix(leaf << 52 | k) ^ salt, creator)
}

#[test]
fn crafted_ids_land_in_one_leaf() {
    let t = pfsync_gw::table::StateTable::default();
    for k in [0, 1, 77, 65_535] {
        assert_eq!(mix(unmix(k * 0x9e37_79b9)), k * 0x9e37_79b9);
        assert_eq!(t.leaf_of(id_in_leaf(1234, k, EVIL_FW)), 1234);
    }
}

/// RANGES name ranges of the digest tree only (docs/SYNC.md, *Digest*: spans 64 and 1 at
/// 4096 leaves, `first` a multiple of the span), each compared with one digest read. Any
/// other range would cost a sum over its leaves: a BUNDLE of 47 RANGES over the whole table
/// (span 4096, one digest each) cost ≈ 220–360 µs of digest arithmetic per 1,365-byte
/// datagram, and was answered with 64 child digests each. Now such a RANGES is refused whole
/// and counted (`sync_bad_datagram`) before any digest is read.
#[test]
fn ranges_outside_the_digest_tree_are_refused_before_any_digest_work() {
    let mut lab = Lab::new(|_| {});
    fill_own_states(&mut lab);
    let leaves = lab.r.table().leaf_count() as u32;
    assert_eq!(leaves, 4096);
    let d = [0x5au8; 16];
    let ranges = |first: u32, span: u32| {
        enc(&SyncMsg::Ranges {
            first,
            span,
            digests: &d,
        })
    };
    let sent_ranges = |out: &[Vec<u8>]| {
        out.iter()
            .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::Ranges { .. })))
    };
    let bad = |lab: &Lab| lab.r.peer_stats(EVIL).unwrap().bad_datagrams;
    for (first, span) in [
        (0, leaves),
        (0, 2 * leaves),
        (0, 128),
        (0, 63),
        (0, 2),
        (1, 64),
        (32, 64),
        (64, leaves),
        (0, u32::MAX),
    ] {
        let (b0, r0) = (bad(&lab), lab.r.table().range_reads());
        lab.send_raw(&ranges(first, span));
        assert_eq!(bad(&lab), b0 + 1, "RANGES {{{first}, {span}}} not refused");
        assert_eq!(
            lab.r.table().range_reads(),
            r0,
            "{{{first}, {span}}}: digests read"
        );
        assert!(!sent_ranges(&lab.drain()), "{{{first}, {span}}} answered");
    }
    // The review's datagram: 47 of them bundled.
    let (b0, r0) = (bad(&lab), lab.r.table().range_reads());
    let parts: Vec<Vec<u8>> = (0..47).map(|_| ranges(0, leaves)).collect();
    lab.send_raw(&bundle(&parts));
    assert_eq!(bad(&lab), b0 + 47);
    assert_eq!(lab.r.table().range_reads(), r0);
    assert!(!sent_ranges(&lab.drain()));
    assert_eq!(lab.r.peer_stats(EVIL).unwrap().malformed, 0);

    // The tree's own ranges are served: the top level's first range (one read to compare,
    // 64 for the child RANGES answering it) and a leaf (one read, then a LEAF_REQ).
    let r0 = lab.r.table().range_reads();
    lab.send_raw(&ranges(0, leaves / 64));
    assert_eq!(lab.r.table().range_reads(), r0 + 1 + 64);
    let out = lab.drain();
    assert!(out.iter().any(|d| matches!(
        SyncMsg::decode(d),
        Ok(SyncMsg::Ranges { first: 0, span: 1, digests }) if digests.len() == 64 * 16
    )));
    lab.send_raw(&ranges(5 * 64 + 3, 1));
    assert_eq!(lab.r.table().range_reads(), r0 + 66);
    lab.advance(Duration::from_millis(10));
    assert!(lab
        .drain()
        .iter()
        .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::LeafReq { .. }))));
    assert_eq!(bad(&lab), b0 + 47);
}

/// An answer the budget does not afford is dropped before its digests are computed: a
/// RANGES of 64 differing ranges costs the 64 digest reads that compare them, not 64 × 64
/// more for child RANGES that the budget then drops.
#[test]
fn an_unaffordable_ranges_answer_costs_no_digest_work() {
    let mut lab = Lab::new(|c| {
        // Enough for the set-up's small answers, never for a RANGES (1,035 bytes beyond
        // the 512-byte reserve), and nothing earned.
        c.answer_initial = 1024;
        c.answer_factor = 0;
    });
    fill_own_states(&mut lab);
    let st0 = lab.r.peer_stats(EVIL).unwrap();
    let r0 = lab.r.table().range_reads();
    let d: Vec<u8> = (0..64 * 16).map(|i| (i * 7 + 1) as u8).collect();
    lab.send(&SyncMsg::Ranges {
        first: 0,
        span: 64,
        digests: &d,
    });
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.answers_deferred, st0.answers_deferred + 64);
    assert_eq!(lab.r.table().range_reads(), r0 + 64);
    assert!(!lab
        .drain()
        .iter()
        .any(|d| matches!(SyncMsg::decode(d), Ok(SyncMsg::Ranges { .. }))));
    // A SUMMARY with another digest: the top-level RANGES answering it is refused likewise.
    let clock = lab.clock();
    lab.send(&SyncMsg::Summary {
        digest: pfsync_gw::table::Digest(7),
        count: 1,
        leaves_log2: 12,
        want_reply: true,
        clock,
    });
    let st1 = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st1.answers_deferred, st.answers_deferred + 1);
    assert_eq!(lab.r.table().range_reads(), r0 + 64);
}

/// Measurement, not a check (`cargo test --release --test sync_hostile -- --ignored
/// --nocapture measure`): the replica's CPU per datagram of the anti-entropy floods of the
/// 2026-12 review (RANGES digest work, tombstones crafted into one leaf) against honest-
/// looking ones of the same size.
#[test]
#[ignore]
fn measure_anti_entropy_work_per_datagram() {
    use std::time::Instant as T;
    let mut rand = xorshift(0x2545_f491_4f6c_dd1d);
    // Each case: the datagrams to send (built beforehand), timed over `on_peer_datagram`
    // only; the replica's answers are drained untimed between batches.
    let run = |name: &str, lab: &mut Lab, dgrams: Vec<Vec<u8>>| {
        let mut took = Duration::ZERO;
        let before = lab.r.peer_stats(EVIL).unwrap();
        for chunk in dgrams.chunks(16) {
            let t = T::now();
            for d in chunk {
                let _ = lab.r.on_peer_datagram(EVIL, d, lab.now);
            }
            took += t.elapsed();
            lab.sent += chunk.iter().map(|d| d.len() as u64).sum::<u64>();
            lab.drain();
        }
        let st = lab.r.peer_stats(EVIL).unwrap();
        let n = dgrams.len();
        eprintln!(
            "{name}: {n} datagrams of {} B: {:.1} µs each; answers_deferred +{}, \
             bad_datagrams +{}, malformed +{}",
            dgrams[0].len(),
            took.as_secs_f64() * 1e6 / n as f64,
            st.answers_deferred - before.answers_deferred,
            st.bad_datagrams - before.bad_datagrams,
            st.malformed - before.malformed,
        );
    };
    let ranges = |first: u32, span: u32, digests: &[u8]| {
        enc(&SyncMsg::Ranges {
            first,
            span,
            digests,
        })
    };

    // RANGES: 47 parts of one random digest each, over the whole table (span 4096) and
    // over the top level's first range (span 64, a range the digest tree uses).
    for (name, span) in [
        ("RANGES 47 x {0, 4096, 1}", 4096),
        ("RANGES 47 x {0, 64, 1}", 64),
    ] {
        let mut lab = Lab::new(|_| {});
        fill_own_states(&mut lab);
        let dgrams: Vec<Vec<u8>> = (0..2000)
            .map(|_| {
                let parts: Vec<Vec<u8>> = (0..47)
                    .map(|_| ranges(0, span, &rand().to_be_bytes().repeat(2)))
                    .collect();
                bundle(&parts)
            })
            .collect();
        run(name, &mut lab, dgrams);
    }
    {
        let mut lab = Lab::new(|_| {});
        fill_own_states(&mut lab);
        let dgrams: Vec<Vec<u8>> = (0..2000)
            .map(|_| {
                let d: Vec<u8> = (0..64 * 16).map(|_| rand() as u8).collect();
                ranges(0, 64, &d)
            })
            .collect();
        run("RANGES {0, 64, 64 random}", &mut lab, dgrams);
    }

    // Tombstones: 54 per RECORDS (1,363 B), first 65,536 to fill `tombstone_max`, then
    // 1,000 datagrams more (each tombstone evicts the oldest), spread over the leaves or
    // all in leaf 1234.
    for crafted in [false, true] {
        let mut lab = Lab::new(|_| {});
        fill_own_states(&mut lab);
        let v = Version::new(lab.clock(), EVIL_NODE);
        let mut k = 0u64;
        let mut next = |lab: &mut Lab| {
            let recs: Vec<Record> = (0..54)
                .map(|_| {
                    k += 1;
                    let id = if crafted {
                        id_in_leaf(1234, k, EVIL_FW)
                    } else {
                        StateId::new(mix(k), EVIL_FW)
                    };
                    Record::Tombstone(id, v)
                })
                .collect();
            let seq = lab.next_seq;
            lab.next_seq += 1;
            records_msg(seq, &recs)
        };
        let fill: Vec<Vec<u8>> = (0..65_536 / 54 + 1).map(|_| next(&mut lab)).collect();
        for d in &fill {
            lab.send_raw(d);
            lab.drain();
        }
        assert_eq!(lab.r.table().tombstone_count(), 65_536);
        let dgrams: Vec<Vec<u8>> = (0..1000).map(|_| next(&mut lab)).collect();
        let name = if crafted {
            "tombstones, 54 per RECORDS, all in one leaf"
        } else {
            "tombstones, 54 per RECORDS, spread"
        };
        run(name, &mut lab, dgrams);
    }
}

/// Our firewall takes pfsync packets of at most `local_mtu` bytes (the driver's injection
/// slot). A peer's longer packet was queued for injection as it was — where each held up to
/// 64 KiB of the queue's bytes yet counted as one packet of its source's share, and was
/// dropped unsent when it reached the front — so a peer sending such packets pushed the
/// other peers' packets out of a full queue.
#[test]
fn oversized_packets_do_not_push_other_peers_out_of_the_injection_queue() {
    let mut lab = Lab::new(|c| c.inject_queue_max = 100);
    let (now, clock) = (lab.now, lab.clock());
    lab.r.on_peer_up(HONEST, now);
    let hello = SyncMsg::Hello {
        node: 0xbb,
        epoch: 77,
        clock,
        start_seq: 1,
        incarnation: 77,
    };
    lab.r.on_peer_datagram(HONEST, &enc(&hello), now).unwrap();
    for k in 0..10u32 {
        let pkt = packet(&[Message::Ins(tcp_state(5000 + k as u64, HONEST_FW))]);
        let data = SyncMsg::Data {
            epoch: 77,
            seq: 1 + k,
            clock,
            dialect: OB,
            offset: 0,
            total_len: pkt.len() as u16,
            chunk: &pkt,
        };
        lab.r.on_peer_datagram(HONEST, &enc(&data), now).unwrap();
    }
    // Packets of 60,000 bytes of deletes (of states nobody holds: passed on to our
    // firewall), in pieces.
    for i in 0..10u64 {
        let mut buf = vec![0u8; 60_000];
        let mut w = pfsync_gw::wire::PacketWriter::new(OB, &mut buf);
        let mut k = 0;
        while w.push(&Message::DelC(StateId::new(
            1 << 20 | i << 16 | k,
            LOCAL_FW,
        ))) == Ok(true)
        {
            k += 1;
        }
        let n = w.finish();
        let seq = lab.next_seq;
        lab.next_seq += 1;
        for (j, piece) in buf[..n].chunks(1300).enumerate() {
            lab.send(&SyncMsg::Data {
                epoch: EVIL_EPOCH,
                seq,
                clock,
                dialect: OB,
                offset: (j * 1300) as u16,
                total_len: n as u16,
                chunk: piece,
            });
        }
    }
    let mut buf = vec![0u8; 1480];
    let mut honest = 0;
    for _ in 0..2000 {
        if let Some(n) = lab.r.poll_local_inject(&mut buf) {
            honest += pf::state_ids(&buf[..n], HONEST_FW).len();
        }
    }
    assert_eq!(honest, 10, "the honest peer's inserts were pushed out");
}

/// Our firewall's complete dump (BUS START, a full `UPD` of each state, BUS END).
fn local_dump(r: &mut Replica, ids: &[u64], now: Instant) {
    use pfsync_gw::wire::BusStatus;
    let bus = |status| Message::Bus {
        creator: LOCAL_FW,
        endtime: 0,
        status,
    };
    let mut msgs = vec![bus(BusStatus::Start)];
    msgs.extend(ids.iter().map(|&i| Message::Upd(tcp_state(i, LOCAL_FW))));
    msgs.push(bus(BusStatus::End));
    r.on_local_pfsync(&packet(&msgs), now).unwrap();
}

/// A peer's record of one of our firewall's states that the mirror lacks is a claim that
/// the next complete dump decides. pf's ids are sequential: a claim of an id our firewall
/// has not used yet was "confirmed deleted" by the next dump, which could not list it, and
/// the tombstone then refused that state once our firewall created it, and told our
/// firewall to delete it — the pre-delete that deletes of unknown states are refused for.
#[test]
fn a_claim_of_our_firewalls_next_state_does_not_delete_it_ahead() {
    let mut lab = Lab::new(|_| {});
    let now = lab.now;
    local_dump(&mut lab.r, &[1], now);
    let c = lab.clock() + 1000;
    let seq = lab.next_seq;
    lab.next_seq += 1;
    let next = tcp_state(2, LOCAL_FW);
    lab.records(seq, &[Record::State(Version::new(c, EVIL_NODE), next)]);
    assert!(
        !has(&lab.r, 2, LOCAL_FW),
        "a peer inserted our firewall's state"
    );
    local_dump(&mut lab.r, &[1], now);
    lab.drain();
    let id = StateId::new(2, LOCAL_FW);
    assert!(lab.r.table().tombstone(id).is_none(), "deleted ahead");
    // Our firewall creates it: mirrored, and not deleted in the firewall.
    let ins = packet(&[Message::Ins(next)]);
    lab.r.on_local_pfsync(&ins, lab.now).unwrap();
    assert!(has(&lab.r, 2, LOCAL_FW));
    assert_eq!(
        injected_deletes(&mut lab.r),
        [],
        "our firewall told to delete"
    );
    // A state our firewall did number (and deleted unheard): still decided by the dump.
    local_dump(&mut lab.r, &[1, 2, 4], now);
    let gone = tcp_state(3, LOCAL_FW);
    lab.records(seq + 1, &[Record::State(Version::new(c, EVIL_NODE), gone)]);
    local_dump(&mut lab.r, &[1, 2, 4], now);
    assert!(
        lab.r.table().tombstone(gone.id).is_some(),
        "a real claim kept"
    );
}

/// A peer's `UPD_REQ 0/0` is never injected (docs/SYNC.md, *Requests from peers*): one
/// 56-byte packet would make our firewall put its whole table on the sync LAN.
#[test]
fn a_peers_bulk_request_does_not_reach_our_firewall() {
    let mut lab = Lab::new(|_| {});
    let c = lab.clock();
    let del = StateId::new(7, EVIL_FW);
    lab.data(
        &packet(&[Message::UpdReq(StateId::BULK), Message::DelC(del)]),
        c,
    );
    assert_eq!(injected(&mut lab.r), [Message::DelC(del)]);
}

/// pf's bulk update is between a firewall and the gateway that answers its `UPD_REQ 0/0`
/// (us): a peer's `BUS END` reaching our firewall while it waits for its bulk update (after
/// a boot) ends the wait early — "bulk update complete", its carp demotion lifted before
/// the states are in. A peer's BUS messages are not injected (the rest of its packet is).
#[test]
fn a_peers_bulk_status_does_not_reach_our_firewall() {
    use pfsync_gw::wire::BusStatus;
    let mut lab = Lab::new(|_| {});
    let c = lab.clock();
    let del = StateId::new(7, EVIL_FW);
    let bus = Message::Bus {
        creator: EVIL_FW,
        endtime: 0,
        status: BusStatus::End,
    };
    lab.data(&packet(&[bus, Message::DelC(del)]), c);
    assert_eq!(injected(&mut lab.r), [Message::DelC(del)]);
}

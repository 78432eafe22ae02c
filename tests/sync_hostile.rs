//! A compromised peer (it holds a configured key, so everything it sends is authenticated)
//! against the sync layer, in-process and deterministic: each attack from issue 9 is
//! repeated and must leave the replica responsive, bounded and correct.

#[path = "common/pf.rs"]
#[allow(dead_code)] // shared helpers; this file uses a subset
mod pf;

use std::time::{Duration, Instant};

use pf::{packet, tcp_state};
use pfsync_gw::sync::proto::{encode_record, msg_type, Record, RECORDS_HDR, SYNC_VERSION};
use pfsync_gw::sync::{PeerId, Replica, ReplicaConfig, SyncMsg};
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
        self.send_raw(&b);
    }

    fn clock(&self) -> u64 {
        self.r.clock()
    }
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
    lab.send(&SyncMsg::Summary {
        digest: lab.r.table().digest(),
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
    assert_eq!(lab.clock(), before, "a peer moved our clock to the end");
    assert!(!has(&lab.r, 7, EVIL_FW) && !has(&lab.r, 8, EVIL_FW));
    let st = lab.r.peer_stats(EVIL).unwrap();
    assert_eq!(st.clock_refused, 4, "{st:?}");
    // A clock within reach still merges (the link keeps working).
    lab.data(&pkt, before + 1000);
    assert!(has(&lab.r, 7, EVIL_FW));
    assert_eq!(lab.clock(), before + 1000);
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

/// LEAF_REQ for every leaf (and ACKs to keep the window open): the answer bytes over the
/// attack stay within 10× what the attacker sent, plus the configured repair rate.
fn leaf_flood(answer_rate: u64, factor: u64) -> (u64, u64) {
    let mut lab = Lab::new(|c| {
        c.answer_rate = answer_rate;
        c.answer_burst = answer_rate;
        c.answer_factor = factor;
    });
    // The victim's mirror: 20,000 states of its own firewall.
    let mut id = 10u64;
    while id < 20_010 {
        let msgs: Vec<Message> = (0..5)
            .map(|k| Message::Ins(tcp_state(id + k, LOCAL_FW)))
            .collect();
        lab.r.on_local_pfsync(&packet(&msgs), lab.now).unwrap();
        id += 5;
    }
    lab.drain();
    lab.sent = 0;
    lab.received = 0;
    let leaves = lab.r.table().leaf_count() as u32;
    let mut l = 0u32;
    for _ in 0..50 {
        // 100 ms rounds: 1 LEAF_REQ datagram of 256 leaves, then ACK all we got.
        let mut b = vec![msg_type::LEAF_REQ, SYNC_VERSION];
        b.extend_from_slice(&256u16.to_be_bytes());
        for _ in 0..256 {
            b.extend_from_slice(&(l % leaves).to_be_bytes());
            l += 1;
        }
        lab.send_raw(&b);
        for _ in 0..10 {
            let got = lab.drain();
            let next = got
                .iter()
                .filter_map(|d| match SyncMsg::decode(d) {
                    Ok(SyncMsg::Records { seq, .. }) => Some(seq.wrapping_add(1)),
                    _ => None,
                })
                .max();
            if let Some(cum) = next {
                let e = lab.our_epoch;
                lab.send(&SyncMsg::Ack {
                    epoch: e,
                    cum,
                    nacks: &[],
                });
            }
            lab.advance(Duration::from_millis(10));
        }
    }
    (lab.sent, lab.received)
}

#[test]
fn leaf_requests_are_answered_within_ten_times_their_size() {
    // Without a budget (the code before): the whole mirror for a few KB of requests.
    let (s0, r0) = leaf_flood(u64::MAX / 4, 1 << 40);
    // Budget only (repair rate 0): at most 10× what the peer sent, plus one message.
    let (s1, r1) = leaf_flood(0, 10);
    // Defaults: 10× plus the repair rate (4 MiB/s) over the 5 s of the attack.
    let cfg = ReplicaConfig::new(1, OB);
    let (s2, r2) = leaf_flood(cfg.answer_rate, cfg.answer_factor);
    eprintln!(
        "LEAF_REQ flood, 5 s: unbudgeted {s0} B -> {r0} B ({:.0}x); budget only {s1} B -> {r1} B ({:.1}x); default {s2} B -> {r2} B ({:.1}x)",
        r0 as f64 / s0 as f64,
        r1 as f64 / s1 as f64,
        r2 as f64 / s2 as f64
    );
    assert!(
        r0 > 100 * s0,
        "the flood must be able to amplify without a budget"
    );
    assert!(r1 <= 10 * s1 + 1500, "{r1} > 10 × {s1}");
    assert!(
        r1 > 5 * s1,
        "the budget must still let answers through: {r1}"
    );
    assert!(r2 <= 10 * s2 + 5 * cfg.answer_rate + cfg.answer_burst);
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
    assert_ne!(other, lab.r.table().digest());
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

//! Deterministic simulation harness: replicas wired through a lossy, reordering in-memory
//! network with simulated time, plus a model firewall that emits pfsync packets.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pfsync_gw::sync::{Replica, ReplicaConfig};
use pfsync_gw::table::stale::seq_gt;
use pfsync_gw::wire::{
    name_field, AddrFamily, Dialect, Message, Packet, PacketWriter, PeerRepr, StateId, StateRepr,
    UpdCRepr,
};

/// xorshift64*: seeded, reproducible.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A model firewall: its own state table, emitting INS / UPD_C / DEL_C like pf does.
pub struct Firewall {
    pub creator: u32,
    pub dialect: Dialect,
    pub states: BTreeMap<StateId, StateRepr>,
    next_id: u64,
}

impl Firewall {
    pub fn new(creator: u32, dialect: Dialect) -> Firewall {
        Firewall {
            creator,
            dialect,
            states: BTreeMap::new(),
            next_id: 1,
        }
    }

    pub fn new_state(&mut self, rng: &mut Rng) -> StateRepr {
        let id = StateId::new(self.next_id, self.creator);
        self.next_id += 1;
        let tcp = rng.chance(0.8);
        let mut s = StateRepr {
            id,
            proto: if tcp { 6 } else { 17 },
            af: AddrFamily::Inet,
            direction: 1,
            timeout: if tcp { 2 } else { 8 },
            expire: 86_400,
            ifname: name_field("em0"),
            nat_rule: u32::MAX,
            rule: 0,
            anchor: u32::MAX,
            ..Default::default()
        };
        let a = (id.id as u32).to_be_bytes();
        s.key[0].addr[0][..4].copy_from_slice(&[10, a[1], a[2], a[3]]);
        s.key[0].addr[1][..4].copy_from_slice(&[192, 0, 2, 1]);
        s.key[0].port = [1024 + (id.id % 60000) as u16, 443];
        s.key[1] = s.key[0];
        let seq = rng.next() as u32;
        s.src = PeerRepr {
            state: if tcp { 4 } else { 1 },
            seqlo: seq,
            seqhi: seq.wrapping_add(65535),
            max_win: 65535,
            mss: 1460,
            ..Default::default()
        };
        s.dst = PeerRepr {
            seqlo: seq ^ 0x5555,
            ..s.src
        };
        self.states.insert(id, s);
        s
    }

    /// One churn step: a few changes, as one packet.
    pub fn churn(&mut self, rng: &mut Rng, ops: usize, out: &mut Vec<Vec<u8>>) {
        let mut msgs = Vec::new();
        for _ in 0..ops {
            let r = rng.below(100);
            if r < 30 || self.states.len() < 10 {
                let s = self.new_state(rng);
                msgs.push(Message::Ins(s));
            } else {
                let nth = rng.below(self.states.len() as u64) as usize;
                let id = *self.states.keys().nth(nth).unwrap();
                if r < 90 {
                    let s = self.states.get_mut(&id).unwrap();
                    s.src.seqlo = s.src.seqlo.wrapping_add(1 + rng.below(5000) as u32);
                    s.dst.seqlo = s.dst.seqlo.wrapping_add(rng.below(5000) as u32);
                    if s.proto == 17 && s.src.state < 2 {
                        s.src.state += 1;
                    }
                    msgs.push(Message::UpdC(UpdCRepr {
                        id,
                        src: s.src,
                        dst: s.dst,
                        expire: 0,
                        timeout: s.timeout,
                        flags: 0,
                    }));
                } else {
                    self.states.remove(&id);
                    msgs.push(Message::DelC(id));
                }
            }
        }
        encode(self.dialect, &msgs, out);
    }
}

pub fn encode(dialect: Dialect, msgs: &[Message], out: &mut Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(dialect, &mut buf);
    for m in msgs {
        if !w.push(m).unwrap() {
            let n = w.finish();
            out.push(buf[..n].to_vec());
            w = PacketWriter::new(dialect, &mut buf);
            assert!(w.push(m).unwrap());
        }
    }
    if !w.is_empty() {
        let n = w.finish();
        out.push(buf[..n].to_vec());
    }
}

struct InFlight {
    at: Instant,
    order: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Replica>,
    pub rng: Rng,
    pub loss: f64,
    /// Base one-way latency and extra random jitter (reordering).
    pub latency: Duration,
    pub jitter: Duration,
    /// Links cut (partition): (from, to).
    pub cut: Vec<(usize, usize)>,
    inflight: Vec<InFlight>,
    order: u64,
    /// Every packet each node injected into its firewall.
    pub injected: Vec<Vec<Vec<u8>>>,
    /// Highest (src, dst) seqlo seen per state in each node's injected stream.
    seen: Vec<HashMap<StateId, (u32, u32)>>,
    pub rollbacks: usize,
    pub datagrams: u64,
    /// Nodes whose firewall takes nothing for now: their injection queue fills.
    pub hold_inject: Vec<bool>,
}

pub fn config(node: u32, dialect: Dialect) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(node, dialect);
    c.incarnation = node;
    // The simulated firewalls' states are seeded and repaired with versions no real
    // gateway writes (Version::ZERO), which creator-id learning does not take as first-hand;
    // tests/sync_hostile.rs covers the creator spaces.
    c.creator_spaces = false;
    c
}

impl Net {
    pub fn new(cfgs: Vec<ReplicaConfig>, seed: u64) -> Net {
        let now = Instant::now();
        let n = cfgs.len();
        let mut nodes: Vec<Replica> = cfgs.into_iter().map(|c| Replica::new(c, now)).collect();
        for (i, r) in nodes.iter_mut().enumerate() {
            for j in 0..n {
                if i != j {
                    r.add_peer(j, now);
                }
            }
        }
        Net {
            now,
            nodes,
            rng: Rng::new(seed),
            loss: 0.0,
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(0),
            cut: Vec::new(),
            inflight: Vec::new(),
            order: 0,
            injected: vec![Vec::new(); n],
            seen: vec![HashMap::new(); n],
            rollbacks: 0,
            datagrams: 0,
            hold_inject: vec![false; n],
        }
    }

    pub fn all_up(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    self.nodes[i].on_peer_up(j, self.now);
                }
            }
        }
    }

    pub fn up(&mut self, a: usize, b: usize) {
        self.nodes[a].on_peer_up(b, self.now);
        self.nodes[b].on_peer_up(a, self.now);
    }

    /// Replace node `i` by a fresh replica (restart with an empty table).
    pub fn restart(&mut self, i: usize, cfg: ReplicaConfig) {
        let mut r = Replica::new(cfg, self.now);
        for j in 0..self.nodes.len() {
            if j != i {
                r.add_peer(j, self.now);
            }
        }
        self.nodes[i] = r;
        self.inflight.retain(|f| f.to != i && f.from != i);
        self.seen[i].clear();
    }

    pub fn local(&mut self, i: usize, pkt: &[u8]) {
        self.nodes[i].on_local_pfsync(pkt, self.now).unwrap();
        self.pump();
    }

    /// Move every pending datagram onto the network and drain injections.
    pub fn pump(&mut self) {
        let mut buf = vec![0u8; 1500];
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                while let Some(len) = self.nodes[i].poll_peer_transmit(j, self.now, &mut buf) {
                    assert!(len <= 1400, "datagram of {len} bytes");
                    self.datagrams += 1;
                    if self.cut.contains(&(i, j)) || self.rng.chance(self.loss) {
                        continue;
                    }
                    let jitter = if self.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_micros(self.rng.below(self.jitter.as_micros() as u64))
                    };
                    self.order += 1;
                    self.inflight.push(InFlight {
                        at: self.now + self.latency + jitter,
                        order: self.order,
                        from: i,
                        to: j,
                        bytes: buf[..len].to_vec(),
                    });
                }
            }
            while let Some(len) = self
                .hold_inject
                .get(i)
                .is_none_or(|h| !h)
                .then(|| self.nodes[i].poll_local_inject(&mut buf))
                .flatten()
            {
                let pkt = buf[..len].to_vec();
                self.check_monotonic(i, &pkt);
                self.injected[i].push(pkt);
            }
        }
    }

    fn check_monotonic(&mut self, i: usize, pkt: &[u8]) {
        let d = self.nodes[i].config().local_dialect;
        let p = Packet::new_checked(pkt, d).expect("injected packet must parse");
        for m in p.messages() {
            let (id, src, dst) = match m {
                Message::Ins(s) | Message::Upd(s) => (s.id, s.src, s.dst),
                Message::UpdC(u) => (u.id, u.src, u.dst),
                _ => continue,
            };
            if src.state != 4 || dst.state != 4 {
                continue; // only established TCP peers carry a meaningful seqlo here
            }
            let e = self.seen[i].entry(id).or_insert((src.seqlo, dst.seqlo));
            if seq_gt(e.0, src.seqlo) || seq_gt(e.1, dst.seqlo) {
                self.rollbacks += 1;
            }
            if seq_gt(src.seqlo, e.0) {
                e.0 = src.seqlo;
            }
            if seq_gt(dst.seqlo, e.1) {
                e.1 = dst.seqlo;
            }
        }
    }

    /// Advance simulated time to `until`, delivering datagrams and firing timers.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.pump();
            let next_net = self.inflight.iter().map(|f| f.at).min();
            let next_timer = self.nodes.iter().filter_map(|r| r.poll_timeout()).min();
            let next = match (next_net, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(until),
            };
            if next > until {
                self.now = until;
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let mut due: Vec<InFlight> = Vec::new();
            let mut k = 0;
            while k < self.inflight.len() {
                if self.inflight[k].at <= now {
                    due.push(self.inflight.swap_remove(k));
                } else {
                    k += 1;
                }
            }
            due.sort_by_key(|f| (f.at, f.order));
            for f in due {
                let _ = self.nodes[f.to].on_peer_datagram(f.from, &f.bytes, now);
            }
            for r in &mut self.nodes {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
        }
        self.pump();
    }

    /// Run until every node has the same digest and no resync is in progress, or `max`.
    pub fn converge(&mut self, max: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start < max {
            self.run_for(Duration::from_millis(100));
            if self.converged() {
                return Some(self.now - start);
            }
        }
        None
    }

    pub fn converged(&mut self) -> bool {
        let d = self.nodes[0].digest();
        let n = self.nodes.len();
        self.nodes.iter_mut().all(|r| r.digest() == d)
            && (0..n).all(|i| {
                (0..n).all(|j| {
                    i == j
                        || self.nodes[i]
                            .peer_stats(j)
                            .is_none_or(|s| !s.resync_in_progress)
                })
            })
    }
}

/// Assert that `r`'s table holds exactly the firewall's states (synced fields).
pub fn assert_table_equals(fw: &Firewall, r: &Replica) {
    let t = r.table();
    assert_eq!(t.len(), fw.states.len(), "state count");
    for (id, s) in &fw.states {
        let e = t.get(*id).unwrap_or_else(|| panic!("missing {id}"));
        let g = e.raw();
        assert_eq!(
            (g.src.seqlo, g.dst.seqlo),
            (s.src.seqlo, s.dst.seqlo),
            "{id}"
        );
        assert_eq!(
            (g.src.state, g.dst.state),
            (s.src.state, s.dst.state),
            "{id}"
        );
        assert_eq!(g.key, s.key, "{id}");
    }
}

//! The gateway-to-gateway sync protocol, sans-IO (see docs/SYNC.md).
//!
//! A [`Replica`] owns the mirror [`StateTable`] and every peer's link state. The node feeds it
//! local pfsync packets, tunnel plaintext, peer up/down events and time, and polls it for
//! datagrams to send to peers and pfsync packets to inject into the local firewall.
//!
//! - Relay: local packets are applied to the mirror and sent to every peer as DATA (per-peer
//!   seq, source dialect, original bytes). Peers inject them unchanged when dialects match.
//! - Reliability (FTFW-like): cumulative ACK + NACK ranges; the sender keeps references to
//!   the states each seq touched and repairs a NACKed seq by sending the states' *current*
//!   records as new RECORDS messages, then SKIPs the old seq. Queue overflow → resync.
//! - Anti-entropy: on (re)connect the peers compare table digests, descend range digests to
//!   the differing leaves and exchange only those leaves' states and tombstones.

pub mod inject;
pub mod link;
pub mod proto;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::table::{Applied, Digest, IdMap, StateTable, TableConfig, TableStats, Version};
use crate::wire::{BusStatus, Dialect, Message, Packet, StateId, WireError};
use inject::{InjectStats, Injector};
use link::{PacketRing, Pushed, RxVerdict, RxWindow, StateRef, TxQueue};
use proto::{encode_record, msg_type, Records, RECORDS_HDR, RECORD_VERSION, SYNC_VERSION};
pub use proto::{Record, SyncError, SyncMsg};

pub type PeerId = usize;

/// Range digests are compared in groups of this many.
const FANOUT: usize = 64;
/// Most NACK ranges per ACK.
const MAX_NACKS: usize = 32;
/// Most partially reassembled DATA packets per peer.
const MAX_PARTIALS: usize = 16;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Our node id: tie-breaker of versions, also the creatorid of BUS we emit.
    pub node_id: u32,
    /// What our firewall speaks.
    pub local_dialect: Dialect,
    /// Largest pfsync packet we emit towards the firewall (from `pfsync_header` on).
    pub local_mtu: usize,
    /// Largest plaintext datagram handed to the tunnel (>= 1200).
    pub max_datagram: usize,
    /// Send an ACK after this many sequenced messages…
    pub ack_every: u32,
    /// …or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// ALIVE probe interval while we have unacked messages (tail-loss detection).
    pub probe_interval: Duration,
    /// ALIVE interval otherwise.
    pub keepalive: Duration,
    /// A peer silent for `keepalive * dead_after` is declared down.
    pub dead_after: u32,
    pub hello_interval: Duration,
    /// Digest re-check interval while a resync is in progress.
    pub resync_interval: Duration,
    /// Unsolicited digest comparison with each peer while quiet (anti-entropy audit).
    pub audit_interval: Duration,
    /// Resend queue bound: unacked messages…
    pub resend_max_msgs: usize,
    /// …and state references they hold.
    pub resend_max_refs: usize,
    /// Most unacked RECORDS messages in flight (flow control of repairs and anti-entropy).
    pub records_window: usize,
    /// Most datagrams queued per peer before the oldest is dropped.
    pub peer_queue_max: usize,
    /// Most packets queued for local injection before the oldest is dropped.
    pub inject_queue_max: usize,
    /// How often the mirror purges expired states.
    pub expire_interval: Duration,
    /// How long after a state's deadline the mirror drops it by itself.
    pub expire_grace: Duration,
    /// Start of the Lamport clock; the node should pass something that grows across restarts
    /// (e.g. wall-clock milliseconds), so a restarted gateway's changes are not seen as old.
    pub initial_clock: u64,
    /// Mixed into epoch numbers so that a restarted replica's epochs differ.
    pub incarnation: u32,
    pub table: TableConfig,
}

impl ReplicaConfig {
    pub fn new(node_id: u32, local_dialect: Dialect) -> ReplicaConfig {
        ReplicaConfig {
            node_id,
            local_dialect,
            local_mtu: 1480,
            max_datagram: 1400,
            ack_every: 32,
            ack_delay: Duration::from_millis(20),
            probe_interval: Duration::from_millis(200),
            keepalive: Duration::from_secs(1),
            dead_after: 5,
            hello_interval: Duration::from_millis(500),
            resync_interval: Duration::from_secs(1),
            audit_interval: Duration::from_secs(3),
            resend_max_msgs: 8192,
            resend_max_refs: 131_072,
            records_window: 256,
            peer_queue_max: 16_384,
            inject_queue_max: 16_384,
            expire_interval: Duration::from_secs(1),
            expire_grace: Duration::from_secs(120),
            initial_clock: 0,
            incarnation: 0,
            table: TableConfig::default(),
        }
    }
}

/// Per-peer counters and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSyncStats {
    pub up: bool,
    pub established: bool,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
    /// Whole pfsync packets relayed to / received from the peer.
    pub tx_data: u64,
    pub rx_data: u64,
    pub tx_records: u64,
    pub rx_records: u64,
    /// State references re-sent because of a NACK.
    pub retransmits: u64,
    pub nacks_rx: u64,
    pub nacks_tx: u64,
    pub skips_tx: u64,
    pub duplicates: u64,
    pub bad_datagrams: u64,
    pub epoch_mismatch: u64,
    pub overflows: u64,
    pub resyncs: u64,
    pub resyncs_completed: u64,
    pub resync_in_progress: bool,
    /// Last cumulative ack received (next seq the peer expects).
    pub last_ack: u32,
    pub unacked: usize,
    pub dead_detections: u64,
    pub stale_returned: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub local_packets: u64,
    pub local_errors: u64,
    pub echoes_dropped: u64,
    pub forwarded: u64,
    pub bulk_answers: u64,
    /// Reconciliations with the firewall's full dump, and what they repaired.
    pub sweeps: u64,
    pub sweep_restored: u64,
    /// The firewall's own states the mirror holds but its dump did not list.
    pub sweep_unlisted: u64,
    pub states: usize,
    pub tombstones: usize,
    pub digest: Digest,
    pub table: TableStats,
    pub inject: InjectStats,
}

struct Partial {
    seq: u32,
    dialect: Dialect,
    clock: u64,
    frags: u8,
    got: [u64; 4],
    ngot: u8,
    frag_len: usize,
    buf: Vec<u8>,
}

struct Peer {
    up: bool,
    node: u32,
    // send side
    epoch: u32,
    established: bool,
    hello_due: Option<Instant>,
    tx: TxQueue,
    out: PacketRing,
    dirty: VecDeque<StateRef>,
    dirty_set: IdMap<()>,
    leaves: VecDeque<u32>,
    leaf_queued: Vec<u64>,
    leaf_dumped: Vec<u64>,
    leaf_reqs: VecDeque<u32>,
    state_reqs: VecDeque<StateId>,
    next_alive: Instant,
    // receive side
    rx_epoch: Option<u32>,
    rx: RxWindow,
    rx_unacked: u32,
    ack_due: Option<Instant>,
    partials: VecDeque<Partial>,
    /// Buffers of completed partials, reused for the next ones (no allocation per packet).
    spare_bufs: Vec<Vec<u8>>,
    last_rx: Instant,
    // anti-entropy
    resync: bool,
    summary_due: Option<Instant>,
    /// Next unsolicited digest comparison (anti-entropy audit).
    next_audit: Instant,
    stats: PeerSyncStats,
}

fn bit(v: &[u64], i: usize) -> bool {
    v[i / 64] & (1 << (i % 64)) != 0
}
fn set_bit(v: &mut [u64], i: usize, on: bool) {
    if on {
        v[i / 64] |= 1 << (i % 64);
    } else {
        v[i / 64] &= !(1 << (i % 64));
    }
}

impl Peer {
    fn new(cfg: &ReplicaConfig, leaves: usize, now: Instant) -> Peer {
        let words = leaves.div_ceil(64);
        Peer {
            up: false,
            node: 0,
            epoch: 0,
            established: false,
            hello_due: None,
            tx: TxQueue::new(1, cfg.resend_max_msgs, cfg.resend_max_refs),
            out: PacketRing::new(cfg.peer_queue_max, cfg.peer_queue_max.saturating_mul(1500)),
            dirty: VecDeque::new(),
            dirty_set: IdMap::default(),
            leaves: VecDeque::new(),
            leaf_queued: vec![0; words],
            leaf_dumped: vec![0; words],
            leaf_reqs: VecDeque::new(),
            state_reqs: VecDeque::new(),
            next_alive: now,
            rx_epoch: None,
            rx: RxWindow::new(0),
            rx_unacked: 0,
            ack_due: None,
            partials: VecDeque::new(),
            spare_bufs: Vec::new(),
            last_rx: now,
            resync: false,
            summary_due: None,
            next_audit: now + cfg.audit_interval,
            stats: PeerSyncStats::default(),
        }
    }

    fn push_out(&mut self, _cfg: &ReplicaConfig, d: &[u8]) {
        // Beyond the bound the oldest is lost like on the network: NACK/resync recovers it.
        self.out.push(d);
    }

    fn send(&mut self, cfg: &ReplicaConfig, m: &SyncMsg) {
        let mut buf = [0u8; 1500];
        if let Ok(n) = m.encode(&mut buf) {
            self.push_out(cfg, &buf[..n]);
        }
    }

    fn mark_dirty(&mut self, r: StateRef) {
        match r {
            StateRef::State(id) => {
                if self.dirty_set.insert(id, ()).is_none() {
                    self.dirty.push_back(r);
                }
            }
            StateRef::Clear { .. } => self.dirty.push_back(r),
        }
    }

    fn queue_leaf(&mut self, leaf: usize) {
        if !bit(&self.leaf_queued, leaf) && !bit(&self.leaf_dumped, leaf) {
            set_bit(&mut self.leaf_queued, leaf, true);
            self.leaves.push_back(leaf as u32);
        }
    }

    fn busy(&self) -> bool {
        !self.leaves.is_empty() || !self.dirty.is_empty() || self.tx.records_in_flight > 0
    }

    fn start_resync(&mut self, now: Instant) {
        if !self.resync {
            self.resync = true;
            self.stats.resyncs += 1;
        }
        self.summary_due = Some(now);
    }

    /// Note receipt of sequenced message `seq`; false if it is a duplicate.
    fn rx_accept(&mut self, cfg: &ReplicaConfig, seq: u32, now: Instant) -> bool {
        let had_gap = self.rx.cum != self.rx.high;
        match self.rx.receive(seq) {
            RxVerdict::Duplicate => {
                self.stats.duplicates += 1;
                self.ack_due.get_or_insert(now + cfg.ack_delay);
                return false;
            }
            RxVerdict::NewAfterJump => self.start_resync(now),
            RxVerdict::New => {}
        }
        self.rx_unacked += 1;
        if self.rx_unacked >= cfg.ack_every || (!had_gap && self.rx.cum != self.rx.high) {
            // Enough to ack, or a new gap: tell the sender now.
            self.ack_due = Some(now);
        } else {
            self.ack_due.get_or_insert(now + cfg.ack_delay);
        }
        true
    }
}

/// Whole-packet receive result for a DATA fragment.
struct Complete<'a> {
    seq: u32,
    dialect: Dialect,
    clock: u64,
    /// A single fragment is borrowed from the datagram; a reassembled packet owns the
    /// partial's buffer, which goes back to the peer's spare list after use.
    bytes: std::borrow::Cow<'a, [u8]>,
}

/// The replica: mirror table + all peers' sync state. Pure; see module docs.
pub struct Replica {
    cfg: ReplicaConfig,
    table: StateTable,
    peers: BTreeMap<PeerId, Peer>,
    clock: u64,
    epochs: u32,
    injector: Injector,
    next_expire: Instant,
    stats: ReplicaStats,
    scratch_refs: Vec<StateRef>,
    /// Per message of the DATA being applied: what the firewall gets for it (small, so
    /// the clean path copies no messages; the packet is re-parsed only when not clean).
    scratch_fates: Vec<Fate>,
    /// The local firewall's bulk answer being received (reconciliation sweep).
    sweep: Option<Sweep>,
    /// Creator ids of our own firewall (from its INS and BUS): it is the authority on those
    /// states, and only an echo for everyone else's.
    local_creators: Vec<u32>,
    /// Set while a late captured packet is applied: its changes go to the peers as dirty
    /// state references (sent once each, current version) instead of as DATA.
    coalesce: bool,
}

/// What a message of a peer's DATA becomes towards the local firewall.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Keep,
    /// Replaced by the mirror's current copy (or a delete if it has none).
    Current(StateId),
    Skip,
}

/// Reconciling the mirror with the firewall's own full dump (BUS START … BUS END): what the
/// firewall holds is the truth about its own states, and whatever the cluster holds that the
/// firewall lacks is given back to it.
struct Sweep {
    /// The firewall's hostid, from its BUS START.
    creator: u32,
    seen: IdMap<()>,
}

impl Replica {
    pub fn new(cfg: ReplicaConfig, now: Instant) -> Replica {
        assert!(cfg.max_datagram >= 1200, "max_datagram must be >= 1200");
        Replica {
            table: StateTable::new(cfg.table),
            peers: BTreeMap::new(),
            clock: cfg.initial_clock,
            epochs: 0,
            injector: Injector::new(cfg.local_dialect, cfg.local_mtu, cfg.inject_queue_max),
            next_expire: now + cfg.expire_interval,
            stats: ReplicaStats::default(),
            scratch_refs: Vec::new(),
            scratch_fates: Vec::new(),
            sweep: None,
            local_creators: Vec::new(),
            coalesce: false,
            cfg,
        }
    }

    /// Like [`Replica::on_local_pfsync`] for a packet that waited too long (the gateway is
    /// behind): the mirror applies it, but the peers get its states coalesced: each changed
    /// state is marked dirty once and sent in its current version (newest wins, like pf's
    /// `maxupd`), so a backlog of updates of the same states costs one record per state.
    /// Packets carrying requests are relayed as usual.
    pub fn on_local_pfsync_coalesced(&mut self, pkt: &[u8], now: Instant) -> Result<(), WireError> {
        self.coalesce = true;
        let r = self.on_local_pfsync(pkt, now);
        self.coalesce = false;
        r
    }

    /// Packets are waiting to be injected towards the local firewall.
    pub fn inject_pending(&self) -> bool {
        !self.injector.is_empty()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }
    pub fn table(&self) -> &StateTable {
        &self.table
    }
    /// Direct access to the mirror (seeding from a snapshot, tests). Changes made here are not
    /// relayed; anti-entropy reconciles them with peers.
    pub fn table_mut(&mut self) -> &mut StateTable {
        &mut self.table
    }
    /// Current Lamport clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            states: self.table.len(),
            tombstones: self.table.tombstone_count(),
            digest: self.table.digest(),
            table: self.table.stats(),
            inject: self.injector.stats,
            ..self.stats
        }
    }

    pub fn peer_stats(&self, peer: PeerId) -> Option<PeerSyncStats> {
        self.peers.get(&peer).map(|p| PeerSyncStats {
            up: p.up,
            established: p.established,
            resync_in_progress: p.resync,
            unacked: p.tx.unacked(),
            ..p.stats
        })
    }

    pub fn add_peer(&mut self, peer: PeerId, now: Instant) {
        let leaves = self.table.leaf_count();
        self.peers
            .entry(peer)
            .or_insert_with(|| Peer::new(&self.cfg, leaves, now));
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// The tunnel to `peer` is (re-)established: restart both directions and resync.
    pub fn on_peer_up(&mut self, peer: PeerId, now: Instant) {
        self.add_peer(peer, now);
        self.restart_tx(peer, now);
        let p = self.peers.get_mut(&peer).expect("added");
        p.rx_epoch = None;
        p.partials.clear();
        p.last_rx = now;
    }

    pub fn on_peer_down(&mut self, peer: PeerId, _now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up = false;
            p.established = false;
            p.hello_due = None;
            p.out.clear();
        }
    }

    fn restart_tx(&mut self, peer: PeerId, now: Instant) {
        self.epochs = self.epochs.wrapping_add(1);
        let epoch = crate::table::digest::mix64(
            ((self.cfg.incarnation as u64) << 32)
                ^ ((self.cfg.node_id as u64) << 16)
                ^ self.epochs as u64,
        ) as u32;
        let leaves = self.table.leaf_count();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let stats = p.stats;
        let (rx_epoch, rx, last_rx, node) = (
            p.rx_epoch,
            std::mem::replace(&mut p.rx, RxWindow::new(0)),
            p.last_rx,
            p.node,
        );
        let partials = std::mem::take(&mut p.partials);
        *p = Peer::new(&self.cfg, leaves, now);
        p.stats = stats;
        p.rx_epoch = rx_epoch;
        p.rx = rx;
        p.partials = partials;
        p.last_rx = last_rx;
        p.node = node;
        p.up = true;
        p.epoch = epoch;
        p.hello_due = Some(now);
        p.start_resync(now);
    }

    /// The firewall's full dump is complete: states the cluster holds that the firewall lacks
    /// (an injection it missed) are injected back into it. States of its own that it no
    /// longer lists are left alone: a dump missing a packet must not delete live states
    /// cluster-wide; their DEL_C or expiry removes them.
    fn finish_sweep(&mut self, now: Instant, replies: &mut Vec<Message>) {
        let Some(sweep) = self.sweep.take() else {
            return;
        };
        let before = replies.len();
        for e in self.table.iter() {
            let id = e.raw().id;
            if sweep.seen.contains_key(&id) {
                continue;
            }
            if id.creator != sweep.creator {
                replies.extend(self.table.update_for(id, now));
            } else {
                self.stats.sweep_unlisted += 1;
            }
        }
        self.stats.sweeps += 1;
        self.stats.sweep_restored += (replies.len() - before) as u64;
    }

    /// The version for a message from our own firewall: fresh for its own states; for the
    /// states of other firewalls it only repeats what it imported (bulk dumps, stale
    /// corrections), so it must not beat their creators' updates on version alone.
    fn local_version(&self, msg: &Message, v: Version) -> Version {
        match msg.state_id() {
            Some(id)
                if !self.local_creators.is_empty()
                    && !self.local_creators.contains(&id.creator) =>
            {
                Version::ZERO
            }
            _ => v,
        }
    }

    /// Ask our own firewall for a bulk update (`UPD_REQ 0/0`), as a pfsync kernel does when
    /// its sync link comes up: a gateway that (re)starts with an empty mirror learns every
    /// state the firewall holds, including those created while the gateway was down.
    pub fn request_local_bulk(&mut self, now: Instant) {
        self.injector
            .encode([Message::UpdReq(StateId::BULK)], None, now);
    }

    /// A native pfsync packet captured from the local firewall (from `pfsync_header` on).
    pub fn on_local_pfsync(&mut self, pkt: &[u8], now: Instant) -> Result<(), WireError> {
        let p = match Packet::new_checked(pkt, self.cfg.local_dialect) {
            Ok(p) => p,
            Err(e) => {
                self.stats.local_errors += 1;
                return Err(e);
            }
        };
        // Requests and bulk status are the same bytes whoever sends them (our bulk request
        // and the firewall's are identical): only packets carrying states can be echoes.
        let carries_states = p
            .messages()
            .any(|m| !matches!(m, Message::UpdReq(_) | Message::Bus { .. } | Message::Eof));
        if carries_states && self.injector.is_echo(pkt, now) {
            self.stats.echoes_dropped += 1;
            return Ok(());
        }
        self.stats.local_packets += 1;
        self.clock += 1;
        let v = Version::new(self.clock, self.cfg.node_id);
        self.scratch_refs.clear();
        let mut forward = false;
        let mut bulk = false;
        let mut replies: Vec<Message> = Vec::new();
        let mut sweep_done = false;
        for msg in p.messages() {
            let own = match msg {
                Message::Ins(s) => Some(s.id.creator),
                Message::Bus { creator, .. } => Some(creator),
                _ => None,
            };
            if let Some(c) = own {
                if c != 0 && !self.local_creators.contains(&c) && self.local_creators.len() < 16 {
                    self.local_creators.push(c);
                }
            }
            match msg {
                Message::Bus {
                    creator,
                    status: BusStatus::Start,
                    ..
                } => {
                    self.sweep = Some(Sweep {
                        creator,
                        seen: IdMap::default(),
                    })
                }
                Message::Bus {
                    creator,
                    status: BusStatus::End,
                    ..
                } => sweep_done |= self.sweep.as_ref().is_some_and(|s| s.creator == creator),
                Message::Ins(s) | Message::Upd(s) => {
                    if let Some(sw) = &mut self.sweep {
                        sw.seen.insert(s.id, ());
                    }
                }
                _ => {}
            }
            // Inside the firewall's dump, only what changes the mirror travels on, and as
            // repairs: re-broadcasting the whole dump would bury the peers' firewalls.
            let in_sweep = self.sweep.is_some() && matches!(msg, Message::Ins(_) | Message::Upd(_));
            let before = if in_sweep {
                msg.state_id()
                    .and_then(|id| self.table.get(id).map(|e| e.hash()))
            } else {
                None
            };
            let a = self
                .table
                .apply_versioned(&msg, now, self.local_version(&msg, v));
            if in_sweep {
                let id = msg.state_id().expect("ins/upd have ids");
                if self.table.get(id).map(|e| e.hash()) != before {
                    for p in self.peers.values_mut() {
                        p.mark_dirty(StateRef::State(id));
                    }
                }
                if let Applied::Older(id) = a {
                    if self.table.tombstone(id).is_some() {
                        replies.push(Message::DelC(id));
                    }
                }
                continue;
            }
            match (&msg, a) {
                (Message::UpdReq(_), Applied::BulkRequested) => bulk = true,
                (Message::UpdReq(_), Applied::Reply(m)) => replies.push(m),
                (Message::UpdReq(_), _) => forward = true, // a peer's firewall may have it
                (Message::Eof, _) => {}
                // Bulk status is between the firewall and whoever asked (us): not news.
                (Message::Bus { .. }, _) => {}
                (_, Applied::NeedUpdate(id)) => {
                    // The firewall knows a state the mirror lacks: ask it for the full state.
                    replies.push(Message::UpdReq(id));
                    forward = true;
                }
                (_, Applied::Stale(id)) => {
                    // The mirror is newer than the firewall: send it back, as pf would.
                    replies.extend(self.table.update_for(id, now));
                    forward = true;
                }
                (Message::Ins(_) | Message::Upd(_), Applied::Older(id))
                    if self.table.tombstone(id).is_some() =>
                {
                    // The firewall still holds a state the cluster has deleted (its bulk
                    // answer crossed the DEL_C): tell it, instead of spreading it again.
                    replies.push(Message::DelC(id));
                }
                _ => forward = true,
            }
            match msg {
                Message::Clr { ifname, creator } => self.scratch_refs.push(StateRef::Clear {
                    creator,
                    ifname,
                    version: v,
                }),
                Message::Ins(_)
                | Message::Upd(_)
                | Message::UpdC(_)
                | Message::Del(_)
                | Message::DelC(_) => self
                    .scratch_refs
                    .push(StateRef::State(msg.state_id().expect("has id"))),
                _ => {}
            }
        }
        if bulk {
            self.stats.bulk_answers += 1;
            let it = self.table.bulk(now, self.cfg.node_id);
            self.injector.encode(it, None, now);
        }
        if sweep_done {
            self.finish_sweep(now, &mut replies);
        }
        if !replies.is_empty() {
            self.injector.encode(replies, None, now);
        }
        if forward {
            self.stats.forwarded += 1;
            let dialect = self.cfg.local_dialect;
            let coalesce = self.coalesce
                && !self.scratch_refs.is_empty()
                && !p.messages().any(|m| matches!(m, Message::UpdReq(_)));
            for p in self.peers.values_mut() {
                if p.up && p.established && coalesce {
                    for r in &self.scratch_refs {
                        p.mark_dirty(*r);
                    }
                } else if p.up && p.established {
                    send_data(
                        &self.cfg,
                        p,
                        pkt,
                        dialect,
                        self.clock,
                        &self.scratch_refs,
                        now,
                    );
                } else if p.up {
                    // Handshake still running: anti-entropy will carry this change.
                    p.start_resync(now);
                }
            }
        }
        Ok(())
    }

    /// Plaintext from the tunnel.
    pub fn on_peer_datagram(
        &mut self,
        peer: PeerId,
        data: &[u8],
        now: Instant,
    ) -> Result<(), SyncError> {
        if !self.peers.contains_key(&peer) {
            return Err(SyncError::UnknownPeer(peer));
        }
        let msg = match SyncMsg::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.peers.get_mut(&peer).unwrap().stats.bad_datagrams += 1;
                return Err(e);
            }
        };
        {
            let p = self.peers.get_mut(&peer).unwrap();
            p.stats.rx_datagrams += 1;
            p.last_rx = now;
            if !p.up {
                // Traffic from a peer we had declared dead (or never saw up): start over.
                self.on_peer_up(peer, now);
            }
        }
        match msg {
            SyncMsg::Hello {
                node,
                epoch,
                clock,
                start_seq,
            } => {
                self.clock = self.clock.max(clock);
                let p = self.peers.get_mut(&peer).unwrap();
                p.node = node;
                if p.rx_epoch != Some(epoch) {
                    let restart = p.established && p.rx_epoch.is_some();
                    p.rx_epoch = Some(epoch);
                    p.rx = RxWindow::new(start_seq);
                    p.partials.clear();
                    p.rx_unacked = 0;
                    p.start_resync(now);
                    if restart {
                        // The peer restarted its side: it lost our stream too.
                        self.restart_tx(peer, now);
                    }
                }
                let p = self.peers.get_mut(&peer).unwrap();
                let ack = SyncMsg::HelloAck {
                    node: self.cfg.node_id,
                    epoch,
                    clock: self.clock,
                };
                p.send(&self.cfg, &ack);
            }
            SyncMsg::HelloAck { node, epoch, clock } => {
                self.clock = self.clock.max(clock);
                let p = self.peers.get_mut(&peer).unwrap();
                if epoch == p.epoch && !p.established {
                    p.node = node;
                    p.established = true;
                    p.hello_due = None;
                    p.next_alive = now + self.cfg.keepalive;
                    if p.resync {
                        p.summary_due = Some(now);
                    }
                }
            }
            SyncMsg::Data {
                epoch,
                seq,
                clock,
                dialect,
                frag,
                frags,
                total_len,
                chunk,
            } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                if !p.rx.is_new(seq) {
                    p.stats.duplicates += 1;
                    return Ok(());
                }
                let Some(c) = reassemble(p, seq, dialect, clock, frag, frags, total_len, chunk)
                else {
                    return Ok(());
                };
                if !p.rx_accept(&self.cfg, c.seq, now) {
                    return Ok(());
                }
                p.stats.rx_data += 1;
                let r = self.apply_data(peer, &c, now);
                if let std::borrow::Cow::Owned(b) = c.bytes {
                    let p = self.peers.get_mut(&peer).unwrap();
                    if p.spare_bufs.len() < MAX_PARTIALS {
                        p.spare_bufs.push(b);
                    }
                }
                r?;
            }
            SyncMsg::Records {
                epoch,
                seq,
                count,
                body,
            } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                if !p.rx_accept(&self.cfg, seq, now) {
                    return Ok(());
                }
                p.stats.rx_records += count as u64;
                self.apply_records(peer, body, count, now);
            }
            SyncMsg::Ack { epoch, cum, nacks } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if epoch != p.epoch || !p.established {
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                p.tx.ack(cum, now);
                p.stats.last_ack = cum;
                let mut refs = Vec::new();
                for (first, last) in proto::nack_ranges(nacks) {
                    let next = p.tx.next_seq;
                    if !link::seq_lt(first, next) || link::seq_lt(last, first) {
                        continue;
                    }
                    let last = if link::seq_lt(last, next) {
                        last
                    } else {
                        next.wrapping_sub(1)
                    };
                    p.stats.nacks_rx += 1;
                    refs.clear();
                    if !p.tx.nack(first, last, &mut refs) {
                        p.stats.overflows += 1;
                        p.start_resync(now);
                    }
                    p.stats.retransmits += refs.len() as u64;
                    for r in refs.drain(..) {
                        p.mark_dirty(r);
                    }
                    p.stats.skips_tx += 1;
                    p.send(&self.cfg, &SyncMsg::Skip { epoch, first, last });
                }
            }
            SyncMsg::Skip { epoch, first, last } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                p.rx.skip(first, last);
                p.partials
                    .retain(|x| link::seq_lt(x.seq, first) || link::seq_lt(last, x.seq));
                p.ack_due.get_or_insert(now + self.cfg.ack_delay);
            }
            SyncMsg::Alive { epoch, next_seq } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch == Some(epoch) {
                    p.rx.announce(next_seq);
                    p.ack_due = Some(now);
                } else {
                    p.stats.epoch_mismatch += 1;
                }
            }
            SyncMsg::Summary {
                digest,
                count: _,
                leaves_log2,
                want_reply,
                clock,
            } => {
                self.clock = self.clock.max(clock);
                let ours = self.table.digest();
                let leaves = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                if leaves_log2 != self.cfg.table.leaves_log2 {
                    p.stats.bad_datagrams += 1;
                    return Err(SyncError::BadValue {
                        what: "leaves_log2",
                        value: leaves_log2 as u64,
                    });
                }
                if digest == ours {
                    if p.resync && p.established {
                        p.resync = false;
                        p.summary_due = None;
                        p.stats.resyncs_completed += 1;
                    }
                    if want_reply {
                        let s = summary(&self.table, self.clock, false);
                        p.send(&self.cfg, &s);
                    }
                } else if !p.busy() {
                    // Still sending earlier repairs otherwise: the peer will ask again.
                    p.start_resync(now);
                    p.summary_due = Some(now + self.cfg.resync_interval);
                    p.leaf_dumped.iter_mut().for_each(|w| *w = 0);
                    let span = (leaves / FANOUT).max(1);
                    send_ranges(&self.cfg, p, &self.table, 0, span, leaves / span);
                }
            }
            SyncMsg::Ranges {
                first,
                span,
                digests,
            } => {
                let leaves = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                let (first, span) = (first as usize, span as usize);
                for (i, theirs) in proto::range_digests(digests).enumerate() {
                    let start = first + i * span;
                    if start + span > leaves {
                        p.stats.bad_datagrams += 1;
                        break;
                    }
                    if self.table.range_digest(start, span) == theirs {
                        continue;
                    }
                    if span == 1 {
                        p.queue_leaf(start);
                        p.leaf_reqs.push_back(start as u32);
                    } else {
                        let child = (span / FANOUT).max(1);
                        send_ranges(&self.cfg, p, &self.table, start, child, span / child);
                    }
                }
            }
            SyncMsg::LeafReq { leaves } => {
                let n = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                for l in proto::u32s(leaves) {
                    if (l as usize) < n {
                        p.queue_leaf(l as usize);
                    }
                }
            }
            SyncMsg::StateReq { ids } => {
                let p = self.peers.get_mut(&peer).unwrap();
                for id in proto::state_ids(ids) {
                    p.mark_dirty(StateRef::State(id));
                }
            }
        }
        Ok(())
    }

    fn apply_data(&mut self, peer: PeerId, c: &Complete, now: Instant) -> Result<(), SyncError> {
        let pkt = match Packet::new_checked(&c.bytes[..], c.dialect) {
            Ok(p) => p,
            Err(e) => {
                self.peers.get_mut(&peer).unwrap().stats.bad_datagrams += 1;
                return Err(e.into());
            }
        };
        self.clock = self.clock.max(c.clock);
        let p = self.peers.get_mut(&peer).unwrap();
        let v = Version::new(c.clock, p.node);
        let mut clean = true;
        self.scratch_fates.clear();
        for msg in pkt.messages() {
            // What a peer says about our own firewall's states is an echo or a correction:
            // it wins only where it is strictly more advanced, never on version alone.
            let vm = match msg.state_id() {
                Some(id) if self.local_creators.contains(&id.creator) => Version::ZERO,
                _ => v,
            };
            let a = self.table.apply_versioned(&msg, now, vm);
            match a {
                Applied::Stale(id) | Applied::Older(id) => {
                    clean = false;
                    p.stats.stale_returned += 1;
                    p.mark_dirty(StateRef::State(id));
                }
                Applied::NeedUpdate(id) => {
                    // Not injected: the mirror cannot order it against the full state that
                    // will be requested (a late INS could otherwise follow a newer UPD_C).
                    clean = false;
                    p.state_reqs.push_back(id);
                }
                _ => {}
            }
            self.scratch_fates.push(match a {
                Applied::Stale(id) | Applied::Older(id) => Fate::Current(id),
                Applied::BulkRequested | Applied::NeedUpdate(_) => Fate::Skip,
                _ if matches!(msg, Message::Eof) => Fate::Skip,
                _ => Fate::Keep,
            });
        }
        if clean && c.dialect == self.cfg.local_dialect {
            self.injector.push_raw(&c.bytes, now);
        } else {
            // Never hand the firewall something older than the mirror: replace stale
            // messages by the mirror's current copy.
            let table = &self.table;
            let msgs =
                pkt.messages()
                    .zip(self.scratch_fates.iter())
                    .filter_map(|(m, f)| match *f {
                        Fate::Current(id) => {
                            Some(table.update_for(id, now).unwrap_or(Message::DelC(id)))
                        }
                        Fate::Skip => None,
                        Fate::Keep => Some(m),
                    });
            self.injector.encode(msgs, Some(c.dialect), now);
        }
        Ok(())
    }

    fn apply_records(&mut self, peer: PeerId, body: &[u8], count: u16, now: Instant) {
        let p = self.peers.get_mut(&peer).unwrap();
        let mut out: Vec<Message> = Vec::new();
        for rec in Records::new(body, count) {
            let Ok(rec) = rec else { break }; // validated at decode
            match rec {
                Record::State(v, s) => {
                    self.clock = self.clock.max(v.clock);
                    let id = s.id;
                    let before = self.table.get(id).map(|e| e.hash());
                    let a = self.table.apply_versioned(&Message::Upd(s), now, v);
                    let changed = self.table.get(id).map(|e| e.hash()) != before;
                    match a {
                        Applied::Stale(_) | Applied::Older(_) => {
                            p.stats.stale_returned += 1;
                            p.mark_dirty(StateRef::State(id));
                        }
                        _ => {}
                    }
                    if changed {
                        out.extend(self.table.update_for(id, now));
                    }
                }
                Record::Tombstone(id, v) => {
                    self.clock = self.clock.max(v.clock);
                    match self.table.apply_versioned(&Message::DelC(id), now, v) {
                        Applied::Deleted(_) => out.push(Message::DelC(id)),
                        Applied::Older(_) => p.mark_dirty(StateRef::State(id)),
                        _ => {}
                    }
                }
                Record::Clear {
                    creator,
                    ifname,
                    version,
                } => {
                    self.clock = self.clock.max(version.clock);
                    let m = Message::Clr { ifname, creator };
                    if let Applied::Cleared(n) = self.table.apply_versioned(&m, now, version) {
                        if n > 0 {
                            out.push(m);
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            self.injector.encode(out, None, now);
        }
    }

    /// Next plaintext datagram for `peer` (call until `None`). `out` must hold
    /// `max_datagram` bytes.
    pub fn poll_peer_transmit(
        &mut self,
        peer: PeerId,
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
        if !self.peers.get(&peer)?.up {
            return None;
        }
        let n = self.poll_inner(peer, now, out)?;
        self.peers.get_mut(&peer)?.stats.tx_datagrams += 1;
        Some(n)
    }

    fn poll_inner(&mut self, peer: PeerId, now: Instant, out: &mut [u8]) -> Option<usize> {
        let cfg = &self.cfg;
        let limit = out.len().min(cfg.max_datagram);
        let p = self.peers.get_mut(&peer)?;
        if let Some(n) = p.out.front_len() {
            if n > out.len() {
                p.out.pop_front();
                return None;
            }
            return p.out.pop_into(out);
        }
        if p.ack_due.is_some_and(|t| t <= now) {
            if let Some(epoch) = p.rx_epoch {
                p.ack_due = None;
                p.rx_unacked = 0;
                let mut gaps = Vec::new();
                p.rx.gaps(MAX_NACKS, &mut gaps);
                p.stats.nacks_tx += gaps.len() as u64;
                let mut nacks = [0u8; MAX_NACKS * 8];
                for (i, (a, b)) in gaps.iter().enumerate() {
                    nacks[i * 8..i * 8 + 4].copy_from_slice(&a.to_be_bytes());
                    nacks[i * 8 + 4..i * 8 + 8].copy_from_slice(&b.to_be_bytes());
                }
                let m = SyncMsg::Ack {
                    epoch,
                    cum: p.rx.cum,
                    nacks: &nacks[..gaps.len() * 8],
                };
                return m.encode(&mut out[..limit]).ok();
            }
            p.ack_due = None;
        }
        if !p.established {
            return None;
        }
        if !p.leaf_reqs.is_empty() {
            let n = p.leaf_reqs.len().min((limit - 4) / 4);
            let mut w = proto::Wr::new(&mut out[..limit]);
            w.u8(msg_type::LEAF_REQ).ok()?;
            w.u8(SYNC_VERSION).ok()?;
            w.u16(n as u16).ok()?;
            for l in p.leaf_reqs.drain(..n) {
                w.u32(l).ok()?;
            }
            return Some(w.pos());
        }
        if !p.state_reqs.is_empty() {
            let n = p.state_reqs.len().min((limit - 4) / 12);
            let mut w = proto::Wr::new(&mut out[..limit]);
            w.u8(msg_type::STATE_REQ).ok()?;
            w.u8(SYNC_VERSION).ok()?;
            w.u16(n as u16).ok()?;
            for id in p.state_reqs.drain(..n) {
                w.u64(id.id).ok()?;
                w.u32(id.creator).ok()?;
            }
            return Some(w.pos());
        }
        if p.tx.records_in_flight < cfg.records_window {
            return build_records(cfg, p, &self.table, now, &mut out[..limit]);
        }
        None
    }

    /// Next native pfsync packet (local dialect) to inject towards our firewall.
    pub fn poll_local_inject(&mut self, out: &mut [u8]) -> Option<usize> {
        self.injector.pop(out)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_expire {
            // The firewalls announce every expiry with DEL_C; the mirror's own expiry is the
            // backstop for a firewall that went away, so it waits a grace period longer and
            // never races the firewall's announcement.
            if let Some(t) = now.checked_sub(self.cfg.expire_grace) {
                self.table.expire(t);
            }
            self.next_expire = now + self.cfg.expire_interval;
        }
        let cfg = &self.cfg;
        let dead = cfg.keepalive * cfg.dead_after;
        for p in self.peers.values_mut() {
            if !p.up {
                continue;
            }
            if now.saturating_duration_since(p.last_rx) >= dead {
                p.up = false;
                p.established = false;
                p.out.clear();
                p.stats.dead_detections += 1;
                continue;
            }
            if !p.established {
                if p.hello_due.is_some_and(|t| t <= now) {
                    let m = SyncMsg::Hello {
                        node: cfg.node_id,
                        epoch: p.epoch,
                        clock: self.clock,
                        start_seq: 1,
                    };
                    p.send(cfg, &m);
                    p.hello_due = Some(now + cfg.hello_interval);
                }
                continue;
            }
            if p.next_alive <= now {
                let m = SyncMsg::Alive {
                    epoch: p.epoch,
                    next_seq: p.tx.next_seq,
                };
                p.send(cfg, &m);
                p.next_alive = now
                    + if p.tx.unacked() > 0 {
                        cfg.probe_interval
                    } else {
                        cfg.keepalive
                    };
            }
            // Audit: differences that no lost message announced (expiry racing a repair, a
            // firewall's answer that arrived while the tunnel was down) are found by comparing
            // digests now and then while quiet; the peer starts a resync if they differ.
            if !p.resync && p.next_audit <= now {
                p.next_audit = now + cfg.audit_interval;
                if !p.busy() && p.tx.unacked() == 0 {
                    let s = summary(&self.table, self.clock, false);
                    p.send(cfg, &s);
                }
            }
            if p.resync && p.summary_due.is_some_and(|t| t <= now) {
                if !p.busy() {
                    p.leaf_dumped.iter_mut().for_each(|w| *w = 0);
                    let s = summary(&self.table, self.clock, true);
                    p.send(cfg, &s);
                }
                p.summary_due = Some(now + cfg.resync_interval);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_expire;
        let dead = self.cfg.keepalive * self.cfg.dead_after;
        for p in self.peers.values() {
            if let Some(a) = p.ack_due {
                t = t.min(a);
            }
            if !p.up {
                continue;
            }
            t = t.min(p.last_rx + dead);
            if !p.established {
                if let Some(h) = p.hello_due {
                    t = t.min(h);
                }
                continue;
            }
            t = t.min(p.next_alive);
            if !p.resync {
                t = t.min(p.next_audit);
            }
            if p.resync {
                if let Some(s) = p.summary_due {
                    t = t.min(s);
                }
            }
        }
        Some(t)
    }
}

fn summary(table: &StateTable, clock: u64, want_reply: bool) -> SyncMsg<'static> {
    SyncMsg::Summary {
        digest: table.digest(),
        count: table.len() as u32,
        leaves_log2: table.config().leaves_log2,
        want_reply,
        clock,
    }
}

fn send_ranges(
    cfg: &ReplicaConfig,
    p: &mut Peer,
    table: &StateTable,
    first: usize,
    span: usize,
    n: usize,
) {
    let mut d = [0u8; FANOUT * 16];
    let n = n.min(FANOUT);
    for i in 0..n {
        let dg = table.range_digest(first + i * span, span);
        d[i * 16..i * 16 + 16].copy_from_slice(&dg.to_be_bytes());
    }
    p.send(
        cfg,
        &SyncMsg::Ranges {
            first: first as u32,
            span: span as u32,
            digests: &d[..n * 16],
        },
    );
}

/// Queue one local pfsync packet for `p` as DATA fragments under one new seq.
fn send_data(
    cfg: &ReplicaConfig,
    p: &mut Peer,
    pkt: &[u8],
    dialect: Dialect,
    clock: u64,
    refs: &[StateRef],
    now: Instant,
) {
    let (seq, pushed) = p.tx.push(refs, false, now);
    if pushed == Pushed::Overflow {
        p.stats.overflows += 1;
        p.start_resync(now);
    }
    p.next_alive = p.next_alive.min(now + cfg.probe_interval);
    let chunk = cfg.max_datagram - proto::DATA_HDR;
    let frags = pkt.len().div_ceil(chunk).max(1);
    if frags > 255 || pkt.len() > u16::MAX as usize {
        return; // cannot be represented; the NACK of `seq` will repair from refs
    }
    for (i, c) in pkt.chunks(chunk).enumerate() {
        let m = SyncMsg::Data {
            epoch: p.epoch,
            seq,
            clock,
            dialect,
            frag: i as u8,
            frags: frags as u8,
            total_len: pkt.len() as u16,
            chunk: c,
        };
        p.send(cfg, &m);
    }
    p.stats.tx_data += 1;
}

#[allow(clippy::too_many_arguments)]
fn reassemble<'a>(
    p: &mut Peer,
    seq: u32,
    dialect: Dialect,
    clock: u64,
    frag: u8,
    frags: u8,
    total_len: u16,
    chunk: &'a [u8],
) -> Option<Complete<'a>> {
    let total = total_len as usize;
    if frags == 1 {
        if chunk.len() != total {
            p.stats.bad_datagrams += 1;
            return None;
        }
        return Some(Complete {
            seq,
            dialect,
            clock,
            bytes: std::borrow::Cow::Borrowed(chunk),
        });
    }
    let idx = match p.partials.iter().position(|x| x.seq == seq) {
        Some(i) => i,
        None => {
            if p.partials.len() >= MAX_PARTIALS {
                p.partials.pop_front(); // its seq will be NACKed
            }
            p.partials.push_back(Partial {
                seq,
                dialect,
                clock,
                frags,
                got: [0; 4],
                ngot: 0,
                frag_len: 0,
                buf: match p.spare_bufs.pop() {
                    Some(mut b) => {
                        b.clear();
                        b.resize(total, 0);
                        b
                    }
                    None => vec![0; total],
                },
            });
            p.partials.len() - 1
        }
    };
    let x = &mut p.partials[idx];
    let last = frag == frags - 1;
    let off = if last {
        total.checked_sub(chunk.len())
    } else {
        if x.frag_len == 0 {
            x.frag_len = chunk.len();
        }
        (chunk.len() == x.frag_len).then(|| frag as usize * x.frag_len)
    };
    let consistent = x.frags == frags && x.buf.len() == total && x.dialect == dialect;
    let Some(off) = off.filter(|&o| consistent && o + chunk.len() <= total) else {
        p.stats.bad_datagrams += 1;
        p.partials.remove(idx);
        return None;
    };
    let (w, b) = (frag as usize / 64, 1u64 << (frag % 64));
    if x.got[w] & b != 0 {
        return None;
    }
    x.got[w] |= b;
    x.ngot += 1;
    x.buf[off..off + chunk.len()].copy_from_slice(chunk);
    if x.ngot < x.frags {
        return None;
    }
    let x = p.partials.remove(idx)?;
    Some(Complete {
        seq,
        dialect: x.dialect,
        clock: x.clock,
        bytes: std::borrow::Cow::Owned(x.buf),
    })
}

/// Build one RECORDS message from the peer's dirty refs (refilled from queued leaves).
fn build_records(
    cfg: &ReplicaConfig,
    p: &mut Peer,
    table: &StateTable,
    now: Instant,
    out: &mut [u8],
) -> Option<usize> {
    let _ = cfg;
    let mut refs: Vec<StateRef> = Vec::new();
    let mut pos = RECORDS_HDR;
    let mut count: u16 = 0;
    loop {
        if p.dirty.is_empty() {
            let Some(leaf) = p.leaves.pop_front() else {
                break;
            };
            let leaf = leaf as usize;
            set_bit(&mut p.leaf_queued, leaf, false);
            set_bit(&mut p.leaf_dumped, leaf, true);
            for &id in table
                .leaf_states(leaf)
                .iter()
                .chain(table.leaf_tombstones(leaf))
            {
                p.mark_dirty(StateRef::State(id));
            }
            continue;
        }
        let r = *p.dirty.front().expect("non-empty");
        let rec = match r {
            StateRef::State(id) => table
                .get(id)
                .map(|e| Record::State(e.version(), e.present(now)))
                .or_else(|| table.tombstone(id).map(|v| Record::Tombstone(id, v))),
            StateRef::Clear {
                creator,
                ifname,
                version,
            } => Some(Record::Clear {
                creator,
                ifname,
                version,
            }),
        };
        if let Some(rec) = rec {
            match encode_record(&rec, &mut out[pos..]) {
                Ok(n) => {
                    pos += n;
                    count += 1;
                }
                Err(_) => break, // full
            }
            refs.push(r);
        }
        p.dirty.pop_front();
        if let StateRef::State(id) = r {
            p.dirty_set.remove(&id);
        }
    }
    if count == 0 {
        return None;
    }
    let (seq, pushed) = p.tx.push(&refs, true, now);
    if pushed == Pushed::Overflow {
        p.stats.overflows += 1;
        p.start_resync(now);
    }
    p.next_alive = p.next_alive.min(now + cfg.probe_interval);
    let mut w = proto::Wr::new(&mut out[..RECORDS_HDR]);
    w.u8(msg_type::RECORDS).ok()?;
    w.u8(SYNC_VERSION).ok()?;
    w.u32(p.epoch).ok()?;
    w.u32(seq).ok()?;
    w.u8(RECORD_VERSION).ok()?;
    w.u16(count).ok()?;
    p.stats.tx_records += count as u64;
    Some(pos)
}

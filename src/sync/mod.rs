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
//!
//! Files, one question each: this one holds the configuration, the counters, the
//! [`Replica`] struct and its public entry points and timers; `peer.rs` the per-peer reliable
//! channel; `receive.rs` what a peer's datagram does; `antientropy.rs` digest comparison and
//! repair records; `local.rs` the local firewall side (capture, bulk answers, sweeps);
//! `bounds.rs` the compromised-peer bounds; `proto.rs` the message codec; `link.rs` the
//! send/receive windows; `inject.rs` the queue towards the firewall.

mod antientropy;
mod bounds;
pub mod inject;
pub mod link;
mod local;
mod peer;
pub mod proto;
mod receive;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::table::{Applied, Digest, IdMap, StateTable, TableConfig, TableStats, Version};
use crate::wire::{BusStatus, Dialect, Message, Packet, StateId, WireError};
use inject::{InjectStats, Injector, Source};
use link::{PacketRing, Pushed, RxVerdict, RxWindow, StateRef, TxQueue};
use proto::{
    encode_record, msg_type, QueueDelay, Records, RECORDS_HDR, RECORD_VERSION, SYNC_VERSION,
};
pub use proto::{Record, SyncError, SyncMsg};

use antientropy::summary;
pub use bounds::MAX_LEARNED_CREATORS;
use local::Sweep;
use peer::{send_hello, Peer};
pub use peer::{CLEAR_WALKS_BURST, CLEAR_WALKS_PER_SEC, CLOCK_CREDIT_MAX, CLOCK_REFILL};

pub type PeerId = usize;

/// Smallest `max_datagram` a replica accepts: `[node] mtu` less the tunnel's framing must
/// reach it (the configuration refuses a smaller `mtu`).
pub const MIN_DATAGRAM: usize = 1200;
/// A peer's reported queueing delay counts this long after its ACK (ACKs come every 32
/// messages, or 20 ms after the first unacknowledged one, while a stream flows).
pub const PEER_DELAY_FRESH: Duration = Duration::from_millis(250);
/// Answer budget a peer starts with (docs/SYNC.md, *Requester pays*): a SUMMARY/RANGES
/// exchange and the first ≈ 240 records before its padding arrives.
pub const ANSWER_INITIAL: u64 = 64 << 10;
/// Most answer budget a peer can save: enough for a full `records_window` in flight.
pub const ANSWER_CAP: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Our node id: tie-breaker of versions, also the creatorid of BUS we emit.
    pub node_id: u32,
    /// What our firewall speaks.
    pub local_dialect: Dialect,
    /// Largest pfsync packet we emit towards the firewall (from `pfsync_header` on).
    pub local_mtu: usize,
    /// Largest plaintext datagram handed to the tunnel (>= [`MIN_DATAGRAM`]).
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
    /// Random per process start: mixed into epoch numbers so that a restarted replica's
    /// epochs differ, and sent in HELLO/HELLO_ACK so that peers can tell a restart of this
    /// process (they restart their stream to us) from a new tunnel session (nothing to do).
    pub incarnation: u32,
    /// A peer's clock (HELLO, SUMMARY, DATA, record versions) more than this far ahead of
    /// ours is refused: one message must not move the Lamport clock to the end of its range.
    pub max_clock_ahead: u64,
    /// Most states in the creator-id space of one peer (global cap: `table.max_states`).
    pub peer_max_states: usize,
    /// Answers to one peer (everything we send because it asked: RECORDS, RANGES, ACK,
    /// SKIP, HELLO_ACK, SUMMARY replies, HELLO_REQ, LEAF_REQ, STATE_REQ) are paid from a
    /// byte budget credited `answer_factor` × the bytes of every datagram the peer sends…
    pub answer_factor: u64,
    /// …starting at this allowance (once per peer, not per epoch)…
    pub answer_initial: u64,
    /// …saving at most this much…
    pub answer_cap: u64,
    /// …plus this many bytes per second (0 by default: opt-in, it weakens the bound).
    pub answer_rate: u64,
    /// Requester pays: we pad back 1/`pad_divisor` of the RECORDS and RANGES bytes a peer
    /// sends us (PAD messages), and at most twice that when it asks; 0 = never pad.
    pub pad_divisor: u64,
    /// The firewall's bulk request (`UPD_REQ 0/0`) is answered at most once per this.
    pub bulk_answer_interval: Duration,
    /// Enforce creator-id spaces (a peer inserts and clears only its own site's states).
    /// Off only for simulations whose "firewalls" are not real sites.
    pub creator_spaces: bool,
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
            // 2^32 ms ≈ 50 days of clock skew; 2^32 refused-size steps to wrap 2^64.
            max_clock_ahead: 1 << 32,
            peer_max_states: 500_000,
            answer_factor: 10,
            answer_initial: ANSWER_INITIAL,
            answer_cap: ANSWER_CAP,
            answer_rate: 0,
            pad_divisor: 8,
            bulk_answer_interval: Duration::from_secs(1),
            creator_spaces: true,
            table: TableConfig::default(),
        }
    }
}

impl ReplicaConfig {
    /// The `[limits]` of the config: mirror and per-peer state caps, and the opt-in repair
    /// rate (bytes/s of answers beyond the requester-pays budget; 0 = none).
    pub fn with_limits(mut self, states: usize, peer_states: usize, repair_rate: u64) -> Self {
        self.table.max_states = states;
        self.peer_max_states = peer_states;
        self.answer_rate = repair_rate;
        self.answer_cap = ANSWER_CAP.max(repair_rate);
        self
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
    /// Datagrams refused whole, or with a message that failed (`sync_malformed`; once per
    /// datagram).
    pub malformed: u64,
    /// Values out of range in well-formed messages, whose other parts were served: a range
    /// or leaf beyond the table, a DATA piece that does not fit its packet
    /// (`sync_bad_datagram`).
    pub bad_datagrams: u64,
    pub epoch_mismatch: u64,
    pub overflows: u64,
    pub resyncs: u64,
    pub resyncs_completed: u64,
    pub resync_in_progress: bool,
    /// Last cumulative ack received (next seq the peer expects).
    pub last_ack: u32,
    pub unacked: usize,
    /// States (and clears) waiting to be sent to the peer as RECORDS.
    pub dirty: usize,
    /// Leaves and states waiting to be asked of the peer (LEAF_REQ, STATE_REQ).
    pub requests: usize,
    pub dead_detections: u64,
    pub stale_returned: u64,
    /// Messages refused for a clock too far ahead of ours.
    pub clock_refused: u64,
    /// Inserts and clears refused outside the peer's creator-id space.
    pub foreign_refused: u64,
    /// A creator id of another site (or of our firewall) claimed by this peer.
    pub creator_conflicts: u64,
    /// New states refused: the peer's space or the whole mirror is full.
    pub states_refused: u64,
    /// Answers held back or dropped because the peer's answer budget was spent.
    pub answers_deferred: u64,
    /// CLRs refused beyond the peer's budget of table walks (`sync_clear_budget`).
    pub clears_refused: u64,
    /// Bytes of answers (see `ReplicaConfig::answer_factor`) sent to the peer.
    pub answer_bytes: u64,
    /// Bytes of sync datagrams received from the peer (what its answers are paid from).
    pub rx_bytes: u64,
    /// The queueing delay the peer reported in its last ACK (µs): how long our datagrams
    /// waited in its socket before it read them.
    pub peer_delay_us: u64,
    /// Bytes of PAD sent to / received from the peer (requester pays).
    pub pad_tx_bytes: u64,
    pub pad_rx_bytes: u64,
    /// PAD{want} sent: our answers to the peer waited for its payment.
    pub pay_requests: u64,
    /// Send epochs we opened to this peer (1 after the first session; more only after a
    /// restart of the peer, a HELLO_REQ or a dead-peer detection; never on a rekey).
    pub tx_epochs: u64,
    /// Send epochs of the peer we accepted (HELLO with a new epoch).
    pub rx_epochs: u64,
    /// Tunnel sessions that came up while the sync stream was already running (rekeys,
    /// crossed handshakes, endpoint changes): the stream was kept as it was.
    pub sessions_kept: u64,
    /// The peer's HELLO/HELLO_ACK showed a new incarnation: it restarted.
    pub peer_restarts: u64,
    /// HELLO_REQ sent (we got sequenced messages of an epoch we never saw a HELLO for) /
    /// received (the peer did not know our epoch).
    pub hello_reqs_tx: u64,
    pub hello_reqs_rx: u64,
    /// HELLOs sent (first ones and retries every `hello_interval` until HELLO_ACK).
    pub hellos_tx: u64,
    /// Audit SUMMARYs with another digest that arrived while we had changes in flight
    /// (not a sign of divergence; the next audit checks again).
    pub audits_inconclusive: u64,
    /// SUMMARYs with another digest that arrived while our repairs were unacked: answered
    /// by our own SUMMARY{want_reply} once they are acked.
    pub summaries_deferred: u64,
}

impl PeerSyncStats {
    /// The counters and gauges by name, for `status` and the metrics (`_now`: a gauge).
    pub fn named(&self) -> [(&'static str, u64); 42] {
        [
            ("tx_datagrams", self.tx_datagrams),
            ("rx_datagrams", self.rx_datagrams),
            ("tx_data", self.tx_data),
            ("rx_data", self.rx_data),
            ("tx_records", self.tx_records),
            ("rx_records", self.rx_records),
            ("retransmits", self.retransmits),
            ("nacks_rx", self.nacks_rx),
            ("nacks_tx", self.nacks_tx),
            ("skips_tx", self.skips_tx),
            ("duplicates", self.duplicates),
            ("malformed", self.malformed),
            ("bad_datagrams", self.bad_datagrams),
            ("epoch_mismatch", self.epoch_mismatch),
            ("overflows", self.overflows),
            ("resyncs", self.resyncs),
            ("resyncs_completed", self.resyncs_completed),
            ("dead_detections", self.dead_detections),
            ("stale_returned", self.stale_returned),
            ("clock_refused", self.clock_refused),
            ("foreign_refused", self.foreign_refused),
            ("creator_conflicts", self.creator_conflicts),
            ("states_refused", self.states_refused),
            ("answers_deferred", self.answers_deferred),
            ("clears_refused", self.clears_refused),
            ("tx_epochs", self.tx_epochs),
            ("rx_epochs", self.rx_epochs),
            ("peer_restarts", self.peer_restarts),
            ("audits_inconclusive", self.audits_inconclusive),
            ("summaries_deferred", self.summaries_deferred),
            ("sessions_kept", self.sessions_kept),
            ("hellos_tx", self.hellos_tx),
            ("hello_reqs_tx", self.hello_reqs_tx),
            ("hello_reqs_rx", self.hello_reqs_rx),
            ("answer_bytes", self.answer_bytes),
            ("rx_bytes", self.rx_bytes),
            ("pad_tx_bytes", self.pad_tx_bytes),
            ("pad_rx_bytes", self.pad_rx_bytes),
            ("pay_requests", self.pay_requests),
            ("unacked_now", self.unacked as u64),
            ("dirty_now", self.dirty as u64),
            ("requests_now", self.requests as u64),
        ]
    }
}

/// Why a peer's sync stream was (re)started or is not up yet; the node logs these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncNote {
    /// HELLO still unacknowledged after this many sends (retried every `hello_interval`).
    HelloUnanswered(u64),
    /// The peer restarted (new incarnation): new send epoch and resync.
    PeerRestarted,
    /// The peer did not know our epoch (HELLO_REQ): new send epoch and resync.
    HelloRequested,
    /// Nothing received for `keepalive × dead_after`: new send epoch, HELLO until answered.
    PeerSilent,
    /// The peer's clock was `ahead` of ours by more than `max_clock_ahead`, or by more
    /// than its clock credit lets it move ours; `count` refusals so far (noted at the 1st,
    /// 10th, 100th …).
    ClockRefused { ahead: u64, count: u64 },
    /// CLRs refused beyond the peer's budget of table walks, so far (noted at the 1st,
    /// 10th, 100th …).
    ClearsRefused(u64),
    /// The peer claimed `creator`, which belongs to our own firewall (`owner` None) or to
    /// another peer: refused. Noted once per (peer, creator), at most `MAX_ALARMS`.
    CreatorConflict { creator: u32, owner: Option<PeerId> },
}

impl SyncNote {
    /// A name per kind (the node rate-limits its log lines by it).
    pub fn kind(&self) -> &'static str {
        match self {
            SyncNote::HelloUnanswered(_) => "sync_note_hello_unanswered",
            SyncNote::PeerRestarted => "sync_note_peer_restarted",
            SyncNote::HelloRequested => "sync_note_hello_requested",
            SyncNote::PeerSilent => "sync_note_peer_silent",
            SyncNote::ClockRefused { .. } => "sync_note_clock_refused",
            SyncNote::ClearsRefused(_) => "sync_note_clears_refused",
            SyncNote::CreatorConflict { .. } => "sync_note_creator_conflict",
        }
    }
}

impl core::fmt::Display for SyncNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SyncNote::HelloUnanswered(n) => write!(
                f,
                "sync epoch not acknowledged after {n} HELLOs (the peer's sync layer is not answering \
                 yet, or we refuse what it sends: see sync_clock_refused, sync_malformed); retrying"
            ),
            SyncNote::PeerRestarted => {
                f.write_str("peer restarted (new incarnation): new sync epoch, resync")
            }
            SyncNote::HelloRequested => {
                f.write_str("peer did not know our sync epoch (HELLO_REQ): new sync epoch, resync")
            }
            SyncNote::PeerSilent => {
                f.write_str("peer's sync layer silent: new sync epoch, HELLO until answered")
            }
            SyncNote::ClockRefused { ahead, count } => write!(
                f,
                "peer's sync clock {ahead} ahead of ours, beyond max_clock_ahead or the \
                 peer's clock credit: message refused ({count} so far; sync clocks count \
                 milliseconds since the Unix epoch)"
            ),
            SyncNote::CreatorConflict { creator, owner } => write!(
                f,
                "creator id conflict: the peer sent states of creator {creator:08x}, which \
                 belongs to {}; refused (compromised or misconfigured peer?)",
                if owner.is_some() {
                    "another peer (owner)"
                } else {
                    "our own firewall"
                }
            ),
            SyncNote::ClearsRefused(n) => write!(
                f,
                "peer's CLRs beyond its budget of table walks refused ({n} so far; \
                 sync_clear_budget)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub local_packets: u64,
    pub local_errors: u64,
    /// Peers' DATA packets injected as they arrived (same dialect, nothing stale)…
    pub data_verbatim: u64,
    /// …re-encoded because a message in them was older than the mirror (two firewalls
    /// changed one state at once: the newer copy is injected instead)…
    pub data_corrected: u64,
    /// …re-encoded because they carried an `UPD_C` for a state the mirror lacks (asked
    /// for with STATE_REQ), or came from another dialect.
    pub data_reencoded: u64,
    pub echoes_dropped: u64,
    pub forwarded: u64,
    pub bulk_answers: u64,
    /// Bulk requests from the firewall refused (one answer per `bulk_answer_interval`).
    pub bulk_refused: u64,
    /// Reconciliations with the firewall's full dump, and what they repaired.
    pub sweeps: u64,
    pub sweep_restored: u64,
    /// Dumps during which the capture lost packets: they deleted nothing.
    pub sweeps_lossy: u64,
    /// The firewall's own states the mirror holds but its dump did not list.
    pub sweep_unlisted: u64,
    /// …and that the next complete dump did not list either: deleted cluster-wide (the
    /// firewall deleted them while nobody listened, e.g. while this gateway was down).
    pub sweep_deleted: u64,
    pub states: usize,
    pub tombstones: usize,
    pub table: TableStats,
    pub inject: InjectStats,
}

/// What a message of a peer's DATA becomes towards the local firewall.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fate {
    Keep,
    /// Replaced by the mirror's current copy (or a delete if it has none).
    Current(StateId),
    Skip,
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
    notes: VecDeque<(PeerId, SyncNote)>,
    scratch_refs: Vec<StateRef>,
    /// States of the local packet being applied that were new to the mirror.
    scratch_new: Vec<StateId>,
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
    /// Creator conflicts already logged (peer, creator).
    alarms: Vec<(PeerId, u32)>,
    /// The firewall's next bulk request is answered from this instant on.
    next_bulk_answer: Instant,
    /// A bulk answer under way: the table position it goes on from, and the time its
    /// states are presented at (the request's, refreshed every round of injection).
    bulk_out: Option<(usize, Instant)>,
    full_logged: Option<Instant>,
    /// The firewall's own states (creator, ids) that its last complete dump did not list:
    /// deleted if the next complete dump does not list them either.
    absent: Option<(u32, IdMap<()>)>,
    /// Our firewall's states that peers hold but the mirror lacked after a completed
    /// sweep (value: sweeps completed at the claim): deleted cluster-wide if the next
    /// complete dump does not list them, forgotten if it does.
    claimed: IdMap<u64>,
    /// The highest id our firewall has shown (INS, UPD) per creator and top byte (key
    /// `StateId::new(id >> 56, creator)`): pf numbers states sequentially (FreeBSD per CPU,
    /// the CPU in the top byte), so an id above it is one our firewall has not used yet.
    local_issued: IdMap<u64>,
    /// Repairs inserted states of our own firewall that the mirror did not hold (since the
    /// last BUS START): a dump should tell whether the firewall still has them.
    sweep_wanted: bool,
    /// How long peers' datagrams wait in our socket before we read them (set by the
    /// driver); our ACKs report it plus the injection queue's wait.
    rx_delay: Duration,
}

impl Replica {
    pub fn new(cfg: ReplicaConfig, now: Instant) -> Replica {
        assert!(
            cfg.max_datagram >= MIN_DATAGRAM,
            "max_datagram must be >= {MIN_DATAGRAM}"
        );
        Replica {
            table: StateTable::new(cfg.table),
            peers: BTreeMap::new(),
            clock: cfg.initial_clock,
            epochs: 0,
            injector: Injector::new(cfg.local_dialect, cfg.local_mtu, cfg.inject_queue_max),
            next_expire: now + cfg.expire_interval,
            stats: ReplicaStats::default(),
            notes: VecDeque::new(),
            scratch_refs: Vec::new(),
            scratch_new: Vec::new(),
            scratch_fates: Vec::new(),
            sweep: None,
            local_creators: Vec::new(),
            coalesce: false,
            alarms: Vec::new(),
            next_bulk_answer: now,
            bulk_out: None,
            full_logged: None,
            absent: None,
            claimed: IdMap::default(),
            local_issued: IdMap::default(),
            sweep_wanted: false,
            rx_delay: Duration::ZERO,
            cfg,
        }
    }

    /// How long peers' datagrams waited in our socket lately (the driver measures it from
    /// the kernel's receive timestamps); every ACK tells the peer, whose shedding steers by it.
    pub fn set_receive_delay(&mut self, d: Duration) {
        self.rx_delay = d;
    }

    /// The largest queueing delay a peer reported within [`PEER_DELAY_FRESH`] (zero if
    /// none): our relay is what fills that queue, so our shedding counts it as our own.
    pub fn peer_delay(&self, now: Instant) -> Duration {
        self.peers
            .values()
            .filter_map(|p| p.peer_delay)
            .filter(|&(_, at)| now.saturating_duration_since(at) <= PEER_DELAY_FRESH)
            .map(|(d, _)| d.to_duration())
            .max()
            .unwrap_or_default()
    }

    /// Packets are waiting to be injected towards the local firewall.
    pub fn inject_pending(&self) -> bool {
        !self.injector.is_empty() || self.bulk_out.is_some()
    }

    /// Before a round of injection: drop the queued packets of only compressed updates
    /// that waited longer than [`inject::INJECT_MAX_AGE`]; returns how many packets are
    /// queued then.
    pub fn prepare_inject(&mut self, now: Instant) -> usize {
        self.injector.shed_late(now);
        if let Some((_, at)) = &mut self.bulk_out {
            *at = now;
        }
        self.injector.len()
    }

    /// Packets ever queued for injection towards the local firewall.
    pub fn inject_arrivals(&self) -> u64 {
        self.injector.arrivals()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    pub fn table(&self) -> &StateTable {
        &self.table
    }

    /// The mirror's digest (brings the digests up to date: see [`StateTable::digest`]).
    pub fn digest(&mut self) -> Digest {
        self.table.digest()
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
            table: self.table.stats(),
            inject: self.injector.stats,
            ..self.stats
        }
    }

    pub fn peer_stats(&self, peer: PeerId) -> Option<PeerSyncStats> {
        self.peers.get(&peer).map(|p| PeerSyncStats {
            up: p.up,
            // Both directions: our epoch acknowledged and the peer's epoch known.
            established: p.established && p.rx_epoch.is_some(),
            resync_in_progress: p.resync,
            unacked: p.tx.unacked(),
            dirty: p.dirty.len(),
            requests: p.leaf_reqs.len() + p.state_reqs.len(),
            peer_delay_us: p
                .peer_delay
                .map_or(0, |(d, _)| d.to_duration().as_micros() as u64),
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

    /// Why a peer's sync stream restarted or is not up yet (for the log); call until `None`.
    pub fn poll_note(&mut self) -> Option<(PeerId, SyncNote)> {
        self.notes.pop_front()
    }

    fn note(&mut self, peer: PeerId, n: SyncNote) {
        if self.notes.len() < 64 {
            self.notes.push_back((peer, n));
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

    /// Next native pfsync packet (local dialect) to inject towards our firewall.
    pub fn poll_local_inject(&mut self, out: &mut [u8]) -> Option<usize> {
        // A bulk answer under way keeps a few of its packets queued, no more: the rest of
        // the queue stays for the peers' packets, and the answer never overflows it.
        if self.bulk_out.is_some() && self.injector.queued_from(Source::Local) < local::BULK_QUEUED
        {
            self.continue_bulk();
        }
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
        let mut silent = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if !p.up {
                continue;
            }
            if now.saturating_duration_since(p.last_rx) >= dead {
                // Not silence in return: a peer that declared us dead at the same time
                // would wait for us forever, although the tunnel is up. A new epoch, its
                // HELLO every `hello_interval`, restarts the stream once the peer answers.
                p.stats.dead_detections += 1;
                p.last_rx = now;
                silent.push(id);
                continue;
            }
            if !p.established {
                if p.hello_due.is_some_and(|t| t <= now) {
                    send_hello(cfg, p, self.clock, now);
                    // Say so after 1 s, then every 5 s.
                    if p.epoch_hellos % 10 == 3 && self.notes.len() < 64 {
                        let n = SyncNote::HelloUnanswered(u64::from(p.epoch_hellos - 1));
                        self.notes.push_back((id, n));
                    }
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
                    let s = summary(&mut self.table, self.clock, false);
                    p.send(cfg, &s);
                }
            }
            if p.resync && p.summary_due.is_some_and(|t| t <= now) {
                if !p.busy() {
                    p.leaf_dumped.iter_mut().for_each(|w| *w = 0);
                    let s = summary(&mut self.table, self.clock, true);
                    p.send(cfg, &s);
                }
                p.summary_due = Some(now + cfg.resync_interval);
            }
        }
        for id in silent {
            self.restart_tx(id, now);
            self.note(id, SyncNote::PeerSilent);
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
            if p.starved {
                // Our answers wait for the peer's payment: ask for it (PAD{want}) again.
                t = t.min(p.pay_req_at);
                if self.cfg.answer_rate > 0 {
                    // Until one datagram is affordable; at least 1 ms: waking before a byte
                    // is earned would spin.
                    let need = (self.cfg.max_datagram as i64 - p.credit).max(1) as u128;
                    let us = (need * 1_000_000)
                        .div_ceil(self.cfg.answer_rate as u128)
                        .clamp(1_000, u64::MAX as u128);
                    t = t.min(p.credit_at + Duration::from_micros(us as u64));
                }
            }
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

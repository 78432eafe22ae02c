//! The per-peer reliable channel: how does a stream of sequenced messages get to one peer
//! and back intact?
//!
//! `Peer` is one peer's link state: send epoch and HELLO handshake, resend queue and
//! outgoing datagram ring, receive window, ACK/NACK scheduling, DATA fragmentation and
//! reassembly, and the dirty/leaf queues that repairs are built from. The `impl Replica` here
//! opens and restarts a peer's send epoch (`on_peer_up`, `on_peer_down`, `restart_tx`) and
//! picks what goes on the link next (`poll_inner`).

use super::antientropy::build_records;
use super::bounds::ANSWER_RESERVE;
use super::*;
use crate::bucket::Bucket;

/// Most NACK ranges per ACK.
pub(super) const MAX_NACKS: usize = proto::MAX_ACK_RANGES;

/// Most state ids waiting to be asked of a peer (`STATE_REQ`): 12 bytes each. Unknown
/// states beyond it are left to the next resync.
pub(super) const MAX_STATE_REQS: usize = 16_384;

/// Most partially reassembled DATA packets per peer.
pub(super) const MAX_PARTIALS: usize = 16;
/// Replaced receive epochs remembered per peer (a peer's process opens a new one on each
/// dead-peer detection, HELLO_REQ or our restart; stragglers arrive within a round trip).
/// Each is remembered for `keepalive × dead_after`: a sender that did open one of them again
/// (an epoch is 32 bits of a hash) is heard then, not shut out for good.
pub(super) const REPLACED_RX_EPOCHS: usize = 4;

/// Most disjoint byte ranges one partial packet may be received in (a sender cuts a packet
/// into a piece that fills a datagram's room and datagram-sized pieces: 3 for any pfsync
/// packet; more means a hostile or broken sender).
pub(super) const MAX_PIECES: usize = 16;

pub(super) struct Partial {
    pub(super) seq: u32,
    pub(super) dialect: Dialect,
    pub(super) clock: u64,
    /// Received byte ranges `[start, end)`, sorted, disjoint and not adjacent.
    pub(super) ranges: [(u16, u16); MAX_PIECES],
    pub(super) nranges: usize,
    /// The packet's length. `buf` has room for it, and its bytes count (`len`) only once
    /// `ranges` covers them all: each piece is written where it belongs and nothing is
    /// zero-filled first (a hostile peer's one-byte piece at the end of a 64 KiB packet
    /// would cost a 64 KiB fill; a piece still costs only its own bytes).
    pub(super) total: u16,
    pub(super) buf: Vec<u8>,
}

impl Partial {
    /// Record bytes `a..b` as received; false if that needs more than `MAX_PIECES` ranges.
    fn cover(&mut self, a: u16, b: u16) -> bool {
        let r = &self.ranges[..self.nranges];
        // Ranges before `a` that do not touch it, and after `b` likewise, stay.
        let lo = r.iter().position(|&(_, e)| e >= a).unwrap_or(r.len());
        let hi = r.iter().rposition(|&(s, _)| s <= b).map_or(0, |i| i + 1);
        let (mut na, mut nb) = (a, b);
        if lo < hi {
            na = na.min(r[lo].0);
            nb = nb.max(r[hi - 1].1);
        }
        let removed = hi.saturating_sub(lo);
        let n = self.nranges - removed + 1;
        if n > MAX_PIECES {
            return false;
        }
        // Replace ranges lo..hi by the merged one.
        self.ranges.copy_within(hi.max(lo)..self.nranges, lo + 1);
        self.ranges[lo] = (na, nb);
        self.nranges = n;
        true
    }

    fn complete(&self) -> bool {
        self.nranges == 1 && self.ranges[0] == (0, self.total)
    }

    /// Writes bytes `a..a + chunk.len()` into `buf`'s room (within `total`, checked by the
    /// caller; `buf` holds `total` bytes of capacity and no length).
    fn write(&mut self, a: usize, chunk: &[u8]) {
        let room = &mut self.buf.spare_capacity_mut()[a..a + chunk.len()];
        for (d, &s) in room.iter_mut().zip(chunk) {
            d.write(s);
        }
    }

    /// The packet, once [`complete`](Self::complete).
    fn finish(mut self) -> Vec<u8> {
        assert!(self.complete() && self.buf.capacity() >= usize::from(self.total));
        // SAFETY: complete: `ranges` is the one range 0..total, and `cover` recorded only
        // ranges that `write` then filled, within the capacity (asserted).
        unsafe { self.buf.set_len(usize::from(self.total)) };
        self.buf
    }
}

pub(super) struct Peer {
    pub(super) up: bool,
    pub(super) node: u32,
    // send side
    pub(super) epoch: u32,
    pub(super) established: bool,
    pub(super) hello_due: Option<Instant>,
    pub(super) tx: TxQueue,
    pub(super) out: PacketRing,
    pub(super) dirty: VecDeque<StateRef>,
    /// Value: the peer may not know the state at all (its insert waits in the repairs),
    /// so nothing about it may overtake the repair (see `Replica::on_local_pfsync`).
    pub(super) dirty_set: IdMap<bool>,
    pub(super) leaves: VecDeque<u32>,
    pub(super) leaf_queued: Vec<u64>,
    pub(super) leaf_dumped: Vec<u64>,
    pub(super) leaf_reqs: VecDeque<u32>,
    pub(super) state_reqs: VecDeque<StateId>,
    pub(super) next_alive: Instant,
    /// The peer's incarnation (from its HELLO or HELLO_ACK).
    pub(super) peer_incarnation: Option<u32>,
    /// Earliest time for our next HELLO_REQ (one per `hello_interval`).
    pub(super) hello_req_after: Instant,
    /// HELLOs sent in the current epoch.
    pub(super) epoch_hellos: u32,
    // receive side
    pub(super) rx_epoch: Option<u32>,
    /// Receive epochs that HELLOs of the peer's current process replaced, newest first, with
    /// when: a late HELLO of one of them (reordered, or re-sent just before the newer one)
    /// is a straggler, not a new stream.
    pub(super) replaced_rx_epochs: [Option<(u32, Instant)>; REPLACED_RX_EPOCHS],
    pub(super) rx: RxWindow,
    pub(super) rx_unacked: u32,
    pub(super) ack_due: Option<Instant>,
    pub(super) partials: VecDeque<Partial>,
    pub(super) last_rx: Instant,
    // anti-entropy
    pub(super) resync: bool,
    pub(super) summary_due: Option<Instant>,
    /// Next unsolicited digest comparison (anti-entropy audit).
    pub(super) next_audit: Instant,
    /// Creator ids of this peer's site: configured (fixed) …
    pub(super) creators: Vec<u32>,
    /// … or learned from its first-hand states and pinned.
    pub(super) learned: Vec<u32>,
    /// Answer budget in bytes (docs/SYNC.md, *Requester pays*); never below 0.
    pub(super) credit: i64,
    pub(super) credit_at: Instant,
    /// Answers wait for the peer's payment (set when no RECORDS fit the budget).
    pub(super) starved: bool,
    /// Earliest time for our next PAD{want} (one per `probe_interval` while starved).
    pub(super) pay_req_at: Instant,
    /// PAD bytes we owe the peer for its answers, and the most we may still pad.
    pub(super) pad_owed: u64,
    pub(super) pad_allow: u64,
    /// The CLR walk budget (see `CLEAR_WALKS_PER_SEC`).
    pub(super) clear_walks: Bucket,
    /// How far the peer may still move our clock (`Replica::clock_ok`), when that was
    /// last refilled, and the highest clock of its already paid for.
    pub(super) clock_credit: u64,
    pub(super) clock_credit_at: Option<Instant>,
    pub(super) clock_paid: u64,
    /// The queueing delay the peer reported in its last ACK, and when it arrived.
    pub(super) peer_delay: Option<(QueueDelay, Instant)>,
    pub(super) stats: PeerSyncStats,
}

pub(super) fn bit(v: &[u64], i: usize) -> bool {
    v[i / 64] & (1 << (i % 64)) != 0
}

pub(super) fn set_bit(v: &mut [u64], i: usize, on: bool) {
    if on {
        v[i / 64] |= 1 << (i % 64);
    } else {
        v[i / 64] &= !(1 << (i % 64));
    }
}

/// A CLR walks the whole mirror (pf's does the same in its own table): a peer gets this
/// many walks a second, and a burst of this many, for CLRs that name a creator holding
/// states. pf sends one CLR per `pfctl -F states` / `-k`; a peer sending thousands per
/// packet would otherwise make each of its bytes cost a table walk.
pub const CLEAR_WALKS_PER_SEC: u32 = 8;
pub const CLEAR_WALKS_BURST: u32 = 32;

/// A peer may move our clock forward by `max_clock_ahead` per this long (2^32 a minute ≈
/// 72 M ticks a second: an honest clock ticks once per firewall packet), and by
/// `CLOCK_CREDIT_MAX` × `max_clock_ahead` at once (a restarted gateway whose wall clock is
/// days ahead). Without it a compromised peer moved our clock 2^32 a message, as fast as
/// it sent, and the honest peers, which catch up 2^32 per message of ours, refused
/// everything we sent for as long as it kept on.
pub const CLOCK_REFILL: std::time::Duration = std::time::Duration::from_secs(60);
pub const CLOCK_CREDIT_MAX: u64 = 2;

impl Peer {
    /// Record the peer's incarnation; true if it differs from the one recorded (a restart).
    /// The replaced epochs of another process say nothing about this one's.
    pub(super) fn record_incarnation(&mut self, incarnation: u32) -> bool {
        // With none recorded yet no epoch has been replaced: the list is empty.
        let changed = self.peer_incarnation.is_some_and(|i| i != incarnation);
        if changed {
            self.replaced_rx_epochs = [None; REPLACED_RX_EPOCHS];
        }
        self.peer_incarnation = Some(incarnation);
        changed
    }

    /// A HELLO naming `epoch` from the recorded incarnation is a straggler of a stream its
    /// process replaced less than `window` ago.
    pub(super) fn is_straggler(
        &self,
        epoch: u32,
        incarnation: u32,
        now: Instant,
        window: Duration,
    ) -> bool {
        self.peer_incarnation == Some(incarnation)
            && self
                .replaced_rx_epochs
                .iter()
                .flatten()
                .any(|&(e, at)| e == epoch && now.saturating_duration_since(at) < window)
    }

    /// The HELLO of a new receive epoch replaced `old` (same process).
    pub(super) fn remember_replaced(&mut self, old: u32, now: Instant) {
        self.replaced_rx_epochs.rotate_right(1);
        self.replaced_rx_epochs[0] = Some((old, now));
    }

    /// The clock credit now: `max_clock_ahead` more per `CLOCK_REFILL`, at most
    /// `CLOCK_CREDIT_MAX` × `max_clock_ahead`, full at first.
    pub(super) fn refill_clock_credit(&mut self, now: Instant, max_ahead: u64) -> u64 {
        let cap = max_ahead.saturating_mul(CLOCK_CREDIT_MAX);
        self.clock_credit = match self.clock_credit_at {
            None => cap,
            Some(t) => {
                let ns = now.saturating_duration_since(t).as_nanos();
                let more = ns * u128::from(max_ahead) / CLOCK_REFILL.as_nanos();
                (u128::from(self.clock_credit) + more).min(u128::from(cap)) as u64
            }
        };
        self.clock_credit_at = Some(now);
        self.clock_credit
    }

    /// Take one CLR walk from the budget; false when it is spent.
    pub(super) fn clear_walk(&mut self, now: Instant) -> bool {
        self.clear_walks
            .take(now, CLEAR_WALKS_PER_SEC, CLEAR_WALKS_BURST)
    }

    pub(super) fn new(cfg: &ReplicaConfig, leaves: usize, now: Instant) -> Peer {
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
            peer_incarnation: None,
            hello_req_after: now,
            epoch_hellos: 0,
            rx_epoch: None,
            replaced_rx_epochs: [None; REPLACED_RX_EPOCHS],
            rx: RxWindow::new(0),
            rx_unacked: 0,
            ack_due: None,
            partials: VecDeque::new(),
            last_rx: now,
            resync: false,
            summary_due: None,
            next_audit: now + cfg.audit_interval,
            creators: Vec::new(),
            learned: Vec::new(),
            credit: cfg.answer_initial.min(cfg.answer_cap) as i64,
            credit_at: now,
            starved: false,
            pay_req_at: now,
            pad_owed: 0,
            pad_allow: 0,
            clear_walks: Bucket::EMPTY,
            clock_credit: 0,
            clock_credit_at: None,
            clock_paid: 0,
            peer_delay: None,
            stats: PeerSyncStats::default(),
        }
    }

    pub(super) fn push_out(&mut self, cfg: &ReplicaConfig, d: &[u8]) {
        // Beyond the bound the oldest is lost like on the network: NACK/resync recovers it.
        self.out.push_bundled(d, cfg.max_datagram);
    }

    pub(super) fn send(&mut self, cfg: &ReplicaConfig, m: &SyncMsg) {
        let mut buf = [0u8; 1500];
        if let Ok(n) = m.encode(&mut buf) {
            self.push_out(cfg, &buf[..n]);
        }
    }

    pub(super) fn mark_dirty(&mut self, r: StateRef) {
        match r {
            StateRef::State(id) => {
                if let std::collections::hash_map::Entry::Vacant(e) = self.dirty_set.entry(id) {
                    e.insert(false);
                    self.dirty.push_back(r);
                }
            }
            StateRef::Clear { .. } => self.dirty.push_back(r),
        }
    }

    /// [`Peer::mark_dirty`] for a state the mirror did not hold before: the peer may not
    /// know it either.
    pub(super) fn mark_dirty_new(&mut self, id: StateId) {
        self.mark_dirty(StateRef::State(id));
        self.dirty_set.insert(id, true);
    }

    /// Whether a state's insert waits in this peer's repairs.
    pub(super) fn insert_pending(&self, id: StateId) -> bool {
        self.dirty_set.get(&id).copied().unwrap_or(false)
    }

    pub(super) fn queue_leaf(&mut self, leaf: usize) {
        if !bit(&self.leaf_queued, leaf) && !bit(&self.leaf_dumped, leaf) {
            set_bit(&mut self.leaf_queued, leaf, true);
            self.leaves.push_back(leaf as u32);
        }
    }

    pub(super) fn busy(&self) -> bool {
        !self.leaves.is_empty() || !self.dirty.is_empty() || self.tx.records_in_flight > 0
    }

    /// Nothing in flight either way: our digest is comparable with the peer's audit.
    pub(super) fn quiet(&self) -> bool {
        !self.busy()
            && self.tx.unacked() == 0
            && self.rx.cum == self.rx.high
            && self.partials.is_empty()
            && self.out.is_empty()
    }

    pub(super) fn start_resync(&mut self, now: Instant) {
        // A resync under way keeps its pace (a SUMMARY every `resync_interval`): what a
        // peer can trigger again and again (NACKs of purged seqs, window jumps) must not
        // pull a SUMMARY, which no budget pays for, and a new digest round each time.
        if !self.resync {
            self.resync = true;
            self.stats.resyncs += 1;
            self.summary_due = Some(now);
        }
    }

    /// Note receipt of sequenced message `seq`; false if it is a duplicate.
    pub(super) fn rx_accept(&mut self, cfg: &ReplicaConfig, seq: u32, now: Instant) -> bool {
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
pub(super) struct Complete<'a> {
    pub(super) seq: u32,
    pub(super) dialect: Dialect,
    pub(super) clock: u64,
    /// A single fragment is borrowed from the datagram; a reassembled packet owns the
    /// partial's buffer (taken from the injector's spare ones): queued for injection as it
    /// is, or given back.
    pub(super) bytes: std::borrow::Cow<'a, [u8]>,
}

/// Send (or resend) the HELLO of `p`'s current epoch; the next one is due after
/// `hello_interval` unless a HELLO_ACK arrives.
pub(super) fn send_hello(cfg: &ReplicaConfig, p: &mut Peer, clock: u64, now: Instant) {
    let m = SyncMsg::Hello {
        node: cfg.node_id,
        epoch: p.epoch,
        clock,
        start_seq: 1,
        incarnation: cfg.incarnation,
    };
    p.send(cfg, &m);
    p.stats.hellos_tx += 1;
    p.epoch_hellos += 1;
    p.hello_due = Some(now + cfg.hello_interval);
}

/// A sequenced message of an epoch we have no HELLO for: counted, and (at most once per
/// `hello_interval`) answered with HELLO_REQ so that a sender whose HELLO we never saw
/// (e.g. acknowledged by our previous process) opens a new epoch instead of talking to
/// nobody. Stragglers of a replaced epoch get a HELLO_REQ the sender ignores.
pub(super) fn unknown_epoch(cfg: &ReplicaConfig, p: &mut Peer, epoch: u32, now: Instant) {
    p.stats.epoch_mismatch += 1;
    if p.up && now >= p.hello_req_after {
        p.hello_req_after = now + cfg.hello_interval;
        if p.answer(cfg, &SyncMsg::HelloReq { epoch }, now, 0) {
            p.stats.hello_reqs_tx += 1;
        }
    }
}

/// Smallest first piece worth putting in the room left in a queued datagram (a smaller
/// room is left empty; the packet starts a datagram of its own).
const MIN_PIECE: usize = 64;

/// Queue one local pfsync packet for `p` as DATA under one new seq: its first piece fills
/// the room left in the newest queued datagram, the rest go in datagram-sized pieces.
pub(super) fn send_data(
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
    let whole = cfg.max_datagram - proto::DATA_HDR;
    if pkt.is_empty() || pkt.len() > u16::MAX as usize {
        return; // cannot be represented; the NACK of `seq` will repair from refs
    }
    let mut off = 0;
    while off < pkt.len() {
        let left = pkt.len() - off;
        let room = p
            .out
            .tail_room(cfg.max_datagram)
            .saturating_sub(proto::DATA_HDR);
        let n = if room >= left.min(MIN_PIECE) {
            room.min(left)
        } else {
            whole.min(left)
        };
        // The header alone (a DATA message is its header and the chunk verbatim); the chunk
        // goes from the captured packet straight into the ring, not through a buffer.
        let head = SyncMsg::Data {
            epoch: p.epoch,
            seq,
            clock,
            dialect,
            offset: off as u16,
            total_len: pkt.len() as u16,
            chunk: &[],
        };
        let mut hdr = [0u8; proto::DATA_HDR];
        if head.encode(&mut hdr).is_ok() {
            p.out
                .push_bundled_parts(&[&hdr, &pkt[off..off + n]], cfg.max_datagram);
        }
        off += n;
    }
    p.stats.tx_data += 1;
}

/// The packet `chunk` completes, if any: borrowed when it is the whole packet, else
/// reassembled in a buffer taken from `spare`.
#[allow(clippy::too_many_arguments)]
pub(super) fn reassemble<'a>(
    p: &mut Peer,
    spare: &mut Injector,
    seq: u32,
    dialect: Dialect,
    clock: u64,
    offset: u16,
    total_len: u16,
    chunk: &'a [u8],
) -> Option<Complete<'a>> {
    let total = total_len as usize;
    if offset == 0 && chunk.len() == total {
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
                ranges: [(0, 0); MAX_PIECES],
                nranges: 0,
                total: total_len,
                buf: {
                    let mut b = spare.take_buf();
                    b.reserve(total);
                    b
                },
            });
            p.partials.len() - 1
        }
    };
    let x = &mut p.partials[idx];
    // `decode` checked offset + len <= total_len.
    let (a, b) = (offset, offset + chunk.len() as u16);
    if x.total != total_len || x.dialect != dialect || !x.cover(a, b) {
        p.stats.bad_datagrams += 1;
        p.partials.remove(idx);
        return None;
    }
    x.write(a as usize, chunk);
    if !x.complete() {
        return None;
    }
    let x = p.partials.remove(idx)?;
    let (dialect, clock) = (x.dialect, x.clock);
    Some(Complete {
        seq,
        dialect,
        clock,
        bytes: std::borrow::Cow::Owned(x.finish()),
    })
}

impl Replica {
    /// A tunnel session with `peer` became usable. The first one (or the first after the
    /// peer was declared down) opens our send epoch; any later one — a rekey, the second of
    /// two crossed handshakes, an endpoint change — leaves both directions of the sync
    /// stream as they are: only a restart of the peer process (a new incarnation in its
    /// HELLO) starts over.
    ///
    /// Returns whether a new send epoch was opened (false: the stream was kept).
    pub fn on_peer_up(&mut self, peer: PeerId, now: Instant) -> bool {
        self.add_peer(peer, now);
        let p = self.peers.get_mut(&peer).expect("added");
        // A session needs an authenticated datagram from the peer: it is alive.
        p.last_rx = now;
        if p.up {
            p.stats.sessions_kept += 1;
            return false;
        }
        self.restart_tx(peer, now);
        true
    }

    pub fn on_peer_down(&mut self, peer: PeerId, _now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up = false;
            p.established = false;
            p.hello_due = None;
            p.out.clear();
        }
    }

    pub(super) fn restart_tx(&mut self, peer: PeerId, now: Instant) {
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
        let (rx_epoch, replaced_rx_epochs, rx, last_rx, node) = (
            p.rx_epoch,
            p.replaced_rx_epochs,
            std::mem::replace(&mut p.rx, RxWindow::new(0)),
            p.last_rx,
            p.node,
        );
        let partials = std::mem::take(&mut p.partials);
        let (creators, learned) = (
            std::mem::take(&mut p.creators),
            std::mem::take(&mut p.learned),
        );
        // The budget and padding belong to the peer, not to one epoch.
        let (credit, credit_at) = (p.credit, p.credit_at);
        let (pad_owed, pad_allow, clear_walks) = (p.pad_owed, p.pad_allow, p.clear_walks);
        let (incarnation, req_after) = (p.peer_incarnation, p.hello_req_after);
        let (ack_due, rx_unacked) = (p.ack_due, p.rx_unacked);
        *p = Peer::new(&self.cfg, leaves, now);
        p.creators = creators;
        p.learned = learned;
        p.credit = credit;
        p.credit_at = credit_at;
        p.pad_owed = pad_owed;
        p.pad_allow = pad_allow;
        p.clear_walks = clear_walks;
        p.stats = stats;
        p.rx_epoch = rx_epoch;
        p.replaced_rx_epochs = replaced_rx_epochs;
        p.rx = rx;
        p.partials = partials;
        p.ack_due = ack_due;
        p.rx_unacked = rx_unacked;
        p.last_rx = last_rx;
        p.node = node;
        p.peer_incarnation = incarnation;
        p.hello_req_after = req_after;
        p.up = true;
        p.epoch = epoch;
        p.stats.tx_epochs += 1;
        p.start_resync(now);
        // HELLO right away (not at the next timeout): the epoch is up one round trip after
        // the session.
        send_hello(&self.cfg, p, self.clock, now);
    }

    pub(super) fn poll_inner(
        &mut self,
        peer: PeerId,
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
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
            p.ack_due = None;
            // An ACK answers the peer's DATA/RECORDS/SKIP/ALIVE: paid like every answer, its
            // NACK list cut to what the budget affords. Unaffordable: the peer's next
            // message (its ALIVE probe at the latest) brings the ACK back.
            let afford = p.affordable(cfg, now, 0);
            match p.rx_epoch {
                Some(epoch) if afford >= proto::ACK_HDR => {
                    p.rx_unacked = 0;
                    let mut gaps = Vec::new();
                    let max = MAX_NACKS.min((afford - proto::ACK_HDR) / 8);
                    p.rx.gaps(max, &mut gaps);
                    p.stats.nacks_tx += gaps.len() as u64;
                    let mut nacks = [0u8; MAX_NACKS * 8];
                    for (i, (a, b)) in gaps.iter().enumerate() {
                        nacks[i * 8..i * 8 + 4].copy_from_slice(&a.to_be_bytes());
                        nacks[i * 8 + 4..i * 8 + 8].copy_from_slice(&b.to_be_bytes());
                    }
                    let m = SyncMsg::Ack {
                        epoch,
                        cum: p.rx.cum,
                        // What we relay waits in our socket, then in the peer's lane of the
                        // injection queue: both are queues the peer's shedding can shorten
                        // (docs/SYNC.md, *Overload*); another peer's backlog is not.
                        delay: QueueDelay::from_duration(
                            self.rx_delay
                                + self.injector.head_wait_of(inject::Source::Peer(peer), now),
                        ),
                        nacks: &nacks[..gaps.len() * 8],
                    };
                    let n = m.encode(&mut out[..limit]).ok()?;
                    p.spend(n);
                    return Some(n);
                }
                Some(_) => p.stats.answers_deferred += 1,
                None => {}
            }
        }
        if !p.established {
            return None;
        }
        // LEAF_REQ and STATE_REQ answer the peer's RANGES and DATA: as many entries as the
        // budget affords; the rest wait.
        let afford = p.affordable(cfg, now, 0);
        if !p.leaf_reqs.is_empty() && afford >= 8 {
            let n = p.leaf_reqs.len().min((limit - 4) / 4).min((afford - 4) / 4);
            let mut w = proto::Wr::new(&mut out[..limit]);
            w.u8(msg_type::LEAF_REQ).ok()?;
            w.u8(SYNC_VERSION).ok()?;
            w.u16(n as u16).ok()?;
            for l in p.leaf_reqs.drain(..n) {
                w.u32(l).ok()?;
            }
            p.spend(w.pos());
            return Some(w.pos());
        }
        if !p.state_reqs.is_empty() && afford >= 16 {
            let n = p
                .state_reqs
                .len()
                .min((limit - 4) / 12)
                .min((afford - 4) / 12);
            let mut w = proto::Wr::new(&mut out[..limit]);
            w.u8(msg_type::STATE_REQ).ok()?;
            w.u8(SYNC_VERSION).ok()?;
            w.u16(n as u16).ok()?;
            for id in p.state_reqs.drain(..n) {
                w.u64(id.id).ok()?;
                w.u32(id.creator).ok()?;
            }
            p.spend(w.pos());
            return Some(w.pos());
        }
        // Requester pays: our PAD for the answers the peer sent us (not an answer itself:
        // at most 2/`pad_divisor` of them).
        if let Some(n) = p.pad_due(limit) {
            let m = SyncMsg::Pad {
                want: 0,
                len: (n - proto::PAD_HDR) as u16,
            };
            let n = m.encode(&mut out[..limit]).ok()?;
            p.pad_owed -= n as u64;
            p.pad_allow -= n as u64;
            p.stats.pad_tx_bytes += n as u64;
            return Some(n);
        }
        if p.tx.records_in_flight < cfg.records_window && p.busy() {
            // Repairs and anti-entropy answers are paid from the peer's answer budget,
            // beyond the reserve for the small answers.
            let room = limit.min(p.affordable(cfg, now, ANSWER_RESERVE));
            if room > RECORDS_HDR {
                if let Some(n) = build_records(cfg, p, &self.table, now, &mut out[..room]) {
                    p.spend(n);
                    p.starved = false;
                    return Some(n);
                }
            }
            if !p.dirty.is_empty() || !p.leaves.is_empty() {
                // Nothing fits the budget: wait for the peer's bytes, and ask it to pay
                // (PAD{want}, once per `probe_interval`; not an answer: our own timer).
                if !p.starved {
                    p.starved = true;
                    p.stats.answers_deferred += 1;
                }
                if now >= p.pay_req_at {
                    p.pay_req_at = now + cfg.probe_interval;
                    p.stats.pay_requests += 1;
                    return p.pay_request(cfg).encode(&mut out[..limit]).ok();
                }
                return None;
            }
        }
        p.starved = false;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` of `pkt` through a fresh peer's reassembly; the packet once complete
    /// (it must complete on the last piece that adds bytes, and not before).
    fn reassemble_pieces(pieces: &[(usize, usize)], pkt: &[u8]) -> Option<Vec<u8>> {
        let cfg = ReplicaConfig::new(1, Dialect::OpenbsdV6);
        let mut p = Peer::new(&cfg, 64, Instant::now());
        let mut spare = Injector::new(cfg.local_dialect, cfg.local_mtu, 4);
        let mut done = None;
        let mut seen = vec![false; pkt.len()];
        for &(a, b) in pieces {
            let c = reassemble(
                &mut p,
                &mut spare,
                7,
                Dialect::OpenbsdV6,
                1,
                a as u16,
                pkt.len() as u16,
                &pkt[a..b],
            );
            let new = seen[a..b].iter().any(|s| !s);
            seen[a..b].iter_mut().for_each(|s| *s = true);
            let all = seen.iter().all(|&s| s);
            match c {
                Some(c) => {
                    assert!(all && new && done.is_none(), "completed early or twice");
                    done = Some(c.bytes.into_owned());
                }
                None => assert!(!(all && new), "did not complete on the last byte"),
            }
        }
        done
    }

    /// Any cut of a packet into pieces, delivered in any order with duplicates, reassembles
    /// to the packet exactly, and completes on its last missing byte.
    #[test]
    fn pieces_reassemble_in_any_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..2000 {
            let total = 1 + rnd(1500);
            let pkt: Vec<u8> = (0..total).map(|i| (i * 7 + round) as u8).collect();
            let mut cuts: Vec<usize> = (0..rnd(6)).map(|_| rnd(total)).collect();
            cuts.extend([0, total]);
            cuts.sort();
            cuts.dedup();
            let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            if rnd(2) == 0 && pieces.len() > 1 {
                let d = pieces[rnd(pieces.len())];
                pieces.push(d); // a duplicate
            }
            for i in (1..pieces.len()).rev() {
                pieces.swap(i, rnd(i + 1));
            }
            let out = reassemble_pieces(&pieces, &pkt);
            assert_eq!(out.as_deref(), Some(&pkt[..]), "round {round} {pieces:?}");
        }
    }
}

//! The pf emulator: an in-process stand-in for a pf kernel and its pfsync(4).
//!
//! pf does not run on Linux, so testbeds, the demo and CI use this instead: it churns a
//! realistic state table and speaks pfsync on the sync interface the way the kernels do
//! (`docs/reference/pfsync-wire.md` §8/§9): `INS` on create, `UPD_C` on change collapsed per
//! state until `maxupd` or the 1 s flush, `DEL_C` on removal, `UPD_REQ` for unknown `UPD_C`,
//! full `UPD` answers, bulk updates (`BUS START`, `UPD`…, `BUS END`) and stale corrections.
//!
//! Sans-IO: no sockets and no clocks. The driver feeds received packets to
//! [`Emulator::on_receive`], calls [`Emulator::handle_timeout`] at [`Emulator::poll_timeout`],
//! and sends what [`Emulator::poll_transmit`] produces.

pub mod churn;
pub mod rng;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::table::{Applied, IdMap, StateTable};
use crate::wire::{
    BusStatus, Dialect, Message, Packet, PacketWriter, StateId, StateRepr, UpdCRepr, WireError,
    HEADER_LEN, PFSYNC_DFLTTL,
};
use churn::{Flow, Step};
use rng::Rng;

/// How the emulated kernel is set up (`ifconfig pfsync0 …`, `set limit states`, `set hostid`).
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub dialect: Dialect,
    /// `pf_status.hostid`: the creatorid of the states we create. Must be non-zero.
    pub hostid: u32,
    /// New states per second while churning.
    pub rate: u32,
    /// `set limit states`: no new states while the table (own + imported) holds this many.
    pub max_states: usize,
    /// `ifconfig pfsync0 maxupd`: changes of one pending state that force a flush.
    pub maxupd: u8,
    pub seed: u64,
    /// The interface states are bound to (`ifname` of every state we create).
    pub ifname: String,
    /// Largest pfsync packet we build (pfsync_header onwards), like pfsync0's MTU minus IP.
    pub mtu: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            dialect: Dialect::OpenbsdV6,
            hostid: 1,
            rate: 200,
            max_states: 10_000,
            maxupd: 128,
            seed: 0,
            ifname: "em0".into(),
            mtu: 1480,
        }
    }
}

/// Why a received packet was dropped; [`RecvDrop::name`] is the `pfsyncstats` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecvDrop {
    /// Not received on the sync interface.
    BadIf,
    /// IP TTL is not 255 (the packet crossed a router).
    BadTtl,
    /// Shorter than `pfsync_header`.
    Short,
    BadVer,
    BadLen,
    BadAct,
    /// A state the kernel would refuse (bad timeout, af, peer state, direction…).
    BadVal,
}

impl RecvDrop {
    pub const fn name(self) -> &'static str {
        match self {
            RecvDrop::BadIf => "badif",
            RecvDrop::BadTtl => "badttl",
            RecvDrop::Short => "hdrops",
            RecvDrop::BadVer => "badver",
            RecvDrop::BadLen => "badlen",
            RecvDrop::BadAct => "badact",
            RecvDrop::BadVal => "badval",
        }
    }

    fn from_wire(e: &WireError) -> RecvDrop {
        match e {
            WireError::Truncated { offset, .. } if *offset < HEADER_LEN => RecvDrop::Short,
            WireError::BadVersion { .. } => RecvDrop::BadVer,
            WireError::BadAction { .. } => RecvDrop::BadAct,
            WireError::BadValue { .. } => RecvDrop::BadVal,
            _ => RecvDrop::BadLen,
        }
    }
}

impl fmt::Display for RecvDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Receive-side drop counters, named like the kernel's `pfsyncstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropStats {
    pub hdrops: u64,
    pub badif: u64,
    pub badttl: u64,
    pub badver: u64,
    pub badlen: u64,
    pub badact: u64,
    pub badval: u64,
    /// Updates older than our copy (ours kept and sent back); not a packet drop.
    pub stale: u64,
}

impl DropStats {
    /// `(counter name, value)` for every counter, for JSON status output.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("hdrops", self.hdrops),
            ("badif", self.badif),
            ("badttl", self.badttl),
            ("badver", self.badver),
            ("badlen", self.badlen),
            ("badact", self.badact),
            ("badval", self.badval),
            ("stale", self.stale),
        ]
        .into_iter()
    }

    fn count(&mut self, d: RecvDrop) {
        let c = match d {
            RecvDrop::BadIf => &mut self.badif,
            RecvDrop::BadTtl => &mut self.badttl,
            RecvDrop::Short => &mut self.hdrops,
            RecvDrop::BadVer => &mut self.badver,
            RecvDrop::BadLen => &mut self.badlen,
            RecvDrop::BadAct => &mut self.badact,
            RecvDrop::BadVal => &mut self.badval,
        };
        *c += 1;
    }
}

/// What the emulated kernel has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// States created / changed / removed by our churn.
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// pfsync packets and messages sent (`opackets`).
    pub sent_packets: u64,
    pub sent_messages: u64,
    /// Messages we could not encode (or that did not fit an empty packet).
    pub oerrors: u64,
    /// pfsync packets received (`ipackets`, before the checks) and messages applied.
    pub received_packets: u64,
    pub received_messages: u64,
    /// `UPD_REQ`s sent for unknown states, and full `UPD`s sent in answer to requests.
    pub upd_req_sent: u64,
    pub upd_req_answered: u64,
    /// Bulk updates we sent (one per request served) and bulk requests we sent (incl. retries).
    pub bulk_sent: u64,
    pub bulk_requests: u64,
    /// States that timed out (`pf_purge_expired_states`), own and imported.
    pub expired: u64,
    /// Our own bulk request completed (`BUS END` received) or gave up after the last retry.
    pub bulk_done: bool,
    pub drops: DropStats,
}

impl EmulatorStats {
    /// Every counter by name (drop counters included), for status output and metrics.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = [
            ("created", self.created),
            ("updated", self.updated),
            ("deleted", self.deleted),
            ("sent_packets", self.sent_packets),
            ("sent_messages", self.sent_messages),
            ("oerrors", self.oerrors),
            ("received_packets", self.received_packets),
            ("received_messages", self.received_messages),
            ("upd_req_sent", self.upd_req_sent),
            ("upd_req_answered", self.upd_req_answered),
            ("bulk_sent", self.bulk_sent),
            ("bulk_requests", self.bulk_requests),
            ("expired", self.expired),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        v.extend(self.drops.iter().map(|(k, c)| (k.to_string(), c)));
        v
    }
}

/// Which pfsync send queue a state is in (a state is in at most one, like `st->sync_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Q {
    Ins,
    Upd,
    UpdC,
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    q: Q,
    /// `st->sync_updates`: changes collapsed into this entry.
    updates: u8,
}

/// A bulk update being sent.
#[derive(Debug)]
struct BulkOut {
    started: bool,
    pos: usize,
}

/// Our bulk request waiting for its `BUS END`.
#[derive(Debug, Clone, Copy)]
struct BulkReq {
    tries: u8,
    deadline: Instant,
}

/// `PFSYNC_MAX_BULKTRIES`.
const MAX_BULK_TRIES: u8 = 12;
/// Flush timer: a queued change goes out at the latest this long after it was queued.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// No more creations per `handle_timeout` than this many seconds' worth (a stalled driver
/// must not cause a burst).
const MAX_CATCH_UP: Duration = Duration::from_secs(1);
/// Most new states per second: the creation loop steps by a second over the rate, so a
/// rate near 10^9 or beyond steps by 0 ns and never ends.
pub const MAX_RATE: u32 = 1_000_000;
/// How often expired states are purged (pf's purge thread runs once a second).
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// The emulated pf kernel with pfsync on one sync interface.
pub struct Emulator {
    cfg: EmulatorConfig,
    table: StateTable,
    rng: Rng,
    now: Instant,
    stats: EmulatorStats,

    churning: bool,
    next_create: Instant,
    next_id: u64,
    /// Churn life cycle of the states we created and still have.
    own: IdMap<Flow>,
    /// Next churn event per own state (one per state; entries of removed states are skipped).
    events: BinaryHeap<Reverse<(Instant, StateId)>>,

    // pfsync send queues. Entries are validated lazily against `queued` when sent, so moving
    // a state between queues or removing it is O(1).
    queued: IdMap<Queued>,
    q_ins: VecDeque<StateId>,
    q_upd: VecDeque<StateId>,
    q_updc: VecDeque<StateId>,
    q_delc: VecDeque<StateId>,
    q_req: VecDeque<StateId>,
    /// Approximate bytes queued, to flush as soon as a packet's worth is waiting.
    pending_bytes: usize,
    flush_at: Option<Instant>,
    flush_now: bool,

    bulk_out: Option<BulkOut>,
    /// Ids of the bulk being sent (snapshot at request time; reused between bulks).
    bulk_ids: Vec<StateId>,
    bulk_req: Option<BulkReq>,
    next_purge: Instant,
}

impl Emulator {
    pub fn new(cfg: EmulatorConfig, now: Instant) -> Emulator {
        let mut rng = Rng::new(cfg.seed);
        // Like pf's per-boot id base: a restarted emulator must not reuse the ids of its
        // previous life, which peers may still hold.
        let next_id = ((rng.next_u64() & 0x00ff_ffff) << 32) | 1;
        let mtu = cfg.mtu.max(HEADER_LEN + 400);
        Emulator {
            cfg: EmulatorConfig { mtu, ..cfg },
            table: StateTable::default(),
            rng,
            now,
            stats: EmulatorStats::default(),
            churning: true,
            next_create: now,
            next_id,
            own: IdMap::default(),
            events: BinaryHeap::new(),
            queued: IdMap::default(),
            q_ins: VecDeque::new(),
            q_upd: VecDeque::new(),
            q_updc: VecDeque::new(),
            q_delc: VecDeque::new(),
            q_req: VecDeque::new(),
            pending_bytes: 0,
            flush_at: None,
            flush_now: false,
            bulk_out: None,
            bulk_ids: Vec::new(),
            bulk_req: None,
            next_purge: now + PURGE_INTERVAL,
        }
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.cfg
    }
    pub fn table(&self) -> &StateTable {
        &self.table
    }
    /// The emulated table's digest (see [`StateTable::digest`]).
    pub fn digest(&mut self) -> crate::table::Digest {
        self.table.digest()
    }
    pub fn stats(&self) -> EmulatorStats {
        self.stats
    }
    pub fn is_churning(&self) -> bool {
        self.churning
    }
    /// Number of states we created that are still alive.
    pub fn own_states(&self) -> usize {
        self.own.len()
    }
    /// True while a packet is waiting to be built (something queued and the flush is due,
    /// or a bulk update is being sent).
    pub fn has_pending_flush(&self) -> bool {
        self.flush_now || self.bulk_out.is_some()
    }

    /// Start or stop creating, changing and removing states. Stopped, the table is frozen
    /// except for what arrives over pfsync.
    pub fn set_churn(&mut self, on: bool) {
        if on && !self.churning {
            // Resume from now: no burst of creations for the time we were stopped.
            self.next_create = self.now;
        }
        self.churning = on;
    }

    /// Create `n` states at once (no rate limit, but within `max_states`); they then follow
    /// their life cycles while churning. For late-join and bulk tests.
    pub fn create_states(&mut self, n: usize) {
        for _ in 0..n {
            if self.table.len() >= self.cfg.max_states {
                break;
            }
            self.create_one(self.now, true);
        }
    }

    /// Like `ifconfig pfsync0 up`: ask peers for a bulk update (`UPD_REQ` 0/0), retried
    /// every 5 s (OpenBSD: 2 s) up to 12 times until a `BUS END` arrives.
    pub fn request_bulk(&mut self) {
        self.stats.bulk_done = false;
        self.send_bulk_request(1);
    }

    /// Advance churn, the flush timer and the bulk request retry timer to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        if self.churning {
            if now.saturating_duration_since(self.next_create) > MAX_CATCH_UP {
                self.next_create = now - MAX_CATCH_UP;
            }
            let interval = Duration::from_secs(1) / self.cfg.rate.max(1);
            while self.cfg.rate > 0 && self.next_create <= now {
                if self.table.len() < self.cfg.max_states {
                    let at = self.next_create;
                    self.create_one(at, false);
                }
                self.next_create += interval;
            }
            while let Some(&Reverse((at, id))) = self.events.peek() {
                if at > now {
                    break;
                }
                self.events.pop();
                self.churn_event(id, at);
            }
        }
        // An idle emulated firewall (churn off) is frozen in time: nothing expires, so the
        // tables of a testbed can be compared at rest.
        if self.churning && now >= self.next_purge {
            self.next_purge = now + PURGE_INTERVAL;
            self.purge_expired(now);
        }
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_now = true;
        }
        if let Some(req) = self.bulk_req {
            if req.deadline <= now {
                if req.tries >= MAX_BULK_TRIES {
                    // The kernels "pretend OK" after the last try.
                    self.bulk_req = None;
                    self.stats.bulk_done = true;
                } else {
                    self.send_bulk_request(req.tries + 1);
                }
            }
        }
    }

    /// When [`Emulator::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.churning {
            if self.cfg.rate > 0 {
                consider(Some(self.next_create));
            }
            consider(self.events.peek().map(|Reverse((at, _))| *at));
        }
        if !self.flush_now {
            consider(self.flush_at);
        }
        consider(self.bulk_req.map(|r| r.deadline));
        if self.churning && !self.table.is_empty() {
            consider(Some(self.next_purge));
        }
        t
    }

    /// States time out like pf's (pf_purge_expired_states): each is unlinked and announced
    /// with `DEL_C` (pf_remove_state → pfsync_delete_state), own and imported alike, so
    /// mirrors never need to guess.
    fn purge_expired(&mut self, now: Instant) {
        let due: Vec<StateId> = self
            .table
            .iter()
            .filter(|e| e.deadline() <= now)
            .map(|e| e.id())
            .collect();
        for id in due {
            self.own.remove(&id);
            self.table.apply(&Message::DelC(id), now);
            self.stats.expired += 1;
            self.enqueue_del(id);
        }
    }

    /// Build the next pfsync packet the kernel sends (from `pfsync_header` on, no IP header)
    /// into `out`; `None` when nothing is due. Call until `None` after every event.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        if !self.flush_now && self.bulk_out.is_none() {
            return None;
        }
        let cap = out.len().min(self.cfg.mtu);
        let mut w = PacketWriter::new(self.cfg.dialect, &mut out[..cap]);
        let mut full = false;
        let now = self.now;

        // Order as the kernels' queue walk: requests, inserts, full updates, compressed
        // updates, deletes; then the bulk stream.
        macro_rules! drain {
            ($queue:expr, $tracked:expr, $msg:expr) => {
                while !full {
                    let Some(&id) = $queue.front() else { break };
                    let msg: Option<Message> = $msg(self, id);
                    let Some(msg) = msg else {
                        $queue.pop_front();
                        continue;
                    };
                    match w.push(&msg) {
                        Ok(true) => {
                            $queue.pop_front();
                            if $tracked {
                                self.unqueue(id);
                            }
                            self.stats.sent_messages += 1;
                        }
                        Ok(false) if !w.is_empty() => full = true,
                        // Does not fit even an empty packet, or not expressible: drop it.
                        _ => {
                            $queue.pop_front();
                            self.unqueue(id);
                            self.stats.oerrors += 1;
                        }
                    }
                }
            };
        }
        drain!(self.q_req, false, |_: &mut Self, id| Some(Message::UpdReq(
            id
        )));
        drain!(self.q_ins, true, |e: &mut Self, id| e
            .queued_msg(id, Q::Ins));
        drain!(self.q_upd, true, |e: &mut Self, id| e
            .queued_msg(id, Q::Upd));
        drain!(self.q_updc, true, |e: &mut Self, id| e
            .queued_msg(id, Q::UpdC));
        drain!(self.q_delc, false, |_: &mut Self, id| Some(Message::DelC(
            id
        )));

        if !full {
            if let Some(mut b) = self.bulk_out.take() {
                let creator = self.cfg.hostid;
                let bus = |status| Message::Bus {
                    creator,
                    endtime: 0,
                    status,
                };
                let mut done = false;
                loop {
                    let msg = if !b.started {
                        bus(BusStatus::Start)
                    } else if b.pos < self.bulk_ids.len() {
                        match self.table.update_for(self.bulk_ids[b.pos], now) {
                            Some(m) => m,
                            None => {
                                b.pos += 1;
                                continue;
                            }
                        }
                    } else {
                        bus(BusStatus::End)
                    };
                    match w.push(&msg) {
                        Ok(true) => {}
                        Ok(false) if !w.is_empty() => break,
                        _ => self.stats.oerrors += 1,
                    }
                    self.stats.sent_messages += 1;
                    if !b.started {
                        b.started = true;
                    } else if b.pos < self.bulk_ids.len() {
                        b.pos += 1;
                    } else {
                        done = true;
                        break;
                    }
                }
                if done {
                    self.stats.bulk_sent += 1;
                } else {
                    self.bulk_out = Some(b);
                }
            }
        }

        if self.q_req.is_empty()
            && self.q_ins.is_empty()
            && self.q_upd.is_empty()
            && self.q_updc.is_empty()
            && self.q_delc.is_empty()
        {
            self.flush_now = false;
            self.flush_at = None;
            self.pending_bytes = 0;
        }
        if w.is_empty() {
            return None;
        }
        self.stats.sent_packets += 1;
        Some(w.finish())
    }

    /// A received pfsync packet (from `pfsync_header` on) with its IP envelope facts: the
    /// kernel's receive checks, then the table semantics. Replies come out of
    /// [`Emulator::poll_transmit`].
    pub fn on_receive(
        &mut self,
        payload: &[u8],
        ttl: u8,
        on_sync_if: bool,
        now: Instant,
    ) -> Result<(), RecvDrop> {
        self.now = self.now.max(now);
        self.stats.received_packets += 1;
        let r = self.check_and_apply(payload, ttl, on_sync_if);
        if let Err(d) = r {
            self.stats.drops.count(d);
        }
        r
    }

    fn check_and_apply(
        &mut self,
        payload: &[u8],
        ttl: u8,
        on_sync_if: bool,
    ) -> Result<(), RecvDrop> {
        if !on_sync_if {
            return Err(RecvDrop::BadIf);
        }
        if ttl != PFSYNC_DFLTTL {
            return Err(RecvDrop::BadTtl);
        }
        if payload.len() < HEADER_LEN {
            return Err(RecvDrop::Short);
        }
        let pkt =
            Packet::new_checked(payload, self.cfg.dialect).map_err(|e| RecvDrop::from_wire(&e))?;
        for msg in pkt.messages() {
            self.stats.received_messages += 1;
            self.apply_received(&msg);
        }
        Ok(())
    }

    fn apply_received(&mut self, msg: &Message) {
        let now = self.now;
        match msg {
            // Answered from our table: any state we hold, own or imported.
            Message::UpdReq(id) if *id != StateId::BULK => {
                if self.table.get(*id).is_some() {
                    self.enqueue_upd(*id);
                    self.stats.upd_req_answered += 1;
                }
                return;
            }
            Message::Bus {
                status: BusStatus::Start,
                ..
            } => {
                // The bulk is coming: give it time (FreeBSD re-arms its fail timer on START).
                if let Some(r) = &mut self.bulk_req {
                    r.deadline = r.deadline.max(now + Duration::from_secs(30));
                }
            }
            Message::Bus {
                status: BusStatus::End,
                ..
            } => {
                self.stats.bulk_done |= self.bulk_req.take().is_some();
            }
            _ => {}
        }
        match self.table.apply(msg, now) {
            Applied::NeedUpdate(id) => self.enqueue_req(id),
            Applied::BulkRequested => self.start_bulk(),
            Applied::Stale(id) => {
                self.stats.drops.stale += 1;
                self.send_correction(id);
            }
            Applied::Deleted(id) => {
                self.own.remove(&id);
                self.unqueue(id);
            }
            Applied::Cleared(_) => {
                let table = &self.table;
                self.own.retain(|id, _| table.get(*id).is_some());
            }
            _ => {}
        }
    }

    /// Our copy beat an incoming update: send it back so the peer catches up.
    fn send_correction(&mut self, id: StateId) {
        if self.cfg.dialect == Dialect::NetbsdV3 {
            // NetBSD answers staleness with the full state.
            self.enqueue_upd(id);
        } else {
            self.note_change(id);
            self.flush_now = true;
        }
    }

    fn start_bulk(&mut self) {
        if self.bulk_out.is_some() {
            // Already streaming; the kernels do not restart a running bulk.
            return;
        }
        self.bulk_ids.clear();
        self.bulk_ids.extend(self.table.iter().map(|e| e.id()));
        self.bulk_out = Some(BulkOut {
            started: false,
            pos: 0,
        });
    }

    fn send_bulk_request(&mut self, tries: u8) {
        let wait = if self.cfg.dialect == Dialect::OpenbsdV6 {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        self.bulk_req = Some(BulkReq {
            tries,
            deadline: self.now + wait,
        });
        self.stats.bulk_requests += 1;
        self.enqueue_req(StateId::BULK);
    }

    /// Create one state: a new flow's first packet, or (`established`) an established TCP
    /// connection, the long-lived kind (tcp.established 24 h) that fills a busy table.
    fn create_one(&mut self, at: Instant, established: bool) {
        let id = StateId::new(self.next_id, self.cfg.hostid);
        self.next_id += 1;
        let (mut s, mut flow, mut first) =
            churn::create(&mut self.rng, self.cfg.dialect, id, &self.cfg.ifname);
        while established
            && !matches!(
                flow,
                churn::Flow::Tcp {
                    phase: churn::TcpPhase::Established,
                    ..
                }
            )
        {
            if !matches!(flow, churn::Flow::Tcp { .. }) {
                (s, flow, _) = churn::create(&mut self.rng, self.cfg.dialect, id, &self.cfg.ifname);
                continue;
            }
            match churn::step(&mut self.rng, &mut flow, &mut s) {
                churn::Step::Changed(next) => first = next,
                churn::Step::Remove => {
                    unreachable!("a TCP flow reaches established before it ends")
                }
            }
        }
        self.table.apply(&Message::Ins(s), at);
        self.own.insert(id, flow);
        self.events.push(Reverse((at + first, id)));
        self.stats.created += 1;
        self.queued.insert(
            id,
            Queued {
                q: Q::Ins,
                updates: 0,
            },
        );
        self.q_ins.push_back(id);
        self.add_pending(self.full_len());
    }

    fn churn_event(&mut self, id: StateId, at: Instant) {
        let Some(flow) = self.own.get_mut(&id) else {
            return; // removed meanwhile (DEL_C/CLR from a peer)
        };
        let Some(e) = self.table.get(id) else {
            self.own.remove(&id);
            return;
        };
        let mut s = e.raw();
        match churn::step(&mut self.rng, flow, &mut s) {
            Step::Changed(next) => {
                // Apply exactly what goes on the wire, so our table and the peers' agree.
                let u = self.upd_c_of(&s);
                self.table.apply(&Message::UpdC(u), at);
                self.events.push(Reverse((at + next, id)));
                self.stats.updated += 1;
                self.note_change(id);
            }
            Step::Remove => {
                self.own.remove(&id);
                self.table.apply(&Message::DelC(id), at);
                self.stats.deleted += 1;
                self.enqueue_del(id);
            }
        }
    }

    /// A state changed: queue a `UPD_C` unless it is already queued, in which case the
    /// change is collapsed into the pending entry (serialised at send time).
    fn note_change(&mut self, id: StateId) {
        match self.queued.get_mut(&id) {
            Some(e) => {
                e.updates = e.updates.saturating_add(1);
                if e.updates >= self.cfg.maxupd {
                    self.flush_now = true;
                }
            }
            None => {
                self.queued.insert(
                    id,
                    Queued {
                        q: Q::UpdC,
                        updates: 0,
                    },
                );
                self.q_updc.push_back(id);
                self.add_pending(self.upd_c_len());
                if self.cfg.maxupd <= 1 {
                    self.flush_now = true;
                }
            }
        }
    }

    /// Queue a full `UPD` (request answer, stale correction) and push it out now.
    fn enqueue_upd(&mut self, id: StateId) {
        match self.queued.get_mut(&id) {
            Some(e) if e.q == Q::UpdC => {
                e.q = Q::Upd;
                self.q_upd.push_back(id);
                self.add_pending(self.full_len());
            }
            Some(_) => {}
            None => {
                self.queued.insert(
                    id,
                    Queued {
                        q: Q::Upd,
                        updates: 0,
                    },
                );
                self.q_upd.push_back(id);
                self.add_pending(self.full_len());
            }
        }
        self.flush_now = true;
    }

    fn enqueue_del(&mut self, id: StateId) {
        if let Some(q) = self.queued.remove(&id) {
            if q.q == Q::Ins {
                // The peers never heard of it: nothing to send (pfsync_delete_state).
                return;
            }
        }
        self.q_delc.push_back(id);
        self.add_pending(self.small_len());
    }

    fn enqueue_req(&mut self, id: StateId) {
        if !self.q_req.contains(&id) {
            self.q_req.push_back(id);
            self.add_pending(self.small_len());
            if id != StateId::BULK {
                self.stats.upd_req_sent += 1;
            }
        }
        self.flush_now = true;
    }

    fn unqueue(&mut self, id: StateId) {
        self.queued.remove(&id);
    }

    /// The message for a queue entry, if the entry is still current.
    fn queued_msg(&mut self, id: StateId, q: Q) -> Option<Message> {
        match self.queued.get(&id) {
            Some(e) if e.q == q => {}
            _ => return None,
        }
        let Some(e) = self.table.get(id) else {
            self.queued.remove(&id);
            return None;
        };
        Some(match q {
            Q::Ins => Message::Ins(e.present(self.now)),
            Q::Upd => Message::Upd(e.present(self.now)),
            Q::UpdC => Message::UpdC(self.upd_c_of(&e.present(self.now))),
        })
    }

    /// The `pfsync_upd_c` for a state, as the dialect's kernel fills it.
    fn upd_c_of(&self, s: &StateRepr) -> UpdCRepr {
        UpdCRepr::of(s, self.cfg.dialect)
    }

    fn add_pending(&mut self, bytes: usize) {
        if self.flush_at.is_none() {
            self.flush_at = Some(self.now + FLUSH_INTERVAL);
        }
        self.pending_bytes += bytes;
        // Headroom for the header, a subheader per action and FreeBSD's EOF.
        if self.pending_bytes + HEADER_LEN + 6 * 4 >= self.cfg.mtu {
            self.flush_now = true;
        }
    }

    fn full_len(&self) -> usize {
        match self.cfg.dialect {
            Dialect::NetbsdV3 => 240,
            Dialect::OpenbsdV6 => 264,
            Dialect::Freebsd1301 => 242,
            Dialect::Freebsd1400 => 277,
            Dialect::Freebsd1500 => 360,
        }
    }
    fn upd_c_len(&self) -> usize {
        if self.cfg.dialect == Dialect::NetbsdV3 {
            88
        } else {
            84
        }
    }
    fn small_len(&self) -> usize {
        if self.cfg.dialect == Dialect::NetbsdV3 {
            16
        } else {
            12
        }
    }
}

#[cfg(test)]
mod tests;

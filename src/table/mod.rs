//! The state table: a mirror of pf states with pfsync apply semantics. Pure: no I/O, no
//! clocks (every call that needs time takes `now`).
//!
//! Two apply flavours share one code path:
//! - [`StateTable::apply`]: kernel semantics, as `pfsync_input` would apply a message.
//! - [`StateTable::apply_versioned`]: the same, plus a per-entry [`Version`] used by the sync
//!   layer to order deletions against updates and to pick a winner for the non-peer fields
//!   when two nodes disagree. TCP/non-TCP stale protection applies in both: a state never rolls
//!   back, whatever its version.
//!
//! The table keeps an order-independent [`Digest`] of its content, per-leaf digests (a
//! fixed hash partition of the id space) and the digests of the ranges of leaves that
//! anti-entropy compares (the digest tree, [`TREE_FANOUT`]), so that any digest a peer asks
//! about is one read. Inserts and removals adjust them at once; an update only marks its
//! entry, and the marked entries are rehashed when a digest is next read: a state updated a
//! thousand times between two anti-entropy rounds is hashed once, not a thousand times (the
//! entry hash was ≈ 6 % of a relaying gateway). Deleted ids are remembered as tombstones
//! (bounded by count and age) so deletions can be propagated and late updates refused.

pub mod digest;
mod index;
pub mod stale;
mod store;

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::time::{Duration, Instant};

pub use digest::{entry_hash, leaf_of, Digest};
use digest::{entry_hash_from, entry_prefix, peers_synced_eq, HashPrefix};
use index::Index;
use store::{Pool, Profile, MAX_RECORD};

use crate::wire::{BusStatus, Message, PeerRepr, StateId, StateRepr, UpdCRepr};

/// How far ahead of the entry read `leaf_states` prefetches.
const LEAF_PREFETCH_AHEAD: usize = 8;

/// Each range of the digest tree splits into this many children (docs/SYNC.md, *Digest*):
/// the top level is the `2^L / 64` ranges of the table, each range of span `s` > 1 has the
/// 64 children of span `s / 64` (span 1, the leaves, below a span under 64).
pub const TREE_FANOUT: usize = 64;
const TREE_FANOUT_LOG2: u32 = TREE_FANOUT.trailing_zeros();

/// Spans (as log2) of the digest tree's levels among `2^leaves_log2` leaves, top first,
/// down to 0 (the leaves).
fn tree_span_logs(leaves_log2: u8) -> impl Iterator<Item = u32> {
    let top = (leaves_log2 as u32).saturating_sub(TREE_FANOUT_LOG2);
    core::iter::successors(Some(top), |&s| {
        (s > 0).then(|| s.saturating_sub(TREE_FANOUT_LOG2))
    })
}

/// Orders changes of one state across nodes: a Lamport clock stamped by the gateway that
/// observed the change from its own firewall; ties broken by node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    pub clock: u64,
    pub node: u32,
}

impl Version {
    pub const ZERO: Version = Version { clock: 0, node: 0 };
    pub const fn new(clock: u64, node: u32) -> Version {
        Version { clock, node }
    }
}

/// Table sizing.
#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    /// The id space is split into `1 << leaves_log2` leaves for range digests (max 16).
    pub leaves_log2: u8,
    /// At most this many tombstones are kept (oldest evicted first).
    pub tombstone_max: usize,
    /// Tombstones older than this are dropped by [`StateTable::expire`].
    pub tombstone_ttl: Duration,
    /// Most states held (pf's `set limit states`): a new state beyond it is refused
    /// ([`Applied::Full`]); updates and deletes of held states still apply.
    pub max_states: usize,
    /// Below this many states [`StateTable::prefetch`] does nothing: a table whose hot
    /// entries fit the core's cache finds them there, and the prefetch pass only costs (the
    /// driver sets it from the cache size, [`StateTable::HOT_BYTES`] a state; 0: always).
    pub prefetch_min_states: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            leaves_log2: 12,
            tombstone_max: 65_536,
            tombstone_ttl: Duration::from_secs(300),
            max_states: 1_000_000,
            prefetch_min_states: 0,
        }
    }
}

/// What applying one message did.
// `Reply` carries a whole state by value: the apply path must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Inserted(StateId),
    Updated(StateId),
    /// At least one peer of the incoming update was older than ours: ours was kept for it
    /// (the rest was merged). The caller should send our copy back.
    Stale(StateId),
    /// Compressed update for a state we do not have: ask for it (`UPD_REQ`).
    NeedUpdate(StateId),
    Deleted(StateId),
    /// Delete of a state we do not have.
    NotFound(StateId),
    /// Refused: a newer version or a newer tombstone of this state is already known.
    Older(StateId),
    /// `CLR` removed this many states.
    Cleared(usize),
    /// Answer to an `UPD_REQ` for one state: our current copy as a full `Upd`.
    Reply(Message),
    /// `UPD_REQ` 0/0.
    BulkRequested,
    InsAck(StateId),
    Bus {
        creator: u32,
        status: BusStatus,
    },
    /// TDB, EOF, creatorid 0, …: nothing to do.
    Ignored,
    /// A new state refused: the table holds `max_states` already.
    Full(StateId),
}

/// What the last apply did to the entry of its message's state id (see
/// [`StateTable::last_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The table held the id before the apply.
    pub held: bool,
    /// The entry's synced content changed: inserted, removed, or its hash differs.
    pub changed: bool,
}

/// The hot part of one state, fixed-size in the dense slab: what a compressed update reads
/// and writes (id, peers, timeout, deadline, version, hash and hash prefix) and the place of
/// the rest. Everything else is in the cold record at `cold` in the table's arena and its
/// interned profile (see [`store`]). 128 bytes, aligned to a cache line, so that a
/// compressed update reads and writes exactly two lines (which the pair prefetchers fetch
/// together); laid out in order: the first line holds what a lookup compares (id, creator)
/// and the version and hashes, the second the peers.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Hot {
    id: u64,
    clock: u64,
    /// Entry hash (its share of the digests), high word first; two u64 words keep the
    /// struct 8-byte aligned.
    hash: [u64; 2],
    /// `hash` without the peers, so a compressed update rehashes only what it changed.
    prefix: HashPrefix,
    /// Nanoseconds since the table's epoch.
    deadline: i64,
    creator: u32,
    node: u32,
    src: PeerRepr,
    dst: PeerRepr,
    /// Offset of the cold record in the arena.
    cold: u32,
    leaf: u16,
    proto: u8,
    timeout: u8,
}

const _: () = assert!(core::mem::size_of::<Hot>() == 128);

impl Hot {
    #[inline]
    fn sid(&self) -> StateId {
        StateId::new(self.id, self.creator)
    }
    #[inline]
    fn version(&self) -> Version {
        Version::new(self.clock, self.node)
    }
    #[inline]
    fn raise_version(&mut self, v: Version) {
        let m = self.version().max(v);
        (self.clock, self.node) = (m.clock, m.node);
    }
    #[inline]
    fn hash(&self) -> u128 {
        ((self.hash[0] as u128) << 64) | self.hash[1] as u128
    }
    /// Recompute `hash` from the prefix and the peers.
    #[inline]
    fn rehash(&mut self) -> u128 {
        let h = entry_hash_from(&self.prefix, &self.src, &self.dst);
        self.hash = [(h >> 64) as u64, h as u64];
        h
    }
}

/// One state in the table, as [`StateTable::get`] and [`StateTable::iter`] give it: a view
/// that decodes the stored form on demand.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    t: &'a StateTable,
    h: &'a Hot,
}

impl Entry<'_> {
    pub fn id(&self) -> StateId {
        self.h.sid()
    }
    /// The stored state (its `expire`/`creation` are as last received; see [`Entry::present`]).
    /// Decoded from the stored form: prefer [`Entry::id`] when only the id is needed.
    pub fn raw(&self) -> StateRepr {
        self.t.decode(self.h).0
    }
    pub fn version(&self) -> Version {
        self.h.version()
    }
    /// Hash of the synced fields (this entry's share of the digest).
    pub fn hash(&self) -> u128 {
        entry_hash_from(&self.h.prefix, &self.h.src, &self.h.dst)
    }
    pub fn deadline(&self) -> Instant {
        self.t.instant(self.h.deadline)
    }
    /// The state with `expire` (seconds left, rounded up) and `creation` (age) relative to `now`.
    pub fn present(&self, now: Instant) -> StateRepr {
        let (mut s, seen) = self.t.decode(self.h);
        let now = self.t.rel(now);
        let left = self.h.deadline.saturating_sub(now).max(0) as u64;
        s.expire = ((left / 1_000_000).div_ceil(1000)).min(u32::MAX as u64) as u32;
        let age = now.saturating_sub(seen).max(0) as u64 / 1_000_000_000;
        s.creation = s.creation.saturating_add(age as u32);
        s
    }
}

impl core::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Entry")
            .field("state", &self.raw())
            .field("version", &self.version())
            .field("deadline", &self.h.deadline)
            .finish()
    }
}

/// Nanoseconds from `epoch` to `t` (negative before it).
#[inline]
fn rel_ns(epoch: Instant, t: Instant) -> i64 {
    let ns = |d: Duration| {
        (d.as_secs().min(i64::MAX as u64) as i64)
            .saturating_mul(NS_PER_SEC)
            .saturating_add(d.subsec_nanos() as i64)
    };
    match t.checked_duration_since(epoch) {
        Some(d) => ns(d),
        None => -ns(epoch - t),
    }
}

const NS_PER_SEC: i64 = 1_000_000_000;

/// A tombstone: 32 bytes (the version's fields are inlined so that `slot` takes its
/// padding).
#[derive(Debug, Clone, Copy)]
struct Tomb {
    clock: u64,
    node: u32,
    /// Its place in its leaf's tombstone list: removal is O(1) however many tombstones a
    /// leaf holds (the leaf hash is public, so a peer can choose ids that share one).
    slot: u32,
    at: Instant,
}

const _: () = assert!(core::mem::size_of::<Tomb>() <= 32);

impl Tomb {
    fn version(&self) -> Version {
        Version::new(self.clock, self.node)
    }
}

/// One level of the digest tree above the leaves: the digests of its ranges, the aligned
/// runs of `1 << shift` leaves. Kept up to date with the leaves' digests (one more add per
/// change), so that a range digest of the tree is one read, not a sum over its leaves.
#[derive(Debug, Clone)]
struct Level {
    shift: u32,
    sums: Vec<Digest>,
}

#[derive(Debug, Clone, Default)]
struct Leaf {
    /// Slab positions of the leaf's states (4 bytes each, not 16 for the id).
    ids: Vec<u32>,
    tombs: Vec<StateId>,
}

/// Fast hasher for `StateId` keys, keyed per map with a random secret: a compromised peer
/// chooses the ids it sends (tombstones, requests), and with a known hash it could pile
/// them into one bucket chain.
pub struct IdHasher(u64);

/// Builds [`IdHasher`]s that start from the map's secret key.
#[derive(Clone, Copy)]
pub struct IdBuild(u64);
impl Default for IdBuild {
    fn default() -> IdBuild {
        IdBuild(index::random_key())
    }
}
impl std::hash::BuildHasher for IdBuild {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        digest::mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = digest::mix64(self.0 ^ v);
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = self.0.rotate_left(32) ^ v as u64;
    }
}
pub type IdMap<V> = HashMap<StateId, V, IdBuild>;

/// Counters of what the table has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub inserts: u64,
    pub updates: u64,
    pub stale: u64,
    pub need_update: u64,
    pub deletes: u64,
    pub clears: u64,
    pub expired: u64,
    pub older: u64,
    pub tdb: u64,
    /// New states refused because the table was full.
    pub refused_full: u64,
}

/// The state table.
pub struct StateTable {
    cfg: TableConfig,
    /// Id → position in `slab` (4-byte slots; see [`index`]).
    index: Index,
    /// The entries' hot parts, dense (removal swaps the last one in).
    slab: Vec<Hot>,
    /// Per slab position, its place in its leaf's id list (kept out of [`Hot`]: only
    /// insertion and removal use it).
    leaf_slot: Vec<u32>,
    /// The entries' cold records (see [`store`]), in no particular order.
    arena: Vec<u8>,
    /// Bytes of `arena` no entry refers to any more (compacted away when over half).
    garbage: usize,
    /// Interned profiles of the entries (see [`store`]).
    pool: Pool,
    /// Time 0 of the entries' stored times (the first `now` seen).
    epoch: Option<Instant>,
    /// No state's deadline is earlier (a lower bound: deadlines set later only lower it).
    min_deadline: i64,
    /// The last `now` converted and its value: the messages of one packet share a `now`,
    /// and converting costs more than the rest of a compressed update's bookkeeping.
    last_now: Option<(Instant, i64)>,
    tombs: IdMap<Tomb>,
    tomb_order: VecDeque<StateId>,
    leaves: Vec<Leaf>,
    /// The leaves' digests, dense (16 B each, 64 KiB at 4096 leaves): every update adds to
    /// one, and a separate array keeps them in cache.
    leaf_digests: Vec<Digest>,
    /// The digest tree's levels of span > 1, top first (one of 64 ranges at 4096 leaves).
    levels: Vec<Level>,
    digest: Digest,
    /// Digests (of leaves or of tree ranges) read by `range_digest`: its cost.
    range_reads: u64,
    /// Tombstone-list entries read to remove tombstones (tests: removal is O(1)).
    #[cfg(test)]
    tomb_reads: u64,
    /// Slab positions of entries whose `hash` (what the digests include) is out of date
    /// (see the module docs); may name a position twice or one that moved: the bit in
    /// `unhashed_bits` decides. A bit per entry, outside [`Hot`], which is full.
    unhashed: Vec<u32>,
    unhashed_bits: Vec<u64>,
    stats: TableStats,
    last_bus: Option<(u32, BusStatus)>,
    /// What the last apply did (see [`StateTable::last_change`]).
    change: Change,
    /// States held per creator id (per-site caps are checked against it).
    per_creator: HashMap<u32, u32, IdBuild>,
}

/// Default `PFTM_*` timeouts (seconds) for refreshing a state when an update carries no
/// usable `expire` (FreeBSD/OpenBSD zero it in `UPD_C`).
fn default_timeout(timeout: u8) -> u32 {
    const T: [u32; 20] = [
        120, 30, 86_400, 900, 45, 90, 60, 30, 60, 20, 10, 60, 30, 60, 30, 10, 0, 0, 0, 30,
    ];
    match T.get(timeout as usize) {
        Some(&t) if t > 0 => t,
        _ => 60,
    }
}

impl StateTable {
    /// Bytes of a state's hot entry: what an update reads and writes (two cache lines).
    pub const HOT_BYTES: usize = core::mem::size_of::<Hot>();

    pub fn new(cfg: TableConfig) -> StateTable {
        assert!(cfg.leaves_log2 <= 16, "leaves_log2 must be <= 16");
        StateTable {
            cfg,
            index: Index::new(),
            slab: Vec::new(),
            leaf_slot: Vec::new(),
            arena: Vec::new(),
            garbage: 0,
            pool: Pool::default(),
            epoch: None,
            min_deadline: i64::MAX,
            last_now: None,
            tombs: IdMap::default(),
            tomb_order: VecDeque::new(),
            leaves: vec![Leaf::default(); 1usize << cfg.leaves_log2],
            leaf_digests: vec![Digest::ZERO; 1usize << cfg.leaves_log2],
            levels: tree_span_logs(cfg.leaves_log2)
                .filter(|&s| s > 0)
                .map(|shift| Level {
                    shift,
                    sums: vec![Digest::ZERO; 1usize << (cfg.leaves_log2 as u32 - shift)],
                })
                .collect(),
            digest: Digest::ZERO,
            range_reads: 0,
            #[cfg(test)]
            tomb_reads: 0,
            unhashed: Vec::new(),
            unhashed_bits: Vec::new(),
            stats: TableStats::default(),
            last_bus: None,
            change: Change::default(),
            per_creator: HashMap::default(),
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }
    pub fn len(&self) -> usize {
        self.slab.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
    /// How many states with this creator id the table holds.
    pub fn creator_len(&self, creator: u32) -> usize {
        self.per_creator.get(&creator).map_or(0, |&n| n as usize)
    }
    pub fn stats(&self) -> TableStats {
        self.stats
    }
    pub fn get(&self, id: StateId) -> Option<Entry<'_>> {
        self.find(id).map(|i| Entry {
            t: self,
            h: &self.slab[i],
        })
    }
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        self.slab.iter().map(move |h| Entry { t: self, h })
    }
    /// The entries from position `from` on (`iter().skip(from)` without the walk): a bulk
    /// answer resumes where it stopped. Positions move when states are removed (the last
    /// takes the removed one's place), so a walk across removals may miss a state.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = Entry<'_>> + '_ {
        self.slab
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(move |h| Entry { t: self, h })
    }
    /// Distinct profiles (interned rarely varying field sets) held; see [`store`].
    pub fn profile_count(&self) -> usize {
        self.pool.len()
    }
    /// Bytes of the cold records' arena (live and not yet compacted).
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    #[inline]
    fn find(&self, id: StateId) -> Option<usize> {
        let slab = &self.slab;
        self.index
            .find(id, |p| slab[p as usize].sid())
            .map(|p| p as usize)
    }

    /// `now` in nanoseconds since the epoch, which the first call sets.
    #[inline]
    fn clock(&mut self, now: Instant) -> i64 {
        match self.last_now {
            Some((t, ns)) if t == now => ns,
            _ => {
                let ns = rel_ns(*self.epoch.get_or_insert(now), now);
                self.last_now = Some((now, ns));
                ns
            }
        }
    }
    /// `t` in nanoseconds since the epoch (0 before any state was stored).
    fn rel(&self, t: Instant) -> i64 {
        self.epoch.map_or(0, |e| rel_ns(e, t))
    }
    fn instant(&self, ns: i64) -> Instant {
        let e = self.epoch.expect("a stored time implies an epoch");
        if ns >= 0 {
            e + Duration::from_nanos(ns as u64)
        } else {
            e - Duration::from_nanos(ns.unsigned_abs())
        }
    }

    /// The full state of `h` and the time of its last full update.
    fn decode(&self, h: &Hot) -> (StateRepr, i64) {
        let mut s = StateRepr::default();
        let (profile, seen) = store::decode(&self.arena[h.cold as usize..], &mut s);
        self.pool.get(profile).fill(&mut s);
        s.id = h.sid();
        s.src = h.src;
        s.dst = h.dst;
        s.proto = h.proto;
        s.timeout = h.timeout;
        (s, seen)
    }

    /// Store the cold record of `s`, over the one at `old` when it fits; returns its offset.
    fn put_cold(&mut self, s: &StateRepr, profile: u32, seen: i64, old: Option<u32>) -> u32 {
        let mut buf = [0u8; MAX_RECORD];
        let n = store::encode(s, profile, seen, &mut buf);
        if let Some(o) = old {
            let o = o as usize;
            let had = store::record_len(&self.arena[o..]);
            if n <= had {
                self.arena[o..o + n].copy_from_slice(&buf[..n]);
                self.garbage += had - n;
                return o as u32;
            }
            self.garbage += had;
        }
        let at = self.arena.len();
        assert!(at + n <= u32::MAX as usize, "state arena beyond 4 GiB");
        self.arena.extend_from_slice(&buf[..n]);
        at as u32
    }

    /// Rewrite the arena without garbage once garbage is over half of it.
    fn maybe_compact(&mut self) {
        if self.garbage < 4096 || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut next = Vec::with_capacity(self.arena.len() - self.garbage);
        for h in &mut self.slab {
            let o = h.cold as usize;
            let n = store::record_len(&self.arena[o..]);
            h.cold = next.len() as u32;
            next.extend_from_slice(&self.arena[o..o + n]);
        }
        self.arena = next;
        self.garbage = 0;
    }

    fn profile_at(&self, h: &Hot) -> &Profile {
        self.pool
            .get(store::profile_of(&self.arena[h.cold as usize..]))
    }
    /// The version a deleted id was deleted at, while its tombstone is kept.
    pub fn tombstone(&self, id: StateId) -> Option<Version> {
        self.tombs.get(&id).map(Tomb::version)
    }
    pub fn tombstone_count(&self) -> usize {
        self.tombs.len()
    }
    /// Last BUS seen: (creator, status).
    pub fn last_bus(&self) -> Option<(u32, BusStatus)> {
        self.last_bus
    }

    /// Digest of the whole table (O(1) plus the updates since the last read).
    pub fn digest(&mut self) -> Digest {
        self.settle();
        self.digest
    }
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }
    pub fn leaf_of(&self, id: StateId) -> usize {
        leaf_of(id, self.cfg.leaves_log2)
    }
    pub fn leaf_digest(&mut self, leaf: usize) -> Digest {
        self.settle();
        self.leaf_digests[leaf]
    }
    pub fn leaf_len(&self, leaf: usize) -> usize {
        self.leaves[leaf].ids.len()
    }
    /// Spans of the digest tree's ranges ([`TREE_FANOUT`]), top level first, down to 1:
    /// 64 and 1 at 4096 leaves.
    pub fn tree_spans(&self) -> impl Iterator<Item = usize> {
        tree_span_logs(self.cfg.leaves_log2).map(|s| 1usize << s)
    }
    /// Is `span` the span of a level of the digest tree ([`tree_spans`](Self::tree_spans))?
    pub fn is_tree_span(&self, span: usize) -> bool {
        self.tree_spans().any(|s| s == span)
    }
    /// Digest of leaves `first .. first + span` (a range digest; the part beyond the table
    /// counts as empty). O(1) for a range of the digest tree (a span of
    /// [`tree_spans`](Self::tree_spans) and `first` a multiple of it) and for the whole
    /// table; any other range sums its leaves.
    pub fn range_digest(&mut self, first: usize, span: usize) -> Digest {
        self.settle();
        let n = self.leaf_digests.len();
        if first == 0 && span >= n {
            self.range_reads += 1;
            return self.digest;
        }
        if first >= n {
            return Digest::ZERO;
        }
        if span == 1 {
            self.range_reads += 1;
            return self.leaf_digests[first];
        }
        if span.is_power_of_two() && first % span == 0 && first + span <= n {
            let shift = span.trailing_zeros();
            if let Some(l) = self.levels.iter().find(|l| l.shift == shift) {
                self.range_reads += 1;
                return l.sums[first >> shift];
            }
        }
        let leaves = &self.leaf_digests[first..(first + span).min(n)];
        self.range_reads += leaves.len() as u64;
        let mut d = Digest::ZERO;
        for l in leaves {
            d.add(l.0);
        }
        d
    }
    /// How many digests (of leaves or of tree ranges) [`range_digest`](Self::range_digest)
    /// has read: its cost, for tests and diagnostics.
    pub fn range_reads(&self) -> u64 {
        self.range_reads
    }
    /// Ids of the states in a leaf.
    pub fn leaf_states(&self, leaf: usize) -> impl ExactSizeIterator<Item = StateId> + '_ {
        let ps = &self.leaves[leaf].ids;
        // A leaf's entries lie scattered over the slab: load a few ahead of the one read.
        ps.iter().enumerate().map(move |(i, &p)| {
            if let Some(&q) = ps.get(i + LEAF_PREFETCH_AHEAD) {
                index::prefetch(&self.slab[q as usize]);
            }
            self.slab[p as usize].sid()
        })
    }
    /// Ids of the tombstones in a leaf.
    pub fn leaf_tombstones(&self, leaf: usize) -> &[StateId] {
        &self.leaves[leaf].tombs
    }
    /// Recompute the digest from scratch (tests / self-check).
    pub fn recompute_digest(&self) -> Digest {
        let mut d = Digest::ZERO;
        for h in &self.slab {
            d.add(entry_hash(&self.decode(h).0));
        }
        d
    }

    /// Apply one message with kernel semantics.
    pub fn apply(&mut self, msg: &Message, now: Instant) -> Applied {
        self.apply_inner(msg, now, None)
    }

    /// Start loading what applying updates of `ids` will read: first every index slot,
    /// then the entries those slots point at. A packet's updates hit states scattered over
    /// the table; one at a time each lookup waits for memory twice, prefetched the waits of
    /// a whole packet overlap. A hint only: nothing changes. The ids are read once, in
    /// chunks kept on the stack with their hashes (walking the packet again for the second
    /// stage, and hashing again, cost as much as the first).
    pub fn prefetch(&self, ids: impl Iterator<Item = StateId>) {
        if self.slab.len() < self.cfg.prefetch_min_states {
            return;
        }
        const CHUNK: usize = 32;
        let mut hashes = [0u64; CHUNK];
        let mut ids = ids.fuse();
        loop {
            let mut n = 0;
            for id in ids.by_ref().take(CHUNK) {
                hashes[n] = self.index.prefetch_slot(id);
                n += 1;
            }
            for &h in &hashes[..n] {
                self.prefetch_pos(self.index.likely_pos_hashed(h));
            }
            if n < CHUNK {
                return;
            }
        }
    }

    /// First stage of a prefetch: the index slot where a lookup of `id` starts.
    #[inline]
    pub fn prefetch_slot(&self, id: StateId) {
        self.index.prefetch_slot(id);
    }

    /// Second stage: the entry `id`'s slot points at (reads the slot: issue the first stage
    /// a while before).
    #[inline]
    pub fn prefetch_entry(&self, id: StateId) {
        self.prefetch_pos(self.index.likely_pos(id));
    }

    #[inline]
    fn prefetch_pos(&self, pos: Option<u32>) {
        if let Some(e) = pos.and_then(|p| self.slab.get(p as usize)) {
            index::prefetch(e);
        }
    }

    /// Apply one message carrying the version of the change (see module docs).
    pub fn apply_versioned(&mut self, msg: &Message, now: Instant, v: Version) -> Applied {
        self.apply_inner(msg, now, Some(v))
    }

    /// What the last [`apply`](Self::apply)/[`apply_versioned`](Self::apply_versioned) of an
    /// `INS`, `UPD`, `UPD_C`, `DEL` or `DEL_C` did to that state's entry: the same as
    /// comparing `get(id).map(|e| e.hash())` before and after, without the two lookups.
    /// Other messages leave it unchanged-and-not-held.
    pub fn last_change(&self) -> Change {
        self.change
    }

    #[inline]
    fn apply_inner(&mut self, msg: &Message, now: Instant, v: Option<Version>) -> Applied {
        self.change = Change::default();
        match msg {
            Message::Ins(s) | Message::Upd(s) => self.upsert(s, now, v),
            Message::UpdC(u) => self.upd_c(u, now, v),
            Message::Del(s) => self.delete(s.id, now, v),
            Message::DelC(id) => self.delete(*id, now, v),
            Message::Clr { ifname, creator } => {
                Applied::Cleared(self.clear(*creator, ifname, now, v))
            }
            Message::UpdReq(id) if *id == StateId::BULK => Applied::BulkRequested,
            Message::UpdReq(id) => match self.update_for(*id, now) {
                Some(m) => Applied::Reply(m),
                None => Applied::NotFound(*id),
            },
            Message::InsAck(id) => Applied::InsAck(*id),
            Message::Bus {
                creator, status, ..
            } => {
                self.last_bus = Some((*creator, *status));
                Applied::Bus {
                    creator: *creator,
                    status: *status,
                }
            }
            Message::Tdb(_) => {
                self.stats.tdb += 1;
                Applied::Ignored
            }
            Message::Eof => Applied::Ignored,
        }
    }

    /// Our current copy of a state as a full `UPD`.
    pub fn update_for(&self, id: StateId, now: Instant) -> Option<Message> {
        self.get(id).map(|e| Message::Upd(e.present(now)))
    }

    /// A bulk answer: `BUS START`, every state as `UPD`, `BUS END` (endtime 0, as OpenBSD).
    pub fn bulk(&self, now: Instant, creator: u32) -> impl Iterator<Item = Message> + '_ {
        core::iter::once(bus(creator, BusStatus::Start))
            .chain(self.bulk_states(0, now))
            .chain(core::iter::once(bus(creator, BusStatus::End)))
    }

    /// The states of a bulk answer from position `from` on (see [`StateTable::iter_from`]),
    /// each as a full `UPD` presented at `now`: a paced answer queues them part by part.
    pub fn bulk_states(&self, from: usize, now: Instant) -> impl Iterator<Item = Message> + '_ {
        self.iter_from(from)
            .map(move |e| Message::Upd(e.present(now)))
    }

    /// Remove states whose deadline has passed (pf purge) and tombstones past their TTL.
    /// Returns the number of states removed. Expiry leaves no tombstone: every node expires
    /// its own copy.
    pub fn expire(&mut self, now: Instant) -> usize {
        let now_ns = self.rel(now);
        let mut due: Vec<StateId> = Vec::new();
        // No state can be due before the lower bound: skip the scan of the whole table.
        if now_ns >= self.min_deadline {
            let mut min = i64::MAX;
            for e in &self.slab {
                if e.deadline <= now_ns {
                    due.push(e.sid());
                } else {
                    min = min.min(e.deadline);
                }
            }
            self.min_deadline = min;
        }
        for id in &due {
            self.remove_entry(*id);
        }
        self.stats.expired += due.len() as u64;
        while let Some(&id) = self.tomb_order.front() {
            match self.tombs.get(&id) {
                Some(t) if now.saturating_duration_since(t.at) < self.cfg.tombstone_ttl => break,
                _ => {
                    self.tomb_order.pop_front();
                    self.drop_tomb(id);
                }
            }
        }
        due.len()
    }

    /// Earliest state deadline (O(n); for tests and diagnostics).
    pub fn next_deadline(&self) -> Option<Instant> {
        let ns = self.slab.iter().map(|e| e.deadline).min()?;
        Some(self.instant(ns))
    }

    fn newer_tomb(&self, id: StateId, v: Option<Version>) -> bool {
        match (v, self.tombs.get(&id)) {
            // pf never reuses a state id: once deleted, a state stays deleted. A later full
            // state for it (a bulk answer racing the DEL_C) must not bring it back.
            (Some(_), Some(_)) => true,
            _ => false,
        }
    }

    fn upsert(&mut self, s: &StateRepr, now: Instant, v: Option<Version>) -> Applied {
        if s.id.creator == 0 {
            return Applied::Ignored;
        }
        let id = s.id;
        let Some(i) = self.find(id) else {
            if self.newer_tomb(id, v) {
                self.stats.older += 1;
                return Applied::Older(id);
            }
            if self.slab.len() >= self.cfg.max_states.min(u32::MAX as usize - 1) {
                self.stats.refused_full += 1;
                return Applied::Full(id);
            }
            self.insert_new(s, now, v.unwrap_or(Version::ZERO));
            self.stats.inserts += 1;
            self.change.changed = true;
            return Applied::Inserted(id);
        };
        self.change.held = true;
        let now_ns = self.clock(now);
        let e = &mut self.slab[i];
        let (old_prefix, old_timeout, old_peers) = (e.prefix, e.timeout, (e.src, e.dst));
        let (stale, changed, newer) = merge_into(e, &s.src, &s.dst, s.timeout, v);
        if let Some(v) = v {
            e.raise_version(v);
        }
        if stale < 2 && newer {
            // Every non-peer field but `timeout` comes from the update.
            let mut full = *s;
            (full.src, full.dst, full.timeout) = (e.src, e.dst, e.timeout);
            e.proto = s.proto;
            e.deadline = now_ns.saturating_add(s.expire as i64 * NS_PER_SEC);
            self.min_deadline = self.min_deadline.min(e.deadline);
            e.prefix = entry_prefix(&full);
            let old_cold = e.cold;
            let had = store::profile_of(&self.arena[old_cold as usize..]);
            let p = Profile::of(s);
            let profile = if *self.pool.get(had) == p {
                had
            } else {
                let n = self.pool.intern(&p);
                self.pool.release(had);
                n
            };
            self.slab[i].cold = self.put_cold(&full, profile, now_ns, Some(old_cold));
            self.maybe_compact();
        } else if e.timeout != old_timeout {
            self.refresh_prefix(i);
        }
        // The prefix holds every synced field but the peers (`timeout` included).
        let e = &self.slab[i];
        if !synced_eq(old_peers, (e.src, e.dst)) || e.prefix != old_prefix {
            self.mark_unhashed(i);
            self.change.changed = true;
        }
        if !changed && !newer && stale == 0 {
            self.stats.older += 1;
            return Applied::Older(id);
        }
        self.finish_update(id, stale)
    }

    fn upd_c(&mut self, u: &UpdCRepr, now: Instant, v: Option<Version>) -> Applied {
        let id = u.id;
        let Some(i) = self.find(id) else {
            if self.newer_tomb(id, v) {
                self.stats.older += 1;
                return Applied::Older(id);
            }
            self.stats.need_update += 1;
            return Applied::NeedUpdate(id);
        };
        self.change.held = true;
        let now_ns = self.clock(now);
        let e = &mut self.slab[i];
        let (old_timeout, old_peers) = (e.timeout, (e.src, e.dst));
        let (stale, changed, newer) = merge_into(e, &u.src, &u.dst, u.timeout, v);
        if stale < 2 && newer {
            let secs = if u.expire == 0 {
                default_timeout(u.timeout)
            } else {
                u.expire
            };
            e.deadline = now_ns.saturating_add(secs as i64 * NS_PER_SEC);
            self.min_deadline = self.min_deadline.min(e.deadline);
        }
        if let Some(v) = v {
            e.raise_version(v);
        }
        let timeout_changed = e.timeout != old_timeout;
        if timeout_changed {
            // The one synced non-peer field an update changes: the prefix absorbed it.
            self.refresh_prefix(i);
        }
        // Nothing synced changed (peers and timeout as they were): the hash is the same.
        let e = &self.slab[i];
        if timeout_changed || !synced_eq(old_peers, (e.src, e.dst)) {
            self.mark_unhashed(i);
            self.change.changed = true;
        }
        if !changed && !newer && stale == 0 {
            self.stats.older += 1;
            return Applied::Older(id);
        }
        self.finish_update(id, stale)
    }

    /// Recompute the hash prefix of `slab[i]` from its stored state.
    fn refresh_prefix(&mut self, i: usize) {
        let (s, _) = self.decode(&self.slab[i]);
        self.slab[i].prefix = entry_prefix(&s);
    }

    fn finish_update(&mut self, id: StateId, stale: u8) -> Applied {
        if stale > 0 {
            self.stats.stale += 1;
            Applied::Stale(id)
        } else {
            self.stats.updates += 1;
            Applied::Updated(id)
        }
    }

    /// The synced fields of `slab[i]` changed: its hash is recomputed at the next digest
    /// read ([`settle`](Self::settle)), however often it changes until then.
    #[inline]
    fn mark_unhashed(&mut self, i: usize) {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if self.unhashed_bits.len() <= w {
            self.unhashed_bits.resize(w + 1, 0);
        }
        if self.unhashed_bits[w] & bit == 0 {
            self.unhashed_bits[w] |= bit;
            self.unhashed.push(i as u32);
            // Moved entries leave stale positions behind; never more than the table itself.
            if self.unhashed.len() > 2 * self.slab.len() + 1024 {
                self.settle();
            }
        }
    }

    /// Clear the mark of slab position `i`, saying whether it was set.
    fn take_unhashed_bit(&mut self, i: usize) -> bool {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        match self.unhashed_bits.get_mut(w) {
            Some(b) if *b & bit != 0 => {
                *b &= !bit;
                true
            }
            _ => false,
        }
    }

    /// Add `d` (mod 2^128) to the digests that include leaf `leaf`: its own, its ranges' in
    /// the tree, the table's.
    #[inline]
    fn add_to_leaf(&mut self, leaf: usize, d: u128) {
        self.digest.add(d);
        self.leaf_digests[leaf].add(d);
        for l in &mut self.levels {
            l.sums[leaf >> l.shift].add(d);
        }
    }

    /// Bring `hash` and the digests up to date for every marked entry.
    fn settle(&mut self) {
        let mut list = std::mem::take(&mut self.unhashed);
        for &p in &list {
            // Beyond the slab, bits are clear (removal clears them).
            if !self.take_unhashed_bit(p as usize) {
                continue;
            }
            let e = &mut self.slab[p as usize];
            let (old, leaf) = (e.hash(), e.leaf as usize);
            let new = e.rehash();
            // Sums modulo 2^128: adding the difference is subtracting `old` and adding `new`.
            self.add_to_leaf(leaf, new.wrapping_sub(old));
        }
        list.clear();
        self.unhashed = list;
    }

    fn insert_new(&mut self, s: &StateRepr, now: Instant, version: Version) {
        let id = s.id;
        self.drop_tomb(id);
        let leaf = self.leaf_of(id);
        let prefix = entry_prefix(s);
        let hash = entry_hash_from(&prefix, &s.src, &s.dst);
        *self.per_creator.entry(id.creator).or_insert(0) += 1;
        let pos = self.slab.len() as u32;
        let l = &mut self.leaves[leaf];
        let slot = l.ids.len() as u32;
        l.ids.push(pos);
        self.add_to_leaf(leaf, hash);
        let now_ns = self.clock(now);
        let profile = self.pool.intern(&Profile::of(s));
        let cold = self.put_cold(s, profile, now_ns, None);
        let deadline = now_ns.saturating_add(s.expire as i64 * NS_PER_SEC);
        self.min_deadline = self.min_deadline.min(deadline);
        self.slab.push(Hot {
            id: id.id,
            clock: version.clock,
            hash: [(hash >> 64) as u64, hash as u64],
            prefix,
            deadline,
            src: s.src,
            dst: s.dst,
            creator: id.creator,
            node: version.node,
            cold,
            leaf: leaf as u16,
            proto: s.proto,
            timeout: s.timeout,
        });
        self.leaf_slot.push(slot);
        let slab = &self.slab;
        self.index.insert(id, pos, |p| slab[p as usize].sid());
    }

    fn remove_entry(&mut self, id: StateId) -> Option<Hot> {
        let slab = &self.slab;
        let i = self.index.remove(id, |p| slab[p as usize].sid())? as usize;
        let (leaf, slot) = (self.slab[i].leaf as usize, self.leaf_slot[i] as usize);
        let l = &mut self.leaves[leaf];
        l.ids.swap_remove(slot);
        if let Some(&p) = l.ids.get(slot) {
            self.leaf_slot[p as usize] = slot as u32;
        }
        let e = self.slab.swap_remove(i);
        self.leaf_slot.swap_remove(i);
        if let Some(m) = self.slab.get(i) {
            // The last entry moved into the hole: repoint its index slot and leaf entry.
            self.index
                .relocate(m.sid(), self.slab.len() as u32, i as u32);
            self.leaves[m.leaf as usize].ids[self.leaf_slot[i] as usize] = i as u32;
        }
        // The removed entry's mark goes; the moved one's moves with it.
        let last = self.slab.len();
        let moved = self.take_unhashed_bit(last);
        self.take_unhashed_bit(i);
        if moved && i < last {
            self.mark_unhashed(i);
        }
        if let std::collections::hash_map::Entry::Occupied(mut c) =
            self.per_creator.entry(id.creator)
        {
            *c.get_mut() -= 1;
            if *c.get() == 0 {
                c.remove();
            }
        }
        // What the digests include, up to date or not.
        self.add_to_leaf(leaf, e.hash().wrapping_neg());
        let rec = &self.arena[e.cold as usize..];
        self.garbage += store::record_len(rec);
        self.pool.release(store::profile_of(rec));
        self.maybe_compact();
        Some(e)
    }

    fn delete(&mut self, id: StateId, now: Instant, v: Option<Version>) -> Applied {
        // One probe: removal finds the id itself.
        match self.remove_entry(id) {
            Some(e) => {
                // Deletes win over any version (see `newer_tomb`): remove-wins keeps replicas
                // that saw a delete and a late update in different orders convergent.
                self.change = Change {
                    held: true,
                    changed: true,
                };
                self.put_tomb(id, v.unwrap_or(e.version()).max(e.version()), now);
                self.stats.deletes += 1;
                Applied::Deleted(id)
            }
            None => {
                if let Some(v) = v {
                    // Remember it so that a late insert/update of this id is refused.
                    self.put_tomb(id, v, now);
                }
                Applied::NotFound(id)
            }
        }
    }

    fn clear(
        &mut self,
        creator: u32,
        ifname: &[u8; 16],
        now: Instant,
        v: Option<Version>,
    ) -> usize {
        self.stats.clears += 1;
        // Nothing of this creator: no walk (a peer's CLR flood costs O(1) each).
        if self.creator_len(creator) == 0 {
            return 0;
        }
        let all_if = ifname[0] == 0;
        let ids: Vec<StateId> = self
            .slab
            .iter()
            .filter(|e| {
                e.creator == creator
                    && (all_if || self.profile_at(e).ifname() == ifname)
                    && v.is_none_or(|v| e.version() < v)
            })
            .map(|e| e.sid())
            .collect();
        for &id in &ids {
            let e = self.remove_entry(id).expect("present");
            self.put_tomb(id, v.unwrap_or(e.version()).max(e.version()), now);
        }
        self.stats.deletes += ids.len() as u64;
        ids.len()
    }

    fn put_tomb(&mut self, id: StateId, version: Version, now: Instant) {
        if let Some(t) = self.tombs.get_mut(&id) {
            let v = t.version().max(version);
            (t.clock, t.node) = (v.clock, v.node);
            return;
        }
        if self.cfg.tombstone_max == 0 {
            return;
        }
        while self.tombs.len() >= self.cfg.tombstone_max {
            match self.tomb_order.pop_front() {
                Some(old) => self.drop_tomb(old),
                None => break,
            }
        }
        let leaf = self.leaf_of(id);
        let list = &mut self.leaves[leaf].tombs;
        self.tombs.insert(
            id,
            Tomb {
                clock: version.clock,
                node: version.node,
                slot: list.len() as u32,
                at: now,
            },
        );
        list.push(id);
        self.tomb_order.push_back(id);
        if self.tomb_order.len() > 2 * self.tombs.len() + 1024 {
            // Drop ids whose tombstone was removed (resurrected) so the queue stays bounded.
            let tombs = &self.tombs;
            let mut seen = IdMap::<()>::default();
            self.tomb_order
                .retain(|id| tombs.contains_key(id) && seen.insert(*id, ()).is_none());
        }
    }

    fn drop_tomb(&mut self, id: StateId) {
        if let Some(t) = self.tombs.remove(&id) {
            let leaf = self.leaf_of(id);
            let list = &mut self.leaves[leaf].tombs;
            let slot = t.slot as usize;
            #[cfg(test)]
            {
                self.tomb_reads += 1;
            }
            debug_assert_eq!(list[slot], id);
            list.swap_remove(slot);
            if let Some(&moved) = list.get(slot) {
                // The leaf's last tombstone moved into the hole.
                self.tombs.get_mut(&moved).expect("listed tombstone").slot = slot as u32;
            }
            // tomb_order may still hold `id`; it is skipped when popped (not in `tombs`).
        }
    }
}

/// A bulk answer's start or end marker from `creator` (endtime 0, as OpenBSD sends it).
pub fn bus(creator: u32, status: BusStatus) -> Message {
    Message::Bus {
        creator,
        endtime: 0,
        status,
    }
}

/// Do both peers agree on the fields the entry hash covers?
#[inline]
fn synced_eq(a: (PeerRepr, PeerRepr), b: (PeerRepr, PeerRepr)) -> bool {
    peers_synced_eq(&a.0, &b.0) && peers_synced_eq(&a.1, &b.1)
}

/// Merge incoming peers and timeout into `e`. Kernel mode (`v == None`): take every
/// non-stale peer. Versioned: also never backwards, and between equally advanced copies the
/// higher version wins. Returns (stale peers, anything changed, incoming counts as newer for
/// the non-peer fields).
#[inline(always)]
fn merge_into(
    e: &mut Hot,
    src: &PeerRepr,
    dst: &PeerRepr,
    timeout: u8,
    v: Option<Version>,
) -> (u8, bool, bool) {
    let proto = e.proto;
    match v {
        None => {
            let before = (e.src, e.dst);
            let stale = stale::merge_peers(proto, &mut e.src, &mut e.dst, src, dst);
            if stale < 2 {
                e.timeout = timeout;
            }
            let changed = before != (e.src, e.dst);
            (stale, changed, true)
        }
        Some(v) => {
            let ord = v.cmp(&e.version());
            let (s1, c1) = stale::merge_peer_versioned(proto, true, &mut e.src, src, ord);
            let (s2, c2) = stale::merge_peer_versioned(proto, false, &mut e.dst, dst, ord);
            let stale = s1 as u8 + s2 as u8;
            // Non-peer fields follow the version; equal versions tie-break on timeout so that
            // both sides pick the same copy.
            let newer = match ord {
                core::cmp::Ordering::Greater => true,
                core::cmp::Ordering::Less => false,
                core::cmp::Ordering::Equal => timeout >= e.timeout,
            };
            let mut changed = c1 || c2;
            if stale < 2 && newer && e.timeout != timeout {
                e.timeout = timeout;
                changed = true;
            }
            (stale, changed, newer || c1 || c2)
        }
    }
}

impl Default for StateTable {
    fn default() -> Self {
        StateTable::new(TableConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored times are nanoseconds from the first `now` seen: deadlines, `expire` and
    /// `creation` come back exactly, also for times before that epoch.
    #[test]
    fn stored_times_are_exact_around_the_epoch() {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let mut t = StateTable::default();
        let st = |id| StateRepr {
            id: StateId::new(id, 9),
            expire: 60,
            creation: 5,
            ..Default::default()
        };
        t.apply(&Message::Ins(st(1)), t0);
        let early = t0 - Duration::from_millis(10_500);
        t.apply(&Message::Ins(st(2)), early);
        for (id, at) in [(1, t0), (2, early)] {
            let e = t.get(StateId::new(id, 9)).unwrap();
            assert_eq!(e.deadline(), at + Duration::from_secs(60));
            assert_eq!(e.present(at).expire, 60);
            let p = e.present(at + Duration::from_micros(59_000_500));
            assert_eq!((p.expire, p.creation), (1, 5 + 59));
            assert_eq!(e.present(at + Duration::from_secs(60)).expire, 0);
            assert_eq!(e.present(at - Duration::from_secs(3)).creation, 5);
        }
        assert_eq!(t.next_deadline(), Some(early + Duration::from_secs(60)));
        assert_eq!(t.expire(early + Duration::from_secs(60)), 1);
        assert!(t.get(StateId::new(2, 9)).is_none());
        assert_eq!(t.len(), 1);
        // The scan's lower bound follows a deadline an update brings forward.
        assert_eq!(t.expire(t0 + Duration::from_secs(6)), 0);
        let u = UpdCRepr {
            id: StateId::new(1, 9),
            expire: 5,
            ..Default::default()
        };
        assert_eq!(t.apply(&Message::UpdC(u), t0), Applied::Updated(u.id));
        assert_eq!(t.expire(t0 + Duration::from_secs(5)), 1);
        assert!(t.is_empty());
    }

    /// The prefetch reads ids in chunks: any count, known or not, on an empty or a full
    /// table, leaves the table as it was.
    #[test]
    fn prefetch_takes_any_number_of_ids() {
        let now = Instant::now();
        let mut t = StateTable::default();
        let ids = |n: u64| (0..n).map(|i| StateId::new(i * 7, 9));
        t.prefetch(ids(100));
        for i in 0..50 {
            let st = StateRepr {
                id: StateId::new(i * 7, 9),
                expire: 60,
                ..Default::default()
            };
            t.apply(&Message::Ins(st), now);
        }
        let digest = t.digest();
        for n in [0, 1, 31, 32, 33, 64, 65, 100] {
            t.prefetch(ids(n));
        }
        assert_eq!((t.len(), t.digest()), (50, digest));
    }

    /// Inverse of [`digest::mix64`] (a bijection): what a peer computes to choose ids.
    fn unmix64(mut z: u64) -> u64 {
        let inv = |a: u64| {
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

    /// The leaf hash is public (peers compare leaves), so a peer can choose ids that all
    /// fall in one leaf and send them as tombstones. Each tombstone beyond `tombstone_max`
    /// evicts the oldest: that removal reads one entry of the leaf's list (it scanned the
    /// list: ≈ 32,000 entries per eviction at the default 65,536 tombstones), and the
    /// list stays exact through evictions, resurrections and expiry.
    #[test]
    fn tombstones_crafted_into_one_leaf_are_removed_in_constant_time() {
        let now = Instant::now();
        let mut t = StateTable::new(TableConfig {
            tombstone_max: 4096,
            ..Default::default()
        });
        let salt = digest::mix64(9 ^ 0x7066_7379_6e63_2d67);
        let crafted = |k: u64| StateId::new(unmix64(1234 << 52 | k) ^ salt, 9);
        let check = |t: &StateTable| {
            for (l, leaf) in t.leaves.iter().enumerate() {
                if l != 1234 {
                    assert!(leaf.tombs.is_empty());
                }
            }
            let list = &t.leaves[1234].tombs;
            assert_eq!(list.len(), t.tombs.len());
            for (i, id) in list.iter().enumerate() {
                assert_eq!(t.tombs[id].slot as usize, i);
            }
        };
        let (n, mut dropped) = (20_000u64, 0u64);
        for k in 0..n {
            let id = crafted(k);
            assert_eq!(t.leaf_of(id), 1234);
            let v = Version::new(k + 1, 2);
            assert_eq!(
                t.apply_versioned(&Message::DelC(id), now, v),
                Applied::NotFound(id)
            );
            dropped += (k >= 4096) as u64;
            if k % 1000 == 999 {
                // A kernel insert of a tombstoned id (pf's own) removes one from the middle
                // of the list; its delete tombstones it again, as the newest.
                let old = crafted(k - 700);
                let s = StateRepr {
                    id: old,
                    expire: 60,
                    ..Default::default()
                };
                assert_eq!(t.apply(&Message::Ins(s), now), Applied::Inserted(old));
                assert_eq!(t.apply(&Message::DelC(old), now), Applied::Deleted(old));
                dropped += 1;
                check(&t);
            }
        }
        check(&t);
        assert_eq!(t.tombstone_count(), 4096);
        assert!(t.tombstone(crafted(n - 1)).is_some());
        assert!(t.tombstone(crafted(n - 4096 - 1)).is_none());
        assert!(
            t.tomb_reads <= dropped,
            "{} list entries read for {dropped} removals",
            t.tomb_reads
        );
        // Expiry drops them all through the same removal.
        t.expire(now + t.cfg.tombstone_ttl);
        assert_eq!(t.tombstone_count(), 0);
        check(&t);
        assert!(t.tomb_reads <= dropped + 4096);
    }

    /// Removal moves the last entry of the slab into the hole: the index, the leaves and the
    /// digest must still describe exactly the remaining states.
    #[test]
    fn removal_keeps_index_leaves_and_digest_consistent() {
        let now = Instant::now();
        let mut t = StateTable::new(TableConfig {
            leaves_log2: 3,
            ..Default::default()
        });
        for i in 1..=200u64 {
            let s = StateRepr {
                id: StateId::new(i, 9),
                expire: 60 + i as u32,
                ..Default::default()
            };
            t.apply(&Message::Ins(s), now);
        }
        for i in (1..=200u64).filter(|i| i % 3 == 0) {
            assert_eq!(
                t.apply(&Message::DelC(StateId::new(i, 9)), now),
                Applied::Deleted(StateId::new(i, 9))
            );
        }
        assert_eq!(t.len(), 134);
        for i in 1..=200u64 {
            let id = StateId::new(i, 9);
            match t.get(id) {
                Some(e) => {
                    assert!(i % 3 != 0);
                    assert_eq!(e.raw().id, id);
                    assert_eq!(e.raw().expire, 60 + i as u32);
                    assert!(t.leaf_states(t.leaf_of(id)).any(|x| x == id));
                }
                None => assert_eq!(i % 3, 0),
            }
        }
        let in_leaves: usize = (0..t.leaf_count()).map(|l| t.leaf_len(l)).sum();
        assert_eq!(in_leaves, t.len());
        assert_eq!(t.iter().count(), t.len());
        assert_eq!(t.digest(), t.recompute_digest());
    }
}

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
//! The table keeps an order-independent [`Digest`] of its content and per-leaf digests
//! (a fixed hash partition of the id space) maintained on every change, for anti-entropy.
//! Deleted ids are remembered as tombstones (bounded by count and age) so deletions can be
//! propagated and late updates refused.

pub mod digest;
pub mod stale;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

pub use digest::{entry_hash, leaf_of, Digest};
use digest::{entry_hash_from, entry_prefix, HashPrefix};

use crate::wire::{BusStatus, Message, StateId, StateRepr, UpdCRepr};

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
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            leaves_log2: 12,
            tombstone_max: 65_536,
            tombstone_ttl: Duration::from_secs(300),
            max_states: 1_000_000,
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

/// One state in the table. Fixed size; the presented `expire`/`creation` are derived from
/// `deadline`/`seen` at output time.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    state: StateRepr,
    deadline: Instant,
    seen: Instant,
    version: Version,
    hash: u128,
    /// `hash` without the peers, so a compressed update rehashes only what it changed.
    prefix: HashPrefix,
    leaf: u32,
    slot: u32,
}

impl Entry {
    /// Recompute `hash` from the state; the prefix is reused unless `full` or the
    /// timeout changed (the only non-peer synced field an update keeps changing).
    #[inline]
    fn rehash_self(&mut self, full: bool) -> u128 {
        if full || self.prefix.timeout != self.state.timeout {
            self.prefix = entry_prefix(&self.state);
        }
        self.hash = entry_hash_from(&self.prefix, &self.state.src, &self.state.dst);
        self.hash
    }
}

impl Entry {
    /// The stored state (its `expire`/`creation` are as last received; see [`Entry::present`]).
    pub fn raw(&self) -> &StateRepr {
        &self.state
    }
    pub fn version(&self) -> Version {
        self.version
    }
    /// Hash of the synced fields (this entry's share of the digest).
    pub fn hash(&self) -> u128 {
        self.hash
    }
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    /// The state with `expire` (seconds left, rounded up) and `creation` (age) relative to `now`.
    pub fn present(&self, now: Instant) -> StateRepr {
        let mut s = self.state;
        let left = self.deadline.saturating_duration_since(now);
        s.expire = (left.as_millis().div_ceil(1000)).min(u32::MAX as u128) as u32;
        s.creation = s
            .creation
            .saturating_add(now.saturating_duration_since(self.seen).as_secs() as u32);
        s
    }
}

#[derive(Debug, Clone, Copy)]
struct Tomb {
    version: Version,
    at: Instant,
}

#[derive(Debug, Clone, Default)]
struct Leaf {
    digest: Digest,
    ids: Vec<StateId>,
    tombs: Vec<StateId>,
}

/// Fast hasher for `StateId` keys (ids are not attacker-chosen: peers are authenticated).
#[derive(Default)]
pub struct IdHasher(u64);
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
pub type IdMap<V> = HashMap<StateId, V, BuildHasherDefault<IdHasher>>;

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
    /// Id → position in `slab`. Small buckets (16 B): a lookup touches one line of the
    /// index and then only the entry's own lines, and the sparse hash table does not hold
    /// whole entries (≈ 2× the buckets of the live count after growth).
    index: IdMap<u32>,
    /// The entries, dense (removal swaps the last one in).
    slab: Vec<Entry>,
    tombs: IdMap<Tomb>,
    tomb_order: VecDeque<StateId>,
    leaves: Vec<Leaf>,
    digest: Digest,
    stats: TableStats,
    last_bus: Option<(u32, BusStatus)>,
    /// States held per creator id (per-site caps are checked against it).
    per_creator: HashMap<u32, u32>,
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
    pub fn new(cfg: TableConfig) -> StateTable {
        assert!(cfg.leaves_log2 <= 16, "leaves_log2 must be <= 16");
        StateTable {
            cfg,
            index: IdMap::default(),
            slab: Vec::new(),
            tombs: IdMap::default(),
            tomb_order: VecDeque::new(),
            leaves: vec![Leaf::default(); 1usize << cfg.leaves_log2],
            digest: Digest::ZERO,
            stats: TableStats::default(),
            last_bus: None,
            per_creator: HashMap::new(),
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
    pub fn get(&self, id: StateId) -> Option<&Entry> {
        self.index.get(&id).map(|&i| &self.slab[i as usize])
    }
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.slab.iter()
    }
    /// The version a deleted id was deleted at, while its tombstone is kept.
    pub fn tombstone(&self, id: StateId) -> Option<Version> {
        self.tombs.get(&id).map(|t| t.version)
    }
    pub fn tombstone_count(&self) -> usize {
        self.tombs.len()
    }
    /// Last BUS seen: (creator, status).
    pub fn last_bus(&self) -> Option<(u32, BusStatus)> {
        self.last_bus
    }

    /// Digest of the whole table (O(1)).
    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }
    pub fn leaf_of(&self, id: StateId) -> usize {
        leaf_of(id, self.cfg.leaves_log2)
    }
    pub fn leaf_digest(&self, leaf: usize) -> Digest {
        self.leaves[leaf].digest
    }
    pub fn leaf_len(&self, leaf: usize) -> usize {
        self.leaves[leaf].ids.len()
    }
    /// Digest of leaves `first .. first + span` (a range digest; O(span)).
    pub fn range_digest(&self, first: usize, span: usize) -> Digest {
        let mut d = Digest::ZERO;
        for l in &self.leaves[first.min(self.leaves.len())..(first + span).min(self.leaves.len())] {
            d.add(l.digest.0);
        }
        d
    }
    /// Ids of the states in a leaf.
    pub fn leaf_states(&self, leaf: usize) -> &[StateId] {
        &self.leaves[leaf].ids
    }
    /// Ids of the tombstones in a leaf.
    pub fn leaf_tombstones(&self, leaf: usize) -> &[StateId] {
        &self.leaves[leaf].tombs
    }
    /// Recompute the digest from scratch (tests / self-check).
    pub fn recompute_digest(&self) -> Digest {
        let mut d = Digest::ZERO;
        for e in &self.slab {
            d.add(entry_hash(&e.state));
        }
        d
    }

    /// Apply one message with kernel semantics.
    pub fn apply(&mut self, msg: &Message, now: Instant) -> Applied {
        self.apply_inner(msg, now, None)
    }

    /// Apply one message carrying the version of the change (see module docs).
    pub fn apply_versioned(&mut self, msg: &Message, now: Instant, v: Version) -> Applied {
        self.apply_inner(msg, now, Some(v))
    }

    fn apply_inner(&mut self, msg: &Message, now: Instant, v: Option<Version>) -> Applied {
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
        let bus = move |status| Message::Bus {
            creator,
            endtime: 0,
            status,
        };
        core::iter::once(bus(BusStatus::Start))
            .chain(self.slab.iter().map(move |e| Message::Upd(e.present(now))))
            .chain(core::iter::once(bus(BusStatus::End)))
    }

    /// Remove states whose deadline has passed (pf purge) and tombstones past their TTL.
    /// Returns the number of states removed. Expiry leaves no tombstone: every node expires
    /// its own copy.
    pub fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<StateId> = self
            .slab
            .iter()
            .filter(|e| e.deadline <= now)
            .map(|e| e.state.id)
            .collect();
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
        self.slab.iter().map(|e| e.deadline).min()
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
        let Some(&i) = self.index.get(&id) else {
            if self.newer_tomb(id, v) {
                self.stats.older += 1;
                return Applied::Older(id);
            }
            if self.slab.len() >= self.cfg.max_states {
                self.stats.refused_full += 1;
                return Applied::Full(id);
            }
            self.insert_new(s, now, v.unwrap_or(Version::ZERO));
            self.stats.inserts += 1;
            return Applied::Inserted(id);
        };
        let e = &mut self.slab[i as usize];
        let old_hash = e.hash;
        let (stale, changed, newer) = merge_into(e, &s.src, &s.dst, s.timeout, v);
        if stale < 2 && newer {
            let (src, dst, timeout) = (e.state.src, e.state.dst, e.state.timeout);
            e.state = *s;
            e.state.src = src;
            e.state.dst = dst;
            e.state.timeout = timeout;
            e.deadline = now + Duration::from_secs(s.expire as u64);
            e.seen = now;
        }
        if let Some(v) = v {
            e.version = e.version.max(v);
        }
        let leaf = e.leaf as usize;
        let h = e.rehash_self(true);
        self.rehash(leaf, old_hash, h);
        if !changed && !newer && stale == 0 {
            self.stats.older += 1;
            return Applied::Older(id);
        }
        self.finish_update(id, stale)
    }

    fn upd_c(&mut self, u: &UpdCRepr, now: Instant, v: Option<Version>) -> Applied {
        let id = u.id;
        let Some(&i) = self.index.get(&id) else {
            if self.newer_tomb(id, v) {
                self.stats.older += 1;
                return Applied::Older(id);
            }
            self.stats.need_update += 1;
            return Applied::NeedUpdate(id);
        };
        let e = &mut self.slab[i as usize];
        let old_hash = e.hash;
        let (stale, changed, newer) = merge_into(e, &u.src, &u.dst, u.timeout, v);
        if stale < 2 && newer {
            let secs = if u.expire == 0 {
                default_timeout(u.timeout)
            } else {
                u.expire
            };
            e.deadline = now + Duration::from_secs(secs as u64);
        }
        if let Some(v) = v {
            e.version = e.version.max(v);
        }
        let leaf = e.leaf as usize;
        let h = e.rehash_self(false);
        self.rehash(leaf, old_hash, h);
        if !changed && !newer && stale == 0 {
            self.stats.older += 1;
            return Applied::Older(id);
        }
        self.finish_update(id, stale)
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

    fn rehash(&mut self, leaf: usize, old: u128, new: u128) {
        self.digest.sub(old);
        self.digest.add(new);
        let l = &mut self.leaves[leaf].digest;
        l.sub(old);
        l.add(new);
    }

    fn insert_new(&mut self, s: &StateRepr, now: Instant, version: Version) {
        let id = s.id;
        self.drop_tomb(id);
        let leaf = self.leaf_of(id);
        let prefix = entry_prefix(s);
        let hash = entry_hash_from(&prefix, &s.src, &s.dst);
        *self.per_creator.entry(id.creator).or_insert(0) += 1;
        let l = &mut self.leaves[leaf];
        let slot = l.ids.len() as u32;
        l.ids.push(id);
        l.digest.add(hash);
        self.digest.add(hash);
        self.index.insert(id, self.slab.len() as u32);
        self.slab.push(Entry {
            state: *s,
            deadline: now + Duration::from_secs(s.expire as u64),
            seen: now,
            version,
            hash,
            prefix,
            leaf: leaf as u32,
            slot,
        });
    }

    fn remove_entry(&mut self, id: StateId) -> Option<Entry> {
        let i = self.index.remove(&id)? as usize;
        let e = self.slab.swap_remove(i);
        if let Some(m) = self.slab.get(i) {
            self.index.insert(m.state.id, i as u32);
        }
        if let std::collections::hash_map::Entry::Occupied(mut c) =
            self.per_creator.entry(id.creator)
        {
            *c.get_mut() -= 1;
            if *c.get() == 0 {
                c.remove();
            }
        }
        let l = &mut self.leaves[e.leaf as usize];
        l.digest.sub(e.hash);
        self.digest.sub(e.hash);
        let slot = e.slot as usize;
        l.ids.swap_remove(slot);
        if let Some(&moved) = l.ids.get(slot) {
            if let Some(&m) = self.index.get(&moved) {
                self.slab[m as usize].slot = slot as u32;
            }
        }
        Some(e)
    }

    fn delete(&mut self, id: StateId, now: Instant, v: Option<Version>) -> Applied {
        match self.index.get(&id) {
            Some(_) => {
                // Deletes win over any version (see `newer_tomb`): remove-wins keeps replicas
                // that saw a delete and a late update in different orders convergent.
                let Some(e) = self.remove_entry(id) else {
                    return Applied::NotFound(id);
                };
                self.put_tomb(id, v.unwrap_or(e.version).max(e.version), now);
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
        let all_if = ifname[0] == 0;
        let ids: Vec<StateId> = self
            .slab
            .iter()
            .filter(|e| {
                e.state.id.creator == creator
                    && (all_if || e.state.ifname == *ifname)
                    && v.is_none_or(|v| e.version < v)
            })
            .map(|e| e.state.id)
            .collect();
        for &id in &ids {
            let e = self.remove_entry(id).expect("present");
            self.put_tomb(id, v.unwrap_or(e.version).max(e.version), now);
        }
        self.stats.clears += 1;
        self.stats.deletes += ids.len() as u64;
        ids.len()
    }

    fn put_tomb(&mut self, id: StateId, version: Version, now: Instant) {
        if let Some(t) = self.tombs.get_mut(&id) {
            t.version = t.version.max(version);
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
        self.tombs.insert(id, Tomb { version, at: now });
        self.tomb_order.push_back(id);
        if self.tomb_order.len() > 2 * self.tombs.len() + 1024 {
            // Drop ids whose tombstone was removed (resurrected) so the queue stays bounded.
            let tombs = &self.tombs;
            let mut seen = IdMap::<()>::default();
            self.tomb_order
                .retain(|id| tombs.contains_key(id) && seen.insert(*id, ()).is_none());
        }
        let leaf = self.leaf_of(id);
        self.leaves[leaf].tombs.push(id);
    }

    fn drop_tomb(&mut self, id: StateId) {
        if self.tombs.remove(&id).is_some() {
            let leaf = self.leaf_of(id);
            let t = &mut self.leaves[leaf].tombs;
            if let Some(i) = t.iter().position(|&x| x == id) {
                t.swap_remove(i);
            }
            // tomb_order may still hold `id`; it is skipped when popped (not in `tombs`).
        }
    }
}

/// Merge incoming peers and timeout into `e`. Kernel mode (`v == None`): take every
/// non-stale peer. Versioned: also never backwards, and between equally advanced copies the
/// higher version wins. Returns (stale peers, anything changed, incoming counts as newer for
/// the non-peer fields).
fn merge_into(
    e: &mut Entry,
    src: &crate::wire::PeerRepr,
    dst: &crate::wire::PeerRepr,
    timeout: u8,
    v: Option<Version>,
) -> (u8, bool, bool) {
    let proto = e.state.proto;
    match v {
        None => {
            let before = (e.state.src, e.state.dst);
            let stale = stale::merge_peers(proto, &mut e.state.src, &mut e.state.dst, src, dst);
            if stale < 2 {
                e.state.timeout = timeout;
            }
            let changed = before != (e.state.src, e.state.dst);
            (stale, changed, true)
        }
        Some(v) => {
            let ord = v.cmp(&e.version);
            let (s1, c1) = stale::merge_peer_versioned(proto, true, &mut e.state.src, src, ord);
            let (s2, c2) = stale::merge_peer_versioned(proto, false, &mut e.state.dst, dst, ord);
            let stale = s1 as u8 + s2 as u8;
            // Non-peer fields follow the version; equal versions tie-break on timeout so that
            // both sides pick the same copy.
            let newer = match ord {
                core::cmp::Ordering::Greater => true,
                core::cmp::Ordering::Less => false,
                core::cmp::Ordering::Equal => timeout >= e.state.timeout,
            };
            let mut changed = c1 || c2;
            if stale < 2 && newer && e.state.timeout != timeout {
                e.state.timeout = timeout;
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
                    assert!(t.leaf_states(t.leaf_of(id)).contains(&id));
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

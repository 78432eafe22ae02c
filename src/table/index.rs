//! Id → slab position: an open-addressing table of 4-byte slots (linear probing,
//! backward-shift deletion, load ≤ 3/4).
//!
//! A slot holds `position + 1` in its low `pos_bits` bits (0 = empty; `pos_bits` = log2 of
//! the slot count, which always exceeds the positions held) and, above them, a tag from the
//! id's hash, so a probe that meets another id is almost always rejected without
//! touching that id's entry. The ids themselves are not stored: the entry in the slab holds
//! its id, and a hit is confirmed there (the caller reads that entry next anyway). 4 bytes
//! per slot instead of the 24 of a `HashMap<StateId, u32>` bucket.
//!
//! The hash is keyed with a random secret per table: a compromised peer chooses the ids it
//! inserts, and with a known hash it could place thousands in one probe run (every lookup
//! in the run then costs a read per member, every insert into it a walk of the run).

use super::digest::mix64;
use crate::wire::StateId;

/// One finaliser round (the multiply spreads the creator over all 64 bits).
#[inline]
fn id_hash(key: u64, id: StateId) -> u64 {
    mix64(id.id ^ (id.creator as u64 ^ key).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A secret 64-bit key: std's `RandomState` is seeded from the OS once per thread and
/// differs per call, and SipHash of a constant under it is unpredictable.
pub(crate) fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x6964_782d_7066_7379u64)
}

pub(crate) struct Index {
    /// The hash key (see the module docs).
    key: u64,
    slots: Vec<u32>,
    len: usize,
    /// `slots.len() - 1`.
    mask: usize,
    /// log2 of `slots.len()`: positions + 1 take the bits below, the tag those above.
    pos_bits: u32,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index::with_key(random_key())
    }

    fn with_key(key: u64) -> Index {
        Index {
            key,
            slots: Vec::new(),
            len: 0,
            mask: 0,
            pos_bits: 0,
        }
    }

    #[inline]
    fn hash(&self, id: StateId) -> u64 {
        id_hash(self.key, id)
    }

    #[inline]
    fn tag_of(&self, h: u64) -> u32 {
        // Shifted as u64: no tag bits are left once `pos_bits` is 32.
        (((h >> 32) as u32 as u64) << self.pos_bits) as u32
    }

    #[inline]
    fn pos_mask(&self) -> u32 {
        ((1u64 << self.pos_bits) - 1) as u32
    }

    #[inline]
    fn mask(&self) -> usize {
        self.mask
    }

    /// Start loading the slot where a probe for `id` begins (a hint: no effect on results).
    /// Returns the id's hash, for [`likely_pos_hashed`](Self::likely_pos_hashed).
    #[inline]
    pub(crate) fn prefetch_slot(&self, id: StateId) -> u64 {
        let h = self.hash(id);
        if let Some(s) = self.slots.get(h as usize & self.mask) {
            prefetch(s);
        }
        h
    }

    /// The slab position in the first slot of `id`'s probe whose tag matches, without
    /// confirming the id (a prefetch target: usually the entry a lookup will read).
    #[inline]
    pub(crate) fn likely_pos(&self, id: StateId) -> Option<u32> {
        self.likely_pos_hashed(self.hash(id))
    }

    /// [`likely_pos`](Self::likely_pos) of the id whose hash `h` is.
    #[inline]
    pub(crate) fn likely_pos_hashed(&self, h: u64) -> Option<u32> {
        self.probe_hashed(h, |_| true).map(|(_, p)| p)
    }

    /// Position of `id`; `id_at(pos)` gives the id stored at a slab position.
    #[inline]
    pub(crate) fn find(&self, id: StateId, id_at: impl Fn(u32) -> StateId) -> Option<u32> {
        self.find_slot(id, id_at).map(|(_, p)| p)
    }

    #[inline]
    fn find_slot(&self, id: StateId, id_at: impl Fn(u32) -> StateId) -> Option<(usize, u32)> {
        self.probe(id, |p| id_at(p) == id)
    }

    /// Walk `id`'s probe sequence to the first slot whose tag matches and whose position
    /// `accept`s; `None` at an empty slot.
    #[inline(always)]
    fn probe(&self, id: StateId, accept: impl Fn(u32) -> bool) -> Option<(usize, u32)> {
        self.probe_hashed(self.hash(id), accept)
    }

    #[inline(always)]
    fn probe_hashed(&self, h: u64, accept: impl Fn(u32) -> bool) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        let (tag, pm, mask) = (self.tag_of(h), self.pos_mask(), self.mask());
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & !pm == tag {
                let p = (s & pm) - 1;
                if accept(p) {
                    return Some((i, p));
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Add `id` (not present) at position `pos`, which must be the number of ids held: the
    /// positions are always `0 .. len` (the slab is dense). `id_at` is needed when the table
    /// grows.
    pub(crate) fn insert(&mut self, id: StateId, pos: u32, id_at: impl Fn(u32) -> StateId) {
        assert_eq!(pos as usize, self.len, "positions are dense");
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            let cap = (self.slots.len() * 2).max(16);
            assert!(cap <= 1 << 32, "more than 3 × 2^30 states");
            self.slots = vec![0; cap];
            // Positions stay below ¾ of the slot count, so they fit in log2(slots) bits.
            self.pos_bits = cap.trailing_zeros();
            self.mask = cap - 1;
            // Rehash in position order: the ids are read sequentially, not at random.
            for p in 0..self.len as u32 {
                self.place(self.hash(id_at(p)), p);
            }
        }
        self.place(self.hash(id), pos);
        self.len += 1;
    }

    fn place(&mut self, h: u64, pos: u32) {
        debug_assert!(pos < self.pos_mask());
        let mask = self.mask();
        let mut i = h as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = self.tag_of(h) | (pos + 1);
    }

    /// Remove `id`; returns its position.
    pub(crate) fn remove(&mut self, id: StateId, id_at: impl Fn(u32) -> StateId) -> Option<u32> {
        let (mut hole, p) = self.find_slot(id, &id_at)?;
        let (pm, mask) = (self.pos_mask(), self.mask());
        // Backward shift: move every later member of the probe run that may live in the hole.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = self.hash(id_at((s & pm) - 1)) as usize & mask;
            // `home` is cyclically outside (hole, j]: the member may move back to the hole.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
        Some(p)
    }

    /// `id`, now at position `from`, moves to `to`.
    pub(crate) fn relocate(&mut self, id: StateId, from: u32, to: u32) {
        let h = self.hash(id);
        let (tag, mask) = (self.tag_of(h), self.mask());
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            assert!(s != 0, "relocated id is indexed");
            if s == tag | (from + 1) {
                self.slots[i] = tag | (to + 1);
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Ask the CPU to bring `v`'s cache line closer; a no-op where there is no such hint.
#[inline(always)]
pub(crate) fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults and has no architectural effect; SSE is part of
        // the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((v as *const T).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts, removals (with backward shift) and relocations against a model, through
    /// several growths.
    #[test]
    fn matches_a_model() {
        let mut ids: Vec<StateId> = Vec::new();
        let mut ix = Index::new();
        let mut x = 12345u64;
        for round in 0..20_000u64 {
            x = mix64(x + round);
            if ids.is_empty() || x % 3 != 0 {
                let id = StateId::new(x % 5000, (x >> 40) as u32 % 3);
                if ix.find(id, |p| ids[p as usize]).is_none() {
                    ids.push(id);
                    let pos = ids.len() as u32 - 1;
                    ix.insert(id, pos, |p| ids[p as usize]);
                }
            } else {
                let i = (x >> 20) as usize % ids.len();
                let id = ids[i];
                assert_eq!(ix.remove(id, |p| ids[p as usize]), Some(i as u32));
                let last = ids.len() - 1;
                ids.swap_remove(i);
                if i < last {
                    ix.relocate(ids[i], last as u32, i as u32);
                }
            }
            if round % 997 == 0 {
                // The prefetch target is the entry itself unless another id's tag matched
                // first in the probe (18+ tag bits here: rare).
                let mut likely = 0;
                for (p, &id) in ids.iter().enumerate() {
                    assert_eq!(ix.find(id, |q| ids[q as usize]), Some(p as u32));
                    likely += usize::from(ix.likely_pos(id) == Some(p as u32));
                    // The two-stage prefetch carries the first stage's hash to the second.
                    assert_eq!(
                        ix.likely_pos_hashed(ix.prefetch_slot(id)),
                        ix.likely_pos(id)
                    );
                }
                assert!(likely * 100 >= ids.len() * 99, "{likely} of {}", ids.len());
                assert_eq!(ix.len, ids.len());
            }
        }
        assert_eq!(ix.find(StateId::new(9999, 9), |q| ids[q as usize]), None);
    }

    /// The inverse of `mix64` (each step of the finaliser is invertible).
    fn unmix64(mut z: u64) -> u64 {
        let inv = |m: u64| {
            (0..6).fold(m, |x, _| {
                x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)))
            })
        };
        z ^= (z >> 31) ^ (z >> 62);
        z = z.wrapping_mul(inv(0x94d0_49bb_1331_11eb));
        z ^= (z >> 27) ^ (z >> 54);
        z = z.wrapping_mul(inv(0xbf58_476d_1ce4_e5b9));
        z ^ (z >> 30) ^ (z >> 60)
    }

    /// The longest probe (slots from home to where the id sits) over `ids`.
    fn longest_probe(ix: &Index, ids: &[StateId]) -> usize {
        ids.iter()
            .map(|&id| {
                let (slot, _) = ix.find_slot(id, |q| ids[q as usize]).expect("held");
                slot.wrapping_sub(ix.hash(id) as usize) & ix.mask
            })
            .max()
            .unwrap_or(0)
    }

    /// Ids a peer crafts to share one home slot under a key it knows (all hashes equal in
    /// their low 32 bits): in a table with that key they form one probe run; in a table with
    /// its own random key they spread like any others.
    #[test]
    fn crafted_ids_do_not_collide_under_a_secret_key() {
        let guessed = 0x6964_782d_7066_7379u64;
        let creator = 7u32;
        let salt = (creator as u64 ^ guessed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let ids: Vec<StateId> = (1..=4000u64)
            .map(|i| StateId::new(unmix64((i << 32) | 0x1234_5678) ^ salt, creator))
            .collect();
        assert!(ids
            .iter()
            .all(|&id| id_hash(guessed, id) as u32 == 0x1234_5678));
        let fill = |ix: &mut Index| {
            for (p, &id) in ids.iter().enumerate() {
                ix.insert(id, p as u32, |q| ids[q as usize]);
            }
        };
        // The test can fail: under the guessed key the crafted ids are one run.
        let mut known = Index::with_key(guessed);
        fill(&mut known);
        assert!(longest_probe(&known, &ids) >= 3999);
        let mut secret = Index::new();
        fill(&mut secret);
        assert!(
            longest_probe(&secret, &ids) < 64,
            "{}",
            longest_probe(&secret, &ids)
        );
        assert_ne!(Index::new().key, Index::new().key, "keys differ per table");
    }
}

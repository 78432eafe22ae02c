//! Order-independent table digests.
//!
//! Each entry hashes its *synced* fields (the ones every node and dialect must agree on) to
//! 128 bits; a table digest is the wrapping sum of its entries' hashes, so insert/remove/update
//! adjust it in O(1) and two tables with the same content have the same digest whatever the
//! insertion order. Fields that legitimately differ between nodes (expire, creation, counters,
//! ifname, rule numbers) are left out.
//!
//! The hash is keyed with a protocol constant, not a secret: peers are already authenticated by
//! the tunnel, the key only has to be the same on every node.

use core::fmt;

use crate::wire::{AddrFamily, PeerRepr, StateId, StateRepr};

/// Key of the entry hash; changing it changes `SYNC_VERSION` semantics (digests must match).
const KEY: [u64; 2] = [0x7066_7379_6e63_2d67, 0x772d_6469_6765_7374];

/// A 128-bit order-independent digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Digest(pub u128);

impl Digest {
    pub const ZERO: Digest = Digest(0);
    pub fn add(&mut self, h: u128) {
        self.0 = self.0.wrapping_add(h);
    }
    pub fn sub(&mut self, h: u128) {
        self.0 = self.0.wrapping_sub(h);
    }
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
    pub fn from_be_bytes(b: [u8; 16]) -> Digest {
        Digest(u128::from_be_bytes(b))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    // splitmix64 finaliser: a full-avalanche bijection.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two-lane streaming hash over u64 words (not cryptographic; see module docs).
#[derive(Debug, Clone, Copy)]
struct Hasher128 {
    a: u64,
    b: u64,
    n: u64,
}

impl Hasher128 {
    fn new() -> Self {
        Hasher128 {
            a: KEY[0],
            b: KEY[1],
            n: 0,
        }
    }
    #[inline]
    fn word(&mut self, w: u64) {
        self.n += 1;
        self.a = mix64(self.a ^ w).wrapping_add(self.n);
        self.b = mix64(self.b.rotate_left(17) ^ w ^ 0x9e37_79b9_7f4a_7c15);
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }
    fn finish(self) -> u128 {
        let hi = mix64(self.a ^ self.b.rotate_left(32) ^ self.n);
        let lo = mix64(self.b ^ hi);
        ((hi as u128) << 64) | lo as u128
    }
}

fn af_code(af: AddrFamily) -> u64 {
    match af {
        AddrFamily::Unspec => 0,
        AddrFamily::Inet => 1,
        AddrFamily::Inet6 => 2,
        AddrFamily::Other(v) => 0x100 | v as u64,
    }
}

fn peer_words(h: &mut Hasher128, p: &PeerRepr) {
    h.word(((p.seqlo as u64) << 32) | p.seqhi as u64);
    h.word(
        ((p.max_win as u64) << 32)
            | ((p.mss as u64) << 16)
            | ((p.state as u64) << 8)
            | p.wscale as u64,
    );
}

/// Do two peers agree on every field the entry hash covers (`peer_words`)? Scrub state and
/// `seqdiff` are not synced and may differ.
#[inline]
pub fn peers_synced_eq(a: &PeerRepr, b: &PeerRepr) -> bool {
    (a.seqlo, a.seqhi, a.max_win, a.mss, a.state, a.wscale)
        == (b.seqlo, b.seqhi, b.max_win, b.mss, b.state, b.wscale)
}

/// Words [`entry_prefix`] absorbs (id, creator/af/proto/direction, timeout, 2 × 5 per key).
const PREFIX_WORDS: u64 = 13;

/// The entry hash absorbed up to (not including) the peers: every synced field except
/// `src`/`dst`. A compressed update changes only the peers and (rarely) `timeout`, so the
/// table keeps this per entry and finishes the hash from it with four words instead of
/// seventeen. Same values as [`entry_hash`]: this only splits the computation. 16 bytes
/// (the word count is fixed), as the table stores one per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPrefix {
    a: u64,
    b: u64,
}

/// The prefix of [`entry_hash`] for `s` (see [`HashPrefix`]).
pub fn entry_prefix(s: &StateRepr) -> HashPrefix {
    let mut h = Hasher128::new();
    h.word(s.id.id);
    h.word(
        ((s.id.creator as u64) << 32)
            | (af_code(s.af) << 16)
            | ((s.proto as u64) << 8)
            | s.direction as u64,
    );
    h.word(s.timeout as u64);
    for k in &s.key {
        h.bytes(&k.addr[0]);
        h.bytes(&k.addr[1]);
        h.word(((k.port[0] as u64) << 16) | k.port[1] as u64);
    }
    debug_assert_eq!(h.n, PREFIX_WORDS);
    HashPrefix { a: h.a, b: h.b }
}

/// [`entry_hash`] of a state whose non-peer fields gave `p`, with peers `src`/`dst`.
#[inline]
pub fn entry_hash_from(p: &HashPrefix, src: &PeerRepr, dst: &PeerRepr) -> u128 {
    let mut h = Hasher128 {
        a: p.a,
        b: p.b,
        n: PREFIX_WORDS,
    };
    peer_words(&mut h, src);
    peer_words(&mut h, dst);
    h.finish()
}

/// Hash of the synced fields of a state.
pub fn entry_hash(s: &StateRepr) -> u128 {
    entry_hash_from(&entry_prefix(s), &s.src, &s.dst)
}

/// Bucket (leaf) of a state id among `1 << log2` buckets; stable across nodes.
#[inline]
pub fn leaf_of(id: StateId, log2: u8) -> usize {
    if log2 == 0 {
        return 0;
    }
    let h = mix64(id.id ^ mix64((id.creator as u64) ^ KEY[0]));
    (h >> (64 - log2 as u32)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_32_hex() {
        assert_eq!(
            Digest(0xabc).to_string(),
            "00000000000000000000000000000abc"
        );
        assert_eq!(Digest(u128::MAX).to_string().len(), 32);
    }

    #[test]
    fn hash_ignores_unsynced_fields() {
        let mut a = StateRepr {
            id: StateId::new(1, 2),
            ..Default::default()
        };
        a.src.seqlo = 5;
        let mut b = a;
        b.expire = 99;
        b.creation = 7;
        b.packets = [1, 2];
        b.ifname[0] = b'x';
        assert_eq!(entry_hash(&a), entry_hash(&b));
        b.src.seqlo = 6;
        assert_ne!(entry_hash(&a), entry_hash(&b));
    }

    /// The split computation the table uses gives the same value as the one-shot hash,
    /// and the hash's value is pinned (it is part of the protocol between gateways).
    #[test]
    fn prefix_split_matches_whole_hash() {
        let mut s = StateRepr {
            id: StateId::new(0x0102_0304_0506_0708, 0xdead_beef),
            af: AddrFamily::Inet,
            proto: 6,
            direction: 1,
            timeout: 2,
            ..Default::default()
        };
        s.key[0].addr[0][..4].copy_from_slice(&[10, 0, 0, 1]);
        s.key[0].addr[1][..4].copy_from_slice(&[10, 0, 0, 2]);
        s.key[0].port = [1024, 443];
        s.key[1] = s.key[0];
        s.src.seqlo = 1000;
        s.dst.seqhi = 77;
        let pinned = entry_hash(&s);
        // Computed independently from the definition (docs/SYNC.md), before the split.
        assert_eq!(pinned, 0xfb35e3d3b4de113467feac2c1384977c);
        let p = entry_prefix(&s);
        assert_eq!(entry_hash_from(&p, &s.src, &s.dst), pinned);
        s.src.seqlo = 2000;
        assert_eq!(entry_hash_from(&p, &s.src, &s.dst), entry_hash(&s));
        assert_ne!(entry_hash(&s), pinned);
    }

    #[test]
    fn leaves_spread() {
        let mut seen = [0u32; 16];
        for i in 0..1600u64 {
            seen[leaf_of(StateId::new(i, 7), 4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }
}

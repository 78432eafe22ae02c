//! The compact stored form of a state's cold part: everything a compressed update does not
//! touch.
//!
//! - A [`Profile`] holds the fields that take few distinct values across a table (interface
//!   and route names, tag, rule numbers, af, direction, flags, queues, the keys' rdomain/af,
//!   FreeBSD 1500's af/proto pairs, the `rt` address). Profiles are interned in a per-table
//!   [`Pool`] with reference counts; an entry stores a 4-byte profile number (as a varint).
//! - A variable-length record in a byte arena holds what varies per state: profile number,
//!   `creation`, `expire`, the four counters and the time of the last full update as
//!   varints, then both keys' addresses (4 bytes for an address whose bytes 4..16 are zero —
//!   any IPv4 address — else 16) and ports; the stack key is left out when it equals the wire
//!   key (no NAT). The first byte is the record's length.
//!
//! The encoding is exact: [`decode`] of [`encode`] gives back every field it covers.

use std::collections::HashMap;
use std::hash::Hasher;

use crate::wire::{AddrFamily, StateKeyRepr, StateRepr};

/// Longest record: length, flags, 5 + 5 + 5 varint bytes (profile, creation, expire),
/// 4 × 10 (counters), 10 (time), two keys of two long addresses and two ports.
pub(crate) const MAX_RECORD: usize = 1 + 1 + 15 + 40 + 10 + 2 * (2 * 16 + 4);

/// The rarely varying fields of a state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Profile {
    ifname: [u8; 16],
    rt_addr: [u8; 16],
    rule: u32,
    anchor: u32,
    nat_rule: u32,
    rtableid: [i32; 2],
    state_flags: u16,
    max_mss: u16,
    queues: [u16; 4],
    key_rdomain: [u16; 2],
    af: AddrFamily,
    key_af: [AddrFamily; 2],
    af_1500: [AddrFamily; 3],
    direction: u8,
    log: u8,
    allow_opts: u8,
    sync_flags: u8,
    updates: u8,
    min_ttl: u8,
    set_tos: u8,
    set_prio: [u8; 2],
    rt: u8,
    proto_1500: [u8; 2],
    rt_ifname: [u8; 16],
    orig_ifname: [u8; 16],
    tagname: [u8; 64],
}

impl Profile {
    pub(crate) fn of(s: &StateRepr) -> Profile {
        Profile {
            ifname: s.ifname,
            rt_addr: s.rt_addr,
            rule: s.rule,
            anchor: s.anchor,
            nat_rule: s.nat_rule,
            rtableid: s.rtableid,
            state_flags: s.state_flags,
            max_mss: s.max_mss,
            queues: [s.qid, s.pqid, s.dnpipe, s.dnrpipe],
            key_rdomain: [s.key[0].rdomain, s.key[1].rdomain],
            af: s.af,
            key_af: [s.key[0].af, s.key[1].af],
            af_1500: s.af_1500,
            direction: s.direction,
            log: s.log,
            allow_opts: s.allow_opts,
            sync_flags: s.sync_flags,
            updates: s.updates,
            min_ttl: s.min_ttl,
            set_tos: s.set_tos,
            set_prio: s.set_prio,
            rt: s.rt,
            proto_1500: s.proto_1500,
            rt_ifname: s.rt_ifname,
            orig_ifname: s.orig_ifname,
            tagname: s.tagname,
        }
    }

    /// Write these fields into `s`.
    pub(crate) fn fill(&self, s: &mut StateRepr) {
        s.ifname = self.ifname;
        s.rt_addr = self.rt_addr;
        s.rule = self.rule;
        s.anchor = self.anchor;
        s.nat_rule = self.nat_rule;
        s.rtableid = self.rtableid;
        s.state_flags = self.state_flags;
        s.max_mss = self.max_mss;
        [s.qid, s.pqid, s.dnpipe, s.dnrpipe] = self.queues;
        s.key[0].rdomain = self.key_rdomain[0];
        s.key[1].rdomain = self.key_rdomain[1];
        s.af = self.af;
        s.key[0].af = self.key_af[0];
        s.key[1].af = self.key_af[1];
        s.af_1500 = self.af_1500;
        s.direction = self.direction;
        s.log = self.log;
        s.allow_opts = self.allow_opts;
        s.sync_flags = self.sync_flags;
        s.updates = self.updates;
        s.min_ttl = self.min_ttl;
        s.set_tos = self.set_tos;
        s.set_prio = self.set_prio;
        s.rt = self.rt;
        s.proto_1500 = self.proto_1500;
        s.rt_ifname = self.rt_ifname;
        s.orig_ifname = self.orig_ifname;
        s.tagname = self.tagname;
    }

    pub(crate) fn ifname(&self) -> &[u8; 16] {
        &self.ifname
    }
}

/// Word-at-a-time hasher for profiles, seeded per pool with a random secret (a compromised
/// peer chooses the profiles of the states it inserts).
pub(crate) struct WordHasher(u64);

#[derive(Clone, Copy)]
pub(crate) struct WordBuild(u64);
impl Default for WordBuild {
    fn default() -> WordBuild {
        WordBuild(super::index::random_key())
    }
}
impl std::hash::BuildHasher for WordBuild {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher(self.0)
    }
}
impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        super::digest::mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut c = bytes.chunks_exact(8);
        for w in &mut c {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        for &b in c.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

/// Interned profiles with reference counts; a number is reused once its count drops to 0.
#[derive(Default)]
pub(crate) struct Pool {
    items: Vec<(Profile, u32)>,
    map: HashMap<Profile, u32, WordBuild>,
    free: Vec<u32>,
    /// The number last interned: consecutive states (a bulk) mostly share a profile.
    last: u32,
}

impl Pool {
    /// Number of `p`, with one more reference.
    pub(crate) fn intern(&mut self, p: &Profile) -> u32 {
        let last = self.last as usize;
        if let Some((q, refs)) = self.items.get_mut(last) {
            if *refs > 0 && q == p {
                *refs += 1;
                return last as u32;
            }
        }
        let n = match self.map.get(p) {
            Some(&n) => {
                self.items[n as usize].1 += 1;
                n
            }
            None => {
                let n = match self.free.pop() {
                    Some(n) => {
                        self.items[n as usize] = (*p, 1);
                        n
                    }
                    None => {
                        self.items.push((*p, 1));
                        self.items.len() as u32 - 1
                    }
                };
                self.map.insert(*p, n);
                n
            }
        };
        self.last = n;
        n
    }

    /// Drop one reference to `n`.
    pub(crate) fn release(&mut self, n: u32) {
        let (p, refs) = &mut self.items[n as usize];
        *refs -= 1;
        if *refs == 0 {
            self.map.remove(p);
            self.free.push(n);
        }
    }

    pub(crate) fn get(&self, n: u32) -> &Profile {
        &self.items[n as usize].0
    }

    /// Distinct profiles held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

const SAME_KEYS: u8 = 1 << 4;

#[inline]
fn put_var(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = v as u8 | 0x80;
        v >>= 7;
        *at += 1;
    }
    out[*at] = v as u8;
    *at += 1;
}

#[inline]
fn get_var(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let c = b[*at];
        *at += 1;
        v |= ((c & 0x7f) as u64) << shift;
        if c < 0x80 {
            return v;
        }
        shift += 7;
    }
}

#[inline]
fn short(a: &[u8; 16]) -> bool {
    a[4..] == [0u8; 12]
}

fn put_key(out: &mut [u8], at: &mut usize, k: &StateKeyRepr) {
    for a in &k.addr {
        let n = if short(a) { 4 } else { 16 };
        out[*at..*at + n].copy_from_slice(&a[..n]);
        *at += n;
    }
    out[*at..*at + 2].copy_from_slice(&k.port[0].to_le_bytes());
    out[*at + 2..*at + 4].copy_from_slice(&k.port[1].to_le_bytes());
    *at += 4;
}

fn get_key(b: &[u8], at: &mut usize, flags: u8, k: &mut StateKeyRepr) {
    for (i, a) in k.addr.iter_mut().enumerate() {
        let n = if flags & (1 << i) != 0 { 4 } else { 16 };
        *a = [0; 16];
        a[..n].copy_from_slice(&b[*at..*at + n]);
        *at += n;
    }
    k.port = [
        u16::from_le_bytes([b[*at], b[*at + 1]]),
        u16::from_le_bytes([b[*at + 2], b[*at + 3]]),
    ];
    *at += 4;
}

/// Encode the cold per-state fields of `s` (see the module docs) with its profile number and
/// the time of its last full update; returns the record's length (≤ [`MAX_RECORD`]).
pub(crate) fn encode(s: &StateRepr, profile: u32, seen: i64, out: &mut [u8; MAX_RECORD]) -> usize {
    let [k0, k1] = &s.key;
    let same = k0.addr == k1.addr && k0.port == k1.port;
    let mut flags = if same { SAME_KEYS } else { 0 };
    for (i, a) in k0.addr.iter().chain(&k1.addr).enumerate() {
        if short(a) {
            flags |= 1 << i;
        }
    }
    let mut at = 2;
    put_var(out, &mut at, profile as u64);
    put_var(out, &mut at, s.creation as u64);
    put_var(out, &mut at, s.expire as u64);
    for v in s.packets.iter().chain(&s.bytes) {
        put_var(out, &mut at, *v);
    }
    put_var(out, &mut at, ((seen << 1) ^ (seen >> 63)) as u64);
    put_key(out, &mut at, k0);
    if !same {
        put_key(out, &mut at, k1);
    }
    out[0] = at as u8;
    out[1] = flags;
    at
}

/// Length of the record starting at `b[0]`.
#[inline]
pub(crate) fn record_len(b: &[u8]) -> usize {
    b[0] as usize
}

/// Profile number of a record.
#[inline]
pub(crate) fn profile_of(b: &[u8]) -> u32 {
    get_var(b, &mut 2) as u32
}

/// Decode a record into `s` (keys' addresses and ports, creation, expire, counters); returns
/// (profile number, time of the last full update).
pub(crate) fn decode(b: &[u8], s: &mut StateRepr) -> (u32, i64) {
    let flags = b[1];
    let mut at = 2;
    let profile = get_var(b, &mut at) as u32;
    s.creation = get_var(b, &mut at) as u32;
    s.expire = get_var(b, &mut at) as u32;
    for v in s.packets.iter_mut().chain(s.bytes.iter_mut()) {
        *v = get_var(b, &mut at);
    }
    let z = get_var(b, &mut at);
    let seen = ((z >> 1) as i64) ^ -((z & 1) as i64);
    get_key(b, &mut at, flags, &mut s.key[0]);
    if flags & SAME_KEYS != 0 {
        s.key[1].addr = s.key[0].addr;
        s.key[1].port = s.key[0].port;
    } else {
        get_key(b, &mut at, flags >> 2, &mut s.key[1]);
    }
    debug_assert_eq!(at, record_len(b));
    (profile, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_times_round_trip() {
        let mut buf = [0u8; 16];
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut at = 0;
            put_var(&mut buf, &mut at, v);
            let mut r = 0;
            assert_eq!(get_var(&buf, &mut r), v);
            assert_eq!(r, at);
        }
        let mut s = StateRepr::default();
        s.key[0].addr[0] = [0xfe; 16];
        s.key[1].addr[1][..4].copy_from_slice(&[10, 0, 0, 1]);
        s.packets = [u64::MAX, 0];
        let mut out = [0u8; MAX_RECORD];
        for seen in [0, -1, i64::MIN, i64::MAX, 1 << 40] {
            let n = encode(&s, u32::MAX, seen, &mut out);
            let mut t = StateRepr::default();
            assert_eq!(decode(&out[..n], &mut t), (u32::MAX, seen));
            assert_eq!((t.key, t.packets), (s.key, s.packets));
            assert_eq!(profile_of(&out), u32::MAX);
        }
    }

    #[test]
    fn pool_counts_references() {
        let mut p = Pool::default();
        let a = Profile::of(&StateRepr::default());
        let s = StateRepr {
            rule: 7,
            ..Default::default()
        };
        let b = Profile::of(&s);
        let (na, nb) = (p.intern(&a), p.intern(&b));
        assert_ne!(na, nb);
        assert_eq!(p.intern(&a), na);
        assert_eq!(p.len(), 2);
        p.release(na);
        assert_eq!(p.len(), 2);
        p.release(na);
        assert_eq!(p.len(), 1);
        // The freed number is reused, and the cache of the last one does not return it.
        let mut s2 = s;
        s2.rule = 8;
        let c = Profile::of(&s2);
        assert_eq!(p.intern(&c), na);
        assert_eq!(p.get(na), &c);
        assert_eq!(p.intern(&b), nb);
    }
}

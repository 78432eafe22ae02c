//! The digest test vectors of docs/SYNC.md ("Digest: entry hash, leaves, test vectors"),
//! checked two ways: against the crate, and against an independent implementation written
//! from the document alone (what a stranger's peer would compute).

use std::time::Instant;

use pfsync_gw::table::{entry_hash, leaf_of, StateTable, TableConfig, Version};
use pfsync_gw::wire::{AddrFamily, Message, PeerRepr, StateId, StateKeyRepr, StateRepr};

/// The document's example state: TCP, 10.1.0.2:40000 → 192.0.2.80:443, both keys equal.
fn example(id: u64, creator: u32) -> StateRepr {
    let mut k = StateKeyRepr::default();
    k.addr[0][..4].copy_from_slice(&[10, 1, 0, 2]);
    k.addr[1][..4].copy_from_slice(&[192, 0, 2, 80]);
    k.port = [40000, 443];
    k.af = AddrFamily::Inet;
    StateRepr {
        id: StateId::new(id, creator),
        af: AddrFamily::Inet,
        proto: 6,
        direction: 1,
        timeout: 2,
        key: [k, k],
        src: PeerRepr {
            seqlo: 1000,
            seqhi: 66000,
            max_win: 65535,
            mss: 1460,
            state: 4,
            wscale: 7,
            ..Default::default()
        },
        dst: PeerRepr {
            seqlo: 5000,
            seqhi: 70000,
            max_win: 65535,
            mss: 1460,
            state: 4,
            wscale: 7,
            ..Default::default()
        },
        expire: 86_400,
        ..Default::default()
    }
}

// ---- independent implementation, from docs/SYNC.md only ----

const K0: u64 = 0x7066_7379_6e63_2d67;
const K1: u64 = 0x772d_6469_6765_7374;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

struct H {
    a: u64,
    b: u64,
    n: u64,
}

impl H {
    fn w(&mut self, w: u64) {
        self.n += 1;
        self.a = mix(self.a ^ w).wrapping_add(self.n);
        self.b = mix(self.b.rotate_left(17) ^ w ^ 0x9e3779b97f4a7c15);
    }
    fn addr16(&mut self, a: &[u8; 16]) {
        self.w(u64::from_le_bytes(a[..8].try_into().unwrap()));
        self.w(u64::from_le_bytes(a[8..].try_into().unwrap()));
    }
}

fn doc_hash(s: &StateRepr) -> u128 {
    let af = |a: AddrFamily| match a {
        AddrFamily::Unspec => 0u64,
        AddrFamily::Inet => 1,
        AddrFamily::Inet6 => 2,
        AddrFamily::Other(v) => 0x100 | v as u64,
    };
    let mut h = H { a: K0, b: K1, n: 0 };
    h.w(s.id.id);
    h.w((s.id.creator as u64) << 32 | af(s.af) << 16 | (s.proto as u64) << 8 | s.direction as u64);
    h.w(s.timeout as u64);
    for k in &s.key {
        h.addr16(&k.addr[0]);
        h.addr16(&k.addr[1]);
        h.w((k.port[0] as u64) << 16 | k.port[1] as u64);
    }
    for p in [&s.src, &s.dst] {
        h.w((p.seqlo as u64) << 32 | p.seqhi as u64);
        h.w((p.max_win as u64) << 32
            | (p.mss as u64) << 16
            | (p.state as u64) << 8
            | p.wscale as u64);
    }
    let hi = mix(h.a ^ h.b.rotate_left(32) ^ h.n);
    let lo = mix(h.b ^ hi);
    (hi as u128) << 64 | lo as u128
}

fn doc_leaf(id: StateId, log2: u8) -> usize {
    (mix(id.id ^ mix(id.creator as u64 ^ K0)) >> (64 - log2 as u32)) as usize
}

// ---- vectors (also printed in docs/SYNC.md) ----

const HASH_1: u128 = 0xd05b3346c92bfc4e0eb159e8ed32eb66;
const HASH_2: u128 = 0xc1afd6c5b5ec813cec80e03e07d1d26a;
const LEAF_1: usize = 3378;
const LEAF_2: usize = 3016;
const TABLE: u128 = 0x920b0a0c7f187d8afb323a26f504bdd0;

#[test]
fn vectors() {
    let s1 = example(0x0102030405060708, 0xa1);
    let s2 = example(0x0102030405060709, 0xa1);
    let mut t = StateTable::new(TableConfig::default());
    let now = Instant::now();
    for s in [s1, s2] {
        t.apply_versioned(&Message::Ins(s), now, Version::new(1, 1));
    }
    println!("table digest {}", t.digest());
    for (s, h, l) in [(&s1, HASH_1, LEAF_1), (&s2, HASH_2, LEAF_2)] {
        println!(
            "id {:016x} creator {:08x}: hash {:032x} leaf(12) {}",
            s.id.id,
            s.id.creator,
            entry_hash(s),
            leaf_of(s.id, 12)
        );
        assert_eq!(entry_hash(s), h);
        assert_eq!(doc_hash(s), h);
        assert_eq!(leaf_of(s.id, 12), l);
        assert_eq!(doc_leaf(s.id, 12), l);
    }
    assert_eq!(t.digest().0, TABLE);
    assert_eq!(TABLE, HASH_1.wrapping_add(HASH_2));
    assert_eq!(t.leaf_digest(LEAF_1).0, HASH_1);
    assert_eq!(t.leaf_digest(LEAF_2).0, HASH_2);
    assert_eq!(t.range_digest(0, 4096).0, TABLE);
    // Unsynced fields do not count.
    let mut s3 = s1;
    s3.expire = 1;
    s3.packets = [9, 9];
    assert_eq!(entry_hash(&s3), HASH_1);
}

#[test]
fn document_matches_the_crate_on_many_states() {
    let mut x = 0x1234_5678_9abc_def0u64;
    for i in 0..2000u64 {
        x = mix(x.wrapping_add(i));
        let mut s = example(x, (x >> 40) as u32 | 1);
        s.src.seqlo = x as u32;
        s.dst.wscale = (x >> 8) as u8;
        s.key[1].addr[1] = x.to_le_bytes().repeat(2).try_into().unwrap();
        s.key[1].port = [(x >> 16) as u16, (x >> 32) as u16];
        s.af = if i % 2 == 0 {
            AddrFamily::Inet6
        } else {
            AddrFamily::Inet
        };
        assert_eq!(entry_hash(&s), doc_hash(&s));
        for log2 in [1u8, 4, 12, 16] {
            assert_eq!(leaf_of(s.id, log2), doc_leaf(s.id, log2));
        }
    }
}

/// The constants as docs/SYNC.md prints them are the ones above (an implementer copies the
/// hex, not the ASCII in parentheses): a typo there once made every vector fail.
#[test]
fn document_prints_these_constants() {
    let doc = include_str!("../docs/SYNC.md");
    let section = &doc[doc.find("### Digest: entry hash").expect("digest section")..];
    for (k, ascii) in [(K0, "pfsync-g"), (K1, "w-digest")] {
        assert_eq!(k.to_be_bytes(), ascii.as_bytes(), "{ascii}");
        let hex = format!("0x{k:016x}");
        assert!(section.contains(&hex), "docs/SYNC.md lacks {hex} ({ascii})");
    }
    // No other 64-bit hex constant than these and mix's multipliers.
    let allowed = [
        format!("0x{K0:016x}"),
        format!("0x{K1:016x}"),
        "0xbf58476d1ce4e5b9".into(),
        "0x94d049bb133111eb".into(),
        "0x9e3779b97f4a7c15".into(),
    ];
    for (i, _) in section.match_indices("0x") {
        let hex: String = section[i..].chars().take(18).collect();
        if hex[2..].chars().all(|c| c.is_ascii_hexdigit()) {
            assert!(
                allowed.contains(&hex),
                "unexpected constant {hex} in docs/SYNC.md"
            );
        }
    }
}

//! State table: apply semantics, stale protection, expiry, bulk, digests.

use std::time::{Duration, Instant};

use pfsync_gw::table::{Applied, StateTable, TableConfig, Version};
use pfsync_gw::wire::{
    name_field, AddrFamily, BusStatus, Dialect, Message, Packet, PacketWriter, PeerRepr, ScrubRepr,
    StateId, StateKeyRepr, StateRepr, TdbRepr, UpdCRepr,
};
use proptest::prelude::*;

const TCP: u8 = 6;
const UDP: u8 = 17;

fn st(id: u64, creator: u32, proto: u8) -> StateRepr {
    let mut s = StateRepr {
        id: StateId::new(id, creator),
        proto,
        af: AddrFamily::Inet,
        direction: 1,
        timeout: 2,
        expire: 60,
        ifname: name_field("em0"),
        ..Default::default()
    };
    s.key[0].addr = [
        [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    s.key[0].port = [1234, 80];
    s.key[1] = s.key[0];
    s.src = peer(4, 1000);
    s.dst = peer(4, 5000);
    s
}

fn peer(state: u8, seqlo: u32) -> PeerRepr {
    PeerRepr {
        state,
        seqlo,
        seqhi: seqlo.wrapping_add(65535),
        max_win: 65535,
        ..Default::default()
    }
}

fn upd_c(s: &StateRepr) -> UpdCRepr {
    UpdCRepr::of(s, Dialect::Freebsd1400)
}

fn t0() -> Instant {
    Instant::now()
}

#[test]
fn insert_then_ins_again_is_update() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(1, 7, TCP);
    assert_eq!(t.apply(&Message::Ins(s), now), Applied::Inserted(s.id));
    let mut s2 = s;
    s2.src.seqlo = 2000;
    assert_eq!(t.apply(&Message::Ins(s2), now), Applied::Updated(s.id));
    assert_eq!(t.get(s.id).unwrap().raw().src.seqlo, 2000);
    assert_eq!(t.len(), 1);
}

#[test]
fn creator_zero_is_ignored() {
    let mut t = StateTable::default();
    assert_eq!(
        t.apply(&Message::Ins(st(1, 0, TCP)), t0()),
        Applied::Ignored
    );
    assert!(t.is_empty());
}

#[test]
fn full_upd_of_unknown_inserts() {
    let mut t = StateTable::default();
    let s = st(9, 7, UDP);
    assert_eq!(t.apply(&Message::Upd(s), t0()), Applied::Inserted(s.id));
}

#[test]
fn tcp_seqlo_regress_is_stale_and_kept() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(1, 7, TCP);
    t.apply(&Message::Ins(s), now);
    let mut old = s;
    old.src.seqlo = 999;
    old.dst.seqlo = 4999;
    assert_eq!(t.apply(&Message::Upd(old), now), Applied::Stale(s.id));
    let e = t.get(s.id).unwrap().raw();
    assert_eq!((e.src.seqlo, e.dst.seqlo), (1000, 5000));
    // Compressed update too.
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&old)), now),
        Applied::Stale(s.id)
    );
    assert_eq!(t.get(s.id).unwrap().raw().src.seqlo, 1000);
}

#[test]
fn tcp_one_side_stale_merges_other_side() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(1, 7, TCP);
    t.apply(&Message::Ins(s), now);
    let mut m = s;
    m.src.seqlo = 900; // stale
    m.dst.seqlo = 6000; // fresh
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Stale(s.id)
    );
    let e = t.get(s.id).unwrap().raw();
    assert_eq!((e.src.seqlo, e.dst.seqlo), (1000, 6000));
}

#[test]
fn tcp_state_regress_is_stale() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(1, 7, TCP);
    t.apply(&Message::Ins(s), now);
    let mut m = s;
    m.src = peer(3, 5000);
    m.dst = peer(3, 9000);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Stale(s.id)
    );
    assert_eq!(t.get(s.id).unwrap().raw().src.state, 4);
    // Forward is fine.
    m.src = peer(5, 1);
    m.dst = peer(5, 9000);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Updated(s.id)
    );
}

#[test]
fn tcp_seqlo_wraps_around() {
    let now = t0();
    let mut t = StateTable::default();
    let mut s = st(1, 7, TCP);
    s.src.seqlo = 0xffff_fff0;
    s.dst.seqlo = 0xffff_fff0;
    t.apply(&Message::Ins(s), now);
    let mut m = s;
    m.src.seqlo = 0x10; // wrapped: newer
    m.dst.seqlo = 0x10;
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Updated(s.id)
    );
    let mut back = m;
    back.src.seqlo = 0xffff_fff8; // older than 0x10 across the wrap
    back.dst.seqlo = 0x10;
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&back)), now),
        Applied::Stale(s.id)
    );
    assert_eq!(t.get(s.id).unwrap().raw().src.seqlo, 0x10);
}

#[test]
fn syn_proxy_may_move_to_real_state() {
    let now = t0();
    let mut t = StateTable::default();
    let mut s = st(1, 7, TCP);
    s.src = peer(11, 10); // PF_TCPS_PROXY_SRC
    t.apply(&Message::Ins(s), now);
    let mut m = s;
    m.src = peer(4, 10);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Updated(s.id)
    );
    assert_eq!(t.get(s.id).unwrap().raw().src.state, 4);
}

#[test]
fn non_tcp_only_moves_forward() {
    let now = t0();
    let mut t = StateTable::default();
    let mut s = st(1, 7, UDP);
    s.src = peer(2, 0);
    s.dst = peer(2, 0);
    t.apply(&Message::Ins(s), now);
    let mut m = s;
    m.src = peer(1, 0);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Stale(s.id)
    );
    assert_eq!(t.get(s.id).unwrap().raw().src.state, 2);
    // seqlo is not looked at for non-TCP.
    m.src = peer(2, 0);
    m.dst = peer(2, 7);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&m)), now),
        Applied::Updated(s.id)
    );
}

#[test]
fn unknown_upd_c_needs_update() {
    let mut t = StateTable::default();
    let s = st(5, 7, TCP);
    assert_eq!(
        t.apply(&Message::UpdC(upd_c(&s)), t0()),
        Applied::NeedUpdate(s.id)
    );
    assert!(t.is_empty());
}

#[test]
fn delete_and_delete_c() {
    let now = t0();
    let mut t = StateTable::default();
    let a = st(1, 7, TCP);
    let b = st(2, 7, TCP);
    t.apply(&Message::Ins(a), now);
    t.apply(&Message::Ins(b), now);
    assert_eq!(t.apply(&Message::Del(a), now), Applied::Deleted(a.id));
    assert_eq!(t.apply(&Message::DelC(b.id), now), Applied::Deleted(b.id));
    assert_eq!(t.apply(&Message::DelC(b.id), now), Applied::NotFound(b.id));
    assert!(t.is_empty());
    assert_eq!(t.digest().0, 0);
}

#[test]
fn clear_per_creator_and_ifname() {
    let now = t0();
    let mut t = StateTable::default();
    for i in 0..4 {
        let mut s = st(i, 7, TCP);
        if i % 2 == 1 {
            s.ifname = name_field("em1");
        }
        t.apply(&Message::Ins(s), now);
        t.apply(&Message::Ins(st(i, 8, TCP)), now);
    }
    let clr = |ifname: &str, creator| Message::Clr {
        ifname: name_field(ifname),
        creator,
    };
    assert_eq!(t.apply(&clr("em1", 7), now), Applied::Cleared(2));
    assert_eq!(t.len(), 6);
    assert_eq!(t.apply(&clr("", 7), now), Applied::Cleared(2));
    assert_eq!(t.len(), 4);
    assert!(t.iter().all(|e| e.raw().id.creator == 8));
    assert_eq!(t.digest(), t.recompute_digest());
}

#[test]
fn update_requests() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(3, 7, TCP);
    t.apply(&Message::Ins(s), now);
    match t.apply(&Message::UpdReq(s.id), now + Duration::from_secs(10)) {
        Applied::Reply(Message::Upd(r)) => {
            assert_eq!(r.id, s.id);
            assert_eq!(r.expire, 50, "expire presented relative to now");
            assert_eq!(r.creation, 10, "creation is the age");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.apply(&Message::UpdReq(StateId::new(99, 7)), now),
        Applied::NotFound(StateId::new(99, 7))
    );
    assert_eq!(
        t.apply(&Message::UpdReq(StateId::BULK), now),
        Applied::BulkRequested
    );
}

#[test]
fn ins_ack_bus_tdb() {
    let now = t0();
    let mut t = StateTable::default();
    let id = StateId::new(1, 2);
    assert_eq!(t.apply(&Message::InsAck(id), now), Applied::InsAck(id));
    let bus = Message::Bus {
        creator: 9,
        endtime: 0,
        status: BusStatus::Start,
    };
    assert_eq!(
        t.apply(&bus, now),
        Applied::Bus {
            creator: 9,
            status: BusStatus::Start
        }
    );
    assert_eq!(t.last_bus(), Some((9, BusStatus::Start)));
    assert_eq!(
        t.apply(&Message::Tdb(TdbRepr::default()), now),
        Applied::Ignored
    );
    assert_eq!(t.stats().tdb, 1);
}

#[test]
fn bulk_answer_framing_order() {
    let now = t0();
    let mut t = StateTable::default();
    for i in 1..=5 {
        t.apply(&Message::Ins(st(i, 7, TCP)), now);
    }
    let msgs: Vec<Message> = t.bulk(now, 42).collect();
    assert_eq!(msgs.len(), 7);
    assert!(matches!(
        msgs[0],
        Message::Bus {
            creator: 42,
            status: BusStatus::Start,
            ..
        }
    ));
    assert!(matches!(
        msgs[6],
        Message::Bus {
            creator: 42,
            status: BusStatus::End,
            ..
        }
    ));
    assert!(msgs[1..6].iter().all(|m| matches!(m, Message::Upd(_))));
    let empty = StateTable::default();
    assert_eq!(empty.bulk(now, 1).count(), 2);
}

#[test]
fn expiry_from_expire_field() {
    let now = t0();
    let mut t = StateTable::default();
    let mut a = st(1, 7, TCP);
    a.expire = 10;
    let mut b = st(2, 7, TCP);
    b.expire = 100;
    t.apply(&Message::Ins(a), now);
    t.apply(&Message::Ins(b), now);
    assert_eq!(t.expire(now + Duration::from_secs(9)), 0);
    assert_eq!(t.expire(now + Duration::from_secs(10)), 1);
    assert!(t.get(a.id).is_none());
    assert_eq!(
        t.get(b.id)
            .unwrap()
            .present(now + Duration::from_secs(40))
            .expire,
        60
    );
    // An update refreshes the deadline; UPD_C's expire 0 means "refreshed" (default timeout).
    t.apply(&Message::UpdC(upd_c(&b)), now + Duration::from_secs(50));
    assert!(t.get(b.id).unwrap().deadline() > now + Duration::from_secs(1000));
    assert_eq!(t.expire(now + Duration::from_secs(200)), 0);
    assert_eq!(t.tombstone(a.id), None, "expiry leaves no tombstone");
}

#[test]
fn versioned_late_insert_after_delete_is_refused() {
    let now = t0();
    let mut t = StateTable::default();
    let s = st(1, 7, TCP);
    t.apply_versioned(&Message::Ins(s), now, Version::new(5, 1));
    assert_eq!(
        t.apply_versioned(&Message::DelC(s.id), now, Version::new(6, 1)),
        Applied::Deleted(s.id)
    );
    assert_eq!(t.tombstone(s.id), Some(Version::new(6, 1)));
    assert_eq!(
        t.apply_versioned(&Message::Upd(s), now, Version::new(5, 1)),
        Applied::Older(s.id)
    );
    assert_eq!(
        t.apply_versioned(&Message::UpdC(upd_c(&s)), now, Version::new(4, 1)),
        Applied::Older(s.id)
    );
    // Deletion wins whatever the versions: pf never reuses a state id, so a full state that
    // arrives after the delete (a bulk answer racing the DEL_C) must not resurrect it.
    assert_eq!(
        t.apply_versioned(&Message::Ins(s), now, Version::new(7, 2)),
        Applied::Older(s.id)
    );
    assert!(t.get(s.id).is_none());
    // And symmetrically a delete removes an entry with a newer version, so two replicas
    // that saw the delete and a late update in either order agree.
    let mut u = StateTable::default();
    u.apply_versioned(&Message::Ins(s), now, Version::new(9, 3));
    assert_eq!(
        u.apply_versioned(&Message::DelC(s.id), now, Version::new(6, 9)),
        Applied::Deleted(s.id)
    );
    assert_eq!(u.digest(), t.digest());
}

#[test]
fn tombstones_are_bounded() {
    let now = t0();
    let mut t = StateTable::new(TableConfig {
        tombstone_max: 10,
        tombstone_ttl: Duration::from_secs(5),
        ..Default::default()
    });
    for i in 1..=30 {
        t.apply(&Message::Ins(st(i, 7, TCP)), now);
        t.apply(&Message::DelC(StateId::new(i, 7)), now);
    }
    assert_eq!(t.tombstone_count(), 10);
    assert!(t.tombstone(StateId::new(30, 7)).is_some());
    assert!(t.tombstone(StateId::new(1, 7)).is_none());
    t.expire(now + Duration::from_secs(6));
    assert_eq!(t.tombstone_count(), 0);
    assert!((0..t.leaf_count()).all(|l| t.leaf_tombstones(l).is_empty()));
}

#[test]
fn range_digests_localise_a_difference() {
    let now = t0();
    let mut a = StateTable::default();
    let mut b = StateTable::default();
    for i in 0..2000 {
        let s = st(i, 7, TCP);
        a.apply(&Message::Ins(s), now);
        b.apply(&Message::Ins(s), now);
    }
    assert_eq!(a.digest(), b.digest());
    let mut s = st(1234, 7, TCP);
    s.src.seqlo = 77_777;
    b.apply(&Message::UpdC(upd_c(&s)), now);
    assert_ne!(a.digest(), b.digest());
    let differing: Vec<usize> = (0..a.leaf_count())
        .filter(|&l| a.leaf_digest(l) != b.leaf_digest(l))
        .collect();
    assert_eq!(differing, vec![a.leaf_of(s.id)]);
    assert!(a.leaf_states(differing[0]).any(|id| id == s.id));
    // Coarser ranges localise it too.
    let span = 64;
    let diff_ranges: Vec<usize> = (0..a.leaf_count() / span)
        .filter(|&r| a.range_digest(r * span, span) != b.range_digest(r * span, span))
        .collect();
    assert_eq!(diff_ranges, vec![differing[0] / span]);
}

#[derive(Debug, Clone)]
enum Op {
    Ins(u64, u32),
    Upd(u64, u32),
    Del(u64),
    Clr(u32),
    /// Read the digests between changes (updates are hashed lazily, at the next read).
    Read,
}

/// Every leaf digest and the table digest equal what the entries' current hashes sum to.
fn assert_digests_exact(t: &mut StateTable) {
    let mut total = pfsync_gw::table::Digest::ZERO;
    for l in 0..t.leaf_count() {
        let mut sum = pfsync_gw::table::Digest::ZERO;
        let ids: Vec<StateId> = t.leaf_states(l).collect();
        for id in ids {
            sum.add(t.get(id).unwrap().hash());
        }
        assert_eq!(t.leaf_digest(l), sum, "leaf {l}");
        total.add(sum.0);
    }
    assert_eq!(t.digest(), total);
    assert_eq!(t.digest(), t.recompute_digest());
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..50u64, any::<u32>()).prop_map(|(i, s)| Op::Ins(i, s)),
        (0..50u64, any::<u32>()).prop_map(|(i, s)| Op::Upd(i, s)),
        (0..50u64).prop_map(Op::Del),
        (1..3u32).prop_map(Op::Clr),
        Just(Op::Read),
    ]
}

fn run(t: &mut StateTable, ops: &[Op], now: Instant) {
    for o in ops {
        let m = match *o {
            Op::Ins(i, seq) => {
                let mut s = st(i, 1 + (i % 2) as u32, TCP);
                s.src.seqlo = seq;
                Message::Ins(s)
            }
            Op::Upd(i, seq) => {
                let mut s = st(i, 1 + (i % 2) as u32, TCP);
                s.dst.seqlo = seq;
                Message::UpdC(upd_c(&s))
            }
            Op::Del(i) => Message::DelC(StateId::new(i, 1 + (i % 2) as u32)),
            Op::Clr(c) => Message::Clr {
                ifname: [0; 16],
                creator: c,
            },
            Op::Read => {
                assert_digests_exact(t);
                continue;
            }
        };
        t.apply(&m, now);
    }
}

proptest! {
    #[test]
    fn digest_incremental_equals_recomputed(ops in proptest::collection::vec(op(), 0..200)) {
        let now = t0();
        let mut t = StateTable::new(TableConfig { leaves_log2: 4, ..Default::default() });
        run(&mut t, &ops, now);
        assert_digests_exact(&mut t);
        let mut sum = pfsync_gw::table::Digest::ZERO;
        let mut n = 0;
        for l in 0..t.leaf_count() {
            sum.add(t.leaf_digest(l).0);
            n += t.leaf_len(l);
            for id in t.leaf_states(l) {
                prop_assert_eq!(t.leaf_of(id), l);
            }
        }
        prop_assert_eq!(sum, t.digest());
        prop_assert_eq!(n, t.len());
    }

    #[test]
    fn digest_is_order_independent(ids in proptest::collection::btree_set(0..10_000u64, 0..100), seed in any::<u64>()) {
        let now = t0();
        let mut ids: Vec<u64> = ids.into_iter().collect();
        let mut a = StateTable::default();
        for &i in &ids { a.apply(&Message::Ins(st(i, 3, TCP)), now); }
        // A deterministic shuffle.
        let mut x = seed | 1;
        for i in (1..ids.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            ids.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut b = StateTable::default();
        for &i in &ids {
            let mut s = st(i, 3, TCP);
            s.expire = 5; // not a synced field
            s.packets = [i, i];
            b.apply(&Message::Ins(s), now);
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.digest().to_string().len(), 32);
    }
}

proptest! {
    /// The digest tree's ranges (docs/SYNC.md, *Digest*) are kept with the leaves: each is
    /// the sum of its leaves' digests, and reading one costs one digest read, whatever its
    /// span, for every leaf count.
    #[test]
    fn tree_ranges_are_the_sums_of_their_leaves(
        ops in proptest::collection::vec(op(), 0..200),
        log2 in 0u8..=13,
    ) {
        let now = t0();
        let mut t = StateTable::new(TableConfig { leaves_log2: log2, ..Default::default() });
        run(&mut t, &ops, now);
        let n = t.leaf_count();
        let spans: Vec<usize> = t.tree_spans().collect();
        prop_assert_eq!(spans[0], (n / 64).max(1));
        for w in spans.windows(2) {
            prop_assert_eq!(w[1], (w[0] / 64).max(1));
        }
        prop_assert_eq!(spans.last(), Some(&1));
        for &span in &spans {
            prop_assert!(t.is_tree_span(span));
            for first in (0..n).step_by(span) {
                let mut sum = pfsync_gw::table::Digest::ZERO;
                for l in first..first + span {
                    sum.add(t.leaf_digest(l).0);
                }
                let before = t.range_reads();
                prop_assert_eq!(t.range_digest(first, span), sum);
                prop_assert_eq!(t.range_reads(), before + 1);
            }
        }
        prop_assert!(!t.is_tree_span(n * 2) && !t.is_tree_span(0));
        prop_assert_eq!(t.range_digest(0, n), t.digest());
    }
}

// ---- the stored form is exact ---------------------------------------------------------------

fn any_peer() -> impl Strategy<Value = PeerRepr> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u16>(), any::<u16>(), 0u8..=12, any::<u8>()),
        (any::<u16>(), any::<u8>(), any::<u8>(), any::<u32>()),
    )
        .prop_map(
            |((seqlo, seqhi, seqdiff), (max_win, mss, state, wscale), (flags, ttl, sf, ts))| {
                PeerRepr {
                    scrub: ScrubRepr {
                        flags,
                        ttl,
                        scrub_flag: sf,
                        ts_mod: ts,
                    },
                    seqlo,
                    seqhi,
                    seqdiff,
                    max_win,
                    mss,
                    state,
                    wscale,
                }
            },
        )
}

/// An address stored short (bytes 4..16 zero) or long, or all zero.
fn any_addr() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a);
            b
        }),
        any::<[u8; 16]>(),
        Just([0u8; 16]),
    ]
}

fn any_af() -> impl Strategy<Value = AddrFamily> {
    prop_oneof![
        Just(AddrFamily::Unspec),
        Just(AddrFamily::Inet),
        Just(AddrFamily::Inet6),
        any::<u8>().prop_map(AddrFamily::Other),
    ]
}

/// A name field, terminated or not.
fn any_name<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    prop_oneof![
        Just([0u8; N]),
        "[a-z]{1,8}[0-9]".prop_map(|n| {
            let mut b = [0u8; N];
            b[..n.len()].copy_from_slice(n.as_bytes());
            b
        }),
        proptest::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap()),
    ]
}

fn any_key() -> impl Strategy<Value = StateKeyRepr> {
    (
        any_addr(),
        any_addr(),
        any::<[u16; 2]>(),
        any::<u16>(),
        any_af(),
    )
        .prop_map(|(a0, a1, port, rdomain, af)| StateKeyRepr {
            addr: [a0, a1],
            port,
            rdomain,
            af,
        })
}

/// Any value of every field of the superset (what any dialect's parse can give, and more).
fn any_state() -> impl Strategy<Value = StateRepr> {
    let ids = (1..u64::MAX, 1..u32::MAX);
    let keys = (any_key(), any_key(), any::<bool>());
    let peers = (any_peer(), any_peer());
    let nums = (
        any::<[u32; 3]>(),
        any::<u32>(),
        0u32..=1_000_000,
        any::<[u64; 2]>(),
        prop_oneof![
            any::<[u64; 2]>(),
            (0u64..200, 0u64..200).prop_map(|(a, b)| [a, b])
        ],
    );
    let small = (
        any_af(),
        any::<[u8; 8]>(),
        any::<u16>(),
        any::<u16>(),
        any::<[u8; 2]>(),
        any::<[i32; 2]>(),
        any::<[u16; 4]>(),
    );
    let names = (
        any_name::<16>(),
        any_name::<16>(),
        any_name::<64>(),
        any_name::<16>(),
        any_addr(),
        (any_af(), any_af(), any_af()),
        any::<[u8; 2]>(),
    );
    (ids, keys, peers, nums, small, names).prop_map(
        |(
            (id, creator),
            (k0, k1, same),
            (src, dst),
            ([rule, anchor, nat_rule], creation, expire, packets, bytes),
            (af, b, state_flags, max_mss, set_prio, rtableid, q),
            (ifname, rt_ifname, tagname, orig_ifname, rt_addr, (a0, a1, a2), proto_1500),
        )| StateRepr {
            id: StateId::new(id, creator),
            ifname,
            key: [k0, if same { k0 } else { k1 }],
            src,
            dst,
            rt_addr,
            rule,
            anchor,
            nat_rule,
            creation,
            expire,
            packets,
            bytes,
            af,
            proto: b[0],
            direction: b[1],
            log: b[2],
            allow_opts: b[3],
            timeout: b[4] % 20,
            sync_flags: b[5],
            updates: b[6],
            state_flags,
            max_mss,
            min_ttl: b[7],
            set_tos: b[0] ^ b[7],
            set_prio,
            rt: b[1] ^ b[2],
            rtableid,
            qid: q[0],
            pqid: q[1],
            dnpipe: q[2],
            dnrpipe: q[3],
            rt_ifname,
            tagname,
            orig_ifname,
            af_1500: [a0, a1, a2],
            proto_1500,
        },
    )
}

/// `s`, made acceptable to a receiving kernel, as a peer speaking `d` would send it: written
/// in `d` and parsed back.
fn through(d: Dialect, s: &StateRepr) -> Option<StateRepr> {
    let mut s = *s;
    if !matches!(s.af, AddrFamily::Inet | AddrFamily::Inet6) {
        s.af = AddrFamily::Inet;
    }
    s.direction %= 3;
    s.timeout %= d.pftm_max();
    for n in [
        &mut s.ifname[..],
        &mut s.rt_ifname,
        &mut s.tagname,
        &mut s.orig_ifname,
    ] {
        n[n.len() - 1] = 0;
    }
    for k in &mut s.key {
        k.af = s.af;
    }
    s.af_1500 = [s.af, s.af, s.af_1500[2]];
    if d == Dialect::NetbsdV3 {
        s.key[1].addr[0] = s.key[0].addr[0];
        s.key[1].port[0] = s.key[0].port[0];
    }
    let s = &s;
    let mut buf = [0u8; 1480];
    let mut w = PacketWriter::new(d, &mut buf);
    if !w.push(&Message::Ins(*s)).ok()? {
        return None;
    }
    let n = w.finish();
    let p = Packet::new_checked(&buf[..n], d).ok()?;
    let m = p.messages().next()?;
    match m {
        Message::Ins(t) => Some(t),
        _ => None,
    }
}

proptest! {
    /// StateRepr → stored → StateRepr is exact for any state and for every dialect's
    /// parse of it, after insertion and after a full update that replaces every non-peer
    /// field (in place or moved, with profiles shared, replaced and freed), and across
    /// deletions that compact the arena.
    #[test]
    fn stored_form_round_trips(
        states in proptest::collection::vec((any_state(), any_state()), 1..24),
        del_mask in any::<u32>(),
    ) {
        let now = t0();
        let later = now + Duration::from_millis(1500);
        let mut t = StateTable::new(TableConfig { leaves_log2: 2, ..Default::default() });
        let mut want: Vec<StateRepr> = Vec::new();
        for (a, b) in &states {
            let mut all = vec![*a];
            all.extend(Dialect::ALL.iter().filter_map(|&d| through(d, a)));
            prop_assert_eq!(all.len(), 1 + Dialect::ALL.len(), "every dialect carries it");
            for (k, s) in all.into_iter().enumerate() {
                let mut s = s;
                s.id = StateId::new(s.id.id.wrapping_add(k as u64 * 7919), s.id.creator);
                if want.iter().any(|w| w.id == s.id) {
                    continue;
                }
                prop_assert_eq!(t.apply_versioned(&Message::Ins(s), now, Version::new(1, 1)), Applied::Inserted(s.id));
                let e = t.get(s.id).unwrap();
                prop_assert_eq!(e.raw(), s);
                prop_assert_eq!(e.present(now), s);
                // A newer version with the same peers: every other field comes from `u`.
                let mut u = *b;
                (u.id, u.src, u.dst) = (s.id, s.src, s.dst);
                t.apply_versioned(&Message::Upd(u), later, Version::new(2, 1));
                prop_assert_eq!(t.get(s.id).unwrap().raw(), u);
                want.push(u);
            }
        }
        for (i, w) in want.iter().enumerate() {
            if del_mask & (1 << (i % 32)) != 0 {
                t.apply(&Message::DelC(w.id), later);
            }
        }
        want.retain(|w| t.get(w.id).is_some());
        prop_assert_eq!(t.len(), want.len());
        for w in &want {
            let e = t.get(w.id).unwrap();
            prop_assert_eq!(e.raw(), *w);
            prop_assert_eq!(e.hash(), pfsync_gw::table::entry_hash(w));
            let mut p = *w;
            p.creation = p.creation.saturating_add(2);
            prop_assert_eq!(e.present(later + Duration::from_secs(2)).creation, p.creation);
        }
        prop_assert_eq!(t.digest(), t.recompute_digest());
    }
}

/// Many deletions force arena compactions and profile reuse; the survivors are intact.
#[test]
fn compaction_keeps_survivors() {
    let now = t0();
    let mut t = StateTable::default();
    for i in 1..=20_000u64 {
        let mut s = st(i, 1 + (i % 3) as u32, TCP);
        s.rule = (i % 7) as u32;
        s.packets = [i, i * 1000];
        t.apply(&Message::Ins(s), now);
    }
    for i in (1..=20_000u64).filter(|i| i % 4 != 0) {
        t.apply(&Message::DelC(StateId::new(i, 1 + (i % 3) as u32)), now);
    }
    assert_eq!(t.len(), 5_000);
    // Each record takes ≥ 24 B here; compaction keeps the arena under 2× the live records.
    assert!(
        t.arena_len() < 20_000 * 20,
        "arena compacted: {}",
        t.arena_len()
    );
    assert_eq!(t.profile_count(), 7);
    for i in (1..=20_000u64).filter(|i| i % 4 == 0) {
        let mut s = st(i, 1 + (i % 3) as u32, TCP);
        s.rule = (i % 7) as u32;
        s.packets = [i, i * 1000];
        assert_eq!(t.get(s.id).unwrap().raw(), s);
    }
    assert_eq!(t.digest(), t.recompute_digest());
}

// ---- what an apply did, without looking it up ----------------------------------------------

proptest! {
    /// `last_change` says what comparing the entry's hash before and after the apply says
    /// (the lookups the sync layer used to make around every record).
    #[test]
    fn last_change_matches_lookups(
        ops in proptest::collection::vec(
            (0..6u8, 0..12u64, 0..4u32, 0..3u8, proptest::option::of((0..4u64, 0..3u32))),
            0..150,
        ),
    ) {
        let now = t0();
        let mut t = StateTable::new(TableConfig { leaves_log2: 3, ..Default::default() });
        for (kind, i, seq, state, v) in ops {
            let mut s = st(i, 1 + (i % 2) as u32, if i % 3 == 0 { UDP } else { TCP });
            s.src = peer(3 + state, 1000 + seq);
            s.dst.seqlo = 5000 + seq;
            s.timeout = 2 + state;
            // Not hashed (not synced): a change of it alone changes nothing that counts.
            s.src.seqdiff = (kind as u32) ^ seq;
            let m = match kind {
                0 => Message::Ins(s),
                1 => Message::Upd(s),
                2 | 3 => Message::UpdC(upd_c(&s)),
                4 => Message::DelC(s.id),
                _ => Message::Del(s),
            };
            let before = t.get(s.id).map(|e| e.hash());
            match v {
                Some((clock, node)) => t.apply_versioned(&m, now, Version::new(clock, node)),
                None => t.apply(&m, now),
            };
            let after = t.get(s.id).map(|e| e.hash());
            let c = t.last_change();
            prop_assert_eq!(c.held, before.is_some(), "{:?}", m);
            prop_assert_eq!(c.changed, before != after, "{:?}", m);
        }
        prop_assert_eq!(t.digest(), t.recompute_digest());
    }
}

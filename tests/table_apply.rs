//! State table: apply semantics, stale protection, expiry, bulk, digests.

use std::time::{Duration, Instant};

use pfsync_gw::table::{Applied, StateTable, TableConfig, Version};
use pfsync_gw::wire::{
    name_field, AddrFamily, BusStatus, Message, PeerRepr, StateId, StateRepr, TdbRepr, UpdCRepr,
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
    UpdCRepr {
        id: s.id,
        src: s.src,
        dst: s.dst,
        expire: 0,
        timeout: s.timeout,
        flags: 0,
    }
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
    assert!(a.leaf_states(differing[0]).contains(&s.id));
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..50u64, any::<u32>()).prop_map(|(i, s)| Op::Ins(i, s)),
        (0..50u64, any::<u32>()).prop_map(|(i, s)| Op::Upd(i, s)),
        (0..50u64).prop_map(Op::Del),
        (1..3u32).prop_map(Op::Clr),
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
        prop_assert_eq!(t.digest(), t.recompute_digest());
        let mut sum = pfsync_gw::table::Digest::ZERO;
        let mut n = 0;
        for l in 0..t.leaf_count() {
            sum.add(t.leaf_digest(l).0);
            n += t.leaf_len(l);
            for &id in t.leaf_states(l) {
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

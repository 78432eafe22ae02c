//! Dialect translation: every ordered pair of dialects, generated messages, validity of the
//! produced packets for the receiver, and survival of the fields both sides carry.

use pfsync_gw::wire::translate::{
    translate, translate_packet, TranslateStats, COMMON_STATE_FLAGS, NO_RULE, PFSTATE_ALLOWOPTS,
};
use pfsync_gw::wire::{
    name_field, AddrFamily, BusStatus, Dialect, Message, Packet, PacketWriter, PeerRepr, ScrubRepr,
    StateId, StateKeyRepr, StateRepr, UpdCRepr,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const MAX_LEN: usize = 1480;

// ---- generators ---------------------------------------------------------------------------

fn peer() -> impl Strategy<Value = PeerRepr> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        0u8..=12,
        any::<u8>(),
        (any::<u16>(), any::<u8>(), 0u8..=1, any::<u32>()),
    )
        .prop_map(
            |(seqlo, seqhi, seqdiff, max_win, mss, state, wscale, (flags, ttl, sf, ts))| PeerRepr {
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
            },
        )
}

fn addr(af: AddrFamily) -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>().prop_map(move |mut a| {
        if af == AddrFamily::Inet {
            a[4..].fill(0);
        }
        a
    })
}

/// A state as a kernel of dialect `d` would send it: rule-free (-1), no route-to, default
/// rtableid, remote end shared by both keys (as pf does unless twice-NATed).
fn state(d: Dialect) -> impl Strategy<Value = StateRepr> {
    let af = prop_oneof![Just(AddrFamily::Inet), Just(AddrFamily::Inet6)];
    af.prop_flat_map(move |af| {
        (
            (any::<u64>(), 1u32..),
            (addr(af), addr(af), addr(af), any::<[u16; 3]>()),
            (peer(), peer()),
            (
                prop_oneof![Just(1u8), Just(6), Just(17), Just(58), Just(132)],
                1u8..=2,
                0u8..d.pftm_max(),
                0u8..2,
            ),
            (
                any::<u32>(),
                any::<u32>(),
                any::<[u64; 2]>(),
                any::<[u64; 2]>(),
            ),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u8>(),
                any::<u8>(),
                any::<[u8; 2]>(),
            ),
            prop_oneof![Just("em0"), Just("vtnet1"), Just(""), Just("carp_sync0123")],
        )
            .prop_map(
                move |(
                    (id, creator),
                    (remote, wire_local, stack_local, ports),
                    (src, dst),
                    (proto, direction, timeout, log),
                    (creation, expire, packets, bytes),
                    (flags, max_mss, min_ttl, set_tos, set_prio),
                    ifname,
                )| {
                    let mut s = StateRepr {
                        id: StateId::new(id, creator),
                        ifname: name_field(ifname),
                        key: [
                            StateKeyRepr {
                                addr: [remote, wire_local],
                                port: [ports[0], ports[1]],
                                ..Default::default()
                            },
                            StateKeyRepr {
                                addr: [remote, stack_local],
                                port: [ports[0], ports[2]],
                                ..Default::default()
                            },
                        ],
                        src,
                        dst,
                        rule: NO_RULE,
                        anchor: NO_RULE,
                        nat_rule: NO_RULE,
                        creation,
                        expire,
                        packets,
                        bytes,
                        af,
                        proto,
                        direction,
                        log,
                        timeout,
                        rtableid: [-1, -1],
                        ..StateRepr::default()
                    };
                    match d {
                        Dialect::NetbsdV3 => s.allow_opts = (flags & 1) as u8,
                        Dialect::Freebsd1301 => s.state_flags = flags & 0xff,
                        _ => s.state_flags = flags,
                    }
                    if matches!(
                        d,
                        Dialect::OpenbsdV6 | Dialect::Freebsd1400 | Dialect::Freebsd1500
                    ) {
                        s.max_mss = max_mss;
                        s.min_ttl = min_ttl;
                        s.set_tos = set_tos;
                        s.set_prio = set_prio;
                    }
                    s
                },
            )
    })
}

fn upd_c(d: Dialect) -> impl Strategy<Value = UpdCRepr> {
    (
        any::<u64>(),
        1u32..,
        peer(),
        peer(),
        0u8..d.pftm_max(),
        any::<u8>(),
    )
        .prop_map(move |(id, c, src, dst, timeout, flags)| UpdCRepr {
            id: StateId::new(id, c),
            src,
            dst,
            expire: 0,
            timeout,
            flags: if d.is_freebsd() { 0 } else { flags },
        })
}

fn message(d: Dialect) -> impl Strategy<Value = Message> {
    let id = (any::<u64>(), 1u32..).prop_map(|(i, c)| StateId::new(i, c));
    let mut options = vec![
        state(d).prop_map(Message::Ins).boxed(),
        state(d).prop_map(Message::Upd).boxed(),
        upd_c(d).prop_map(Message::UpdC).boxed(),
        id.clone().prop_map(Message::DelC).boxed(),
        id.clone().prop_map(Message::UpdReq).boxed(),
        (1u32.., any::<u32>(), 1u8..=2)
            .prop_map(|(creator, endtime, st)| Message::Bus {
                creator,
                endtime,
                status: BusStatus::from_wire(st),
            })
            .boxed(),
        (1u32.., prop_oneof![Just(""), Just("em0")])
            .prop_map(|(creator, n)| Message::Clr {
                ifname: name_field(n),
                creator,
            })
            .boxed(),
    ];
    // FreeBSD senders use DEL_C (the codec refuses to write FreeBSD DEL); NetBSD has no
    // INS_ACK.
    if !d.is_freebsd() {
        options.push(state(d).prop_map(Message::Del).boxed());
    }
    if d != Dialect::NetbsdV3 {
        options.push(id.prop_map(Message::InsAck).boxed());
    }
    proptest::strategy::Union::new(options)
}

fn pair() -> impl Strategy<Value = (Dialect, Dialect)> {
    (0usize..5, 0usize..5).prop_map(|(a, b)| (Dialect::ALL[a], Dialect::ALL[b]))
}

// ---- helpers ------------------------------------------------------------------------------

/// Encode `msgs` as packets of `d`, as the sending kernel would.
fn encode(d: Dialect, msgs: &[Message]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_LEN];
    let mut w = PacketWriter::new(d, &mut buf);
    for m in msgs {
        if !w.push(m).unwrap() {
            let n = w.finish();
            out.push(buf[..n].to_vec());
            w = PacketWriter::new(d, &mut buf);
            assert!(w.push(m).unwrap());
        }
    }
    if !w.is_empty() {
        let n = w.finish();
        out.push(buf[..n].to_vec());
    }
    out
}

fn parse(d: Dialect, p: &[u8]) -> Vec<Message> {
    Packet::new_checked(p, d)
        .unwrap_or_else(|e| panic!("{d} rejects translated packet: {e}\n{p:02x?}"))
        .messages()
        .filter(|m| *m != Message::Eof)
        .collect()
}

/// Translate packets; every output packet must pass the receiver's checks.
fn relay(from: Dialect, to: Dialect, pkts: &[Vec<u8>]) -> (Vec<Message>, TranslateStats) {
    let mut total = TranslateStats::default();
    let mut msgs = Vec::new();
    for p in pkts {
        let mut out = Vec::new();
        let st = translate_packet(p, from, to, &mut out, MAX_LEN).expect("translate_packet");
        assert_eq!(st.packets_out, out.len());
        for q in &out {
            assert!(q.len() <= MAX_LEN);
            assert_eq!(q[0], to.version());
            if to == Dialect::NetbsdV3 {
                // One action per NetBSD packet (the header carries it).
                let ms = parse(to, q);
                assert!(ms
                    .windows(2)
                    .all(|w| w[0].action_name() == w[1].action_name()));
            }
            msgs.extend(parse(to, q));
        }
        total.messages_in += st.messages_in;
        total.messages_out += st.messages_out;
        total.dropped += st.dropped;
        total.untranslatable.extend(st.untranslatable);
        total.packets_out += st.packets_out;
    }
    (msgs, total)
}

fn state_af(s: &StateRepr) -> AddrFamily {
    s.af
}

/// The fields every dialect carries for a full state.
fn assert_common_state(a: &StateRepr, b: &StateRepr, to: Dialect) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.ifname, b.ifname);
    for k in 0..2 {
        assert_eq!(a.key[k].addr, b.key[k].addr, "key {k} addr");
        assert_eq!(a.key[k].port, b.key[k].port, "key {k} port");
    }
    assert_eq!(a.src, b.src);
    assert_eq!(a.dst, b.dst);
    assert_eq!(a.proto, b.proto);
    assert_eq!(state_af(a), state_af(b));
    assert_eq!(a.timeout, b.timeout);
    assert_eq!(a.direction, b.direction);
    assert_eq!(a.log, b.log);
    assert_eq!(a.creation, b.creation);
    assert_eq!(a.expire, b.expire);
    assert_eq!(a.packets, b.packets);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.rt_addr, b.rt_addr);
    let allow = |s: &StateRepr| s.allow_opts != 0 || s.state_flags & PFSTATE_ALLOWOPTS != 0;
    assert_eq!(allow(a), allow(b), "ALLOWOPTS");
    if to == Dialect::OpenbsdV6 {
        // Explicit key af: OpenBSD 7.4+ checks it against the state af.
        assert_eq!(b.key[0].af, b.af);
        assert_eq!(b.key[1].af, b.af);
    }
}

/// What the receiver should get for `m` (None = dropped or untranslatable).
fn expected(m: &Message, from: Dialect, to: Dialect) -> Option<Message> {
    match m {
        Message::InsAck(_) if to == Dialect::NetbsdV3 => None,
        Message::Del(s) if to.is_freebsd() => Some(Message::DelC(s.id)),
        Message::Del(s) if s.timeout >= to.pftm_max() => Some(Message::DelC(s.id)),
        Message::Ins(s) | Message::Upd(s) if s.timeout >= to.pftm_max() => None,
        Message::UpdC(u) if u.timeout >= to.pftm_max() => None,
        _ => {
            let _ = from;
            Some(*m)
        }
    }
}

fn check_pair(from: Dialect, to: Dialect, input: &[Message]) -> Result<(), TestCaseError> {
    let pkts = encode(from, input);
    // What the source kernel's packets actually say (normalised by the codec).
    let sent: Vec<Message> = pkts.iter().flat_map(|p| parse(from, p)).collect();
    let (got, stats) = relay(from, to, &pkts);
    let want: Vec<(Message, Message)> = sent
        .iter()
        .filter_map(|m| expected(m, from, to).map(|e| (*m, e)))
        .collect();
    prop_assert_eq!(stats.messages_out, got.len());
    prop_assert_eq!(
        got.len(),
        want.len(),
        "untranslatable: {:?}",
        stats.untranslatable
    );
    for (g, (orig, w)) in got.iter().zip(&want) {
        prop_assert_eq!(g.action_name(), w.action_name());
        prop_assert_eq!(g.state_id(), w.state_id());
        match (g, orig) {
            (Message::Ins(b), Message::Ins(a))
            | (Message::Upd(b), Message::Upd(a))
            | (Message::Del(b), Message::Del(a)) => {
                assert_common_state(a, b, to);
                if from != to && (from.is_freebsd() != to.is_freebsd() || !from.is_freebsd()) {
                    prop_assert_eq!(b.rule, NO_RULE);
                }
            }
            (Message::UpdC(b), Message::UpdC(a)) => {
                prop_assert_eq!(a.id, b.id);
                prop_assert_eq!(a.src, b.src);
                prop_assert_eq!(a.dst, b.dst);
                prop_assert_eq!(a.timeout, b.timeout);
                prop_assert_eq!(a.expire, b.expire);
            }
            (Message::DelC(_), Message::Del(s)) => {
                prop_assert!(to.is_freebsd() || s.timeout >= to.pftm_max())
            }
            (g, _) => prop_assert_eq!(g, w),
        }
    }
    Ok(())
}

// ---- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_pair_valid_and_common_fields_survive(
        (from, to, msgs) in pair().prop_flat_map(|(f, t)| {
            (Just(f), Just(t), proptest::collection::vec(message(f), 1..12))
        }),
    ) {
        check_pair(from, to, &msgs)?;
    }

    #[test]
    fn freebsd1400_openbsd_round_trip(
        msgs in proptest::collection::vec(message(Dialect::Freebsd1400), 1..10),
    ) {
        round_trip(Dialect::Freebsd1400, Dialect::OpenbsdV6, &msgs)?;
    }

    #[test]
    fn openbsd_freebsd1400_round_trip(
        msgs in proptest::collection::vec(message(Dialect::OpenbsdV6), 1..10),
    ) {
        round_trip(Dialect::OpenbsdV6, Dialect::Freebsd1400, &msgs)?;
    }
}

/// a → b → a keeps everything both carry, including the common state flags and scrub fields.
fn round_trip(a: Dialect, b: Dialect, input: &[Message]) -> Result<(), TestCaseError> {
    let pkts = encode(a, input);
    let sent: Vec<Message> = pkts.iter().flat_map(|p| parse(a, p)).collect();
    let mut mid = Vec::new();
    for p in &pkts {
        translate_packet(p, a, b, &mut mid, MAX_LEN).unwrap();
    }
    let (back, _) = relay(b, a, &mid);
    let want: Vec<Message> = sent
        .iter()
        .filter_map(|m| expected(m, a, b))
        .filter_map(|m| expected(&m, b, a))
        .collect();
    prop_assert_eq!(back.len(), want.len());
    for (g, w) in back.iter().zip(&want) {
        match (g, w) {
            (Message::Ins(x), Message::Ins(y)) | (Message::Upd(x), Message::Upd(y)) => {
                assert_common_state(y, x, a);
                prop_assert_eq!(x.state_flags, y.state_flags & COMMON_STATE_FLAGS);
                prop_assert_eq!(x.max_mss, y.max_mss);
                prop_assert_eq!(x.min_ttl, y.min_ttl);
                prop_assert_eq!(x.set_tos, y.set_tos);
                prop_assert_eq!(x.set_prio, y.set_prio);
                prop_assert_eq!(x.key[0].rdomain, y.key[0].rdomain);
            }
            (Message::UpdC(x), Message::UpdC(y)) => {
                prop_assert_eq!(x.id, y.id);
                prop_assert_eq!(x.src, y.src);
                prop_assert_eq!(x.dst, y.dst);
                prop_assert_eq!(x.timeout, y.timeout);
            }
            (g, w) => prop_assert_eq!(g, w),
        }
    }
    Ok(())
}

// ---- explicit cases -----------------------------------------------------------------------

fn sample(d: Dialect) -> StateRepr {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut s = state(d).new_tree(&mut runner).unwrap().current();
    s.timeout = 2;
    s.proto = 6;
    s
}

/// Subheader actions of a v5/v6 packet.
fn actions(p: &[u8]) -> Vec<u8> {
    let d = pfsync_gw::wire::detect_dialect(p).unwrap();
    let mut out = Vec::new();
    let mut off = 20;
    let end = usize::from(u16::from_be_bytes([p[2], p[3]]));
    while off + 4 <= end {
        let (act, count) = (
            p[off],
            usize::from(u16::from_be_bytes([p[off + 2], p[off + 3]])),
        );
        out.push(act);
        let size = match act {
            4 => 84,
            5 | 7 | 2 => 12,
            12 => 0,
            6 if d == Dialect::OpenbsdV6 => 264,
            6 => 242,
            13 | 14 if d == Dialect::OpenbsdV6 => 264,
            _ => break,
        };
        off += 4 + size * count;
    }
    out
}

#[test]
fn del_towards_freebsd14_becomes_del_c() {
    for from in [Dialect::OpenbsdV6, Dialect::NetbsdV3] {
        let s = sample(from);
        let pkts = encode(from, &[Message::Del(s)]);
        for to in [
            Dialect::Freebsd1400,
            Dialect::Freebsd1500,
            Dialect::Freebsd1301,
        ] {
            let mut out = Vec::new();
            translate_packet(&pkts[0], from, to, &mut out, MAX_LEN).unwrap();
            assert_eq!(out.len(), 1);
            // DEL_C (7) then EOF (12); never DEL (6).
            assert_eq!(actions(&out[0]), [7, 12], "{from} -> {to}");
            assert_eq!(parse(to, &out[0]), [Message::DelC(s.id)]);
        }
        let mut out = Vec::new();
        translate_packet(&pkts[0], from, Dialect::OpenbsdV6, &mut out, MAX_LEN).unwrap();
        assert!(matches!(
            parse(Dialect::OpenbsdV6, &out[0])[..],
            [Message::Del(_)]
        ));
    }
}

#[test]
fn sctp_timeouts_do_not_reach_openbsd_or_netbsd() {
    let mut s = sample(Dialect::Freebsd1400);
    s.proto = 132;
    s.timeout = 22; // PFTM_SCTP_ESTABLISHED
    for to in [Dialect::OpenbsdV6, Dialect::NetbsdV3] {
        let e = translate(&Message::Ins(s), Dialect::Freebsd1400, to).unwrap_err();
        assert!(e.reason.contains("SCTP"), "{e}");
        let pkts = encode(Dialect::Freebsd1400, &[Message::Ins(s)]);
        let mut out = Vec::new();
        let st = translate_packet(&pkts[0], Dialect::Freebsd1400, to, &mut out, MAX_LEN).unwrap();
        assert!(out.is_empty());
        assert_eq!(st.untranslatable.len(), 1);
    }
    for to in [Dialect::Freebsd1301, Dialect::Freebsd1500] {
        let Ok(Some(Message::Ins(t))) = translate(&Message::Ins(s), Dialect::Freebsd1400, to)
        else {
            panic!("FreeBSD keeps SCTP states");
        };
        assert_eq!(t.timeout, 22);
    }
}

#[test]
fn inet6_af_value_is_rewritten_on_the_wire() {
    let mut s = sample(Dialect::Freebsd1400);
    s.af = AddrFamily::Inet6;
    let pkts = encode(Dialect::Freebsd1400, &[Message::Ins(s)]);
    assert_eq!(pkts[0][20 + 4 + 232], 28, "FreeBSD AF_INET6");
    let mut out = Vec::new();
    translate_packet(
        &pkts[0],
        Dialect::Freebsd1400,
        Dialect::OpenbsdV6,
        &mut out,
        MAX_LEN,
    )
    .unwrap();
    // OpenBSD: af @250 and key af @24+38, @64+38 are 24.
    let b = &out[0][24..];
    assert_eq!((b[250], b[24 + 38], b[64 + 38]), (24, 24, 24));
}

#[test]
fn netbsd_allow_opts_maps_to_state_flags() {
    let mut s = sample(Dialect::NetbsdV3);
    s.allow_opts = 1;
    let Ok(Some(Message::Ins(o))) =
        translate(&Message::Ins(s), Dialect::NetbsdV3, Dialect::OpenbsdV6)
    else {
        panic!()
    };
    assert_eq!(o.state_flags, PFSTATE_ALLOWOPTS);
    let Ok(Some(Message::Ins(n))) =
        translate(&Message::Ins(o), Dialect::OpenbsdV6, Dialect::NetbsdV3)
    else {
        panic!()
    };
    assert_eq!((n.allow_opts, n.state_flags), (1, 0));
}

#[test]
fn local_state_flags_are_cleared_across_oses() {
    let mut s = sample(Dialect::OpenbsdV6);
    s.state_flags = 0x0004 | 0x0400 | 0x0010; // PFLOW, INP_UNLINKED, ACK
    let Ok(Some(Message::Ins(f))) =
        translate(&Message::Ins(s), Dialect::OpenbsdV6, Dialect::Freebsd1400)
    else {
        panic!()
    };
    assert_eq!(f.state_flags, 0x0010);
    // 1301 carries one byte only.
    let mut s = sample(Dialect::Freebsd1400);
    s.state_flags = 0x0301;
    let Ok(Some(Message::Ins(f))) =
        translate(&Message::Ins(s), Dialect::Freebsd1400, Dialect::Freebsd1301)
    else {
        panic!()
    };
    assert_eq!(f.state_flags, 0x0001);
}

#[test]
fn af_to_states_only_reach_openbsd_and_freebsd1500() {
    let mut s = sample(Dialect::OpenbsdV6);
    s.af = AddrFamily::Inet;
    s.proto = 1;
    s.key[0].af = AddrFamily::Inet;
    s.key[1].af = AddrFamily::Inet6;
    s.key[0].addr[0][4..].fill(0);
    s.key[0].addr[1][4..].fill(0);
    for to in [
        Dialect::Freebsd1301,
        Dialect::Freebsd1400,
        Dialect::NetbsdV3,
    ] {
        assert!(
            translate(&Message::Ins(s), Dialect::OpenbsdV6, to).is_err(),
            "{to}"
        );
    }
    let Ok(Some(Message::Ins(f))) =
        translate(&Message::Ins(s), Dialect::OpenbsdV6, Dialect::Freebsd1500)
    else {
        panic!()
    };
    assert_eq!(f.af_1500[..2], [AddrFamily::Inet, AddrFamily::Inet6]);
    assert_eq!(
        f.proto_1500,
        [1, 58],
        "ICMP becomes ICMPv6 on the stack side"
    );
    let pkts = encode(Dialect::Freebsd1500, &[Message::Ins(f)]);
    let back = parse(Dialect::Freebsd1500, &pkts[0]);
    let Message::Ins(b) = back[0] else { panic!() };
    let Ok(Some(Message::Ins(o))) =
        translate(&Message::Ins(b), Dialect::Freebsd1500, Dialect::OpenbsdV6)
    else {
        panic!()
    };
    assert_eq!((o.af, o.proto), (AddrFamily::Inet, 1));
    assert_eq!(
        (o.key[0].af, o.key[1].af),
        (AddrFamily::Inet, AddrFamily::Inet6)
    );
}

#[test]
fn openbsd_only_and_freebsd_only_values_are_refused_or_reset() {
    let mut s = sample(Dialect::OpenbsdV6);
    s.key[0].rdomain = 3;
    assert!(translate(&Message::Ins(s), Dialect::OpenbsdV6, Dialect::Freebsd1400).is_err());
    let mut s = sample(Dialect::OpenbsdV6);
    s.rt = 1;
    assert!(translate(&Message::Ins(s), Dialect::OpenbsdV6, Dialect::Freebsd1400).is_err());
    let mut s = sample(Dialect::Freebsd1400);
    s.rtableid = [2, 0];
    assert!(translate(&Message::Ins(s), Dialect::Freebsd1400, Dialect::OpenbsdV6).is_err());
    let mut s = sample(Dialect::Freebsd1400);
    s.rule = 7;
    s.qid = 3;
    let Ok(Some(Message::Ins(o))) =
        translate(&Message::Ins(s), Dialect::Freebsd1400, Dialect::OpenbsdV6)
    else {
        panic!()
    };
    assert_eq!((o.rule, o.qid, o.rtableid), (NO_RULE, 0, [-1, -1]));
    // Same OS keeps rule numbers (the ruleset checksum decides whether they are used).
    let Ok(Some(Message::Ins(f))) =
        translate(&Message::Ins(s), Dialect::Freebsd1400, Dialect::Freebsd1500)
    else {
        panic!()
    };
    assert_eq!((f.rule, f.qid), (7, 3));
}

#[test]
fn framing_only_messages_and_ins_ack() {
    let id = StateId::new(5, 6);
    for from in Dialect::ALL {
        assert_eq!(
            translate(&Message::Eof, from, Dialect::Freebsd1400),
            Ok(None)
        );
        assert_eq!(
            translate(&Message::InsAck(id), from, Dialect::NetbsdV3),
            Ok(None)
        );
    }
    let tdb = Message::Tdb(Default::default());
    assert_eq!(
        translate(&tdb, Dialect::OpenbsdV6, Dialect::Freebsd1400),
        Ok(None)
    );
    assert_eq!(
        translate(&tdb, Dialect::OpenbsdV6, Dialect::OpenbsdV6),
        Ok(Some(tdb))
    );
}

#[test]
fn netbsd_gets_one_action_per_packet_and_small_mtu_splits() {
    let s = sample(Dialect::OpenbsdV6);
    let msgs = [
        Message::Ins(s),
        Message::UpdC(UpdCRepr {
            id: s.id,
            timeout: 2,
            ..Default::default()
        }),
        Message::DelC(s.id),
        Message::Bus {
            creator: 1,
            endtime: 0,
            status: BusStatus::End,
        },
    ];
    let pkts = encode(Dialect::OpenbsdV6, &msgs);
    assert_eq!(pkts.len(), 1);
    let (got, st) = relay(Dialect::OpenbsdV6, Dialect::NetbsdV3, &pkts);
    assert_eq!(st.packets_out, 4);
    assert_eq!(got.len(), 4);
    // 5 states (one 1344-B OpenBSD packet) become 277-B states: 1000 B holds 3.
    let many: Vec<Message> = (0..5)
        .map(|i| {
            let mut t = s;
            t.id.id = i;
            Message::Upd(t)
        })
        .collect();
    let pkts = encode(Dialect::OpenbsdV6, &many);
    let mut out = Vec::new();
    let st = translate_packet(
        &pkts[0],
        Dialect::OpenbsdV6,
        Dialect::Freebsd1400,
        &mut out,
        1000,
    )
    .unwrap();
    assert_eq!(pkts.len(), 1);
    assert_eq!(st.messages_out, 5);
    assert_eq!(out.len(), 2);
    let n: usize = out
        .iter()
        .map(|p| parse(Dialect::Freebsd1400, p).len())
        .sum();
    assert_eq!(n, 5);
}

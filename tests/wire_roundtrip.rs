//! Property tests: valid messages of every dialect survive emit → parse unchanged, and
//! parse → emit reproduces the packet bytes exactly (and the `UPD_C` id pass agrees with
//! the full parse).

mod common;

use common::*;
use pfsync_gw::wire::*;
use proptest::prelude::*;

fn check_roundtrip(d: Dialect, msgs: &[Message], mtu: usize, cksum: [u8; 16]) {
    let pkts = emit_all(d, msgs, mtu, cksum);
    let mut parsed = Vec::new();
    for pkt in &pkts {
        assert!(pkt.len() <= mtu);
        let p = Packet::new_checked(&pkt[..], d).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!(p.len(), pkt.len());
        assert_eq!(p.checksum(), cksum);
        let body = parse_body(d, pkt).unwrap();
        // The prefetch pass sees the ids of exactly the packet's UPD_C messages, in order.
        let upd_c: Vec<StateId> = body
            .iter()
            .filter_map(|m| match m {
                Message::UpdC(u) => Some(u.id),
                _ => None,
            })
            .collect();
        assert_eq!(p.messages().upd_c_ids().collect::<Vec<_>>(), upd_c, "{d}");
        // parse ∘ emit of these bytes is byte-identical.
        let again = emit_all(d, &body, mtu, cksum);
        assert_eq!(again.len(), 1, "{d}: re-emit split");
        assert_eq!(&again[0], pkt, "{d}: re-emit differs");
        parsed.extend(body);
    }
    assert_eq!(parsed, msgs, "{d}");
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop::sample::select(Dialect::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random mixes of every action the dialect carries, split across packets.
    #[test]
    fn emit_parse_roundtrip(
        d in dialect(),
        picks in prop::collection::vec(any::<u8>(), 1..24),
        pool in prop::collection::vec(any::<u8>(), 8192),
        mtu in 400usize..1500,
        cksum in any::<[u8; 16]>(),
    ) {
        let mut p = Pool(&pool, 0);
        let ks = kinds(d);
        let msgs: Vec<Message> = picks
            .iter()
            .map(|&i| message(d, ks[usize::from(i) % ks.len()], &mut p))
            .collect();
        check_roundtrip(d, &msgs, mtu, cksum);
    }

    /// Long runs of one action (compressed updates, bulk UPDs) fill packets to the MTU.
    #[test]
    fn runs_of_one_action(
        d in dialect(),
        k in any::<u8>(),
        n in 1usize..300,
        pool in prop::collection::vec(any::<u8>(), 8192),
    ) {
        let ks = kinds(d);
        let kind = ks[usize::from(k) % ks.len()];
        let mut p = Pool(&pool, 0);
        let msgs: Vec<Message> = (0..n).map(|_| {
            if p.1 > 7000 { p.1 = 0; }
            message(d, kind, &mut p)
        }).collect();
        check_roundtrip(d, &msgs, 1480, [0; 16]);
    }
}

/// Every action of every dialect, explicitly (proptest covers them too, but by chance).
#[test]
fn every_action_every_dialect() {
    let pool: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for d in Dialect::ALL {
        for k in kinds(d) {
            let mut p = Pool(&pool, usize::from(k.as_bytes()[0]));
            let m = message(d, k, &mut p);
            assert_eq!(m.action_name(), *k);
            assert!(message_wire_len(d, &m).is_some());
            check_roundtrip(d, &[m, m], 1480, [7; 16]);
        }
        // Bulk request and EOF handling.
        check_roundtrip(d, &[Message::UpdReq(StateId::BULK)], 1480, [0; 16]);
        let mut buf = [0u8; 100];
        let mut w = PacketWriter::new(d, &mut buf);
        assert_eq!(w.push(&Message::Eof), Ok(true));
        assert_eq!(message_wire_len(d, &Message::Eof), Some(0));
    }
}

#[test]
fn inexpressible_messages() {
    let s = StateRepr {
        af: AddrFamily::Inet,
        ..StateRepr::default()
    };
    for d in [
        Dialect::Freebsd1301,
        Dialect::Freebsd1400,
        Dialect::Freebsd1500,
    ] {
        assert_eq!(message_wire_len(d, &Message::Del(s)), None);
    }
    assert_eq!(
        message_wire_len(Dialect::NetbsdV3, &Message::InsAck(StateId::new(1, 1))),
        None
    );
    let mut twice_nat = s;
    twice_nat.key[1].addr[0][0] = 1;
    assert_eq!(
        message_wire_len(Dialect::NetbsdV3, &Message::Ins(twice_nat)),
        None
    );
    assert_eq!(
        message_wire_len(Dialect::OpenbsdV6, &Message::Ins(twice_nat)),
        Some(264)
    );
    let mut unterminated = s;
    unterminated.ifname = [b'x'; 16];
    assert_eq!(
        message_wire_len(Dialect::OpenbsdV6, &Message::Upd(unterminated)),
        None
    );
    let mut buf = [0u8; 1480];
    let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut buf);
    assert!(matches!(
        w.push(&Message::Upd(unterminated)),
        Err(WireError::NotExpressible { .. })
    ));
}

/// A state from another dialect (no 1500 af/proto pairs) is emitted as 1500 with its af/proto.
#[test]
fn cross_dialect_state_to_1500() {
    let pool: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    let s = state(Dialect::OpenbsdV6, &mut Pool(&pool, 0));
    let mut buf = [0u8; 1480];
    let mut w = PacketWriter::new(Dialect::Freebsd1500, &mut buf);
    let mut plain = s;
    plain.key.iter_mut().for_each(|k| k.af = AddrFamily::Unspec);
    assert_eq!(w.push(&Message::Upd(plain)), Ok(true));
    let n = w.finish();
    let got = parse_body(Dialect::Freebsd1500, &buf[..n]).unwrap();
    let Message::Upd(t) = got[0] else { panic!() };
    assert_eq!(t.af, s.af);
    assert_eq!(t.proto, s.proto);
    assert_eq!(t.af_1500[..2], [s.af, s.af]);
    assert_eq!(t.proto_1500, [s.proto, s.proto]);
    assert_eq!(t.key, plain.key.map(|k| StateKeyRepr { rdomain: 0, ..k }));
}

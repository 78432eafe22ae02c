//! End-to-end decoder tests: write captures of every dialect and link type, decode them and
//! check the JSON Lines output field by field.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use pfsync_gw::cli::decode::{decode_to, run, DecodeArgs, DecodeError, DecodeOptions, Summary};
use pfsync_gw::cli::pcap::{frame, linktype, write_pcap, write_pcapng};
use pfsync_gw::wire::{
    name_field, AddrFamily, BusStatus, Dialect, Message, Packet, PacketWriter, PeerRepr, StateId,
    StateKeyRepr, StateRepr, UpdCRepr,
};
use serde_json::{json, Value};

const CREATOR: u32 = 0xdead_beef;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

fn peer(state: u8, seqlo: u32) -> PeerRepr {
    PeerRepr {
        seqlo,
        seqhi: seqlo.wrapping_add(65535),
        max_win: 65535,
        mss: 1460,
        state,
        wscale: 0x87,
        ..PeerRepr::default()
    }
}

/// Inbound TCP state with an rdr: remote 192.0.2.10:51000 → public 198.51.100.1:443, which the
/// stack sees as 10.0.0.5:8443. pf keeps the remote end at `addr[0]` for `in` states.
fn state_in(id: u64) -> StateRepr {
    let remote = (v4([192, 0, 2, 10]), 51000);
    StateRepr {
        id: StateId::new(id, CREATOR),
        ifname: name_field("em0"),
        key: [
            StateKeyRepr {
                addr: [remote.0, v4([198, 51, 100, 1])],
                port: [remote.1, 443],
                ..Default::default()
            },
            StateKeyRepr {
                addr: [remote.0, v4([10, 0, 0, 5])],
                port: [remote.1, 8443],
                ..Default::default()
            },
        ],
        src: peer(4, 0x1122_3344),
        dst: peer(4, 0x5566_7788),
        rule: u32::MAX,
        anchor: u32::MAX,
        nat_rule: u32::MAX,
        creation: 30,
        expire: 86370,
        af: AddrFamily::Inet,
        proto: 6,
        direction: 1,
        timeout: 2,
        ..StateRepr::default()
    }
}

/// Outbound IPv6 UDP state: local 2001:db8::5:5353 → remote 2001:db8:1::1:53; `out` states
/// keep the initiator at `addr[1]`.
fn state_out6(id: u64) -> StateRepr {
    let local: [u8; 16] = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
    let remote: [u8; 16] = "2001:db8:1::1".parse::<Ipv6Addr>().unwrap().octets();
    let key = StateKeyRepr {
        addr: [remote, local],
        port: [53, 5353],
        ..Default::default()
    };
    StateRepr {
        id: StateId::new(id, CREATOR),
        ifname: name_field("vtnet1"),
        key: [key, key],
        src: peer(2, 0),
        dst: peer(1, 0),
        rule: u32::MAX,
        anchor: u32::MAX,
        nat_rule: u32::MAX,
        creation: 5,
        expire: 55,
        af: AddrFamily::Inet6,
        proto: 17,
        direction: 2,
        timeout: 8,
        ..StateRepr::default()
    }
}

fn upd_c(id: u64) -> UpdCRepr {
    UpdCRepr {
        id: StateId::new(id, CREATOR),
        src: peer(4, 0x1122_3344),
        dst: peer(4, 0x5566_7788),
        expire: 0,
        timeout: 2,
        flags: 0,
    }
}

/// Pack `msgs` into as many packets of `d` as its framing needs.
fn packets(d: Dialect, msgs: &[Message]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(d, &mut buf);
    for m in msgs {
        if !w.push(m).unwrap() {
            let n = w.finish();
            out.push(buf[..n].to_vec());
            w = PacketWriter::new(d, &mut buf);
            assert!(w.push(m).unwrap());
        }
    }
    let n = w.finish();
    out.push(buf[..n].to_vec());
    for p in &out {
        Packet::new_checked(&p[..], d).expect("test packet must be valid");
    }
    out
}

/// The scenario every dialect gets: a bulk request, a bus start, a v4 and a v6 insert, a
/// compressed update, a delete, a bus end and (where the dialect has it) an insert ack.
fn scenario(d: Dialect) -> Vec<Message> {
    let mut m = vec![
        Message::UpdReq(StateId::BULK),
        Message::Bus {
            creator: CREATOR,
            endtime: 0,
            status: BusStatus::Start,
        },
        Message::Ins(state_in(0x4d2)),
        Message::Ins(state_out6(0x4d3)),
        Message::UpdC(upd_c(0x4d2)),
        Message::DelC(StateId::new(0x4d3, CREATOR)),
        Message::Bus {
            creator: CREATOR,
            endtime: 5,
            status: BusStatus::End,
        },
        Message::Clr {
            ifname: name_field("em0"),
            creator: CREATOR,
        },
    ];
    if d != Dialect::NetbsdV3 {
        m.push(Message::InsAck(StateId::new(0x4d2, CREATOR)));
    }
    m
}

fn ipv4_pkt(p: &[u8]) -> Vec<u8> {
    frame::ipv4(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(224, 0, 0, 240),
        p,
    )
}

fn decode_json(capture: &[u8]) -> (Vec<Value>, Summary) {
    let mut out = Vec::new();
    let opts = DecodeOptions {
        json: true,
        dialect: None,
    };
    let sum = decode_to(capture, &opts, &mut out).expect("capture readable");
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    (lines, sum)
}

fn expected_in(packet: u64, d: Dialect) -> Value {
    json!({
        "packet": packet,
        "dialect": d.name(),
        "action": "ins",
        "id": "00000000000004d2",
        "creatorid": "deadbeef",
        "ifname": "em0",
        "af": "inet",
        "proto": 6,
        "direction": "in",
        "wire": {"src": "192.0.2.10", "sport": 51000, "dst": "198.51.100.1", "dport": 443},
        "stack": {"src": "192.0.2.10", "sport": 51000, "dst": "10.0.0.5", "dport": 8443},
        "timeout": 2,
        "expire": 86370,
        "creation": 30,
        "src_peer": {"state": 4, "seqlo": 0x1122_3344u32, "seqhi": 0x1123_3343u32,
                     "seqdiff": 0, "max_win": 65535, "mss": 1460, "wscale": 0x87},
        "dst_peer": {"state": 4, "seqlo": 0x5566_7788u32, "seqhi": 0x5567_7787u32,
                     "seqdiff": 0, "max_win": 65535, "mss": 1460, "wscale": 0x87},
    })
}

/// Every key of `want` is in `got` with the same value.
fn assert_subset(got: &Value, want: &Value) {
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(got.get(k), Some(v), "field {k} of {got}");
    }
}

/// Build a capture: one frame per packet of every dialect, wrapped by `wrap`, with a
/// malformed packet and a non-pfsync frame in the middle. Returns the frames and, per
/// dialect, the frame indices its packets got.
/// Per dialect, the frame indices of its packets.
type Index = Vec<(Dialect, Vec<u64>)>;

fn frames(wrap: &dyn Fn(&[u8]) -> Vec<u8>) -> (Vec<Vec<u8>>, Index) {
    let mut fr = Vec::new();
    let mut index = Vec::new();
    for (i, d) in Dialect::ALL.into_iter().enumerate() {
        let mut idx = Vec::new();
        for p in packets(d, &scenario(d)) {
            idx.push(fr.len() as u64);
            fr.push(wrap(&p));
        }
        index.push((d, idx));
        if i == 1 {
            // Malformed: an OpenBSD packet cut in the middle of its INS.
            let good = &packets(Dialect::OpenbsdV6, &[Message::Ins(state_in(9))])[0];
            fr.push(wrap(&good[..good.len() - 100]));
        }
    }
    (fr, index)
}

fn check_capture(lines: &[Value], index: &[(Dialect, Vec<u64>)], sum: &Summary, total: u64) {
    assert_eq!(sum.frames, total);
    assert_eq!(sum.malformed, 1, "{lines:?}");
    // The malformed packet sits right after the OpenBSD packets.
    let bad = index[1].1.last().unwrap() + 1;
    let err: Vec<_> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["packet"], json!(bad));
    assert_eq!(err[0]["dialect"], json!("openbsd-v6"));
    let text = err[0]["error"].as_str().unwrap();
    assert!(text.contains("truncated") || text.contains("bad"), "{text}");
    assert!(text.contains("offset"), "error says where: {text}");
    for (d, idx) in index {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| idx.contains(&l["packet"].as_u64().unwrap()))
            .collect();
        for l in &mine {
            assert_eq!(l["dialect"], json!(d.name()));
        }
        let actions: Vec<&str> = mine
            .iter()
            .map(|l| l["action"].as_str().unwrap())
            .filter(|a| *a != "eof")
            .collect();
        let mut want = vec![
            "upd_req", "bus", "ins", "ins", "upd_c", "del_c", "bus", "clr",
        ];
        if *d != Dialect::NetbsdV3 {
            want.push("ins_ack");
        }
        assert_eq!(actions, want, "{d}");
        // FreeBSD ends every packet with EOF.
        let eofs = mine.iter().filter(|l| l["action"] == "eof").count();
        assert_eq!(eofs, if d.is_freebsd() { idx.len() } else { 0 }, "{d}");

        let ins: Vec<&&Value> = mine.iter().filter(|l| l["action"] == "ins").collect();
        let p = ins[0]["packet"].as_u64().unwrap();
        assert_subset(ins[0], &expected_in(p, *d));
        assert_subset(
            ins[1],
            &json!({
                "id": "00000000000004d3", "creatorid": "deadbeef", "ifname": "vtnet1",
                "af": "inet6", "proto": 17, "direction": "out",
                "wire": {"src": "2001:db8::5", "sport": 5353, "dst": "2001:db8:1::1", "dport": 53},
                "stack": {"src": "2001:db8::5", "sport": 5353, "dst": "2001:db8:1::1", "dport": 53},
                "timeout": 8, "expire": 55, "creation": 5,
            }),
        );
        let u = mine.iter().find(|l| l["action"] == "upd_c").unwrap();
        assert_subset(
            u,
            &json!({
                "id": "00000000000004d2", "creatorid": "deadbeef", "timeout": 2, "expire": 0,
                "src_peer": {"state": 4, "seqlo": 0x1122_3344u32, "seqhi": 0x1123_3343u32,
                             "seqdiff": 0, "max_win": 65535, "mss": 1460, "wscale": 0x87},
            }),
        );
        let bus: Vec<&&Value> = mine.iter().filter(|l| l["action"] == "bus").collect();
        assert_subset(
            bus[0],
            &json!({"status": "start", "endtime": 0, "creatorid": "deadbeef"}),
        );
        assert_subset(bus[1], &json!({"status": "end", "endtime": 5}));
        assert!(bus[0].get("id").is_none(), "bus has no id");
        let clr = mine.iter().find(|l| l["action"] == "clr").unwrap();
        assert_subset(clr, &json!({"ifname": "em0", "creatorid": "deadbeef"}));
        let req = mine.iter().find(|l| l["action"] == "upd_req").unwrap();
        assert_subset(
            req,
            &json!({"id": "0000000000000000", "creatorid": "00000000", "bulk": true}),
        );
        let del = mine.iter().find(|l| l["action"] == "del_c").unwrap();
        assert_subset(
            del,
            &json!({"id": "00000000000004d3", "creatorid": "deadbeef"}),
        );
    }
    // Decoding went on after the malformed packet: FreeBSD packets come after it.
    assert!(index[2].1[0] > bad);
    assert!(lines
        .iter()
        .any(|l| l["packet"].as_u64().unwrap() > bad && l.get("error").is_none()));
}

fn timestamps(n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| Duration::new(1_700_000_000 + i as u64, 123_456_789))
        .collect()
}

fn run_case(lt: u32, ng: bool, wrap: &dyn Fn(&[u8]) -> Vec<u8>) {
    let (mut fr, index) = frames(wrap);
    // A non-pfsync frame (UDP) at the end still counts as a frame but prints nothing.
    if lt != linktype::PFSYNC {
        let mut udp = ipv4_pkt(&[0; 8]);
        udp[9] = 17;
        let f = match lt {
            linktype::ETHERNET => frame::ethernet(0x0800, None, &udp),
            linktype::LINUX_SLL => frame::sll(0x0800, &udp),
            linktype::LINUX_SLL2 => frame::sll2(0x0800, &udp),
            _ => udp,
        };
        fr.push(f);
    }
    let ts = timestamps(fr.len());
    let it = ts.iter().copied().zip(fr.iter().map(|f| &f[..]));
    let cap = if ng {
        write_pcapng(Vec::new(), lt, it).unwrap()
    } else {
        write_pcap(Vec::new(), lt, it).unwrap()
    };
    let (lines, sum) = decode_json(&cap);
    check_capture(&lines, &index, &sum, fr.len() as u64);
    assert!(lines
        .iter()
        .all(|l| l["packet"].as_u64().unwrap() < fr.len() as u64));
}

#[test]
fn pcap_raw_ipv4() {
    run_case(linktype::RAW, false, &ipv4_pkt);
}

#[test]
fn pcapng_ethernet_with_vlan() {
    run_case(linktype::ETHERNET, true, &|p| {
        frame::ethernet(0x0800, Some(42), &ipv4_pkt(p))
    });
}

#[test]
fn pcap_ethernet_plain() {
    run_case(linktype::ETHERNET, false, &|p| {
        frame::ethernet(0x0800, None, &ipv4_pkt(p))
    });
}

#[test]
fn pcap_linux_sll() {
    run_case(linktype::LINUX_SLL, false, &|p| {
        frame::sll(0x0800, &ipv4_pkt(p))
    });
}

#[test]
fn pcapng_linux_sll2_ipv6() {
    run_case(linktype::LINUX_SLL2, true, &|p| {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff12::f0".parse().unwrap();
        frame::sll2(0x86dd, &frame::ipv6(src, dst, p))
    });
}

#[test]
fn pcapng_linktype_pfsync() {
    run_case(linktype::PFSYNC, true, &|p| p.to_vec());
}

#[test]
fn pcap_bsd_dlt_pfsync_values() {
    for lt in [linktype::DLT_PFSYNC_OPENBSD, linktype::DLT_PFSYNC_FREEBSD] {
        let p = &packets(
            Dialect::OpenbsdV6,
            &[Message::DelC(StateId::new(7, CREATOR))],
        )[0];
        let cap = write_pcap(Vec::new(), lt, [(Duration::ZERO, &p[..])]).unwrap();
        let (lines, sum) = decode_json(&cap);
        assert_eq!(sum.messages, 1, "linktype {lt}");
        assert_subset(
            &lines[0],
            &json!({"packet": 0, "action": "del_c", "id": "0000000000000007"}),
        );
    }
}

#[test]
fn forced_dialect_overrides_detection() {
    // A FreeBSD packet with only small messages is detected as 1400; forcing 1301 works,
    // forcing OpenBSD reports a version error for every packet and still exits cleanly.
    let p = &packets(
        Dialect::Freebsd1400,
        &[Message::DelC(StateId::new(7, CREATOR))],
    )[0];
    let cap = write_pcap(Vec::new(), linktype::PFSYNC, [(Duration::ZERO, &p[..])]).unwrap();
    let mut out = Vec::new();
    let opts = DecodeOptions {
        json: true,
        dialect: Some(Dialect::Freebsd1301),
    };
    decode_to(&cap[..], &opts, &mut out).unwrap();
    let l: Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(l["dialect"], "freebsd-1301");
    let mut out = Vec::new();
    let opts = DecodeOptions {
        json: true,
        dialect: Some(Dialect::OpenbsdV6),
    };
    let sum = decode_to(&cap[..], &opts, &mut out).unwrap();
    assert_eq!(sum.malformed, 1);
    let l: Value = serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
    assert_eq!(
        l,
        json!({"packet": 0, "dialect": "openbsd-v6", "error": "bad pfsync version 5"})
    );
}

#[test]
fn text_output_lines() {
    let p = &packets(Dialect::OpenbsdV6, &[Message::Ins(state_in(0x4d2))])[0];
    let f = ipv4_pkt(p);
    let ts = Duration::new(1_700_000_000, 123_456_789);
    let cap = write_pcapng(Vec::new(), linktype::RAW, [(ts, &f[..])]).unwrap();
    let mut out = Vec::new();
    decode_to(&cap[..], &DecodeOptions::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "0 1700000000.123456 192.0.2.1 > 224.0.0.240: pfsync openbsd-v6 len {}",
            p.len()
        )
    );
    assert!(lines[1].starts_with("\tins id 00000000000004d2 creatorid deadbeef em0 inet tcp in"));
    assert!(lines[1].contains("wire 192.0.2.10:51000 -> 198.51.100.1:443"));
    assert!(lines[1].contains("stack 192.0.2.10:51000 -> 10.0.0.5:8443"));
    assert!(
        lines[2].contains("src ESTABLISHED [287454020 + 65535]"),
        "{}",
        lines[2]
    );
}

#[test]
fn unreadable_captures_are_errors() {
    let opts = DecodeOptions::default();
    for bad in [&b""[..], b"hello world, not a pcap", b"\xd4\xc3\xb2"] {
        let r = decode_to(bad, &opts, Vec::new());
        assert!(matches!(r, Err(DecodeError::Capture(_))), "{r:?}");
    }
    // A capture cut inside a record: what came before is printed, then an error.
    let p = &packets(
        Dialect::OpenbsdV6,
        &[Message::DelC(StateId::new(7, CREATOR))],
    )[0];
    let cap = write_pcap(
        Vec::new(),
        linktype::PFSYNC,
        [(Duration::ZERO, &p[..]), (Duration::ZERO, &p[..])],
    )
    .unwrap();
    let mut out = Vec::new();
    let r = decode_to(
        &cap[..cap.len() - 5],
        &DecodeOptions {
            json: true,
            dialect: None,
        },
        &mut out,
    );
    assert!(matches!(r, Err(DecodeError::Capture(_))), "{r:?}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}

#[test]
fn run_exit_codes() {
    let dir = std::env::temp_dir().join(format!("pfsync-gw-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.pcap");
    let p = &packets(
        Dialect::OpenbsdV6,
        &[Message::DelC(StateId::new(7, CREATOR))],
    )[0];
    let mut cap = write_pcap(Vec::new(), linktype::PFSYNC, [(Duration::ZERO, &p[..])]).unwrap();
    std::fs::write(&good, &cap).unwrap();
    let garbage = dir.join("garbage.pcap");
    std::fs::write(&garbage, b"not a capture at all").unwrap();
    // A malformed pfsync packet inside a readable capture still exits 0.
    let malformed = dir.join("malformed.pcap");
    cap = write_pcap(Vec::new(), linktype::PFSYNC, [(Duration::ZERO, &p[..10])]).unwrap();
    std::fs::write(&malformed, &cap).unwrap();
    let args = |file: &std::path::Path, dialect: Option<&str>| DecodeArgs {
        file: file.to_path_buf(),
        json: true,
        dialect: dialect.map(str::to_string),
    };
    assert_eq!(run(&args(&good, None)), 0);
    assert_eq!(run(&args(&malformed, None)), 0);
    assert_eq!(run(&args(&good, Some("freebsd-1400"))), 0);
    assert_eq!(run(&args(&good, Some("solaris"))), 2);
    assert_eq!(run(&args(&garbage, None)), 2);
    assert_eq!(run(&args(&dir.join("missing.pcap"), None)), 2);
    std::fs::remove_dir_all(&dir).ok();
}

proptest::proptest! {
    /// Arbitrary bytes after a valid-looking header never panic the decoder; a rejected packet
    /// yields exactly one error line.
    #[test]
    fn garbage_packets_never_panic(
        frames in proptest::collection::vec(
            (proptest::prop_oneof![
                proptest::strategy::Just(3u8),
                proptest::strategy::Just(5u8),
                proptest::strategy::Just(6u8),
            ], proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)),
            1..8,
        ),
    ) {
        let fr: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|(v, mut b)| {
                if !b.is_empty() {
                    b[0] = v;
                }
                b
            })
            .collect();
        let cap = write_pcap(
            Vec::new(),
            linktype::PFSYNC,
            fr.iter().map(|f| (Duration::ZERO, &f[..])),
        )
        .unwrap();
        let (lines, sum) = decode_json(&cap);
        proptest::prop_assert_eq!(sum.frames, fr.len() as u64);
        for i in 0..fr.len() as u64 {
            let mine: Vec<_> = lines.iter().filter(|l| l["packet"] == json!(i)).collect();
            let errors = mine.iter().filter(|l| l.get("error").is_some()).count();
            // An error line stands alone: no messages of a rejected packet are printed.
            proptest::prop_assert!(errors == 0 || mine.len() == 1, "packet {}: {:?}", i, mine);
        }
    }
}

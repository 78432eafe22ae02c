//! Shared generators for the wire property tests: valid messages per dialect built from a
//! random byte pool (so proptest only has to produce bytes).
#![allow(dead_code)]

use pfsync_gw::wire::*;

/// Deterministic reader over random bytes (zeros once exhausted).
pub struct Pool<'a>(pub &'a [u8], pub usize);

impl Pool<'_> {
    pub fn u8(&mut self) -> u8 {
        let v = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        v
    }
    pub fn arr<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.u8();
        }
        a
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.arr())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.arr())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.arr())
    }
    pub fn below(&mut self, n: u8) -> u8 {
        self.u8() % n
    }
    pub fn name<const N: usize>(&mut self) -> [u8; N] {
        let len = usize::from(self.u8()) % N;
        let mut s = String::new();
        for _ in 0..len {
            s.push(char::from(b'a' + self.below(26)));
        }
        name_field(&s)
    }
    pub fn af(&mut self) -> AddrFamily {
        if self.u8() & 1 == 0 {
            AddrFamily::Inet
        } else {
            AddrFamily::Inet6
        }
    }
    pub fn peer(&mut self) -> PeerRepr {
        PeerRepr {
            scrub: ScrubRepr {
                flags: self.u16(),
                ttl: self.u8(),
                scrub_flag: self.u8(),
                ts_mod: self.u32(),
            },
            seqlo: self.u32(),
            seqhi: self.u32(),
            seqdiff: self.u32(),
            max_win: self.u16(),
            mss: self.u16(),
            state: self.below(13),
            wscale: self.u8(),
        }
    }
    pub fn nonzero_creator(&mut self) -> u32 {
        self.u32().max(1)
    }
    pub fn key(&mut self, af: AddrFamily) -> StateKeyRepr {
        let mut k = StateKeyRepr::default();
        for a in &mut k.addr {
            *a = self.arr();
            if af == AddrFamily::Inet {
                a[4..].fill(0);
            }
        }
        k.port = [self.u16(), self.u16()];
        k
    }
}

/// A full state as valid for import in `d`, carrying only fields `d` has (the form parsing
/// produces).
pub fn state(d: Dialect, p: &mut Pool) -> StateRepr {
    let af = p.af();
    let mut s = StateRepr {
        id: StateId::new(p.u64(), p.nonzero_creator()),
        ifname: p.name(),
        src: p.peer(),
        dst: p.peer(),
        rt_addr: p.arr(),
        rule: p.u32(),
        anchor: p.u32(),
        nat_rule: p.u32(),
        creation: p.u32(),
        expire: p.u32(),
        packets: [p.u64(), p.u64()],
        bytes: [p.u64(), p.u64()],
        af,
        proto: p.u8(),
        direction: p.below(3),
        log: p.u8(),
        timeout: p.below(d.pftm_max()),
        ..StateRepr::default()
    };
    s.key = [p.key(af), p.key(af)];
    match d {
        Dialect::NetbsdV3 => {
            s.key[1].addr[0] = s.key[0].addr[0];
            s.key[1].port[0] = s.key[0].port[0];
            s.allow_opts = p.u8();
            s.sync_flags = p.u8();
            s.updates = p.u8();
        }
        Dialect::OpenbsdV6 => {
            for k in &mut s.key {
                k.rdomain = p.u16();
            }
            if p.u8() & 1 == 1 {
                s.key[0].af = p.af();
                s.key[1].af = p.af();
            }
            s.rtableid = [p.u32() as i32, p.u32() as i32];
            s.max_mss = p.u16();
            s.rt = p.u8();
            s.sync_flags = p.u8();
            s.updates = p.u8();
            s.min_ttl = p.u8();
            s.set_tos = p.u8();
            s.state_flags = p.u16();
            s.set_prio = p.arr();
        }
        Dialect::Freebsd1301 => {
            s.state_flags = p.u8().into();
            s.sync_flags = p.u8();
            s.updates = p.u8();
        }
        Dialect::Freebsd1400 | Dialect::Freebsd1500 => {
            s.state_flags = p.u16();
            (s.qid, s.pqid, s.dnpipe, s.dnrpipe) = (p.u16(), p.u16(), p.u16(), p.u16());
            s.rtableid[0] = p.u32() as i32;
            s.min_ttl = p.u8();
            s.set_tos = p.u8();
            s.max_mss = p.u16();
            s.set_prio = p.arr();
            s.rt = p.u8();
            s.rt_ifname = p.name();
            if d == Dialect::Freebsd1400 {
                s.sync_flags = p.u8();
                s.updates = p.u8();
            } else {
                s.tagname = p.name();
                s.orig_ifname = p.name();
                let rt_af = [AddrFamily::Unspec, AddrFamily::Inet, AddrFamily::Inet6]
                    [usize::from(p.below(3))];
                s.af_1500 = [af, p.af(), rt_af];
                s.proto_1500 = [s.proto, p.u8()];
            }
        }
    }
    s
}

/// Every message kind `d` can carry (Eof excluded: the writer adds it).
pub fn kinds(d: Dialect) -> &'static [&'static str] {
    match d {
        Dialect::NetbsdV3 => &[
            "clr", "ins", "upd", "del", "upd_c", "del_c", "upd_req", "bus", "tdb",
        ],
        Dialect::OpenbsdV6 => &[
            "clr", "ins", "ins_ack", "upd", "upd_c", "upd_req", "del", "del_c", "bus", "tdb",
        ],
        _ => &[
            "clr", "ins", "ins_ack", "upd", "upd_c", "upd_req", "del_c", "bus", "tdb",
        ],
    }
}

/// A valid message of kind `k` for `d`.
pub fn message(d: Dialect, k: &str, p: &mut Pool) -> Message {
    let id = |p: &mut Pool| {
        if p.below(8) == 0 {
            StateId::BULK
        } else {
            StateId::new(p.u64(), p.u32())
        }
    };
    match k {
        "clr" => Message::Clr {
            ifname: p.name(),
            creator: p.u32(),
        },
        "ins" => Message::Ins(state(d, p)),
        "upd" => Message::Upd(state(d, p)),
        "del" => Message::Del(state(d, p)),
        "ins_ack" => Message::InsAck(id(p)),
        "upd_req" => Message::UpdReq(id(p)),
        "del_c" => Message::DelC(id(p)),
        "upd_c" => Message::UpdC(UpdCRepr {
            id: StateId::new(p.u64(), p.u32()),
            src: p.peer(),
            dst: p.peer(),
            expire: p.u32(),
            timeout: p.below(d.pftm_max()),
            flags: if d.is_freebsd() { 0 } else { p.u8() },
        }),
        "bus" => Message::Bus {
            creator: p.u32(),
            endtime: p.u32(),
            status: BusStatus::from_wire(p.u8()),
        },
        "tdb" => {
            let big = d == Dialect::OpenbsdV6;
            Message::Tdb(TdbRepr {
                spi: p.u32(),
                dst: p.arr(),
                rpl: if big { p.u64() } else { p.u32().into() },
                cur_bytes: p.u64(),
                sproto: p.u8(),
                updates: p.u8(),
                rdomain: if big { p.u16() } else { 0 },
            })
        }
        other => panic!("unknown kind {other}"),
    }
}

/// Emit `msgs` as a sequence of packets of at most `mtu` bytes.
pub fn emit_all(d: Dialect, msgs: &[Message], mtu: usize, cksum: [u8; 16]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; mtu];
    let mut i = 0;
    while i < msgs.len() {
        let mut w = PacketWriter::new(d, &mut buf);
        w.set_checksum(cksum);
        while i < msgs.len() {
            match w.push(&msgs[i]) {
                Ok(true) => i += 1,
                Ok(false) => break,
                Err(e) => panic!("push {}: {e}", msgs[i]),
            }
        }
        assert!(!w.is_empty(), "message {} alone does not fit", msgs[i]);
        let n = w.finish();
        out.push(buf[..n].to_vec());
    }
    out
}

/// Messages of a packet without FreeBSD's EOF marker.
pub fn parse_body(d: Dialect, pkt: &[u8]) -> Result<Vec<Message>> {
    let p = Packet::new_checked(pkt, d)?;
    let mut v: Vec<Message> = p.messages().collect();
    if d.is_freebsd() {
        assert_eq!(
            v.pop(),
            Some(Message::Eof),
            "FreeBSD packet must end in EOF"
        );
    }
    assert!(!v.contains(&Message::Eof));
    Ok(v)
}

//! Message bodies: the small structs (clr, ins_ack, upd_c, upd_req, del_c, bus, tdb) per
//! dialect family, and dispatch to the full-state layouts in [`super::state`].
//!
//! NetBSD's small structs carry the same leading fields as v5/v6 but are padded to
//! 24/88/16/16/16 bytes; only sizes and a few optional fields differ, so one table per
//! struct with per-family constants suffices.

use super::action::Kind;
use super::field::*;
use super::peer::{PF_TCPS_PROXY_DST, STATE_OFFSET};
use super::state::{self, Check};
use super::{
    BusStatus, Dialect, Message, PeerRepr, Result, StateId, StateRepr, TdbRepr, UpdCRepr, WireError,
};

/// `pfsync_clr` / NetBSD `pfsync_state_clr`.
mod clr {
    pub const IFNAME: usize = 0;
    pub const CREATORID: usize = 16;
    pub const LEN_V5V6: usize = 20;
    pub const LEN_NETBSD: usize = 24; // + pad u32
}

/// `pfsync_ins_ack`, `pfsync_upd_req`, `pfsync_del_c` (and NetBSD's padded upd_req/del_c).
mod id_msg {
    pub const ID: usize = 0;
    pub const CREATORID: usize = 8;
    pub const LEN_V5V6: usize = 12;
    /// NetBSD upd_req has a u32 pad; del_c has src.state, dst.state (0 on the wire), pad[2].
    pub const LEN_NETBSD: usize = 16;
}

/// `pfsync_upd_c` / NetBSD `pfsync_state_upd`.
mod upd_c {
    pub const ID: usize = 0;
    pub const SRC: usize = 8;
    pub const DST: usize = 40;
    pub const CREATORID: usize = 72;
    pub const EXPIRE: usize = 76;
    pub const TIMEOUT: usize = 80;
    /// OpenBSD `state_flags` (u8), NetBSD `updates`; FreeBSD padding.
    pub const FLAGS: usize = 81;
    pub const LEN_V5V6: usize = 84;
    pub const LEN_NETBSD: usize = 88;
}

/// `pfsync_bus` / NetBSD `pfsync_state_bus`.
mod bus {
    pub const CREATORID: usize = 0;
    pub const ENDTIME: usize = 4;
    pub const STATUS: usize = 8;
    pub const LEN_V5V6: usize = 12;
    pub const LEN_NETBSD: usize = 16;
}

/// `pfsync_tdb`: 48-byte form (NetBSD, FreeBSD; OpenBSD's obsolete OTDB) and OpenBSD's 52.
mod tdb {
    pub const SPI: usize = 0;
    pub const DST: usize = 4; // sockaddr_union, 28 bytes
    pub const RPL: usize = 32;
    pub struct Layout {
        pub size: usize,
        /// `rpl` is u64 (OpenBSD) or u32.
        pub rpl64: bool,
        pub cur_bytes: usize,
        pub sproto: usize,
        pub updates: usize,
        pub rdomain: Option<usize>,
    }
    pub const L48: Layout = Layout {
        size: 48,
        rpl64: false,
        cur_bytes: 36,
        sproto: 44,
        updates: 45,
        rdomain: None,
    };
    pub const L52: Layout = Layout {
        size: 52,
        rpl64: true,
        cur_bytes: 40,
        sproto: 48,
        updates: 49,
        rdomain: Some(50),
    };
}

fn tdb_layout(d: Dialect) -> &'static tdb::Layout {
    if d == Dialect::OpenbsdV6 {
        &tdb::L52
    } else {
        &tdb::L48
    }
}

/// Size of one `kind` body in `dialect` (0 for bodiless kinds).
pub(crate) fn body_len(d: Dialect, kind: Kind) -> usize {
    let nb = d == Dialect::NetbsdV3;
    let pick = |n: usize, v: usize| if nb { n } else { v };
    match kind {
        Kind::Clr => pick(clr::LEN_NETBSD, clr::LEN_V5V6),
        Kind::InsAck | Kind::UpdReq | Kind::DelC => pick(id_msg::LEN_NETBSD, id_msg::LEN_V5V6),
        Kind::UpdC => pick(upd_c::LEN_NETBSD, upd_c::LEN_V5V6),
        Kind::Bus => pick(bus::LEN_NETBSD, bus::LEN_V5V6),
        Kind::Tdb => tdb_layout(d).size,
        Kind::Ins | Kind::Upd | Kind::Del => state::StateLayout::of(d).size,
        Kind::Eof | Kind::Ignore => 0,
    }
}

fn id_at(b: &[u8], id: usize, creator: usize) -> StateId {
    StateId::new(be64(b, id), be32(b, creator))
}

/// Decode a `UPD_C` body. Always inlined: on a [`UPD_C_MIN`]-byte view (the relay's path)
/// every read is at a constant offset within a known length, so none needs a bounds check.
#[inline(always)]
pub(crate) fn read_upd_c(d: Dialect, b: &[u8]) -> UpdCRepr {
    UpdCRepr {
        id: id_at(b, upd_c::ID, upd_c::CREATORID),
        src: PeerRepr::read(b, upd_c::SRC),
        dst: PeerRepr::read(b, upd_c::DST),
        expire: be32(b, upd_c::EXPIRE),
        timeout: u8_at(b, upd_c::TIMEOUT),
        flags: if d.is_freebsd() {
            0
        } else {
            u8_at(b, upd_c::FLAGS)
        },
    }
}

/// The state id of a `UPD_C` body (`b` holds at least [`UPD_C_MIN`] bytes).
#[inline]
pub(crate) fn upd_c_id(b: &[u8]) -> StateId {
    id_at(b, upd_c::ID, upd_c::CREATORID)
}

/// Bytes of every dialect's `UPD_C` body (v5/v6 84, NetBSD 88).
pub(crate) const UPD_C_MIN: usize = upd_c::LEN_V5V6;

/// Decode one body (`b` holds at least `body_len` bytes). `None` for bodiless kinds.
///
/// Each arm builds its `Some(..)` itself: wrapping the result of the whole `match` moved
/// the full-size enum (a state's size, for a 48-byte `UPD_C` too) through a temporary.
#[inline]
pub(crate) fn read(d: Dialect, kind: Kind, b: &[u8]) -> Option<Message> {
    match kind {
        Kind::Clr => Some(Message::Clr {
            ifname: bytes(b, clr::IFNAME),
            creator: be32(b, clr::CREATORID),
        }),
        Kind::InsAck => Some(Message::InsAck(id_at(b, id_msg::ID, id_msg::CREATORID))),
        Kind::UpdReq => Some(Message::UpdReq(id_at(b, id_msg::ID, id_msg::CREATORID))),
        Kind::DelC => Some(Message::DelC(id_at(b, id_msg::ID, id_msg::CREATORID))),
        Kind::UpdC => Some(Message::UpdC(read_upd_c(d, b))),
        Kind::Bus => Some(Message::Bus {
            creator: be32(b, bus::CREATORID),
            endtime: be32(b, bus::ENDTIME),
            status: BusStatus::from_wire(u8_at(b, bus::STATUS)),
        }),
        Kind::Tdb => {
            let l = tdb_layout(d);
            Some(Message::Tdb(TdbRepr {
                spi: be32(b, tdb::SPI),
                dst: bytes(b, tdb::DST),
                rpl: if l.rpl64 {
                    be64(b, tdb::RPL)
                } else {
                    u64::from(be32(b, tdb::RPL))
                },
                cur_bytes: be64(b, l.cur_bytes),
                sproto: u8_at(b, l.sproto),
                updates: u8_at(b, l.updates),
                rdomain: l.rdomain.map_or(0, |o| be16(b, o)),
            }))
        }
        Kind::Ins => Some(Message::Ins(state::read(d, b))),
        Kind::Upd => Some(Message::Upd(state::read(d, b))),
        Kind::Del => Some(Message::Del(state::read(d, b))),
        Kind::Eof | Kind::Ignore => None,
    }
}

/// Receive checks of a `UPD_C` body starting at packet offset `base` (on a
/// [`UPD_C_MIN`]-byte view every read is at a constant offset in a known length).
#[inline(always)]
pub(crate) fn validate_upd_c(d: Dialect, b: &[u8], base: usize) -> Result<()> {
    let t = u8_at(b, upd_c::TIMEOUT);
    if t >= d.pftm_max() {
        return Err(WireError::BadValue {
            offset: base + upd_c::TIMEOUT,
            field: "timeout",
            value: t.into(),
        });
    }
    for (o, field) in [(upd_c::SRC, "src.state"), (upd_c::DST, "dst.state")] {
        let s = u8_at(b, o + STATE_OFFSET);
        if s > PF_TCPS_PROXY_DST {
            return Err(WireError::BadValue {
                offset: base + o + STATE_OFFSET,
                field,
                value: s.into(),
            });
        }
    }
    Ok(())
}

/// Receive checks for one body starting at packet offset `base`.
pub(crate) fn validate(d: Dialect, kind: Kind, b: &[u8], base: usize) -> Result<()> {
    match kind {
        Kind::Ins | Kind::Upd => state::validate(d, b, base, Check::Import),
        Kind::Del => state::validate(d, b, base, Check::Lookup),
        Kind::UpdC => validate_upd_c(d, b, base),
        Kind::Clr
            if !b
                .get(clr::IFNAME..clr::IFNAME + 16)
                .is_some_and(name_terminated) =>
        {
            Err(WireError::BadValue {
                offset: base + clr::IFNAME,
                field: "ifname",
                value: 0,
            })
        }
        _ => Ok(()),
    }
}

fn not_expressible(dialect: Dialect, what: &'static str) -> WireError {
    WireError::NotExpressible { dialect, what }
}

/// Check that `msg` has an encoding in `d` beyond its action code existing.
pub(crate) fn check_expressible(d: Dialect, msg: &Message) -> Result<()> {
    match msg {
        Message::Ins(s) | Message::Upd(s) | Message::Del(s) => state::check_expressible(d, s),
        Message::Clr { ifname, .. } if !name_terminated(ifname) => {
            Err(not_expressible(d, "unterminated clr ifname"))
        }
        Message::Tdb(t) if !tdb_layout(d).rpl64 && t.rpl > u64::from(u32::MAX) => {
            Err(not_expressible(d, "tdb rpl above 32 bits"))
        }
        _ => Ok(()),
    }
}

fn write_state(d: Dialect, s: &StateRepr, b: &mut [u8]) {
    state::write(d, s, b)
}

/// Write `msg`'s body into `b[..body_len]` (padding zeroed). Call [`check_expressible`] first.
#[inline]
pub(crate) fn write(d: Dialect, msg: &Message, b: &mut [u8]) {
    let len = body_len(d, super::action::kind_of(msg));
    if let Some(z) = b.get_mut(..len) {
        z.fill(0);
    }
    match msg {
        Message::Clr { ifname, creator } => {
            put(b, clr::IFNAME, ifname);
            put32(b, clr::CREATORID, *creator);
        }
        Message::InsAck(id) | Message::UpdReq(id) | Message::DelC(id) => {
            put64(b, id_msg::ID, id.id);
            put32(b, id_msg::CREATORID, id.creator);
        }
        Message::UpdC(u) => {
            put64(b, upd_c::ID, u.id.id);
            u.src.write(b, upd_c::SRC);
            u.dst.write(b, upd_c::DST);
            put32(b, upd_c::CREATORID, u.id.creator);
            put32(b, upd_c::EXPIRE, u.expire);
            put_u8(b, upd_c::TIMEOUT, u.timeout);
            if !d.is_freebsd() {
                put_u8(b, upd_c::FLAGS, u.flags);
            }
        }
        Message::Bus {
            creator,
            endtime,
            status,
        } => {
            put32(b, bus::CREATORID, *creator);
            put32(b, bus::ENDTIME, *endtime);
            put_u8(b, bus::STATUS, status.to_wire());
        }
        Message::Tdb(t) => {
            let l = tdb_layout(d);
            put32(b, tdb::SPI, t.spi);
            put(b, tdb::DST, &t.dst);
            if l.rpl64 {
                put64(b, tdb::RPL, t.rpl);
            } else {
                put32(b, tdb::RPL, t.rpl as u32);
            }
            put64(b, l.cur_bytes, t.cur_bytes);
            put_u8(b, l.sproto, t.sproto);
            put_u8(b, l.updates, t.updates);
            if let Some(o) = l.rdomain {
                put16(b, o, t.rdomain);
            }
        }
        Message::Ins(s) | Message::Upd(s) | Message::Del(s) => write_state(d, s, b),
        Message::Eof => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::peer::tests::{peer_e, PEER_E};

    /// Reference §10 E: a `pfsync_upd_c` built from two copies of peer E.
    pub(crate) fn upd_c_e_bytes() -> [u8; 84] {
        let mut b = [0u8; 84];
        b[7] = 1;
        b[8..40].copy_from_slice(&PEER_E);
        b[40..72].copy_from_slice(&PEER_E);
        b[72..84].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 2, 0, 0, 0]);
        b
    }

    pub(crate) fn upd_c_e() -> Message {
        Message::UpdC(UpdCRepr {
            id: StateId::new(1, 0xdead_beef),
            src: peer_e(),
            dst: peer_e(),
            expire: 0,
            timeout: 2,
            flags: 0,
        })
    }

    #[test]
    fn upd_c_example_e() {
        let b = upd_c_e_bytes();
        for d in [Dialect::OpenbsdV6, Dialect::Freebsd1400] {
            assert_eq!(read(d, Kind::UpdC, &b), Some(upd_c_e()));
            validate(d, Kind::UpdC, &b, 0).unwrap();
            let mut out = [0xeeu8; 84];
            write(d, &upd_c_e(), &mut out);
            assert_eq!(out, b);
        }
    }

    #[test]
    fn upd_c_flags_only_where_carried() {
        let mut b = upd_c_e_bytes();
        b[81] = 0x10;
        let Some(Message::UpdC(u)) = read(Dialect::OpenbsdV6, Kind::UpdC, &b) else {
            panic!()
        };
        assert_eq!(u.flags, 0x10);
        let Some(Message::UpdC(u)) = read(Dialect::Freebsd1301, Kind::UpdC, &b) else {
            panic!()
        };
        assert_eq!(u.flags, 0);
    }

    #[test]
    fn tdb_layouts() {
        let t = TdbRepr {
            spi: 0x1000,
            dst: [7; 28],
            rpl: 0x1_0000_0001,
            cur_bytes: 99,
            sproto: 50,
            updates: 3,
            rdomain: 4,
        };
        let m = Message::Tdb(t);
        let mut b = [0u8; 52];
        check_expressible(Dialect::OpenbsdV6, &m).unwrap();
        write(Dialect::OpenbsdV6, &m, &mut b);
        assert_eq!(&b[32..40], &0x1_0000_0001u64.to_be_bytes());
        assert_eq!(&b[50..52], &[0, 4]);
        assert_eq!(read(Dialect::OpenbsdV6, Kind::Tdb, &b), Some(m));
        assert!(check_expressible(Dialect::Freebsd1400, &m).is_err());
        let t48 = TdbRepr {
            rpl: 5,
            rdomain: 0,
            ..t
        };
        let mut b = [0u8; 48];
        write(Dialect::Freebsd1400, &Message::Tdb(t48), &mut b);
        assert_eq!(&b[32..36], &[0, 0, 0, 5]);
        assert_eq!(&b[36..44], &99u64.to_be_bytes());
        assert_eq!(b[44], 50);
        assert_eq!(
            read(Dialect::Freebsd1400, Kind::Tdb, &b),
            Some(Message::Tdb(t48))
        );
    }

    #[test]
    fn upd_c_bad_values() {
        let mut b = upd_c_e_bytes();
        b[80] = 20;
        assert!(validate(Dialect::Freebsd1400, Kind::UpdC, &b, 24).is_ok());
        assert_eq!(
            validate(Dialect::OpenbsdV6, Kind::UpdC, &b, 24),
            Err(WireError::BadValue {
                offset: 104,
                field: "timeout",
                value: 20
            })
        );
        let mut b = upd_c_e_bytes();
        b[40 + 24] = 13;
        assert_eq!(
            validate(Dialect::OpenbsdV6, Kind::UpdC, &b, 0),
            Err(WireError::BadValue {
                offset: 64,
                field: "dst.state",
                value: 13
            })
        );
    }
}

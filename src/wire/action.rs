//! Action codes per dialect (reference §3, §4).

use super::{Dialect, Message};

/// What a subheader's (or NetBSD header's) action code means, dialect-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Clr,
    Ins,
    InsAck,
    Upd,
    UpdC,
    UpdReq,
    Del,
    DelC,
    Bus,
    Tdb,
    Eof,
    /// Known but carries nothing for us: OpenBSD obsolete codes (skipped by `len·count`),
    /// NetBSD INS_F/DEL_F ("not implemented", ignored by the kernel).
    Ignore,
}

use Kind::*;

/// NetBSD v3: `PFSYNC_ACT_MAX` = 11.
const NETBSD: [Option<Kind>; 11] = [
    Some(Clr),
    Some(Ins),
    Some(Upd),
    Some(Del),
    Some(UpdC),
    Some(DelC),
    Some(Ignore), // INS_F
    Some(Ignore), // DEL_F
    Some(UpdReq),
    Some(Bus),
    Some(Tdb),
];

/// OpenBSD v6: `PFSYNC_ACT_MAX` = 16; 1 OINS, 3 OUPD, 8 INS_F, 9 DEL_F, 11 OTDB, 12 EOF are
/// skipped by 7.4+ (`pfsync_in_skip`).
const OPENBSD: [Option<Kind>; 16] = [
    Some(Clr),
    Some(Ignore),
    Some(InsAck),
    Some(Ignore),
    Some(UpdC),
    Some(UpdReq),
    Some(Del),
    Some(DelC),
    Some(Ignore),
    Some(Ignore),
    Some(Bus),
    Some(Ignore),
    Some(Ignore),
    Some(Ins),
    Some(Upd),
    Some(Tdb),
];

/// FreeBSD v5 codes shared by every struct version; INS/UPD slots are per version.
/// DEL (6), INS_F (8), DEL_F (9) map to `pfsync_in_error` in 14+ and are refused here.
const fn freebsd(ins: u8, upd: u8, code: u8) -> Option<Kind> {
    match code {
        0 => Some(Clr),
        2 => Some(InsAck),
        4 => Some(UpdC),
        5 => Some(UpdReq),
        7 => Some(DelC),
        10 => Some(Bus),
        11 => Some(Tdb),
        12 => Some(Eof),
        c if c == ins => Some(Ins),
        c if c == upd => Some(Upd),
        _ => None,
    }
}

/// (INS, UPD) codes of each FreeBSD struct version.
const fn freebsd_ins_upd(d: Dialect) -> (u8, u8) {
    match d {
        Dialect::Freebsd1301 => (1, 3),
        Dialect::Freebsd1400 => (13, 14),
        _ => (15, 16),
    }
}

/// Meaning of `code` in `dialect`; `None` = the kernel counts it as `badact`.
pub(crate) fn decode(dialect: Dialect, code: u8) -> Option<Kind> {
    match dialect {
        Dialect::NetbsdV3 => NETBSD.get(usize::from(code)).copied().flatten(),
        Dialect::OpenbsdV6 => OPENBSD.get(usize::from(code)).copied().flatten(),
        d => {
            let (i, u) = freebsd_ins_upd(d);
            freebsd(i, u, code)
        }
    }
}

/// Kind of a message.
pub(crate) fn kind_of(msg: &Message) -> Kind {
    match msg {
        Message::Clr { .. } => Clr,
        Message::Ins(_) => Ins,
        Message::InsAck(_) => InsAck,
        Message::Upd(_) => Upd,
        Message::UpdC(_) => UpdC,
        Message::UpdReq(_) => UpdReq,
        Message::Del(_) => Del,
        Message::DelC(_) => DelC,
        Message::Bus { .. } => Bus,
        Message::Tdb(_) => Tdb,
        Message::Eof => Eof,
    }
}

/// Action code for `kind` in `dialect`, `None` if the dialect has no such message.
pub(crate) fn encode(dialect: Dialect, kind: Kind) -> Option<u8> {
    if kind == Ignore {
        return None;
    }
    let table: &[Option<Kind>] = match dialect {
        Dialect::NetbsdV3 => &NETBSD,
        Dialect::OpenbsdV6 => &OPENBSD,
        d => {
            return (0u8..=16).find(|&c| {
                let (i, u) = freebsd_ins_upd(d);
                freebsd(i, u, c) == Some(kind)
            })
        }
    };
    table.iter().position(|k| *k == Some(kind)).map(|p| p as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(encode(Dialect::OpenbsdV6, Ins), Some(13));
        assert_eq!(encode(Dialect::OpenbsdV6, Upd), Some(14));
        assert_eq!(encode(Dialect::OpenbsdV6, Tdb), Some(15));
        assert_eq!(encode(Dialect::OpenbsdV6, Eof), None);
        assert_eq!(encode(Dialect::Freebsd1301, Ins), Some(1));
        assert_eq!(encode(Dialect::Freebsd1301, Upd), Some(3));
        assert_eq!(encode(Dialect::Freebsd1400, Upd), Some(14));
        assert_eq!(encode(Dialect::Freebsd1500, Ins), Some(15));
        assert_eq!(encode(Dialect::Freebsd1500, Del), None);
        assert_eq!(encode(Dialect::NetbsdV3, Upd), Some(2));
        assert_eq!(encode(Dialect::NetbsdV3, InsAck), None);
        assert_eq!(decode(Dialect::Freebsd1400, 6), None);
        assert_eq!(decode(Dialect::Freebsd1400, 1), None);
        assert_eq!(decode(Dialect::Freebsd1400, 15), None);
        assert_eq!(decode(Dialect::OpenbsdV6, 16), None);
        assert_eq!(decode(Dialect::NetbsdV3, 11), None);
        for d in Dialect::ALL {
            for c in 0..=255u8 {
                if let Some(k) = decode(d, c) {
                    if k != Ignore {
                        assert_eq!(encode(d, k), Some(c), "{d} {c}");
                    }
                }
            }
        }
    }
}

//! Owned, dialect-neutral representations of pfsync messages.
//!
//! Every type here is a plain value (no heap), so a parsed packet can be walked message by
//! message without allocating. Fields are in host order; the per-dialect codecs convert.
//! A `StateRepr` is the superset of what any dialect carries, so translation between
//! dialects is a field copy plus the explicit mappings in `translate`.

use core::fmt;

/// The wire dialects spoken by the kernels we interoperate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dialect {
    /// NetBSD `PFSYNC_VERSION 3` (OpenBSD 4.2 lineage): one action per packet.
    NetbsdV3,
    /// OpenBSD `PFSYNC_VERSION 6`: subheader length in 32-bit words, no EOF.
    OpenbsdV6,
    /// FreeBSD version 5 with the 242-byte `pfsync_state_1301` (FreeBSD <= 13 and 14 `version 1301`).
    Freebsd1301,
    /// FreeBSD version 5 with the 277-byte `pfsync_state_1400` (FreeBSD 14 default).
    Freebsd1400,
    /// FreeBSD version 5 with the 360-byte `pfsync_state_1500` (FreeBSD 15; experimental).
    Freebsd1500,
}

impl Dialect {
    pub const ALL: [Dialect; 5] = [
        Dialect::NetbsdV3,
        Dialect::OpenbsdV6,
        Dialect::Freebsd1301,
        Dialect::Freebsd1400,
        Dialect::Freebsd1500,
    ];

    /// The `pfsync_header.version` byte this dialect puts on the wire.
    pub const fn version(self) -> u8 {
        match self {
            Dialect::NetbsdV3 => 3,
            Dialect::OpenbsdV6 => 6,
            Dialect::Freebsd1301 | Dialect::Freebsd1400 | Dialect::Freebsd1500 => 5,
        }
    }

    /// Stable name used in config files, JSON output and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::NetbsdV3 => "netbsd-v3",
            Dialect::OpenbsdV6 => "openbsd-v6",
            Dialect::Freebsd1301 => "freebsd-1301",
            Dialect::Freebsd1400 => "freebsd-1400",
            Dialect::Freebsd1500 => "freebsd-1500",
        }
    }

    pub fn from_name(s: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == s)
    }

    pub const fn is_freebsd(self) -> bool {
        matches!(
            self,
            Dialect::Freebsd1301 | Dialect::Freebsd1400 | Dialect::Freebsd1500
        )
    }

    /// The value this dialect's kernel uses for `AF_INET6` (24 on Open/NetBSD, 28 on FreeBSD).
    pub const fn af_inet6(self) -> u8 {
        if self.is_freebsd() {
            28
        } else {
            24
        }
    }

    /// `PFTM_MAX` of this dialect's kernel: timeouts at or above it are rejected on import.
    pub const fn pftm_max(self) -> u8 {
        match self {
            Dialect::NetbsdV3 => 20,
            Dialect::OpenbsdV6 => 20,
            Dialect::Freebsd1301 | Dialect::Freebsd1400 | Dialect::Freebsd1500 => 25,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Address family, normalised (the wire values differ per dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddrFamily {
    /// Unset (OpenBSD key af 0 means "use the state's af").
    #[default]
    Unspec,
    Inet,
    Inet6,
    /// A value we do not know, kept so that it can be re-emitted or rejected explicitly.
    Other(u8),
}

impl AddrFamily {
    pub fn from_wire(v: u8, dialect: Dialect) -> AddrFamily {
        match v {
            0 => AddrFamily::Unspec,
            2 => AddrFamily::Inet,
            v if v == dialect.af_inet6() => AddrFamily::Inet6,
            v => AddrFamily::Other(v),
        }
    }
    pub fn to_wire(self, dialect: Dialect) -> u8 {
        match self {
            AddrFamily::Unspec => 0,
            AddrFamily::Inet => 2,
            AddrFamily::Inet6 => dialect.af_inet6(),
            AddrFamily::Other(v) => v,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AddrFamily::Unspec => "unspec",
            AddrFamily::Inet => "inet",
            AddrFamily::Inet6 => "inet6",
            AddrFamily::Other(_) => "other",
        }
    }
}

/// `(id, creatorid)`: the global identity of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StateId {
    /// Big-endian interpretation of the 8 id bytes.
    pub id: u64,
    /// Big-endian interpretation of the 4 creatorid bytes.
    pub creator: u32,
}

impl StateId {
    pub const BULK: StateId = StateId { id: 0, creator: 0 };
    pub const fn new(id: u64, creator: u32) -> Self {
        StateId { id, creator }
    }
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:08x}", self.id, self.creator)
    }
}

/// `pfsync_state_scrub` (8 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScrubRepr {
    pub flags: u16,
    pub ttl: u8,
    pub scrub_flag: u8,
    pub ts_mod: u32,
}

/// `pfsync_state_peer` (32 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerRepr {
    pub scrub: ScrubRepr,
    pub seqlo: u32,
    pub seqhi: u32,
    pub seqdiff: u32,
    pub max_win: u16,
    pub mss: u16,
    pub state: u8,
    pub wscale: u8,
}

/// One side of a state key: addresses and ports (ports in host order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateKeyRepr {
    /// `pf_addr` raw bytes; IPv4 in bytes 0..4.
    pub addr: [[u8; 16]; 2],
    pub port: [u16; 2],
    /// OpenBSD only (0 elsewhere).
    pub rdomain: u16,
    /// OpenBSD only: key af (Unspec = same as the state's af).
    pub af: AddrFamily,
}

/// A full state (`pfsync_state` of any dialect), the superset of all dialects' fields.
///
/// Fields a dialect does not carry are zero/default after parsing it and are ignored when
/// emitting it. NetBSD's lan/gwy/ext hosts map to `key[WIRE]` = (ext, gwy) and
/// `key[STACK]` = (ext, lan) per the OpenBSD 4.5 conversion; see `wire::netbsd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateRepr {
    pub id: StateId,
    pub ifname: [u8; 16],
    /// `[PF_SK_WIRE, PF_SK_STACK]`.
    pub key: [StateKeyRepr; 2],
    pub src: PeerRepr,
    pub dst: PeerRepr,
    pub rt_addr: [u8; 16],
    pub rule: u32,
    pub anchor: u32,
    pub nat_rule: u32,
    /// Age in seconds.
    pub creation: u32,
    /// Seconds until expiry.
    pub expire: u32,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub af: AddrFamily,
    pub proto: u8,
    pub direction: u8,
    pub log: u8,
    /// NetBSD `allow_opts` (folded into state_flags ALLOWOPTS elsewhere).
    pub allow_opts: u8,
    pub timeout: u8,
    pub sync_flags: u8,
    pub updates: u8,
    pub state_flags: u16,
    pub max_mss: u16,
    pub min_ttl: u8,
    pub set_tos: u8,
    pub set_prio: [u8; 2],
    pub rt: u8,
    /// OpenBSD `rtableid[2]`; FreeBSD uses `rtableid[0]` only.
    pub rtableid: [i32; 2],
    pub qid: u16,
    pub pqid: u16,
    pub dnpipe: u16,
    pub dnrpipe: u16,
    pub rt_ifname: [u8; 16],
    /// FreeBSD 1500 only.
    pub tagname: [u8; 64],
    /// FreeBSD 1500 only.
    pub orig_ifname: [u8; 16],
    /// FreeBSD 1500 only: `[wire, stack, rt]` address families and `[wire, stack]` protocols.
    pub af_1500: [AddrFamily; 3],
    pub proto_1500: [u8; 2],
}

impl Default for StateRepr {
    fn default() -> Self {
        StateRepr {
            id: StateId::default(),
            ifname: [0; 16],
            key: [StateKeyRepr::default(); 2],
            src: PeerRepr::default(),
            dst: PeerRepr::default(),
            rt_addr: [0; 16],
            rule: 0,
            anchor: 0,
            nat_rule: 0,
            creation: 0,
            expire: 0,
            packets: [0; 2],
            bytes: [0; 2],
            af: AddrFamily::Unspec,
            proto: 0,
            direction: 0,
            log: 0,
            allow_opts: 0,
            timeout: 0,
            sync_flags: 0,
            updates: 0,
            state_flags: 0,
            max_mss: 0,
            min_ttl: 0,
            set_tos: 0,
            set_prio: [0; 2],
            rt: 0,
            rtableid: [0; 2],
            qid: 0,
            pqid: 0,
            dnpipe: 0,
            dnrpipe: 0,
            rt_ifname: [0; 16],
            tagname: [0; 64],
            orig_ifname: [0; 16],
            af_1500: [AddrFamily::Unspec; 3],
            proto_1500: [0; 2],
        }
    }
}

/// `pfsync_upd_c` / NetBSD `pfsync_state_upd`: a compressed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UpdCRepr {
    pub id: StateId,
    pub src: PeerRepr,
    pub dst: PeerRepr,
    pub expire: u32,
    pub timeout: u8,
    /// OpenBSD `state_flags` byte / NetBSD `updates`; 0 on FreeBSD.
    pub flags: u8,
}

impl UpdCRepr {
    /// The compressed update a firewall of `dialect` sends for `s`: FreeBSD and OpenBSD
    /// zero `expire` (receivers re-derive it from `timeout`), NetBSD sends it; only OpenBSD
    /// carries the state flags.
    pub fn of(s: &StateRepr, dialect: Dialect) -> UpdCRepr {
        UpdCRepr {
            id: s.id,
            src: s.src,
            dst: s.dst,
            expire: if dialect == Dialect::NetbsdV3 {
                s.expire
            } else {
                0
            },
            timeout: s.timeout,
            flags: if dialect == Dialect::OpenbsdV6 {
                s.state_flags as u8
            } else {
                0
            },
        }
    }
}

/// Bulk update status carried by BUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusStatus {
    Start,
    End,
    Other(u8),
}

impl BusStatus {
    pub fn from_wire(v: u8) -> BusStatus {
        match v {
            1 => BusStatus::Start,
            2 => BusStatus::End,
            v => BusStatus::Other(v),
        }
    }
    pub fn to_wire(self) -> u8 {
        match self {
            BusStatus::Start => 1,
            BusStatus::End => 2,
            BusStatus::Other(v) => v,
        }
    }
}

/// `pfsync_tdb` (IPsec replay counters). Kept opaque beyond its named fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TdbRepr {
    pub spi: u32,
    /// `sockaddr_union` raw bytes.
    pub dst: [u8; 28],
    pub rpl: u64,
    pub cur_bytes: u64,
    pub sproto: u8,
    pub updates: u8,
    pub rdomain: u16,
}

/// One pfsync message, independent of dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Remove all states of `creator` (on `ifname`, or all if empty).
    Clr {
        ifname: [u8; 16],
        creator: u32,
    },
    Ins(StateRepr),
    InsAck(StateId),
    Upd(StateRepr),
    UpdC(UpdCRepr),
    /// Update request; `StateId::BULK` asks for a bulk update.
    UpdReq(StateId),
    Del(StateRepr),
    DelC(StateId),
    Bus {
        creator: u32,
        endtime: u32,
        status: BusStatus,
    },
    Tdb(TdbRepr),
    /// FreeBSD end-of-packet marker.
    Eof,
}

impl Message {
    /// Short action name used by `decode --json`.
    pub fn action_name(&self) -> &'static str {
        match self {
            Message::Clr { .. } => "clr",
            Message::Ins(_) => "ins",
            Message::InsAck(_) => "ins_ack",
            Message::Upd(_) => "upd",
            Message::UpdC(_) => "upd_c",
            Message::UpdReq(_) => "upd_req",
            Message::Del(_) => "del",
            Message::DelC(_) => "del_c",
            Message::Bus { .. } => "bus",
            Message::Tdb(_) => "tdb",
            Message::Eof => "eof",
        }
    }

    /// Does it carry a state's content? Requests, bulk status and EOF are the same bytes
    /// whoever sends them (our bulk request and the firewall's are identical).
    pub fn carries_state(&self) -> bool {
        !matches!(
            self,
            Message::UpdReq(_) | Message::Bus { .. } | Message::Eof
        )
    }

    /// The state this message is about, if any.
    pub fn state_id(&self) -> Option<StateId> {
        match self {
            Message::Ins(s) | Message::Upd(s) | Message::Del(s) => Some(s.id),
            Message::UpdC(u) => Some(u.id),
            Message::InsAck(id) | Message::UpdReq(id) | Message::DelC(id) => Some(*id),
            _ => None,
        }
    }
}

/// Interpret a NUL-padded name field as text (lossy, up to the first NUL).
pub fn name_str(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
}

/// Build a NUL-padded name field; truncated so that it is always NUL-terminated.
pub fn name_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

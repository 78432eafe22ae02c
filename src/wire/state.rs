//! Full-state layouts (`pfsync_state` of each dialect) used by INS, UPD and DEL.
//!
//! All dialect differences live in the [`StateLayout`] tables below; [`read`], [`write`] and
//! [`validate`] are written once against a table. Absent fields are `None` and read as the
//! `StateRepr` default; on emit they are ignored.
//!
//! # NetBSD hosts ↔ keys
//! NetBSD (OpenBSD 4.2 lineage) stores `lan`, `gwy`, `ext` hosts instead of two state keys.
//! pf puts the remote end in `addr[0]` of both keys regardless of direction (`sidx` is 0 for
//! PF_IN, 1 for PF_OUT), so the mapping is direction-independent:
//!
//! | key | `addr[0]`/`port[0]` | `addr[1]`/`port[1]` |
//! |---|---|---|
//! | `key[0]` (PF_SK_WIRE)  | `ext` | `gwy` |
//! | `key[1]` (PF_SK_STACK) | `ext` | `lan` |
//!
//! Parsing fills both keys this way (rdomain 0, af `Unspec`). Emitting NetBSD requires
//! `key[1]` index 0 to equal `key[0]` index 0 (address and port); otherwise the state is
//! [`WireError::NotExpressible`] (an af-to or twice-NATed state has no NetBSD form).
//!
//! # FreeBSD 1500
//! 1500 has no single `af`/`proto`; it carries wire/stack/rt af and wire/stack proto. Parsing
//! fills `af_1500`, `proto_1500` and also sets `af = af_1500[0]`, `proto = proto_1500[0]`.
//! Emitting uses `af_1500[0..2]` / `proto_1500`, except that a pair left entirely unset
//! (`[Unspec, Unspec]` / `[0, 0]`, i.e. a state parsed from another dialect) is replaced by
//! `[af, af]` / `[proto, proto]`; `rt_af` has no fallback.
//!
//! 1301 carries only the low byte of `state_flags` (as FreeBSD's export does);
//! `rtableid[1]` exists only in OpenBSD.

use super::field::*;
use super::peer::{PF_TCPS_PROXY_DST, STATE_OFFSET};
use super::{AddrFamily, Dialect, PeerRepr, Result, StateId, StateRepr, WireError};

/// Where the two state keys (or NetBSD's three hosts) live.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyLayout {
    /// NetBSD `pfsync_state_host` (24 B: addr 16, port u16, pad 6) at these offsets.
    Hosts { lan: usize, gwy: usize, ext: usize },
    /// `pfsync_state_key` at `[wire, stack]`; OpenBSD's 40-byte key adds rdomain u16 @36 and
    /// af u8 @38 (`ext` = true), FreeBSD's is 36 bytes.
    Keys { at: [usize; 2], ext: bool },
}

/// `state_flags` encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FlagsField {
    None,
    U8(usize),
    U16(usize),
}

/// Byte offsets of every field of one dialect's `pfsync_state`.
#[derive(Debug)]
pub(crate) struct StateLayout {
    pub size: usize,
    pub keys: KeyLayout,
    pub src: usize,
    pub dst: usize,
    pub rt_addr: usize,
    pub rule: usize,
    pub anchor: usize,
    pub nat_rule: usize,
    pub creation: usize,
    pub expire: usize,
    /// `packets[2][2]` / `bytes[2][2]`: two BE u64s each.
    pub packets: usize,
    pub bytes: usize,
    pub creatorid: usize,
    pub af: Option<usize>,
    pub proto: Option<usize>,
    pub direction: usize,
    pub log: usize,
    pub allow_opts: Option<usize>,
    pub timeout: usize,
    pub sync_flags: Option<usize>,
    pub updates: Option<usize>,
    pub state_flags: FlagsField,
    /// `rtableid` i32 BE; OpenBSD has a second one right after.
    pub rtableid: Option<usize>,
    pub rtableid2: bool,
    pub max_mss: Option<usize>,
    pub min_ttl: Option<usize>,
    pub set_tos: Option<usize>,
    pub set_prio: Option<usize>,
    pub rt: Option<usize>,
    /// qid, pqid, dnpipe, dnrpipe: four consecutive BE u16.
    pub queues: Option<usize>,
    pub rt_ifname: Option<usize>,
    pub tagname: Option<usize>,
    pub orig_ifname: Option<usize>,
    /// 1500: wire_af, stack_af, rt_af then wire_proto, stack_proto (5 consecutive bytes).
    pub af_proto_1500: Option<usize>,
}

const ID: usize = 0;
const IFNAME: usize = 8;

/// NetBSD `pfsync_state` (240 B).
pub(crate) const NETBSD: StateLayout = StateLayout {
    size: 240,
    keys: KeyLayout::Hosts {
        lan: 24,
        gwy: 48,
        ext: 72,
    },
    src: 96,
    dst: 128,
    rt_addr: 160,
    rule: 176,
    anchor: 180,
    nat_rule: 184,
    creation: 188,
    expire: 192,
    packets: 196,
    bytes: 212,
    creatorid: 228,
    af: Some(232),
    proto: Some(233),
    direction: 234,
    log: 235,
    allow_opts: Some(236),
    timeout: 237,
    sync_flags: Some(238),
    updates: Some(239),
    state_flags: FlagsField::None,
    rtableid: None,
    rtableid2: false,
    max_mss: None,
    min_ttl: None,
    set_tos: None,
    set_prio: None,
    rt: None,
    queues: None,
    rt_ifname: None,
    tagname: None,
    orig_ifname: None,
    af_proto_1500: None,
};

/// OpenBSD v6 `pfsync_state` (264 B).
pub(crate) const OPENBSD: StateLayout = StateLayout {
    size: 264,
    keys: KeyLayout::Keys {
        at: [24, 64],
        ext: true,
    },
    src: 104,
    dst: 136,
    rt_addr: 168,
    rule: 184,
    anchor: 188,
    nat_rule: 192,
    creation: 196,
    expire: 200,
    packets: 204,
    bytes: 220,
    creatorid: 236,
    rtableid: Some(240),
    rtableid2: true,
    max_mss: Some(248),
    af: Some(250),
    proto: Some(251),
    direction: 252,
    log: 253,
    rt: Some(254),
    timeout: 255,
    sync_flags: Some(256),
    updates: Some(257),
    min_ttl: Some(258),
    set_tos: Some(259),
    state_flags: FlagsField::U16(260),
    set_prio: Some(262),
    allow_opts: None,
    queues: None,
    rt_ifname: None,
    tagname: None,
    orig_ifname: None,
    af_proto_1500: None,
};

/// FreeBSD `pfsync_state_1301` (242 B; FreeBSD <= 13 `pfsync_state`).
pub(crate) const FREEBSD_1301: StateLayout = StateLayout {
    size: 242,
    keys: KeyLayout::Keys {
        at: [24, 60],
        ext: false,
    },
    src: 96,
    dst: 128,
    rt_addr: 160,
    rule: 176,
    anchor: 180,
    nat_rule: 184,
    creation: 188,
    expire: 192,
    packets: 196,
    bytes: 212,
    creatorid: 228,
    af: Some(232),
    proto: Some(233),
    direction: 234,
    // 235..237 __spare
    log: 237,
    state_flags: FlagsField::U8(238),
    timeout: 239,
    sync_flags: Some(240),
    updates: Some(241),
    allow_opts: None,
    rtableid: None,
    rtableid2: false,
    max_mss: None,
    min_ttl: None,
    set_tos: None,
    set_prio: None,
    rt: None,
    queues: None,
    rt_ifname: None,
    tagname: None,
    orig_ifname: None,
    af_proto_1500: None,
};

/// FreeBSD `pfsync_state_1400` (277 B).
pub(crate) const FREEBSD_1400: StateLayout = StateLayout {
    size: 277,
    af: Some(232),
    proto: Some(233),
    direction: 234,
    state_flags: FlagsField::U16(235),
    log: 237,
    // 238 __spare
    timeout: 239,
    sync_flags: Some(240),
    updates: Some(241),
    queues: Some(242),
    rtableid: Some(250),
    min_ttl: Some(254),
    set_tos: Some(255),
    max_mss: Some(256),
    set_prio: Some(258),
    rt: Some(260),
    rt_ifname: Some(261),
    ..FREEBSD_1301
};

/// FreeBSD `pfsync_state_1500` (360 B).
pub(crate) const FREEBSD_1500: StateLayout = StateLayout {
    size: 360,
    af: None,
    proto: None,
    tagname: Some(232),
    rt_ifname: Some(296),
    orig_ifname: Some(312),
    rtableid: Some(328),
    state_flags: FlagsField::U16(332),
    queues: Some(334),
    max_mss: Some(342),
    af_proto_1500: Some(344),
    log: 349,
    timeout: 350,
    direction: 351,
    rt: Some(352),
    min_ttl: Some(353),
    set_tos: Some(354),
    set_prio: Some(355),
    // 357..360 spare
    sync_flags: None,
    updates: None,
    ..FREEBSD_1301
};

impl StateLayout {
    pub(crate) fn of(dialect: Dialect) -> &'static StateLayout {
        match dialect {
            Dialect::NetbsdV3 => &NETBSD,
            Dialect::OpenbsdV6 => &OPENBSD,
            Dialect::Freebsd1301 => &FREEBSD_1301,
            Dialect::Freebsd1400 => &FREEBSD_1400,
            Dialect::Freebsd1500 => &FREEBSD_1500,
        }
    }
}

mod key {
    pub const ADDR0: usize = 0;
    pub const ADDR1: usize = 16;
    pub const PORT0: usize = 32;
    pub const PORT1: usize = 34;
    pub const RDOMAIN: usize = 36; // OpenBSD only
    pub const AF: usize = 38; // OpenBSD only
    pub const HOST_ADDR: usize = 0;
    pub const HOST_PORT: usize = 16;
}

#[inline]
fn read_host(b: &[u8], at: usize) -> ([u8; 16], u16) {
    (bytes(b, at + key::HOST_ADDR), be16(b, at + key::HOST_PORT))
}

#[inline]
fn write_host(b: &mut [u8], at: usize, addr: &[u8; 16], port: u16) {
    put(b, at + key::HOST_ADDR, addr);
    put16(b, at + key::HOST_PORT, port);
    put(b, at + key::HOST_PORT + 2, &[0u8; 6]);
}

/// Parse a full state from `b` (exactly one struct, `b.len() >= layout.size`).
pub(crate) fn read(dialect: Dialect, b: &[u8]) -> StateRepr {
    let l = StateLayout::of(dialect);
    let mut s = StateRepr {
        id: StateId::new(be64(b, ID), be32(b, l.creatorid)),
        ifname: bytes(b, IFNAME),
        src: PeerRepr::read(b, l.src),
        dst: PeerRepr::read(b, l.dst),
        rt_addr: bytes(b, l.rt_addr),
        rule: be32(b, l.rule),
        anchor: be32(b, l.anchor),
        nat_rule: be32(b, l.nat_rule),
        creation: be32(b, l.creation),
        expire: be32(b, l.expire),
        packets: [be64(b, l.packets), be64(b, l.packets + 8)],
        bytes: [be64(b, l.bytes), be64(b, l.bytes + 8)],
        direction: u8_at(b, l.direction),
        log: u8_at(b, l.log),
        timeout: u8_at(b, l.timeout),
        ..StateRepr::default()
    };
    match l.keys {
        KeyLayout::Hosts { lan, gwy, ext } => {
            let (ea, ep) = read_host(b, ext);
            let (ga, gp) = read_host(b, gwy);
            let (la, lp) = read_host(b, lan);
            s.key[0].addr = [ea, ga];
            s.key[0].port = [ep, gp];
            s.key[1].addr = [ea, la];
            s.key[1].port = [ep, lp];
        }
        KeyLayout::Keys { at, ext } => {
            for (k, &o) in s.key.iter_mut().zip(at.iter()) {
                k.addr = [bytes(b, o + key::ADDR0), bytes(b, o + key::ADDR1)];
                k.port = [be16(b, o + key::PORT0), be16(b, o + key::PORT1)];
                if ext {
                    k.rdomain = be16(b, o + key::RDOMAIN);
                    k.af = AddrFamily::from_wire(u8_at(b, o + key::AF), dialect);
                }
            }
        }
    }
    if let Some(o) = l.af {
        s.af = AddrFamily::from_wire(u8_at(b, o), dialect);
    }
    if let Some(o) = l.proto {
        s.proto = u8_at(b, o);
    }
    if let Some(o) = l.allow_opts {
        s.allow_opts = u8_at(b, o);
    }
    if let Some(o) = l.sync_flags {
        s.sync_flags = u8_at(b, o);
    }
    if let Some(o) = l.updates {
        s.updates = u8_at(b, o);
    }
    s.state_flags = match l.state_flags {
        FlagsField::None => 0,
        FlagsField::U8(o) => u16::from(u8_at(b, o)),
        FlagsField::U16(o) => be16(b, o),
    };
    if let Some(o) = l.rtableid {
        s.rtableid[0] = be32(b, o) as i32;
        if l.rtableid2 {
            s.rtableid[1] = be32(b, o + 4) as i32;
        }
    }
    if let Some(o) = l.max_mss {
        s.max_mss = be16(b, o);
    }
    if let Some(o) = l.min_ttl {
        s.min_ttl = u8_at(b, o);
    }
    if let Some(o) = l.set_tos {
        s.set_tos = u8_at(b, o);
    }
    if let Some(o) = l.set_prio {
        s.set_prio = bytes(b, o);
    }
    if let Some(o) = l.rt {
        s.rt = u8_at(b, o);
    }
    if let Some(o) = l.queues {
        s.qid = be16(b, o);
        s.pqid = be16(b, o + 2);
        s.dnpipe = be16(b, o + 4);
        s.dnrpipe = be16(b, o + 6);
    }
    if let Some(o) = l.rt_ifname {
        s.rt_ifname = bytes(b, o);
    }
    if let Some(o) = l.tagname {
        s.tagname = bytes(b, o);
    }
    if let Some(o) = l.orig_ifname {
        s.orig_ifname = bytes(b, o);
    }
    if let Some(o) = l.af_proto_1500 {
        for i in 0..3 {
            s.af_1500[i] = AddrFamily::from_wire(u8_at(b, o + i), dialect);
        }
        s.proto_1500 = [u8_at(b, o + 3), u8_at(b, o + 4)];
        s.af = s.af_1500[0];
        s.proto = s.proto_1500[0];
    }
    s
}

/// Check that `s` can be written in `dialect` (see the module docs for what cannot).
pub(crate) fn check_expressible(dialect: Dialect, s: &StateRepr) -> Result<()> {
    let l = StateLayout::of(dialect);
    let names_ok = name_terminated(&s.ifname)
        && (l.rt_ifname.is_none() || name_terminated(&s.rt_ifname))
        && (l.tagname.is_none() || name_terminated(&s.tagname))
        && (l.orig_ifname.is_none() || name_terminated(&s.orig_ifname));
    if !names_ok {
        return Err(WireError::NotExpressible {
            dialect,
            what: "unterminated name field",
        });
    }
    if matches!(l.keys, KeyLayout::Hosts { .. })
        && (s.key[0].addr[0] != s.key[1].addr[0] || s.key[0].port[0] != s.key[1].port[0])
    {
        return Err(WireError::NotExpressible {
            dialect,
            what: "state whose wire and stack keys differ on the remote side",
        });
    }
    Ok(())
}

/// Write `s` into `b[..layout.size]`, zeroing padding. Call [`check_expressible`] first.
pub(crate) fn write(dialect: Dialect, s: &StateRepr, b: &mut [u8]) {
    let l = StateLayout::of(dialect);
    if let Some(d) = b.get_mut(..l.size) {
        d.fill(0);
    }
    put64(b, ID, s.id.id);
    put(b, IFNAME, &s.ifname);
    match l.keys {
        KeyLayout::Hosts { lan, gwy, ext } => {
            write_host(b, ext, &s.key[0].addr[0], s.key[0].port[0]);
            write_host(b, gwy, &s.key[0].addr[1], s.key[0].port[1]);
            write_host(b, lan, &s.key[1].addr[1], s.key[1].port[1]);
        }
        KeyLayout::Keys { at, ext } => {
            for (k, &o) in s.key.iter().zip(at.iter()) {
                put(b, o + key::ADDR0, &k.addr[0]);
                put(b, o + key::ADDR1, &k.addr[1]);
                put16(b, o + key::PORT0, k.port[0]);
                put16(b, o + key::PORT1, k.port[1]);
                if ext {
                    put16(b, o + key::RDOMAIN, k.rdomain);
                    put_u8(b, o + key::AF, k.af.to_wire(dialect));
                }
            }
        }
    }
    s.src.write(b, l.src);
    s.dst.write(b, l.dst);
    put(b, l.rt_addr, &s.rt_addr);
    put32(b, l.rule, s.rule);
    put32(b, l.anchor, s.anchor);
    put32(b, l.nat_rule, s.nat_rule);
    put32(b, l.creation, s.creation);
    put32(b, l.expire, s.expire);
    put64(b, l.packets, s.packets[0]);
    put64(b, l.packets + 8, s.packets[1]);
    put64(b, l.bytes, s.bytes[0]);
    put64(b, l.bytes + 8, s.bytes[1]);
    put32(b, l.creatorid, s.id.creator);
    put_u8(b, l.direction, s.direction);
    put_u8(b, l.log, s.log);
    put_u8(b, l.timeout, s.timeout);
    if let Some(o) = l.af {
        put_u8(b, o, s.af.to_wire(dialect));
    }
    if let Some(o) = l.proto {
        put_u8(b, o, s.proto);
    }
    if let Some(o) = l.allow_opts {
        put_u8(b, o, s.allow_opts);
    }
    if let Some(o) = l.sync_flags {
        put_u8(b, o, s.sync_flags);
    }
    if let Some(o) = l.updates {
        put_u8(b, o, s.updates);
    }
    match l.state_flags {
        FlagsField::None => {}
        // FreeBSD's 1301 export truncates the same way.
        FlagsField::U8(o) => put_u8(b, o, s.state_flags as u8),
        FlagsField::U16(o) => put16(b, o, s.state_flags),
    }
    if let Some(o) = l.rtableid {
        put32(b, o, s.rtableid[0] as u32);
        if l.rtableid2 {
            put32(b, o + 4, s.rtableid[1] as u32);
        }
    }
    if let Some(o) = l.max_mss {
        put16(b, o, s.max_mss);
    }
    if let Some(o) = l.min_ttl {
        put_u8(b, o, s.min_ttl);
    }
    if let Some(o) = l.set_tos {
        put_u8(b, o, s.set_tos);
    }
    if let Some(o) = l.set_prio {
        put(b, o, &s.set_prio);
    }
    if let Some(o) = l.rt {
        put_u8(b, o, s.rt);
    }
    if let Some(o) = l.queues {
        put16(b, o, s.qid);
        put16(b, o + 2, s.pqid);
        put16(b, o + 4, s.dnpipe);
        put16(b, o + 6, s.dnrpipe);
    }
    if let Some(o) = l.rt_ifname {
        put(b, o, &s.rt_ifname);
    }
    if let Some(o) = l.tagname {
        put(b, o, &s.tagname);
    }
    if let Some(o) = l.orig_ifname {
        put(b, o, &s.orig_ifname);
    }
    if let Some(o) = l.af_proto_1500 {
        // A state from another dialect has neither pair set: use its single af/proto.
        let afs = if s.af_1500[..2] == [AddrFamily::Unspec; 2] {
            [s.af, s.af]
        } else {
            [s.af_1500[0], s.af_1500[1]]
        };
        let protos = if s.proto_1500 == [0, 0] {
            [s.proto, s.proto]
        } else {
            s.proto_1500
        };
        put_u8(b, o, afs[0].to_wire(dialect));
        put_u8(b, o + 1, afs[1].to_wire(dialect));
        put_u8(b, o + 2, s.af_1500[2].to_wire(dialect));
        put(b, o + 3, &protos);
    }
}

/// How strictly a full state is checked on receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// INS / UPD: the kernels' import checks (`badval` / `badstate`).
    Import,
    /// DEL: only looked up by id; OpenBSD even sends `PFTM_UNLINKED` timeouts here.
    Lookup,
}

fn bad(offset: usize, field: &'static str, value: u64) -> WireError {
    WireError::BadValue {
        offset,
        field,
        value,
    }
}

fn af_ok(dialect: Dialect, v: u8) -> bool {
    v == 2 || v == dialect.af_inet6()
}

/// Validate the struct at `b` (which starts at packet offset `base`) like the receiving kernel.
pub(crate) fn validate(dialect: Dialect, b: &[u8], base: usize, check: Check) -> Result<()> {
    let l = StateLayout::of(dialect);
    // Names are checked for every full state: an unterminated one is a hazard to the
    // kernels we relay to, whatever the action.
    let mut names = [(IFNAME, 16usize, "ifname"); 4];
    let mut n = 1;
    for (o, len, name) in [
        (l.rt_ifname, 16, "rt_ifname"),
        (l.tagname, 64, "tagname"),
        (l.orig_ifname, 16, "orig_ifname"),
    ] {
        if let Some(o) = o {
            names[n] = (o, len, name);
            n += 1;
        }
    }
    for &(o, len, name) in &names[..n] {
        if !b.get(o..o + len).is_some_and(name_terminated) {
            return Err(bad(base + o, name, 0));
        }
    }
    if check == Check::Lookup {
        return Ok(());
    }
    let timeout = u8_at(b, l.timeout);
    if timeout >= dialect.pftm_max() {
        return Err(bad(base + l.timeout, "timeout", timeout.into()));
    }
    for (o, name) in [(l.src, "src.state"), (l.dst, "dst.state")] {
        let st = u8_at(b, o + STATE_OFFSET);
        if st > PF_TCPS_PROXY_DST {
            return Err(bad(base + o + STATE_OFFSET, name, st.into()));
        }
    }
    let dir = u8_at(b, l.direction);
    if dir > 2 {
        return Err(bad(base + l.direction, "direction", dir.into()));
    }
    if let Some(o) = l.af {
        let af = u8_at(b, o);
        if !af_ok(dialect, af) {
            return Err(bad(base + o, "af", af.into()));
        }
    }
    if let Some(o) = l.af_proto_1500 {
        for (i, name) in [(0, "wire_af"), (1, "stack_af")] {
            let af = u8_at(b, o + i);
            if !af_ok(dialect, af) {
                return Err(bad(base + o + i, name, af.into()));
            }
        }
    }
    if let KeyLayout::Keys { at, ext: true } = l.keys {
        // OpenBSD: key af 0 on both means "use sp->af"; otherwise both must be valid.
        let a = [u8_at(b, at[0] + key::AF), u8_at(b, at[1] + key::AF)];
        if a != [0, 0] {
            for (i, &v) in a.iter().enumerate() {
                if !af_ok(dialect, v) {
                    return Err(bad(base + at[i] + key::AF, "key.af", v.into()));
                }
            }
        }
    }
    let creator = be32(b, l.creatorid);
    if creator == 0 {
        return Err(bad(base + l.creatorid, "creatorid", 0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables must tile each struct exactly as the C headers do.
    #[test]
    fn layout_sizes_and_tail_offsets() {
        assert_eq!(NETBSD.size, 240);
        assert_eq!(NETBSD.updates, Some(239));
        assert_eq!(OPENBSD.size, 264);
        assert_eq!(OPENBSD.set_prio.map(|o| o + 2), Some(264));
        assert_eq!(FREEBSD_1301.size, 242);
        assert_eq!(FREEBSD_1301.updates, Some(241));
        assert_eq!(FREEBSD_1400.rt_ifname.map(|o| o + 16), Some(277));
        assert_eq!(FREEBSD_1500.set_prio.map(|o| o + 2 + 3), Some(360));
        for d in Dialect::ALL {
            let l = StateLayout::of(d);
            assert_eq!(l.packets + 16, l.bytes, "{d}");
            assert_eq!(l.bytes + 16, l.creatorid, "{d}");
        }
    }

    fn sample(d: Dialect) -> StateRepr {
        let mut s = StateRepr {
            id: StateId::new(0x0102_0304_0506_0708, 0xdead_beef),
            ifname: crate::wire::name_field("em0"),
            af: AddrFamily::Inet,
            proto: 6,
            direction: 2,
            timeout: 2,
            creation: 10,
            expire: 86400,
            packets: [5, 6],
            bytes: [500, 600],
            rule: 3,
            anchor: u32::MAX,
            nat_rule: u32::MAX,
            log: 1,
            ..StateRepr::default()
        };
        s.key[0].addr[0][..4].copy_from_slice(&[10, 0, 0, 2]);
        s.key[0].addr[1][..4].copy_from_slice(&[10, 0, 0, 1]);
        s.key[0].port = [80, 1234];
        s.key[1] = s.key[0];
        s.src.state = 4;
        s.dst.state = 4;
        if d == Dialect::Freebsd1500 {
            s.af_1500 = [AddrFamily::Inet, AddrFamily::Inet, AddrFamily::Unspec];
            s.proto_1500 = [6, 6];
        }
        s
    }

    #[test]
    fn roundtrip_every_layout() {
        for d in Dialect::ALL {
            let s = sample(d);
            let l = StateLayout::of(d);
            let mut b = vec![0xffu8; l.size];
            check_expressible(d, &s).unwrap();
            write(d, &s, &mut b);
            validate(d, &b, 0, Check::Import).unwrap();
            assert_eq!(read(d, &b), s, "{d}");
        }
    }

    /// Spot-check absolute offsets against the C struct text (reference §3, §6).
    #[test]
    fn field_offsets_per_dialect() {
        // (dialect, creatorid, af, timeout, state_flags (offset, width))
        let cases = [
            (Dialect::NetbsdV3, 228, Some(232), 237, None),
            (Dialect::OpenbsdV6, 236, Some(250), 255, Some((260, 2))),
            (Dialect::Freebsd1301, 228, Some(232), 239, Some((238, 1))),
            (Dialect::Freebsd1400, 228, Some(232), 239, Some((235, 2))),
            (Dialect::Freebsd1500, 228, Some(344), 350, Some((332, 2))),
        ];
        for (d, creator, af, timeout, flags) in cases {
            let mut s = sample(d);
            s.state_flags = 0x0110;
            s.timeout = 7;
            let mut b = vec![0u8; StateLayout::of(d).size];
            write(d, &s, &mut b);
            assert_eq!(&b[creator..creator + 4], &[0xde, 0xad, 0xbe, 0xef], "{d}");
            assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8], "{d}");
            assert_eq!(&b[8..12], b"em0\0", "{d}");
            if let Some(o) = af {
                assert_eq!(b[o], 2, "{d}");
            }
            assert_eq!(b[timeout], 7, "{d}");
            match flags {
                Some((o, 2)) => assert_eq!(&b[o..o + 2], &[0x01, 0x10], "{d}"),
                Some((o, _)) => assert_eq!(b[o], 0x10, "{d}"),
                None => {}
            }
        }
        // OpenBSD keys are 40 bytes (wire @24, stack @64), FreeBSD 36 (@24, @60).
        let mut b = [0u8; 264];
        write(Dialect::OpenbsdV6, &sample(Dialect::OpenbsdV6), &mut b);
        assert_eq!(&b[24..28], &[10, 0, 0, 2]);
        assert_eq!(&b[64..68], &[10, 0, 0, 2]);
        assert_eq!(&b[56..58], &[0, 80]);
        let mut b = [0u8; 277];
        write(Dialect::Freebsd1400, &sample(Dialect::Freebsd1400), &mut b);
        assert_eq!(&b[60..64], &[10, 0, 0, 2]);
        assert_eq!(&b[92..94], &[0, 80]);
    }

    #[test]
    fn netbsd_host_mapping() {
        let s = sample(Dialect::NetbsdV3);
        let mut b = [0u8; 240];
        write(Dialect::NetbsdV3, &s, &mut b);
        // ext @72 = key[0] index 0 (10.0.0.2:80); gwy @48 = key[0] index 1; lan @24.
        assert_eq!(&b[72..76], &[10, 0, 0, 2]);
        assert_eq!(&b[88..90], &[0, 80]);
        assert_eq!(&b[48..52], &[10, 0, 0, 1]);
        assert_eq!(&b[64..66], &1234u16.to_be_bytes());
        let mut t = s;
        t.key[1].addr[0][0] = 99;
        assert!(check_expressible(Dialect::NetbsdV3, &t).is_err());
    }

    #[test]
    fn validate_rejects_bad_values() {
        let d = Dialect::OpenbsdV6;
        let mut b = [0u8; 264];
        write(d, &sample(d), &mut b);
        let mut t = b;
        t[255] = 20;
        assert_eq!(
            validate(d, &t, 100, Check::Import),
            Err(bad(355, "timeout", 20))
        );
        assert!(validate(d, &t, 100, Check::Lookup).is_ok());
        let mut t = b;
        t[136 + 24] = 13;
        assert_eq!(
            validate(d, &t, 0, Check::Import),
            Err(bad(160, "dst.state", 13))
        );
        let mut t = b;
        t[252] = 3;
        assert_eq!(
            validate(d, &t, 0, Check::Import),
            Err(bad(252, "direction", 3))
        );
        let mut t = b;
        t[250] = 28;
        assert_eq!(validate(d, &t, 0, Check::Import), Err(bad(250, "af", 28)));
        let mut t = b;
        t[236..240].fill(0);
        assert_eq!(
            validate(d, &t, 0, Check::Import),
            Err(bad(236, "creatorid", 0))
        );
        let mut t = b;
        t[8..24].fill(b'a');
        assert_eq!(validate(d, &t, 0, Check::Lookup), Err(bad(8, "ifname", 0)));
    }
}

//! Dialect translation: map pfsync messages between NetBSD v3, OpenBSD v6 and FreeBSD v5
//! (1301/1400/1500) so that the receiving kernel accepts them with the same meaning.
//!
//! The codec already normalises action codes, framing, key sizes (36/40 B) and the
//! `AF_INET6` value (24/28) through the dialect-neutral reprs; this module handles the
//! *semantics*: what a field means on the other OS, what must be dropped, and what cannot be
//! expressed at all. Every decision is listed in `docs/TRANSLATION.md`.

use super::{AddrFamily, Dialect, Message, Packet, PacketWriter, StateRepr, UpdCRepr, WireError};

/// `PFSTATE_ALLOWOPTS`, the only state flag NetBSD has (as its `allow_opts` byte).
pub const PFSTATE_ALLOWOPTS: u16 = 0x0001;
/// State flag bits with the same meaning on OpenBSD and FreeBSD: ALLOWOPTS, SLOPPY, NOSYNC,
/// ACK, NODF, SETTOS, RANDOMID, SCRUB_TCP, SETPRIO. OpenBSD's PFLOW (0x0004) and
/// INP_UNLINKED (0x0400) and FreeBSD's DN_IS_PIPE/QUEUE (0x4000/0x8000) are local.
pub const COMMON_STATE_FLAGS: u16 = 0x03fb;
/// `rule`/`anchor`/`nat_rule` value meaning "none" (receivers bind to the default rule).
pub const NO_RULE: u32 = u32::MAX;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// A message that has no faithful encoding in the target dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot translate {action} from {from} to {to}: {reason}")]
pub struct Untranslatable {
    pub action: &'static str,
    pub from: Dialect,
    pub to: Dialect,
    pub reason: &'static str,
}

/// `Ok(Some(m))`: send `m`; `Ok(None)`: dropped on purpose (the target has no use for it);
/// `Err`: the message would change meaning or be rejected by the receiver.
pub type Translated = Result<Option<Message>, Untranslatable>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Os {
    Net,
    Open,
    Free,
}

fn os(d: Dialect) -> Os {
    match d {
        Dialect::NetbsdV3 => Os::Net,
        Dialect::OpenbsdV6 => Os::Open,
        Dialect::Freebsd1301 | Dialect::Freebsd1400 | Dialect::Freebsd1500 => Os::Free,
    }
}

/// Translate one message from `from` to `to`.
pub fn translate(msg: &Message, from: Dialect, to: Dialect) -> Translated {
    let fail = |reason| Untranslatable {
        action: msg.action_name(),
        from,
        to,
        reason,
    };
    let out = match msg {
        // Framing only: the FreeBSD PacketWriter appends its own EOF.
        Message::Eof => return Ok(None),
        Message::Clr { .. } | Message::UpdReq(_) | Message::DelC(_) | Message::Bus { .. } => *msg,
        Message::InsAck(_) => {
            // NetBSD has no defer, hence no INS_ACK; the deferring peer times out (20 ms).
            if to == Dialect::NetbsdV3 {
                return Ok(None);
            }
            *msg
        }
        Message::Tdb(_) => {
            // IPsec SAs are not shared across OSes (and the TDB layouts differ).
            if os(from) != os(to) || to == Dialect::NetbsdV3 {
                return Ok(None);
            }
            *msg
        }
        Message::UpdC(u) => Message::UpdC(map_upd_c(u, from, to).map_err(fail)?),
        Message::Ins(s) => Message::Ins(map_state(s, from, to).map_err(fail)?),
        Message::Upd(s) => Message::Upd(map_state(s, from, to).map_err(fail)?),
        Message::Del(s) => {
            // FreeBSD 14+ treats action 6 as an error and drops the rest of the packet; a
            // "1301" receiver may be a FreeBSD 14 too, so every FreeBSD gets DEL_C. Receivers
            // only look a DEL up by (id, creatorid), so a state that cannot be mapped is
            // deleted by DEL_C as well.
            match map_state(s, from, to) {
                Ok(m) if !to.is_freebsd() => Message::Del(m),
                _ => Message::DelC(s.id),
            }
        }
    };
    Ok(Some(out))
}

fn or_af(a: AddrFamily, b: AddrFamily) -> AddrFamily {
    if a == AddrFamily::Unspec {
        b
    } else {
        a
    }
}

fn check_timeout(timeout: u8, to: Dialect) -> Result<(), &'static str> {
    if timeout >= to.pftm_max() {
        // FreeBSD 14+ PFTM_SCTP_* (20..=24): OpenBSD/NetBSD reject them (badval).
        return Err("timeout index has no equivalent (SCTP timeouts exist only on FreeBSD)");
    }
    Ok(())
}

fn map_upd_c(u: &UpdCRepr, from: Dialect, to: Dialect) -> Result<UpdCRepr, &'static str> {
    check_timeout(u.timeout, to)?;
    let mut o = *u;
    // OpenBSD state_flags byte vs NetBSD `updates` vs FreeBSD pad: only same-OS survives.
    if os(from) != os(to) || to.is_freebsd() {
        o.flags = 0;
    }
    Ok(o)
}

/// Map a full state. Public so that the table layer can re-emit stored states.
pub fn map_state(s: &StateRepr, from: Dialect, to: Dialect) -> Result<StateRepr, &'static str> {
    let same_os = os(from) == os(to);
    let mut o = *s;

    // --- address families and protocols (af-to states have per-key values) ---
    let (waf, saf) = match from {
        Dialect::OpenbsdV6 => (or_af(s.key[0].af, s.af), or_af(s.key[1].af, s.af)),
        Dialect::Freebsd1500 => (or_af(s.af_1500[0], s.af), or_af(s.af_1500[1], s.af)),
        _ => (s.af, s.af),
    };
    for af in [waf, saf] {
        if !matches!(af, AddrFamily::Inet | AddrFamily::Inet6) {
            return Err("address family is neither inet nor inet6");
        }
    }
    let wproto = if from == Dialect::Freebsd1500 && s.proto_1500[0] != 0 {
        s.proto_1500[0]
    } else {
        s.proto
    };
    let sproto = if from == Dialect::Freebsd1500 && s.proto_1500[1] != 0 {
        s.proto_1500[1]
    } else if waf != saf {
        icmp_counterpart(wproto)
    } else {
        wproto
    };
    let af_to = waf != saf || wproto != sproto;
    if af_to {
        match to {
            Dialect::Freebsd1500 => {}
            Dialect::OpenbsdV6 if sproto == icmp_counterpart(wproto) && waf != saf => {}
            Dialect::OpenbsdV6 => {
                return Err("wire and stack protocols differ without af-to (not expressible)")
            }
            _ => return Err("af-to (NAT64) state: target has a single af/proto per state"),
        }
    }
    o.af = waf;
    o.proto = wproto;
    for (k, af) in [waf, saf].into_iter().enumerate() {
        o.key[k].af = if to == Dialect::OpenbsdV6 {
            af
        } else {
            AddrFamily::Unspec
        };
    }
    if to == Dialect::Freebsd1500 {
        let rt_af = if from == Dialect::Freebsd1500 && s.af_1500[2] != AddrFamily::Unspec {
            s.af_1500[2]
        } else if s.rt != 0 {
            waf
        } else {
            AddrFamily::Unspec
        };
        o.af_1500 = [waf, saf, rt_af];
        o.proto_1500 = [wproto, sproto];
    } else {
        o.af_1500 = [AddrFamily::Unspec; 3];
        o.proto_1500 = [0; 2];
    }

    // NetBSD's lan/gwy/ext hosts share the remote end (`addr[0]`) between both keys.
    if to == Dialect::NetbsdV3
        && (s.key[0].addr[0] != s.key[1].addr[0] || s.key[0].port[0] != s.key[1].port[0])
    {
        return Err("remote end differs between wire and stack keys (no NetBSD lan/gwy/ext form)");
    }

    // --- rdomain (OpenBSD keys only) ---
    if from == Dialect::OpenbsdV6
        && to != Dialect::OpenbsdV6
        && s.key.iter().any(|k| k.rdomain != 0)
    {
        return Err("OpenBSD rdomain other than 0 has no equivalent");
    }
    if to != Dialect::OpenbsdV6 {
        o.key[0].rdomain = 0;
        o.key[1].rdomain = 0;
    }

    // --- values the receiver validates ---
    check_timeout(s.timeout, to)?;
    if s.direction > 2 {
        return Err("direction above PF_OUT");
    }
    if s.src.state > 12 || s.dst.state > 12 {
        return Err("peer state above PF_TCPS_PROXY_DST");
    }

    // --- state flags ---
    let mut flags = if from == Dialect::NetbsdV3 {
        if s.allow_opts != 0 {
            PFSTATE_ALLOWOPTS
        } else {
            0
        }
    } else if from == Dialect::Freebsd1301 {
        s.state_flags & 0x00ff
    } else {
        s.state_flags
    };
    if !same_os {
        flags &= COMMON_STATE_FLAGS;
    }
    if to == Dialect::Freebsd1301 {
        // 1301 carries state_flags as one byte: SCRUB_TCP and SETPRIO are lost.
        flags &= 0x00ff;
    }
    if to == Dialect::NetbsdV3 {
        o.allow_opts = u8::from(flags & PFSTATE_ALLOWOPTS != 0);
        o.state_flags = 0;
    } else {
        o.allow_opts = 0;
        o.state_flags = flags;
    }

    if !same_os {
        // Rule numbers index the sender's ruleset; "none" binds to the default rule.
        o.rule = NO_RULE;
        o.anchor = NO_RULE;
        o.nat_rule = NO_RULE;
        // NetBSD 0x04 = STALE, elsewhere 0x04/0x08 = (NAT)SRCNODE.
        if os(from) == Os::Net || os(to) == Os::Net {
            o.sync_flags = 0;
        }
        o.updates = 0;
        // route-to/reply-to/dup-to: PF_* route kinds and interfaces are not portable.
        if s.rt != 0 {
            return Err("route-to/reply-to/dup-to state (rt kind and interface are OS-specific)");
        }
        o.rt_ifname = [0; 16];
        // OpenBSD rtableid[2] (rtable per key) vs FreeBSD rtableid (fib): only the defaults
        // (-1 "unset" or 0 "main") are equivalent.
        let used = match from {
            Dialect::OpenbsdV6 => &s.rtableid[..],
            Dialect::Freebsd1400 | Dialect::Freebsd1500 => &s.rtableid[..1],
            _ => &[][..],
        };
        if used.iter().any(|&r| r > 0) {
            return Err("non-default rtableid/fib has no equivalent on the target OS");
        }
        o.rtableid = [-1, -1];
        // ALTQ/dummynet queues are FreeBSD names local to its ruleset.
        o.qid = 0;
        o.pqid = 0;
        o.dnpipe = 0;
        o.dnrpipe = 0;
    }
    if to != Dialect::Freebsd1500 {
        o.tagname = [0; 64];
        o.orig_ifname = [0; 16];
    }
    Ok(o)
}

/// The ICMP protocol of the other address family (af-to rewrites ICMP ↔ ICMPv6).
fn icmp_counterpart(p: u8) -> u8 {
    match p {
        IPPROTO_ICMP => IPPROTO_ICMPV6,
        IPPROTO_ICMPV6 => IPPROTO_ICMP,
        p => p,
    }
}

/// What [`translate_packet`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslateStats {
    pub messages_in: usize,
    pub messages_out: usize,
    /// Dropped on purpose (EOF, INS_ACK to NetBSD, cross-OS TDB).
    pub dropped: usize,
    /// Messages that could not be expressed, with the reason.
    pub untranslatable: Vec<Untranslatable>,
    /// Packets appended to `out`.
    pub packets_out: usize,
}

/// Parse `input` as `from`, translate every message and pack the results into packets of
/// `to` of at most `max_len` bytes (pfsync header included, IP excluded), appended to `out`.
///
/// Untranslatable messages are skipped and reported in the stats; only a malformed input or
/// a message that does not fit in `max_len` is an error.
pub fn translate_packet(
    input: &[u8],
    from: Dialect,
    to: Dialect,
    out: &mut Vec<Vec<u8>>,
    max_len: usize,
) -> Result<TranslateStats, WireError> {
    let pkt = Packet::new_checked(input, from)?;
    let mut stats = TranslateStats::default();
    let mut buf = vec![0u8; max_len];
    let mut writer = PacketWriter::new(to, &mut buf);
    let mut pending: Vec<Vec<u8>> = Vec::new();
    for msg in pkt.messages() {
        stats.messages_in += 1;
        let m = match translate(&msg, from, to) {
            Ok(Some(m)) => m,
            Ok(None) => {
                stats.dropped += 1;
                continue;
            }
            Err(e) => {
                stats.untranslatable.push(e);
                continue;
            }
        };
        let pushed = match writer.push(&m) {
            Ok(true) => true,
            Ok(false) => {
                // Full, or NetBSD's one action per packet: close this packet, start the next.
                let n = writer.finish();
                pending.push(buf[..n].to_vec());
                writer = PacketWriter::new(to, &mut buf);
                // An empty packet either takes it or errors (BufferTooSmall).
                writer.push(&m)?
            }
            Err(WireError::NotExpressible { what, .. }) => {
                stats.untranslatable.push(Untranslatable {
                    action: m.action_name(),
                    from,
                    to,
                    reason: what,
                });
                false
            }
            Err(e) => return Err(e),
        };
        if pushed {
            stats.messages_out += 1;
        }
    }
    if !writer.is_empty() {
        let n = writer.finish();
        pending.push(buf[..n].to_vec());
    }
    stats.packets_out = pending.len();
    out.extend(pending);
    Ok(stats)
}

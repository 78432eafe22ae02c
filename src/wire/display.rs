//! Human-readable rendering, `tcpdump -vvv`-like, for logs and the decoder.
//!
//! `ins 0000000000000001/deadbeef out tcp 10.0.0.1:1234 -> 10.0.0.2:80 ESTABLISHED:ESTABLISHED
//! if em0 age 10s expires 86400s timeout 2 pkts 5:6 bytes 500:600 rule 3`

use super::{AddrFamily, Message, PeerRepr, StateKeyRepr, StateRepr, UpdCRepr};
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

impl StateKeyRepr {
    /// Address `i` (0 or 1) as an `IpAddr` for family `af` (use [`StateRepr::key_af`]);
    /// `None` for an unknown family.
    pub fn ip(&self, i: usize, af: AddrFamily) -> Option<IpAddr> {
        let a = self.addr.get(i)?;
        match af {
            AddrFamily::Inet => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AddrFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        }
    }
}

impl StateRepr {
    /// Effective family of key `i`: the key's own af (OpenBSD af-to, FreeBSD 1500 wire/stack)
    /// or else the state's.
    pub fn key_af(&self, i: usize) -> AddrFamily {
        let own = match i {
            0 | 1 => match self.key[i].af {
                AddrFamily::Unspec => self.af_1500[i],
                af => af,
            },
            _ => AddrFamily::Unspec,
        };
        if own == AddrFamily::Unspec {
            self.af
        } else {
            own
        }
    }
}

/// `addr:port` (IPv6 as `[addr]:port`), or the raw hex for unknown families.
struct Endpoint<'a>(&'a StateKeyRepr, usize, AddrFamily);

impl fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Endpoint(k, i, af) = *self;
        let port = k.port.get(i).copied().unwrap_or(0);
        match k.ip(i, af) {
            Some(IpAddr::V4(a)) => write!(f, "{a}:{port}"),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{port}"),
            None => {
                for b in k.addr.get(i).map_or(&[][..], |a| &a[..]) {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ":{port}")
            }
        }
    }
}

/// pf's direction index: for PF_OUT the source is `addr[1]`, otherwise `addr[0]`.
fn write_key(f: &mut fmt::Formatter<'_>, k: &StateKeyRepr, af: AddrFamily, dir: u8) -> fmt::Result {
    let (s, d) = if dir == 2 { (1, 0) } else { (0, 1) };
    write!(f, "{} -> {}", Endpoint(k, s, af), Endpoint(k, d, af))
}

/// pf's name for an IP protocol, if it has one.
pub fn proto_name(p: u8) -> Option<&'static str> {
    Some(match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        47 => "gre",
        50 => "esp",
        58 => "icmp6",
        132 => "sctp",
        _ => return None,
    })
}

const TCP_STATES: [&str; 13] = [
    "CLOSED",
    "LISTEN",
    "SYN_SENT",
    "SYN_RCVD",
    "ESTABLISHED",
    "CLOSE_WAIT",
    "FIN_WAIT_1",
    "CLOSING",
    "LAST_ACK",
    "FIN_WAIT_2",
    "TIME_WAIT",
    "PROXY_SRC",
    "PROXY_DST",
];
const OTHER_STATES: [&str; 3] = ["NO_TRAFFIC", "SINGLE", "MULTIPLE"];

/// The name pf prints for a peer's state (`ESTABLISHED`, `MULTIPLE`, …) under `proto`.
pub fn peer_state_name(proto: u8, state: u8) -> Option<&'static str> {
    let table: &[&str] = if proto == 6 {
        &TCP_STATES
    } else {
        &OTHER_STATES
    };
    table.get(usize::from(state)).copied()
}

struct PeerState(u8, u8);

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match peer_state_name(self.1, self.0) {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

fn write_peers(
    f: &mut fmt::Formatter<'_>,
    src: &PeerRepr,
    dst: &PeerRepr,
    proto: u8,
) -> fmt::Result {
    write!(
        f,
        "{}:{}",
        PeerState(src.state, proto),
        PeerState(dst.state, proto)
    )?;
    if proto == 6 && f.alternate() {
        for (n, p) in [("src", src), ("dst", dst)] {
            write!(
                f,
                " {n} [{}+{}] win {} mss {} wscale {:#x}",
                p.seqlo,
                p.seqhi.wrapping_sub(p.seqlo),
                p.max_win,
                p.mss,
                p.wscale
            )?;
        }
    }
    Ok(())
}

fn write_name(f: &mut fmt::Formatter<'_>, label: &str, raw: &[u8]) -> fmt::Result {
    if raw.first().is_some_and(|&b| b != 0) {
        write!(f, " {label} {}", super::name_str(raw))?;
    }
    Ok(())
}

/// `{} {dir} {proto} {wire key} [(stack key)] {states} if .. age .. expires ..`;
/// `{:#}` adds TCP sequence windows.
impl fmt::Display for StateRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            1 => "in",
            2 => "out",
            _ => "any",
        };
        write!(f, "{} {dir} ", self.id)?;
        match proto_name(self.proto) {
            Some(n) => f.write_str(n)?,
            None => write!(f, "proto {}", self.proto)?,
        }
        f.write_str(" ")?;
        write_key(f, &self.key[0], self.key_af(0), self.direction)?;
        if self.key[1] != self.key[0] {
            f.write_str(" (stack ")?;
            write_key(f, &self.key[1], self.key_af(1), self.direction)?;
            f.write_str(")")?;
        }
        f.write_str(" ")?;
        write_peers(f, &self.src, &self.dst, self.proto)?;
        write_name(f, "if", &self.ifname)?;
        write!(
            f,
            " age {}s expires {}s timeout {} pkts {}:{} bytes {}:{} rule {}",
            self.creation,
            self.expire,
            self.timeout,
            self.packets[0],
            self.packets[1],
            self.bytes[0],
            self.bytes[1],
            self.rule as i32
        )?;
        if self.state_flags != 0 {
            write!(f, " flags {:#06x}", self.state_flags)?;
        }
        if self.rtableid != [0, 0] {
            write!(f, " rtable {}:{}", self.rtableid[0], self.rtableid[1])?;
        }
        write_name(f, "rt-if", &self.rt_ifname)?;
        write_name(f, "tag", &self.tagname)
    }
}

impl fmt::Display for UpdCRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // upd_c does not carry the protocol; print TCP names when the values fit TCP only.
        let proto = if self.src.state > 2 || self.dst.state > 2 {
            6
        } else {
            0
        };
        write!(f, "{} ", self.id)?;
        write_peers(f, &self.src, &self.dst, proto)?;
        write!(f, " expires {}s timeout {}", self.expire, self.timeout)?;
        if self.flags != 0 {
            write!(f, " flags {:#04x}", self.flags)?;
        }
        Ok(())
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action_name())?;
        match self {
            Message::Clr { ifname, creator } => {
                write!(f, " creator {creator:08x}")?;
                write_name(f, "if", ifname)
            }
            Message::Ins(s) | Message::Upd(s) | Message::Del(s) => {
                f.write_str(" ")?;
                fmt::Display::fmt(s, f)
            }
            Message::UpdC(u) => {
                f.write_str(" ")?;
                fmt::Display::fmt(u, f)
            }
            Message::UpdReq(id) if *id == super::StateId::BULK => f.write_str(" bulk"),
            Message::InsAck(id) | Message::UpdReq(id) | Message::DelC(id) => write!(f, " {id}"),
            Message::Bus {
                creator,
                endtime,
                status,
            } => {
                let s = match status {
                    super::BusStatus::Start => "start".to_string(),
                    super::BusStatus::End => "end".to_string(),
                    super::BusStatus::Other(v) => format!("status {v}"),
                };
                write!(f, " {s} creator {creator:08x} endtime {endtime}")
            }
            Message::Tdb(t) => write!(
                f,
                " spi {:#010x} sproto {} rpl {} cur_bytes {} rdomain {}",
                t.spi, t.sproto, t.rpl, t.cur_bytes, t.rdomain
            ),
            Message::Eof => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{name_field, StateId};

    fn state() -> StateRepr {
        let mut s = StateRepr {
            id: StateId::new(1, 0xdead_beef),
            ifname: name_field("em0"),
            af: AddrFamily::Inet,
            proto: 6,
            direction: 2,
            timeout: 2,
            ..StateRepr::default()
        };
        s.key[0].addr[0][..4].copy_from_slice(&[10, 0, 0, 2]);
        s.key[0].addr[1][..4].copy_from_slice(&[10, 0, 0, 1]);
        s.key[0].port = [80, 1234];
        s.key[1] = s.key[0];
        s.src.state = 4;
        s.dst.state = 4;
        s
    }

    #[test]
    fn ins_line() {
        let line = Message::Ins(state()).to_string();
        assert!(
            line.starts_with(
                "ins 0000000000000001/deadbeef out tcp 10.0.0.1:1234 -> 10.0.0.2:80 ESTABLISHED:ESTABLISHED if em0"
            ),
            "{line}"
        );
    }

    #[test]
    fn nat_and_v6() {
        let mut s = state();
        s.key[1].addr[1][..4].copy_from_slice(&[192, 168, 1, 5]);
        assert!(s
            .to_string()
            .contains("(stack 192.168.1.5:1234 -> 10.0.0.2:80)"));
        s.af = AddrFamily::Inet6;
        s.key[1] = s.key[0];
        assert_eq!(
            s.key[0].ip(0, s.key_af(0)),
            Some("a00:2::".parse().unwrap())
        );
        assert!(s.to_string().contains("[a00:1::]:1234 -> [a00:2::]:80"));
    }

    #[test]
    fn small() {
        assert_eq!(Message::UpdReq(StateId::BULK).to_string(), "upd_req bulk");
        assert_eq!(
            Message::DelC(StateId::new(0x4d2, 0xdead_beef)).to_string(),
            "del_c 00000000000004d2/deadbeef"
        );
        assert_eq!(
            Message::Bus {
                creator: 0xdead_beef,
                endtime: 5,
                status: crate::wire::BusStatus::End
            }
            .to_string(),
            "bus end creator deadbeef endtime 5"
        );
    }
}

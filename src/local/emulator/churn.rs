//! Synthetic connections with pf-like life cycles: what a busy firewall's state table does.
//!
//! Every change is monotonic in the sense of pfsync's stale checks (`pfsync_upd_tcp`): peer
//! states never go backwards and `seqlo` only advances, so a peer never rejects our updates.

use std::time::Duration;

use super::rng::Rng;
use crate::wire::{name_field, AddrFamily, Dialect, PeerRepr, StateId, StateKeyRepr, StateRepr};

// pf timeout indices (`PFTM_*`), identical on every dialect below 20.
pub const PFTM_TCP_FIRST_PACKET: u8 = 0;
pub const PFTM_TCP_OPENING: u8 = 1;
pub const PFTM_TCP_ESTABLISHED: u8 = 2;
pub const PFTM_TCP_CLOSING: u8 = 3;
pub const PFTM_TCP_FIN_WAIT: u8 = 4;
pub const PFTM_TCP_CLOSED: u8 = 5;
pub const PFTM_UDP_FIRST_PACKET: u8 = 6;
pub const PFTM_UDP_SINGLE: u8 = 7;
pub const PFTM_UDP_MULTIPLE: u8 = 8;
pub const PFTM_ICMP_FIRST_PACKET: u8 = 9;
pub const PFTM_ICMP_ERROR_REPLY: u8 = 10;

// TCP peer states (`TCPS_*`) and pf's UDP/other peer states.
pub const TCPS_CLOSED: u8 = 0;
pub const TCPS_SYN_SENT: u8 = 2;
pub const TCPS_ESTABLISHED: u8 = 4;
pub const TCPS_CLOSING: u8 = 7;
pub const TCPS_FIN_WAIT_2: u8 = 9;
pub const TCPS_TIME_WAIT: u8 = 10;
pub const PFUDPS_NO_TRAFFIC: u8 = 0;
pub const PFUDPS_SINGLE: u8 = 1;
pub const PFUDPS_MULTIPLE: u8 = 2;

const PF_IN: u8 = 1;
const PF_OUT: u8 = 2;
const PF_WSCALE_FLAG: u8 = 0x80;

/// pf's default timeout (seconds) for a `PFTM_*` index: the `expire` we advertise.
pub fn default_timeout_secs(tm: u8) -> u32 {
    match tm {
        PFTM_TCP_FIRST_PACKET => 120,
        PFTM_TCP_OPENING => 30,
        PFTM_TCP_ESTABLISHED => 86400,
        PFTM_TCP_CLOSING => 900,
        PFTM_TCP_FIN_WAIT => 45,
        PFTM_TCP_CLOSED => 90,
        PFTM_UDP_FIRST_PACKET => 60,
        PFTM_UDP_SINGLE => 30,
        PFTM_UDP_MULTIPLE => 60,
        PFTM_ICMP_FIRST_PACKET => 20,
        PFTM_ICMP_ERROR_REPLY => 10,
        _ => 60,
    }
}

/// What kind of connection a state models, and where it is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `data` = segments of data exchange still to come once established.
    Tcp {
        phase: TcpPhase,
        data: u8,
    },
    UdpSingle {
        updates: u8,
    },
    UdpMultiple {
        replied: bool,
        updates: u8,
    },
    Icmp {
        replied: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpPhase {
    SynSent,
    SynAck,
    Established,
    Closing,
    FinWait,
    TimeWait,
}

/// Result of advancing a state by one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The state changed; the next event is due after the delay.
    Changed(Duration),
    /// The connection is over: remove the state.
    Remove,
}

fn ms(lo: u64, hi: u64, rng: &mut Rng) -> Duration {
    Duration::from_millis(rng.range(lo, hi))
}

fn set_timeout(s: &mut StateRepr, tm: u8) {
    s.timeout = tm;
    s.expire = default_timeout_secs(tm);
}

/// A fresh state as `pf_create_state()` would make it for the first packet of a flow.
/// Only fields every dialect carries are set, so the state survives any codec unchanged.
pub fn create(
    rng: &mut Rng,
    dialect: Dialect,
    id: StateId,
    ifname: &str,
) -> (StateRepr, Flow, Duration) {
    let mut s = StateRepr {
        id,
        ifname: name_field(ifname),
        ..StateRepr::default()
    };
    let v6 = rng.chance(15);
    s.af = if v6 {
        AddrFamily::Inet6
    } else {
        AddrFamily::Inet
    };
    let roll = rng.range(0, 99);
    let (proto, flow) = match roll {
        0..=59 => (
            6,
            Flow::Tcp {
                phase: TcpPhase::SynSent,
                data: rng.range(0, 8) as u8,
            },
        ),
        60..=74 => (
            17,
            Flow::UdpSingle {
                updates: rng.range(0, 2) as u8,
            },
        ),
        75..=89 => (
            17,
            Flow::UdpMultiple {
                replied: false,
                updates: rng.range(0, 4) as u8,
            },
        ),
        _ => (if v6 { 58 } else { 1 }, Flow::Icmp { replied: false }),
    };
    s.proto = proto;
    s.direction = if rng.chance(50) { PF_IN } else { PF_OUT };
    s.rule = rng.range(0, 40) as u32;
    s.anchor = u32::MAX;
    // NetBSD never fills nat_rule; OpenBSD always sends -1.
    s.nat_rule = if dialect == Dialect::NetbsdV3 {
        0
    } else {
        u32::MAX
    };
    s.packets = [1, 0];
    s.bytes = [rng.range(40, 1500), 0];
    s.af_1500 = [s.af, s.af, AddrFamily::Unspec];
    s.proto_1500 = [proto, proto];

    let mut key = StateKeyRepr::default();
    let host = rng.next_u32();
    if v6 {
        key.addr[0][..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        key.addr[0][12..].copy_from_slice(&host.to_be_bytes());
        key.addr[1][..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        key.addr[1][4] = 1;
        key.addr[1][15] = rng.range(1, 254) as u8;
    } else {
        key.addr[0][..4].copy_from_slice(&[10, (host >> 16) as u8, (host >> 8) as u8, host as u8]);
        key.addr[1][..4].copy_from_slice(&[198, 51, 100, rng.range(1, 254) as u8]);
    }
    match flow {
        Flow::Icmp { .. } => {
            // pf keys ICMP echo by its id on both port slots.
            let icmp_id = rng.range(1, 65535) as u16;
            key.port = [icmp_id, icmp_id];
            set_timeout(&mut s, PFTM_ICMP_FIRST_PACKET);
        }
        Flow::Tcp { .. } => {
            key.port = [
                rng.range(1024, 65535) as u16,
                [22, 80, 443, 8080][rng.range(0, 3) as usize],
            ];
            let isn = rng.next_u32();
            let win = rng.range(8192, 65535) as u16;
            s.src = PeerRepr {
                seqlo: isn,
                seqhi: isn.wrapping_add(1),
                max_win: win,
                mss: 1460,
                state: TCPS_SYN_SENT,
                wscale: 7 | PF_WSCALE_FLAG,
                ..PeerRepr::default()
            };
            s.dst = PeerRepr {
                seqhi: 1,
                max_win: 1,
                state: TCPS_CLOSED,
                ..PeerRepr::default()
            };
            set_timeout(&mut s, PFTM_TCP_FIRST_PACKET);
        }
        _ => {
            key.port = [
                rng.range(1024, 65535) as u16,
                [53, 123, 500, 4500][rng.range(0, 3) as usize],
            ];
            s.src.state = PFUDPS_SINGLE;
            s.dst.state = PFUDPS_NO_TRAFFIC;
            set_timeout(&mut s, PFTM_UDP_FIRST_PACKET);
        }
    }
    // No NAT: both keys equal, which every dialect (NetBSD's lan/gwy/ext too) can express.
    s.key = [key, key];
    let first = match flow {
        Flow::Tcp { .. } => ms(5, 80, rng),
        _ => ms(20, 1500, rng),
    };
    (s, flow, first)
}

/// Advance `s` by one event of its flow, as pf's state tracking would on the next packet.
pub fn step(rng: &mut Rng, flow: &mut Flow, s: &mut StateRepr) -> Step {
    let bytes = rng.range(40, 9000);
    s.packets[0] = s.packets[0].wrapping_add(1);
    s.bytes[0] = s.bytes[0].wrapping_add(bytes);
    match flow {
        Flow::Tcp { phase, data } => match *phase {
            TcpPhase::SynSent => {
                let isn = rng.next_u32();
                let win = rng.range(8192, 65535) as u16;
                s.dst.seqlo = isn;
                s.dst.seqhi = isn.wrapping_add(u32::from(s.src.max_win));
                s.dst.max_win = win;
                s.dst.mss = 1460;
                s.dst.wscale = 7 | PF_WSCALE_FLAG;
                s.dst.state = TCPS_SYN_SENT;
                s.src.seqhi = s.src.seqlo.wrapping_add(u32::from(win));
                set_timeout(s, PFTM_TCP_OPENING);
                *phase = TcpPhase::SynAck;
                Step::Changed(ms(5, 80, rng))
            }
            TcpPhase::SynAck => {
                s.src.state = TCPS_ESTABLISHED;
                s.dst.state = TCPS_ESTABLISHED;
                s.src.seqlo = s.src.seqlo.wrapping_add(1);
                s.dst.seqlo = s.dst.seqlo.wrapping_add(1);
                set_timeout(s, PFTM_TCP_ESTABLISHED);
                *phase = TcpPhase::Established;
                Step::Changed(ms(100, 3000, rng))
            }
            TcpPhase::Established if *data > 0 => {
                *data -= 1;
                advance_seq(&mut s.src, &s.dst, bytes as u32);
                let back = rng.range(0, 20000) as u32;
                let src = s.src;
                advance_seq(&mut s.dst, &src, back);
                s.packets[1] = s.packets[1].wrapping_add(1);
                s.bytes[1] = s.bytes[1].wrapping_add(u64::from(back));
                set_timeout(s, PFTM_TCP_ESTABLISHED);
                Step::Changed(ms(100, 3000, rng))
            }
            TcpPhase::Established => {
                s.src.state = TCPS_CLOSING;
                s.src.seqlo = s.src.seqlo.wrapping_add(1);
                set_timeout(s, PFTM_TCP_CLOSING);
                *phase = TcpPhase::Closing;
                Step::Changed(ms(5, 200, rng))
            }
            TcpPhase::Closing => {
                s.src.state = TCPS_FIN_WAIT_2;
                s.dst.state = TCPS_FIN_WAIT_2;
                s.dst.seqlo = s.dst.seqlo.wrapping_add(1);
                set_timeout(s, PFTM_TCP_FIN_WAIT);
                *phase = TcpPhase::FinWait;
                Step::Changed(ms(5, 200, rng))
            }
            TcpPhase::FinWait => {
                s.src.state = TCPS_TIME_WAIT;
                s.dst.state = TCPS_TIME_WAIT;
                set_timeout(s, PFTM_TCP_CLOSED);
                *phase = TcpPhase::TimeWait;
                // The real tcp.closed timeout is 90 s; shortened so the table turns over.
                Step::Changed(ms(500, 2000, rng))
            }
            TcpPhase::TimeWait => Step::Remove,
        },
        Flow::UdpSingle { updates } => {
            if *updates == 0 {
                return Step::Remove;
            }
            *updates -= 1;
            set_timeout(s, PFTM_UDP_SINGLE);
            Step::Changed(ms(200, 3000, rng))
        }
        Flow::UdpMultiple { replied, updates } => {
            if !*replied {
                *replied = true;
                s.src.state = PFUDPS_MULTIPLE;
                s.dst.state = PFUDPS_MULTIPLE;
                s.packets[1] = s.packets[1].wrapping_add(1);
                set_timeout(s, PFTM_UDP_MULTIPLE);
                return Step::Changed(ms(100, 3000, rng));
            }
            if *updates == 0 {
                return Step::Remove;
            }
            *updates -= 1;
            set_timeout(s, PFTM_UDP_MULTIPLE);
            Step::Changed(ms(200, 3000, rng))
        }
        Flow::Icmp { replied } => {
            if *replied {
                return Step::Remove;
            }
            *replied = true;
            s.packets[1] = s.packets[1].wrapping_add(1);
            set_timeout(s, PFTM_ICMP_ERROR_REPLY);
            Step::Changed(ms(200, 2000, rng))
        }
    }
}

/// `me` sent `bytes` more and acknowledged everything `peer` sent; the window edge moves on.
fn advance_seq(me: &mut PeerRepr, peer: &PeerRepr, bytes: u32) {
    me.seqlo = me.seqlo.wrapping_add(bytes);
    let edge = peer.seqlo.wrapping_add(u32::from(peer.max_win) << 7);
    // seqhi never moves backwards either.
    if (edge.wrapping_sub(me.seqhi) as i32) > 0 {
        me.seqhi = edge;
    }
    if (me.seqlo.wrapping_sub(me.seqhi) as i32) > 0 {
        me.seqhi = me.seqlo;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_cycles_are_monotonic_and_end() {
        let mut rng = Rng::new(1);
        for n in 0..500u64 {
            let (mut s, mut flow, _) =
                create(&mut rng, Dialect::OpenbsdV6, StateId::new(n + 1, 1), "em0");
            assert!(s.timeout < 20);
            let mut steps = 0;
            loop {
                let before = s;
                match step(&mut rng, &mut flow, &mut s) {
                    Step::Remove => break,
                    Step::Changed(d) => assert!(d <= Duration::from_secs(3)),
                }
                assert!(s.src.state >= before.src.state && s.dst.state >= before.dst.state);
                assert!(s.src.seqlo.wrapping_sub(before.src.seqlo) as i32 >= 0);
                assert!(
                    s.dst.seqlo.wrapping_sub(before.dst.seqlo) as i32 >= 0
                        || before.dst.state == TCPS_CLOSED
                );
                steps += 1;
                assert!(steps < 50);
            }
        }
    }
}

//! Shedding in the kernel: a classic BPF filter on the capture socket that drops a chosen
//! share of the firewall's `UPD_C`-only packets before they are queued to us.
//!
//! Above its capacity the gateway must shed. Doing it after `recvmmsg` costs a copy of every
//! shed packet into user space (the largest item of an overloaded gateway's profile); the
//! filter decides at enqueue from a few header bytes, so a shed packet costs a handful of
//! BPF instructions in the receive path and is never copied. It drops only packets of the
//! shape [`UpdCRun`] (one run of compressed updates and nothing else: pf sends a newer
//! update of the same states a few packets later), each with probability `share`, so
//! shedding is spread evenly over the states instead of losing whole runs of packets.
//! Inserts, deletes, full updates, requests and bulk answers always pass. The share is set
//! by [`super::shed::ShedControl`] from the queueing delay the gateway observes.
//!
//! The same filter drops pfsync from any source that is not a configured firewall before
//! anything else: a rogue host's flood is never queued next to the firewall's packets, so
//! it can neither fill the capture socket's buffer nor add to the queueing delay that
//! steers shedding. [`watch_program`] is its complement, for a second socket that counts
//! what this one drops (see [`super::raw::ForeignWatch`]).

use std::net::Ipv4Addr;

use libc::SKF_AD_RANDOM;
use libc::{sock_filter, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGE, BPF_JMP};
use libc::{BPF_ADD, BPF_MISC, BPF_MUL, BPF_TXA, SKF_AD_IFINDEX, SKF_AD_OFF, SKF_AD_PKTTYPE};
use libc::{BPF_K, BPF_LD, BPF_LDX, BPF_LEN, BPF_MEM, BPF_MSH, BPF_RET, BPF_ST, BPF_W, BPF_X};
use libc::{PACKET_HOST, PACKET_MULTICAST};

use crate::wire::{Dialect, UpdCRun, IPPROTO_PFSYNC, PFSYNC_GROUP};

/// One instruction before jump offsets are known: `Accept` jumps go to the final accept.
enum Op {
    Stmt(u16, u32),
    /// Conditional jump: fall through when true, to the accept when false.
    OrAccept(u16, u32),
}

/// Most firewall addresses a filter tests (one instruction each; jump offsets are a byte).
pub const MAX_FIREWALLS: usize = 64;

/// Bytes a watch socket keeps of a packet: the longest IPv4 header, which holds the source.
pub const WATCH_SNAP: u32 = 60;

fn code(a: u32, b: u32, c: u32) -> u16 {
    (a | b | c) as u16
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Branch on the IPv4 source: `listed` runs for a source in `firewalls`, `unlisted` (one
/// instruction, a return) for any other. At most [`MAX_FIREWALLS`] addresses.
fn by_source(
    firewalls: &[Ipv4Addr],
    unlisted: sock_filter,
    listed: Vec<sock_filter>,
) -> Vec<sock_filter> {
    assert!(
        firewalls.len() <= MAX_FIREWALLS,
        "config caps local.firewalls"
    );
    let n = firewalls.len();
    // 0: A = source; 1..=n: one test each, a match jumps over `unlisted` (at n + 1).
    let mut prog = vec![stmt(code(BPF_LD, BPF_W, BPF_ABS), 12)];
    prog.extend(firewalls.iter().enumerate().map(|(i, a)| sock_filter {
        code: code(BPF_JMP, BPF_JEQ, BPF_K),
        jt: (n - i) as u8,
        jf: 0,
        k: u32::from(*a),
    }));
    prog.push(unlisted);
    prog.extend(listed);
    prog
}

/// The filter for `dialect`'s capture socket: pfsync from a source not in `firewalls` is
/// dropped (empty `firewalls`: no source test), and of the rest a `UPD_C` run is dropped
/// when the kernel's random u32 is below `threshold` (0: never; `u32::MAX`: all but one in
/// 2³²).
pub fn program(dialect: Dialect, firewalls: &[Ipv4Addr], threshold: u32) -> Vec<sock_filter> {
    let keep = stmt(code(BPF_RET, BPF_K, 0), u32::MAX);
    let shed = if threshold == 0 {
        vec![keep]
    } else {
        shed_program(dialect, threshold)
    };
    if firewalls.is_empty() {
        return shed;
    }
    by_source(firewalls, stmt(code(BPF_RET, BPF_K, 0), 0), shed)
}

/// The complement of [`program`]'s source test, for the watch socket: keeps the first
/// [`WATCH_SNAP`] bytes of pfsync from any source not in `firewalls`, drops the rest.
pub fn watch_program(firewalls: &[Ipv4Addr]) -> Vec<sock_filter> {
    let drop = stmt(code(BPF_RET, BPF_K, 0), 0);
    by_source(
        firewalls,
        stmt(code(BPF_RET, BPF_K, 0), WATCH_SNAP),
        vec![drop],
    )
}

/// Shedding alone: drops a `UPD_C` run of `dialect` when the random u32 is below `threshold`.
fn shed_program(dialect: Dialect, threshold: u32) -> Vec<sock_filter> {
    let run = UpdCRun::of(dialect);
    let mut ops = vec![
        // Short packets pass before any load could run past their end (which would drop):
        // the length must reach the IPv4 header length (X) plus the fields tested.
        Op::Stmt(code(BPF_LDX, BPF_B, BPF_MSH), 0),
        Op::Stmt(code(BPF_MISC, BPF_TXA, 0), 0),
        Op::Stmt(code(BPF_ALU, BPF_ADD, BPF_K), run.min_len() as u32),
        Op::Stmt(code(BPF_ST, 0, 0), 1),
        Op::Stmt(code(BPF_LD, BPF_W, BPF_LEN), 0),
        Op::Stmt(code(BPF_LDX, BPF_W, BPF_MEM), 1),
        Op::OrAccept(code(BPF_JMP, BPF_JGE, BPF_X), 0),
        // From here on X is the offset of the pfsync header.
        Op::Stmt(code(BPF_LDX, BPF_B, BPF_MSH), 0),
        Op::Stmt(code(BPF_LD, BPF_B, BPF_IND), 0),
        Op::OrAccept(code(BPF_JMP, BPF_JEQ, BPF_K), run.version.into()),
        Op::Stmt(code(BPF_LD, BPF_B, BPF_IND), run.action_at as u32),
        Op::OrAccept(code(BPF_JMP, BPF_JEQ, BPF_K), run.action.into()),
    ];
    if let Some(f) = run.framed {
        if let Some(w) = f.len_words {
            ops.push(Op::Stmt(
                code(BPF_LD, BPF_B, BPF_IND),
                run.action_at as u32 + 1,
            ));
            ops.push(Op::OrAccept(code(BPF_JMP, BPF_JEQ, BPF_K), w.into()));
        }
        // header.len must be exactly the run: nothing else follows it.
        ops.extend([
            Op::Stmt(code(BPF_LD, BPF_H, BPF_IND), f.count_at as u32),
            Op::Stmt(code(BPF_ALU, BPF_MUL, BPF_K), run.msg_len as u32),
            Op::Stmt(code(BPF_ALU, BPF_ADD, BPF_K), f.fixed as u32),
            Op::Stmt(code(BPF_ST, 0, 0), 0),
            Op::Stmt(code(BPF_LD, BPF_H, BPF_IND), f.len_at as u32),
            Op::Stmt(code(BPF_LDX, BPF_W, BPF_MEM), 0),
            Op::OrAccept(code(BPF_JMP, BPF_JEQ, BPF_X), 0),
        ]);
    }
    // A random u32 at or above the threshold keeps the packet.
    ops.push(Op::Stmt(
        code(BPF_LD, BPF_W, BPF_ABS),
        (SKF_AD_OFF + SKF_AD_RANDOM) as u32,
    ));
    ops.push(Op::OrAccept(code(BPF_JMP, BPF_JGE, BPF_K), threshold));
    let n = ops.len();
    let mut prog: Vec<sock_filter> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::Stmt(code, k) => sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            // The final jump is inverted (true = keep): accept is the instruction after the
            // drop, at n + 1.
            Op::OrAccept(code, k) if i == n - 1 => sock_filter {
                code,
                jt: 1,
                jf: 0,
                k,
            },
            Op::OrAccept(code, k) => sock_filter {
                code,
                jt: 0,
                jf: (n - i) as u8,
                k,
            },
        })
        .collect();
    let ret = code(BPF_RET, BPF_K, 0);
    prog.push(sock_filter {
        code: ret,
        jt: 0,
        jf: 0,
        k: 0,
    }); // n: drop
    prog.push(sock_filter {
        code: ret,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }); // n + 1: keep whole
    prog
}

/// The kernel threshold for dropping a share (0.0..=1.0) of matching packets.
pub fn threshold(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * u32::MAX as f64) as u32
}

/// A filter that keeps every packet whole.
pub fn keep_all() -> [sock_filter; 1] {
    [stmt(code(BPF_RET, BPF_K, 0), u32::MAX)]
}

/// A filter that keeps nothing.
pub fn drop_all() -> [sock_filter; 1] {
    [stmt(code(BPF_RET, BPF_K, 0), 0)]
}

/// `program` (written for a raw socket, which sees only what the IP layer delivered to
/// it) for a link-layer socket bound to interface `ifindex`, which gets every IPv4 packet
/// arriving there: in front of it, the tests the IP layer and the raw socket's binding
/// made — the frame is the interface's own (not one that arrived on it for a VLAN or
/// macvlan device stacked on it: the kernel hands those to its packet sockets too),
/// protocol 240, and a frame to our MAC address or one to a multicast address carrying a
/// packet to 224.0.0.240. The rest of what the IP layer checks needs no speed and is done
/// on the read (`RawSyncSocket::admits`).
pub fn behind_link_checks(ifindex: u32, program: &[sock_filter]) -> Vec<sock_filter> {
    let jump = |k: u32, jt: u8, jf: u8| sock_filter {
        code: code(BPF_JMP, BPF_JEQ, BPF_K),
        jt,
        jf,
        k,
    };
    let ancillary = |what: i32| stmt(code(BPF_LD, BPF_W, BPF_ABS), (SKF_AD_OFF + what) as u32);
    let mut prog = vec![
        ancillary(SKF_AD_IFINDEX),             // 0: A = the device the frame is for
        jump(ifindex, 0, 7),                   // 1: a stacked device's: drop (9)
        stmt(code(BPF_LD, BPF_B, BPF_ABS), 9), // 2: A = protocol
        jump(u32::from(IPPROTO_PFSYNC), 0, 5), // 3: not 240: drop (9)
        ancillary(SKF_AD_PKTTYPE),             // 4: A = the frame's packet type
        jump(u32::from(PACKET_HOST), 4, 0),    // 5: to our MAC: the program (10)
        jump(u32::from(PACKET_MULTICAST), 0, 2), // 6: broadcast, another host's: drop (9)
        stmt(code(BPF_LD, BPF_W, BPF_ABS), 16), // 7: A = destination
        jump(u32::from(PFSYNC_GROUP), 1, 0),   // 8: the group: the program (10)
        stmt(code(BPF_RET, BPF_K, 0), 0),      // 9: drop
    ];
    prog.extend_from_slice(program); // 10
    prog
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::packet::tests::{emit, upd_c};
    use crate::wire::{Message, StateId};

    /// A classic BPF interpreter for the instructions [`program`] uses, with the kernel's
    /// semantics (a load past the end returns 0 = drop); `rand` stands for `SKF_AD_RANDOM`.
    pub(crate) fn exec(prog: &[sock_filter], pkt: &[u8], rand: u32) -> u32 {
        exec_frame(prog, pkt, rand, (IF, PACKET_HOST))
    }

    /// The sync interface's index in the link-path tests.
    const IF: u32 = 7;

    /// As [`exec`], for a frame for device `frame.0` (`SKF_AD_IFINDEX`) of link-layer packet
    /// type `frame.1` (`SKF_AD_PKTTYPE`).
    fn exec_frame(prog: &[sock_filter], pkt: &[u8], rand: u32, frame: (u32, u8)) -> u32 {
        let (ifindex, pkttype) = frame;
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let load = |off: u32, size: usize| -> Option<u32> {
            let off = off as usize;
            let b = pkt.get(off..off.checked_add(size)?)?;
            Some(b.iter().fold(0u32, |v, &c| v << 8 | u32::from(c)))
        };
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let c = u32::from(i.code);
            pc += 1;
            let size = |c: u32| match c & 0x18 {
                BPF_B => 1,
                BPF_H => 2,
                _ => 4,
            };
            match c & 0x07 {
                BPF_RET => return i.k,
                BPF_LD => {
                    a = match c & 0xe0 {
                        BPF_LEN => pkt.len() as u32,
                        BPF_ABS if i.k == (SKF_AD_OFF + SKF_AD_RANDOM) as u32 => rand,
                        BPF_ABS if i.k == (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32 => {
                            u32::from(pkttype)
                        }
                        BPF_ABS if i.k == (SKF_AD_OFF + SKF_AD_IFINDEX) as u32 => ifindex,
                        BPF_ABS => match load(i.k, size(c)) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_IND => match load(x.wrapping_add(i.k), size(c)) {
                            Some(v) => v,
                            None => return 0,
                        },
                        BPF_MEM => mem[i.k as usize],
                        m => panic!("ld mode {m:#x}"),
                    }
                }
                BPF_LDX => {
                    x = match c & 0xe0 {
                        BPF_MSH => match load(i.k, 1) {
                            Some(v) => 4 * (v & 0xf),
                            None => return 0,
                        },
                        BPF_MEM => mem[i.k as usize],
                        m => panic!("ldx mode {m:#x}"),
                    }
                }
                BPF_ST => mem[i.k as usize] = a,
                BPF_MISC if c & 0xf8 == BPF_TXA => a = x,
                BPF_ALU => {
                    let v = if c & BPF_X != 0 { x } else { i.k };
                    a = match c & 0xf0 {
                        BPF_ADD => a.wrapping_add(v),
                        BPF_MUL => a.wrapping_mul(v),
                        o => panic!("alu op {o:#x}"),
                    }
                }
                BPF_JMP => {
                    let v = if c & BPF_X != 0 { x } else { i.k };
                    let t = match c & 0xf0 {
                        BPF_JEQ => a == v,
                        BPF_JGE => a >= v,
                        o => panic!("jmp op {o:#x}"),
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                cl => panic!("class {cl:#x}"),
            }
        }
    }

    /// An IPv4 header of `ihl` words (options included) in front of `pfsync`.
    pub(crate) fn ip(ihl: u8, pfsync: &[u8]) -> Vec<u8> {
        ip_from(Ipv4Addr::UNSPECIFIED, ihl, pfsync)
    }

    fn ip_from(src: Ipv4Addr, ihl: u8, pfsync: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(ihl) * 4];
        p[0] = 0x40 | ihl;
        p[9] = 240;
        p[12..16].copy_from_slice(&src.octets());
        p.extend_from_slice(pfsync);
        p
    }

    #[test]
    fn link_checks_pass_only_what_the_ip_layer_gives_a_raw_socket() {
        let fw = Ipv4Addr::new(10, 1, 0, 1);
        let d = Dialect::OpenbsdV6;
        let pfsync = packet(d, &[upd_c(1), upd_c(2)]);
        let to = |dst: Ipv4Addr, proto: u8| {
            let mut p = ip_from(fw, 5, &pfsync);
            p[9] = proto;
            p[16..20].copy_from_slice(&dst.octets());
            p
        };
        let (group, us) = (PFSYNC_GROUP, Ipv4Addr::new(10, 1, 0, 9));
        let other_group = Ipv4Addr::new(224, 0, 0, 18);
        // The capture program (shedding at 1000) and the watch, each behind the checks.
        let capture = behind_link_checks(IF, &program(d, &[fw], 1000));
        let watch = behind_link_checks(IF, &watch_program(&[Ipv4Addr::new(10, 1, 0, 2)]));
        // A VLAN or macvlan device stacked on the sync interface (its own index).
        let stacked = IF + 1;
        let cases: [(Ipv4Addr, u8, (u32, u8), bool); 12] = [
            (group, 240, (IF, PACKET_MULTICAST), true),
            // Frames to our MAC: the read checks the destination address.
            (us, 240, (IF, PACKET_HOST), true),
            (group, 240, (IF, PACKET_HOST), true),
            (other_group, 240, (IF, PACKET_MULTICAST), false),
            (group, 240, (IF, libc::PACKET_BROADCAST), false),
            (us, 240, (IF, libc::PACKET_OTHERHOST), false),
            (group, 240, (IF, libc::PACKET_OTHERHOST), false),
            (group, 6, (IF, PACKET_MULTICAST), false),
            (us, 17, (IF, PACKET_HOST), false),
            (group, 240, (stacked, PACKET_MULTICAST), false),
            (group, 240, (stacked, PACKET_HOST), false),
            (us, 240, (stacked, PACKET_HOST), false),
        ];
        for (dst, proto, frame, pass) in cases {
            let p = to(dst, proto);
            let want = if pass { u32::MAX } else { 0 };
            let case = format!("{dst} proto {proto} device/pkttype {frame:?}");
            assert_eq!(exec_frame(&capture, &p, 1000, frame), want, "{case}");
            // The program behind the checks still sheds, and the watch still watches.
            assert_eq!(exec_frame(&capture, &p, 999, frame), 0, "{case} shed");
            let watched = if pass { WATCH_SNAP } else { 0 };
            assert_eq!(exec_frame(&watch, &p, 0, frame), watched, "{case} watched");
        }
        // Too short to hold a protocol: dropped, never read past its end.
        let short = exec_frame(&capture, &[0x45; 8], 1000, (IF, PACKET_HOST));
        assert_eq!(short, 0);
        assert_eq!(
            keep_all().len() + 10,
            behind_link_checks(IF, &keep_all()).len()
        );
        assert_eq!(exec(&drop_all(), &to(group, 240), 0), 0);
    }

    #[test]
    fn only_the_firewalls_pass_and_the_watch_sees_the_rest() {
        let fws = [Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2)];
        let d = Dialect::OpenbsdV6;
        let run = packet(d, &[upd_c(1), upd_c(2)]);
        let ins = packet(d, &[Message::DelC(StateId::new(9, 7))]);
        let (capture, watch) = (program(d, &fws, 1000), watch_program(&fws));
        for src in [
            fws[0],
            fws[1],
            Ipv4Addr::new(10, 1, 0, 3),
            Ipv4Addr::new(1, 0, 0, 10),
        ] {
            let listed = fws.contains(&src);
            let cases = [
                (&run, true, 5),
                (&ins, false, 5),
                (&run, true, 7),
                (&ins, false, 6),
            ];
            for (p, is_run, ihl) in cases {
                let pkt = ip_from(src, ihl, p);
                let want = if listed { u32::MAX } else { 0 };
                assert_eq!(exec(&capture, &pkt, 1000), want, "{src} kept");
                // Shedding applies to the firewalls' UPD_C runs only.
                let shed = if listed && !is_run { u32::MAX } else { 0 };
                assert_eq!(exec(&capture, &pkt, 999), shed, "{src} below threshold");
                let seen = if listed { 0 } else { WATCH_SNAP };
                assert_eq!(exec(&watch, &pkt, 0), seen, "{src} watched");
            }
        }
        // No share: the firewalls' packets pass without the shape tests.
        assert_eq!(program(d, &fws, 0).len(), fws.len() + 3);
        // The most addresses the config allows still jump within a byte.
        let many: Vec<Ipv4Addr> = (0..MAX_FIREWALLS as u32)
            .map(|i| Ipv4Addr::from(0x0a00_0001 + i))
            .collect();
        let last = *many.last().unwrap();
        assert_eq!(
            exec(&program(d, &many, 0), &ip_from(last, 5, &run), 0),
            u32::MAX
        );
        assert_eq!(exec(&watch_program(&many), &ip_from(last, 5, &run), 0), 0);
        assert_eq!(
            exec(
                &watch_program(&many),
                &ip_from(Ipv4Addr::new(9, 9, 9, 9), 5, &run),
                0
            ),
            WATCH_SNAP
        );
    }

    fn packet(d: Dialect, msgs: &[Message]) -> Vec<u8> {
        emit(d, msgs, [0; 16])
    }

    #[test]
    fn only_upd_c_runs_are_shed_and_only_below_the_threshold() {
        for d in Dialect::ALL {
            let run = packet(d, &[upd_c(1), upd_c(2), upd_c(3)]);
            // NetBSD carries one action per packet: its "mixed" packet is a DEL_C alone.
            let del_c = Message::DelC(StateId::new(9, 7));
            let mixed = match d {
                Dialect::NetbsdV3 => packet(d, &[del_c]),
                _ => packet(d, &[upd_c(1), del_c]),
            };
            assert!(UpdCRun::of(d).matches(&run), "{d:?}");
            assert!(!UpdCRun::of(d).matches(&mixed), "{d:?}");
            for ihl in [5, 6] {
                let (run, mixed) = (ip(ihl, &run), ip(ihl, &mixed));
                let prog = program(d, &[], 1000);
                assert_eq!(
                    exec(&prog, &run, 999),
                    0,
                    "{d:?}: below the threshold: shed"
                );
                assert_eq!(exec(&prog, &run, 1000), u32::MAX, "{d:?}: at it: kept");
                assert_eq!(exec(&prog, &mixed, 0), u32::MAX, "{d:?}: a DEL_C: kept");
                assert_eq!(
                    exec(&program(d, &[], 0), &run, 0),
                    u32::MAX,
                    "{d:?}: share 0"
                );
            }
        }
    }

    #[test]
    fn a_packet_shorter_than_the_tested_fields_passes() {
        for d in Dialect::ALL {
            let full = ip(5, &packet(d, &[upd_c(1)]));
            let prog = program(d, &[], u32::MAX);
            for n in 1..full.len() {
                // Any prefix: kept, unless it still has the whole shape (a truncated v5/v6
                // run no longer matches its header.len; NetBSD's is told by its action).
                let keep = exec(&prog, &full[..n], 0) == u32::MAX;
                let shape = n >= 20 && UpdCRun::of(d).matches(&full[20..n]);
                assert_eq!(keep, !shape, "{d:?} prefix {n}");
            }
        }
    }

    /// The real kernel runs the program: on loopback, with everything to be shed, only the
    /// packets that are not `UPD_C` runs arrive; with a zero share, all do.
    #[test]
    fn the_kernel_drops_matching_packets_and_keeps_the_rest() {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        use std::net::{Ipv4Addr, SocketAddrV4};
        let raw = || Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(240)));
        let (rx, tx) = match (raw(), raw()) {
            (Ok(rx), Ok(tx)) => (rx, tx),
            _ => {
                eprintln!("no raw sockets (not root): skipped");
                return;
            }
        };
        // An address of our own on lo, so no other test's proto-240 traffic reaches us.
        let me = Ipv4Addr::new(127, 0, 240, 77);
        let to = SockAddr::from(SocketAddrV4::new(me, 0));
        rx.bind(&to).unwrap();
        rx.set_nonblocking(true).unwrap();
        let d = Dialect::OpenbsdV6;
        let run = packet(d, &[upd_c(1), upd_c(2)]);
        let other = packet(d, &[upd_c(1), Message::DelC(StateId::new(9, 7))]);
        let arrived = |threshold: u32| {
            rx.attach_filter(&program(d, &[], threshold)).unwrap();
            for p in [&run, &other, &run, &other, &run] {
                tx.send_to(p, &to).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = Vec::new();
            let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
            while let Ok(n) = rx.recv(&mut buf) {
                // SAFETY: recv initialised the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                got.push(b[20..].to_vec());
            }
            got
        };
        assert_eq!(arrived(u32::MAX), vec![other.clone(), other.clone()]);
        assert_eq!(arrived(0).len(), 5);
        // The kernel's checker takes every dialect's program.
        for d in Dialect::ALL {
            let p = program(d, &[me, Ipv4Addr::new(10, 0, 0, 1)], threshold(0.5));
            rx.attach_filter(&p)
                .unwrap_or_else(|e| panic!("{d:?}: {e}"));
            rx.attach_filter(&behind_link_checks(1, &p))
                .unwrap_or_else(|e| panic!("{d:?} behind the link checks: {e}"));
        }
    }

    /// The real kernel runs the source test: on loopback, the capture socket gets only the
    /// firewall's packets, the watch socket only the other host's, cut to its header.
    #[test]
    fn the_kernel_keeps_the_firewall_and_watches_the_rest() {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        use std::net::SocketAddrV4;
        let raw = || Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(240)));
        let (Ok(capture), Ok(watch), Ok(fw), Ok(rogue)) = (raw(), raw(), raw(), raw()) else {
            eprintln!("no raw sockets (not root): skipped");
            return;
        };
        let addr = |last: u8| Ipv4Addr::new(127, 0, 240, last);
        let sa = |a: Ipv4Addr| SockAddr::from(SocketAddrV4::new(a, 0));
        let (me, fw_addr, rogue_addr) = (addr(80), addr(81), addr(82));
        for (s, a) in [
            (&capture, me),
            (&watch, me),
            (&fw, fw_addr),
            (&rogue, rogue_addr),
        ] {
            s.bind(&sa(a)).unwrap();
            s.set_nonblocking(true).unwrap();
        }
        let d = Dialect::OpenbsdV6;
        capture.attach_filter(&program(d, &[fw_addr], 0)).unwrap();
        watch.attach_filter(&watch_program(&[fw_addr])).unwrap();
        let pkt = packet(d, &[upd_c(1), upd_c(2), upd_c(3)]);
        for _ in 0..3 {
            fw.send_to(&pkt, &sa(me)).unwrap();
            rogue.send_to(&pkt, &sa(me)).unwrap();
        }
        // Three are expected on each, then 50 ms more for any extra (a loaded machine may
        // deliver late: a fixed sleep alone made this flaky).
        let read = |s: &Socket| {
            let mut got = Vec::new();
            let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
            let mut recv = |got: &mut Vec<(Ipv4Addr, usize)>| {
                let n = s.recv(&mut buf).ok()?;
                // SAFETY: recv initialised the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                got.push((Ipv4Addr::new(b[12], b[13], b[14], b[15]), n));
                Some(())
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while got.len() < 3 && std::time::Instant::now() < deadline {
                if recv(&mut got).is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            while recv(&mut got).is_some() {}
            got
        };
        let full = 20 + pkt.len();
        assert_eq!(read(&capture), vec![(fw_addr, full); 3]);
        assert_eq!(read(&watch), vec![(rogue_addr, WATCH_SNAP as usize); 3]);
    }

    proptest::proptest! {
        /// The kernel program and the Rust test agree on any bytes: a version and action
        /// byte of the dialect's, a count and a `header.len` that may or may not fit.
        #[test]
        fn the_program_is_the_rust_test(
            d in proptest::sample::select(Dialect::ALL.to_vec()),
            ihl in 5u8..=15,
            mut body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            fix in proptest::num::u8::ANY,
        ) {
            let run = UpdCRun::of(d);
            // Most random bytes fail at the version: make the later tests count too.
            if fix & 1 != 0 && !body.is_empty() { body[0] = run.version; }
            if fix & 2 != 0 && body.len() > run.action_at { body[run.action_at] = run.action; }
            if let (Some(f), true) = (run.framed, fix & 4 != 0 && body.len() >= 24) {
                if let Some(w) = f.len_words { body[run.action_at + 1] = w; }
                let count = usize::from(fix >> 3);
                body[f.count_at..f.count_at + 2].copy_from_slice(&(count as u16).to_be_bytes());
                let len = (f.fixed + count * run.msg_len) as u16;
                body[f.len_at..f.len_at + 2].copy_from_slice(&len.to_be_bytes());
            }
            let shed = exec(&program(d, &[], u32::MAX), &ip(ihl, &body), 0) == 0;
            proptest::prop_assert_eq!(shed, run.matches(&body));
        }

        /// What the filter may shed holds compressed updates and nothing else.
        #[test]
        fn a_packet_of_that_shape_is_only_upd_c(
            d in proptest::sample::select(Dialect::ALL.to_vec()),
            kinds in proptest::collection::vec(0u8..3, 1..6),
        ) {
            let msgs: Vec<Message> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| match k {
                    0 | 1 => upd_c(i as u64),
                    _ => Message::DelC(StateId::new(i as u64, 7)),
                })
                .collect();
            // NetBSD carries one action per packet: only the first message's kind.
            let msgs = match d {
                Dialect::NetbsdV3 => msgs.iter().take_while(|m| matches!(m, Message::UpdC(_)) == matches!(msgs[0], Message::UpdC(_))).cloned().collect(),
                _ => msgs,
            };
            let pkt = packet(d, &msgs);
            let all_upd_c = msgs.iter().all(|m| matches!(m, Message::UpdC(_)));
            proptest::prop_assert_eq!(UpdCRun::of(d).matches(&pkt), all_upd_c);
        }
    }

    #[test]
    fn the_threshold_maps_shares_onto_the_kernels_random_u32() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(-1.0), 0);
        assert_eq!(threshold(1.0), u32::MAX);
        assert_eq!(threshold(0.5), u32::MAX / 2);
    }
}

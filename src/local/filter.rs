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

use std::io;

use libc::{sock_filter, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGE, BPF_JMP};
use libc::{BPF_ADD, BPF_MISC, BPF_MUL, BPF_TXA, SKF_AD_OFF, SKF_AD_RANDOM};
use libc::{BPF_K, BPF_LD, BPF_LDX, BPF_LEN, BPF_MEM, BPF_MSH, BPF_RET, BPF_ST, BPF_W, BPF_X};
use socket2::Socket;

use crate::wire::{Dialect, UpdCRun};

/// One instruction before jump offsets are known: `Accept` jumps go to the final accept.
enum Op {
    Stmt(u16, u32),
    /// Conditional jump: fall through when true, to the accept when false.
    OrAccept(u16, u32),
}

/// The filter for `dialect`'s capture socket, dropping a matching packet when the kernel's
/// random u32 is below `threshold` (0: never; `u32::MAX`: all but one in 2³²).
pub fn program(dialect: Dialect, threshold: u32) -> Vec<sock_filter> {
    let run = UpdCRun::of(dialect);
    let code = |a: u32, b: u32, c: u32| (a | b | c) as u16;
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

/// Attach (or replace) the filter on the capture socket.
pub fn attach(sock: &Socket, dialect: Dialect, threshold: u32) -> io::Result<()> {
    sock.attach_filter(&program(dialect, threshold))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::packet::tests::{emit, upd_c};
    use crate::wire::{Message, StateId};

    /// A classic BPF interpreter for the instructions [`program`] uses, with the kernel's
    /// semantics (a load past the end returns 0 = drop); `rand` stands for `SKF_AD_RANDOM`.
    pub(crate) fn exec(prog: &[sock_filter], pkt: &[u8], rand: u32) -> u32 {
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
        let mut p = vec![0u8; usize::from(ihl) * 4];
        p[0] = 0x40 | ihl;
        p[9] = 240;
        p.extend_from_slice(pfsync);
        p
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
                let prog = program(d, 1000);
                assert_eq!(
                    exec(&prog, &run, 999),
                    0,
                    "{d:?}: below the threshold: shed"
                );
                assert_eq!(exec(&prog, &run, 1000), u32::MAX, "{d:?}: at it: kept");
                assert_eq!(exec(&prog, &mixed, 0), u32::MAX, "{d:?}: a DEL_C: kept");
                assert_eq!(exec(&program(d, 0), &run, 0), u32::MAX, "{d:?}: share 0");
            }
        }
    }

    #[test]
    fn a_packet_shorter_than_the_tested_fields_passes() {
        for d in Dialect::ALL {
            let full = ip(5, &packet(d, &[upd_c(1)]));
            let prog = program(d, u32::MAX);
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
        use socket2::{Domain, Protocol, SockAddr, Type};
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
            attach(&rx, d, threshold).unwrap();
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
            attach(&rx, d, threshold(0.5)).unwrap_or_else(|e| panic!("{d:?}: {e}"));
        }
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
            let shed = exec(&program(d, u32::MAX), &ip(ihl, &body), 0) == 0;
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

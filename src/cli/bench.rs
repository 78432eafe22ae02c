//! `pfsync-gw bench`: the data path's speed on this machine, each figure next to a baseline
//! measured in the same run (these machines are noisy: medians of several rounds, ratios).

use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::local::mmsg::{RecvBatch, SendBatch, BATCH};
use crate::sync::{Replica, ReplicaConfig};
use crate::tunnel::{self, Endpoint, Identity, Recv};
use crate::wire::{
    AddrFamily, Dialect, Message, Packet, PacketWriter, PeerRepr, StateId, StateRepr, UpdCRepr,
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Milliseconds per round.
    #[arg(long, default_value_t = 300)]
    pub round_ms: u64,
}

struct Row {
    name: &'static str,
    unit: &'static str,
    value: f64,
    baseline_name: &'static str,
    baseline: f64,
}

pub fn run(args: &BenchArgs) -> i32 {
    let round = Duration::from_millis(args.round_ms.max(10));
    let rounds = args.rounds.max(1);
    let mut rows = Vec::new();

    let pkt = upd_c_packet(Dialect::OpenbsdV6, &mut 1);
    let n_msgs = Packet::new_checked(&pkt[..], Dialect::OpenbsdV6)
        .map(|p| p.messages().count())
        .unwrap_or(0);
    rows.push(Row {
        name: "parse upd_c (openbsd-v6)",
        unit: "msg/s",
        value: median(rounds, || {
            rate(round, n_msgs, || {
                if let Ok(p) = Packet::new_checked(black_box(&pkt[..]), Dialect::OpenbsdV6) {
                    for m in p.messages() {
                        black_box(m);
                    }
                }
            })
        }),
        baseline_name: "read the same bytes (sum of u64 words)",
        baseline: median(rounds, || {
            rate(round, n_msgs, || {
                black_box(sum_words(black_box(&pkt)));
            })
        }),
    });

    let mut out = vec![0u8; 1500];
    let msgs: Vec<Message> = Packet::new_checked(&pkt[..], Dialect::OpenbsdV6)
        .map(|p| p.messages().collect())
        .unwrap_or_default();
    rows.push(Row {
        name: "emit upd_c (openbsd-v6)",
        unit: "msg/s",
        value: median(rounds, || {
            rate(round, msgs.len(), || {
                let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut out);
                for m in &msgs {
                    let _ = w.push(black_box(m));
                }
                black_box(w.finish());
            })
        }),
        baseline_name: "copy the same bytes",
        baseline: median(rounds, || {
            rate(round, msgs.len(), || {
                out[..pkt.len()].copy_from_slice(black_box(&pkt));
                black_box(&out);
            })
        }),
    });

    // Tunnel: seal + open a 1400-byte payload in memory.
    let (mut a, mut b, a_addr, b_addr) = tunnel_pair();
    let payload = vec![0x5au8; 1400];
    let mut wire_buf = vec![0u8; 1500];
    let mut plain = vec![0u8; 1500];
    rows.push(Row {
        name: "tunnel seal+open 1400 B",
        unit: "pkt/s",
        value: median(rounds, || {
            rate(round, 1, || {
                let now = Instant::now();
                if let tunnel::Send::Datagram(t) = a.send(0, &payload, now, &mut wire_buf) {
                    black_box(b.handle_datagram(a_addr, &wire_buf[..t.len], now, &mut plain));
                }
            })
        }),
        // The Noise library's own transport speed on the same payload: what the tunnel's
        // framing, counters and replay window add on top of it.
        baseline_name: "snow alone: stateless transport write+read",
        baseline: median(rounds, || {
            let Some((x, y)) = snow_pair() else {
                return f64::NAN;
            };
            let mut n = 0u64;
            rate(round, 1, || {
                if let Ok(len) = x.write_message(n, black_box(&payload), &mut wire_buf) {
                    black_box(y.read_message(n, &wire_buf[..len], &mut plain).ok());
                }
                n += 1;
            })
        }),
    });
    let _ = b_addr;

    // The whole gateway data path without sockets: capture → mirror → sync → seal → open →
    // mirror → inject, for packets of compressed updates, against parsing them only.
    let (mut ra, mut rb) = replica_pair(&mut a, &mut b, a_addr, b_addr);
    let pkts = churn_packets(Dialect::OpenbsdV6, 64);
    let per_round: usize = pkts
        .iter()
        .map(|p| {
            Packet::new_checked(&p[..], Dialect::OpenbsdV6)
                .map(|p| p.messages().count())
                .unwrap_or(0)
        })
        .sum();
    rows.push(Row {
        name: "relay upd_c through two gateways (no sockets)",
        unit: "msg/s",
        value: median(rounds, || {
            rate(round, per_round, || {
                relay_round(&pkts, &mut ra, &mut rb, &mut a, &mut b, a_addr)
            })
        }),
        baseline_name: "parse the same packets",
        baseline: median(rounds, || {
            rate(round, per_round, || {
                for p in &pkts {
                    if let Ok(p) = Packet::new_checked(black_box(&p[..]), Dialect::OpenbsdV6) {
                        for m in p.messages() {
                            black_box(m);
                        }
                    }
                }
            })
        }),
    });

    // Loopback UDP: the tunnel's datagrams vs plain datagrams, both batched.
    match (
        udp_rate(round, rounds, None),
        udp_rate(round, rounds, Some((&mut a, &mut b))),
    ) {
        (Ok(plain_rate), Ok(tun_rate)) => rows.push(Row {
            name: "tunnel over loopback UDP, 1400 B, batched",
            unit: "pkt/s",
            value: tun_rate,
            baseline_name: "plain loopback UDP, same batches",
            baseline: plain_rate,
        }),
        (Err(e), _) | (_, Err(e)) => eprintln!("loopback UDP benchmark skipped: {e}"),
    }

    println!(
        "pfsync-gw bench: median of {rounds} rounds of {} ms; ratio = measured / baseline",
        round.as_millis()
    );
    println!(
        "{:<44} {:>16} {:>16}  {:>7}  baseline",
        "measurement", "value", "baseline", "ratio"
    );
    for r in &rows {
        println!(
            "{:<44} {:>8.2} M{:<6} {:>8.2} M{:<6}  {:>7.3}  {}",
            r.name,
            r.value / 1e6,
            r.unit,
            r.baseline / 1e6,
            r.unit,
            r.value / r.baseline.max(1e-9),
            r.baseline_name
        );
    }
    0
}

fn rate(round: Duration, per_iter: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < round {
        for _ in 0..64 {
            f();
        }
        iters += 64;
    }
    (iters as f64 * per_iter as f64) / start.elapsed().as_secs_f64()
}

fn median(rounds: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..rounds).map(|_| f()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sum_words(b: &[u8]) -> u64 {
    b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// A full packet of compressed updates (as many as fit in 1480 bytes) for states 1, 2, …,
/// with sequence numbers advancing from `seq`.
pub fn upd_c_packet(dialect: Dialect, seq: &mut u32) -> Vec<u8> {
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(dialect, &mut buf);
    let mut id = 1u64;
    loop {
        *seq = seq.wrapping_add(1000);
        let peer = PeerRepr {
            seqlo: *seq,
            seqhi: seq.wrapping_add(65_535),
            max_win: 65_535,
            mss: 1460,
            state: 4,
            wscale: 7,
            ..Default::default()
        };
        let m = Message::UpdC(UpdCRepr {
            id: StateId::new(id, 0xdead_beef),
            src: peer,
            dst: peer,
            expire: 0,
            timeout: 2,
            flags: 0,
        });
        match w.push(&m) {
            Ok(true) => id += 1,
            _ => break,
        }
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// Two snow transport states (the tunnel's cipher suite) after an in-memory handshake.
fn snow_pair() -> Option<(snow::StatelessTransportState, snow::StatelessTransportState)> {
    let params: snow::params::NoiseParams = "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().ok()?;
    let mut i = snow::Builder::new(params.clone()).build_initiator().ok()?;
    let mut r = snow::Builder::new(params).build_responder().ok()?;
    let (mut m1, mut m2, mut p) = ([0u8; 128], [0u8; 128], [0u8; 128]);
    let n = i.write_message(&[], &mut m1).ok()?;
    r.read_message(&m1[..n], &mut p).ok()?;
    let n = r.write_message(&[], &mut m2).ok()?;
    i.read_message(&m2[..n], &mut p).ok()?;
    Some((
        i.into_stateless_transport_mode().ok()?,
        r.into_stateless_transport_mode().ok()?,
    ))
}

/// Two replicas joined through the two endpoints, with their sync session up.
fn replica_pair(
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: std::net::SocketAddr,
    b_addr: std::net::SocketAddr,
) -> (Replica, Replica) {
    let now = Instant::now();
    let mut ra = Replica::new(ReplicaConfig::new(1, Dialect::OpenbsdV6), now);
    let mut rb = Replica::new(ReplicaConfig::new(2, Dialect::OpenbsdV6), now);
    ra.add_peer(0, now);
    rb.add_peer(0, now);
    ra.on_peer_up(0, now);
    rb.on_peer_up(0, now);
    let mut plain = vec![0u8; 2048];
    let mut wire_buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    // The states the benchmark's compressed updates refer to.
    let mut buf = vec![0u8; 1480];
    for chunk in (1..=64u64).collect::<Vec<_>>().chunks(4) {
        let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut buf);
        for &id in chunk {
            let mut st = StateRepr {
                id: StateId::new(id, 0xdead_beef),
                ifname: crate::wire::name_field("em0"),
                af: AddrFamily::Inet,
                proto: 6,
                direction: 1,
                timeout: 2,
                expire: 86_400,
                ..Default::default()
            };
            st.key[0].addr[0][..4].copy_from_slice(&[10, 0, 0, 1]);
            st.key[0].addr[1][..4].copy_from_slice(&[10, 0, 0, 2]);
            st.key[0].port = [1024 + id as u16, 443];
            st.key[1] = st.key[0];
            let _ = w.push(&Message::Ins(st));
        }
        let n = w.finish();
        let _ = ra.on_local_pfsync(&buf[..n], now);
    }
    for _ in 0..16 {
        shuttle(
            &mut ra,
            a,
            &mut rb,
            b,
            a_addr,
            &mut plain,
            &mut wire_buf,
            &mut out,
            now,
        );
        shuttle(
            &mut rb,
            b,
            &mut ra,
            a,
            b_addr,
            &mut plain,
            &mut wire_buf,
            &mut out,
            now,
        );
        ra.handle_timeout(now);
        rb.handle_timeout(now);
    }
    (ra, rb)
}

/// Move everything `from` has for its peer through the tunnel into `to`.
#[allow(clippy::too_many_arguments)]
fn shuttle(
    from: &mut Replica,
    from_ep: &mut Endpoint,
    to: &mut Replica,
    to_ep: &mut Endpoint,
    from_addr: std::net::SocketAddr,
    plain: &mut [u8],
    wire_buf: &mut [u8],
    out: &mut [u8],
    now: Instant,
) {
    while let Some(n) = from.poll_peer_transmit(0, now, &mut plain[..1400]) {
        if let tunnel::Send::Datagram(t) = from_ep.send(0, &plain[..n], now, wire_buf) {
            if let Recv::Data { len, .. } =
                to_ep.handle_datagram(from_addr, &wire_buf[..t.len], now, out)
            {
                let _ = to.on_peer_datagram(0, &out[..len], now);
            }
        }
    }
}

fn relay_round(
    pkts: &[Vec<u8>],
    ra: &mut Replica,
    rb: &mut Replica,
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: std::net::SocketAddr,
) {
    let now = Instant::now();
    let mut plain = [0u8; 2048];
    let mut wire_buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    for p in pkts {
        let _ = ra.on_local_pfsync(p, now);
    }
    shuttle(
        ra,
        a,
        rb,
        b,
        a_addr,
        &mut plain,
        &mut wire_buf,
        &mut out,
        now,
    );
    while let Some(n) = rb.poll_local_inject(&mut out) {
        black_box(n);
    }
    // Acks flow back so the resend queue stays bounded.
    let b_addr: std::net::SocketAddr = "127.0.0.1:2".parse().expect("literal");
    shuttle(
        rb,
        b,
        ra,
        a,
        b_addr,
        &mut plain,
        &mut wire_buf,
        &mut out,
        now,
    );
}

/// Packets of compressed updates for states that exist on both sides (inserted first),
/// each moving the connections forward.
fn churn_packets(dialect: Dialect, n: usize) -> Vec<Vec<u8>> {
    let mut seq = 1u32;
    (0..n).map(|_| upd_c_packet(dialect, &mut seq)).collect()
}

fn tunnel_pair() -> (
    Endpoint,
    Endpoint,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let now = Instant::now();
    let ka = crate::config::Key::generate();
    let kb = crate::config::Key::generate();
    let a_addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("literal");
    let b_addr: std::net::SocketAddr = "127.0.0.1:2".parse().expect("literal");
    let mut a = Endpoint::new(
        Identity::from_private(*ka.as_bytes()),
        rand_core::OsRng,
        now,
    );
    let mut b = Endpoint::new(
        Identity::from_private(*kb.as_bytes()),
        rand_core::OsRng,
        now,
    );
    a.add_peer(0, *kb.public().as_bytes(), None, Some(b_addr), None);
    b.add_peer(0, *ka.public().as_bytes(), None, Some(a_addr), None);
    // Handshake in memory until both sides can send.
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let _ = a.send(0, b"hello", now, &mut buf);
    for _ in 0..8 {
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(a_addr, &buf[..t.len], now, &mut out);
        }
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(b_addr, &buf[..t.len], now, &mut out);
        }
    }
    (a, b, a_addr, b_addr)
}

/// Datagrams per second from one loopback socket to another, in `BATCH`-sized bursts;
/// with `tun`, each payload is sealed before sending and opened after receiving.
fn udp_rate(
    round: Duration,
    rounds: usize,
    mut tun: Option<(&mut Endpoint, &mut Endpoint)>,
) -> std::io::Result<f64> {
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_nonblocking(true)?;
    let to = rx.local_addr()?;
    let mut sb = SendBatch::new(1500);
    let mut rb = RecvBatch::new(1500);
    let payload = vec![0xa5u8; 1400 - tunnel::TRANSPORT_OVERHEAD];
    let mut plain = vec![0u8; 1500];
    let from: std::net::SocketAddr = "127.0.0.1:1".parse().expect("literal");
    let mut results = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut received = 0u64;
        while start.elapsed() < round {
            let now = Instant::now();
            for _ in 0..BATCH {
                match tun.as_mut() {
                    Some((a, _)) => {
                        if let tunnel::Send::Datagram(t) = a.send(0, &payload, now, sb.slot()) {
                            sb.commit(t.len, to);
                        }
                    }
                    None => {
                        sb.slot()[..1400].copy_from_slice(&[0xa5; 1400]);
                        sb.commit(1400, to);
                    }
                }
            }
            sb.flush(tx.as_raw_fd());
            let mut spins = 0;
            let mut got = 0;
            while got < BATCH && spins < 1000 {
                match rb.recv(rx.as_raw_fd()) {
                    Ok(_) => {
                        for (_, d) in rb.iter() {
                            got += 1;
                            if let (Some((_, b)), Some(d)) = (tun.as_mut(), d) {
                                if !matches!(
                                    b.handle_datagram(from, d, now, &mut plain),
                                    Recv::Data { .. }
                                ) {
                                    got -= 1;
                                }
                            }
                        }
                    }
                    Err(_) => spins += 1,
                }
            }
            received += got as u64;
        }
        results.push(received as f64 / start.elapsed().as_secs_f64());
    }
    results.sort_by(|a, b| a.total_cmp(b));
    Ok(results[results.len() / 2])
}

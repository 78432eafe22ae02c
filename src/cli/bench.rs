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
    /// Also time a bulk sync of this many states into an empty peer (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub bulk: u64,
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
    let mut mem_rows: Vec<String> = Vec::new();
    // First, while nothing has been freed yet that the table could reuse unseen by RSS.
    let (per_state, fill_rate, cold) = table_footprint(1_000_000);
    mem_rows.push(format!(
        "mirror table: {per_state:.0} B per state (RSS growth over 1,000,000 states; of which \
         cold records {cold:.0} B); inserted {:.2} M states/s",
        fill_rate / 1e6
    ));

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

    // Tunnel: seal + open a 1400-byte payload in memory. The Noise library's own transport
    // speed on the same payload is the baseline: what the tunnel's framing, counters,
    // replay window and peer bookkeeping add on top of it. Both loops read the clock once
    // per packet (the tunnel row must pass `now`); their rounds alternate.
    let (mut a, mut b, a_addr, b_addr) = tunnel_pair();
    let payload = vec![0x5au8; 1400];
    let mut wire_buf = vec![0u8; 1500];
    let mut plain = vec![0u8; 1500];
    let (value, baseline) = median_alternating(rounds, |base| {
        if !base {
            return rate(round, 1, || {
                let now = Instant::now();
                if let tunnel::Send::Datagram(t) = a.send(0, &payload, now, &mut wire_buf) {
                    black_box(b.handle_datagram(a_addr, &wire_buf[..t.len], now, &mut plain));
                }
            });
        }
        let Some((x, y)) = snow_pair() else {
            return f64::NAN;
        };
        let mut n = 0u64;
        rate(round, 1, || {
            black_box(Instant::now());
            if let Ok(len) = x.write_message(n, black_box(&payload), &mut wire_buf) {
                black_box(y.read_message(n, &wire_buf[..len], &mut plain).ok());
            }
            n += 1;
        })
    });
    rows.push(Row {
        name: "tunnel seal+open 1400 B",
        unit: "pkt/s",
        value,
        baseline_name: "snow alone: stateless transport write+read",
        baseline,
    });
    let _ = b_addr;

    // The whole gateway data path without sockets: capture → mirror → sync → seal → open →
    // mirror → inject, for packets of compressed updates, against parsing them only. Every
    // packet's sequence numbers advance each time it is relayed, as a live connection's do
    // (replaying the same bytes would measure the stale-update path instead).
    let (mut ra, mut rb) = replica_pair(&mut a, &mut b, a_addr, b_addr, 17, false);
    let mut churn = Churn::new(Dialect::OpenbsdV6, 1, 17, 64);
    rows.push(relay_row(
        "relay upd_c through two gateways (no sockets)",
        round,
        rounds,
        &mut churn,
        (&mut ra, &mut rb),
        (&mut a, &mut b),
        a_addr,
    ));
    // The same over a table larger than the caches (the netns benchmark's pool is 10,200).
    let big = 100_000u64;
    let (mut ra, mut rb) = replica_pair(&mut a, &mut b, a_addr, b_addr, 0, false);
    fill_tables(&mut [&mut ra, &mut rb], big);
    let mut churn = Churn::new(Dialect::OpenbsdV6, 1, big, (big as usize).div_ceil(17));
    rows.push(relay_row(
        "relay upd_c, 100k states, round-robin",
        round,
        rounds,
        &mut churn,
        (&mut ra, &mut rb),
        (&mut a, &mut b),
        a_addr,
    ));
    drop((ra, rb, churn));

    if args.bulk > 0 {
        mem_rows.push(bulk_sync(&mut a, &mut b, a_addr, b_addr, args.bulk, false));
        mem_rows.push(bulk_sync(&mut a, &mut b, a_addr, b_addr, args.bulk, true));
    }

    // Loopback UDP: the tunnel's datagrams vs plain datagrams, both batched, rounds
    // alternating.
    let mut udp = Ok(());
    let (tun_rate, plain_rate) = median_alternating(rounds, |base| {
        let r = if base {
            udp_rate(round, None)
        } else {
            udp_rate(round, Some((&mut a, &mut b)))
        };
        r.unwrap_or_else(|e| {
            udp = Err(e);
            f64::NAN
        })
    });
    match udp {
        Ok(()) => rows.push(Row {
            name: "tunnel over loopback UDP, 1400 B, batched",
            unit: "pkt/s",
            value: tun_rate,
            baseline_name: "plain loopback UDP, same batches",
            baseline: plain_rate,
        }),
        Err(e) => eprintln!("loopback UDP benchmark skipped: {e}"),
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
    for m in &mem_rows {
        println!("{m}");
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

/// Medians of `f(false)` (the measurement) and `f(true)` (its baseline), measured in
/// alternating rounds so that a change of load on a shared machine hits both alike.
fn median_alternating(rounds: usize, mut f: impl FnMut(bool) -> f64) -> (f64, f64) {
    let (mut v, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        v.push(f(false));
        b.push(f(true));
    }
    let mid = |mut x: Vec<f64>| {
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    (mid(v), mid(b))
}

fn sum_words(b: &[u8]) -> u64 {
    b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// A full packet of compressed updates (as many as fit in 1480 bytes) for states 1, 2, …,
/// with sequence numbers advancing from `seq`.
pub fn upd_c_packet(dialect: Dialect, seq: &mut u32) -> Vec<u8> {
    upd_c_packet_from(dialect, seq, &mut 1, 1, u64::MAX - 1).0
}

/// A full packet of compressed updates for states `*id, *id + 1, …` (wrapping from
/// `first + states` back to `first`), sequence numbers advancing from `seq`; and its count.
fn upd_c_packet_from(
    dialect: Dialect,
    seq: &mut u32,
    id: &mut u64,
    first: u64,
    states: u64,
) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(dialect, &mut buf);
    let mut n = 0;
    loop {
        let s = seq.wrapping_add(1000);
        let peer = PeerRepr {
            seqlo: s,
            seqhi: s.wrapping_add(65_535),
            max_win: 65_535,
            mss: 1460,
            state: 4,
            wscale: 7,
            ..Default::default()
        };
        let m = Message::UpdC(UpdCRepr {
            id: StateId::new(*id, 0xdead_beef),
            src: peer,
            dst: peer,
            expire: 0,
            timeout: 2,
            flags: 0,
        });
        match w.push(&m) {
            Ok(true) => {
                *seq = s;
                n += 1;
                *id += 1;
                if *id >= first + states {
                    *id = first;
                }
            }
            _ => break,
        }
    }
    let len = w.finish();
    buf.truncate(len);
    (buf, n)
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
    states: u64,
    budget: bool,
) -> (Replica, Replica) {
    let now = Instant::now();
    // The sync path's own speed: no state caps, and no answer budget unless `budget` (then
    // the default one: requester pays, no free repair rate; docs/SYNC.md).
    let unlimited = |id| {
        let rate = if budget { 0 } else { 1 << 40 };
        ReplicaConfig::new(id, Dialect::OpenbsdV6).with_limits(usize::MAX, usize::MAX, rate)
    };
    let mut ra = Replica::new(unlimited(1), now);
    let mut rb = Replica::new(unlimited(2), now);
    ra.add_peer(0, now);
    rb.add_peer(0, now);
    ra.on_peer_up(0, now);
    rb.on_peer_up(0, now);
    let mut wire_buf = vec![0u8; 2048];
    // The states the benchmark's compressed updates refer to.
    let mut buf = vec![0u8; 1480];
    for chunk in (1..=states).collect::<Vec<_>>().chunks(4) {
        let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut buf);
        for &id in chunk {
            let _ = w.push(&Message::Ins(bench_state(id)));
        }
        let n = w.finish();
        let _ = ra.on_local_pfsync(&buf[..n], now);
    }
    for _ in 0..16 {
        shuttle_both(
            (&mut ra, a, a_addr),
            (&mut rb, b, b_addr),
            &mut wire_buf,
            now,
        );
        ra.handle_timeout(now);
        rb.handle_timeout(now);
    }
    (ra, rb)
}

/// Move everything `from` has for its peer through the tunnel into `to`.
/// One round both ways over the in-memory tunnel: a's datagrams to b, then b's to a.
fn shuttle_both(
    (ra, a, a_addr): (&mut Replica, &mut Endpoint, std::net::SocketAddr),
    (rb, b, b_addr): (&mut Replica, &mut Endpoint, std::net::SocketAddr),
    wire_buf: &mut [u8],
    now: Instant,
) {
    shuttle(ra, a, rb, b, a_addr, wire_buf, now);
    shuttle(rb, b, ra, a, b_addr, wire_buf, now);
}

#[allow(clippy::too_many_arguments)]
fn shuttle(
    from: &mut Replica,
    from_ep: &mut Endpoint,
    to: &mut Replica,
    to_ep: &mut Endpoint,
    from_addr: std::net::SocketAddr,
    wire_buf: &mut [u8],
    now: Instant,
) {
    // As the node does: the datagram is written where the transport header ends, sealed
    // there, and opened where it was received.
    let body = tunnel::TRANSPORT_HEADER_LEN..tunnel::TRANSPORT_HEADER_LEN + 1400;
    while let Some(n) = from.poll_peer_transmit(0, now, &mut wire_buf[body.clone()]) {
        if let tunnel::Send::Datagram(t) = from_ep.send_in_place(0, n, now, wire_buf) {
            if let Recv::Data { len, .. } =
                to_ep.handle_datagram_in_place(from_addr, &mut wire_buf[..t.len], now)
            {
                let _ = to.on_peer_datagram(0, &wire_buf[body.start..][..len], now);
            }
        }
    }
}

#[inline(never)]
fn relay_round<'p>(
    pkts: impl Iterator<Item = &'p Vec<u8>>,
    ra: &mut Replica,
    rb: &mut Replica,
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: std::net::SocketAddr,
) {
    let now = Instant::now();
    let mut wire_buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    for p in pkts {
        let _ = ra.on_local_pfsync(p, now);
    }
    shuttle(ra, a, rb, b, a_addr, &mut wire_buf, now);
    while let Some(n) = rb.poll_local_inject(&mut out) {
        black_box(n);
    }
    // Acks flow back so the resend queue stays bounded.
    let b_addr: std::net::SocketAddr = "127.0.0.1:2".parse().expect("literal");
    shuttle(rb, b, ra, a, b_addr, &mut wire_buf, now);
}

/// A TCP state as the benchmark's firewall would insert it.
fn bench_state(id: u64) -> StateRepr {
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
    st.key[0].addr[0][..4].copy_from_slice(&[10, 0, (id >> 16) as u8, 1]);
    st.key[0].addr[1][..4].copy_from_slice(&[10, 1, 0, 2]);
    st.key[0].port = [id as u16, 443];
    st.key[1] = st.key[0];
    st
}

/// Insert states `1..=n` into every replica's mirror directly (same version everywhere, so
/// the mirrors agree), as a finished bulk sync would leave them.
fn fill_tables(rs: &mut [&mut Replica], n: u64) {
    let now = Instant::now();
    for id in 1..=n {
        let m = Message::Ins(bench_state(id));
        for r in rs.iter_mut() {
            r.table_mut()
                .apply_versioned(&m, now, crate::table::Version::new(1, 1));
        }
    }
}

/// Packets of compressed updates covering states `first..first + states` round-robin
/// (`pkts` packets), whose sequence numbers are moved forward each time a packet is used.
struct Churn {
    pkts: Vec<Vec<u8>>,
    /// Offsets of every big-endian `seqlo`/`seqhi` field, per packet.
    seq_at: Vec<Vec<usize>>,
    next: usize,
    /// Added to every sequence number of a packet after use: more than the span of one
    /// cycle, so the next use of any state is newer than all earlier ones.
    step: u32,
    msgs: usize,
}

impl Churn {
    fn new(dialect: Dialect, first: u64, states: u64, pkts: usize) -> Churn {
        let build = |seq0: u32| {
            let mut seq = seq0;
            let mut id = first;
            let mut out = Vec::with_capacity(pkts);
            let mut msgs = 0;
            for _ in 0..pkts {
                let (p, n) = upd_c_packet_from(dialect, &mut seq, &mut id, first, states);
                msgs += n;
                out.push(p);
            }
            (out, msgs)
        };
        let (a, msgs) = build(1);
        // Shifting every sequence number by 2^24 changes exactly the top byte of each field.
        let (b, _) = build(1 + (1 << 24));
        let seq_at = a
            .iter()
            .zip(&b)
            .map(|(x, y)| {
                (0..x.len().min(y.len()))
                    .filter(|&i| x[i] != y[i])
                    .collect()
            })
            .collect();
        Churn {
            pkts: a,
            seq_at,
            next: 0,
            step: (msgs as u32 + 1).wrapping_mul(1000),
            msgs,
        }
    }

    /// Messages in the next `k` packets.
    fn batch_msgs(&self, k: usize) -> usize {
        k * self.msgs / self.pkts.len()
    }

    /// The next `k` packets (cyclically); they advance after the caller has used them.
    fn take(&mut self, k: usize) -> impl Iterator<Item = &Vec<u8>> {
        let n = self.pkts.len();
        let start = self.next;
        for j in 0..k {
            let i = (start + j) % n;
            let p = &mut self.pkts[i];
            for &o in &self.seq_at[i] {
                let v = u32::from_be_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
                p[o..o + 4].copy_from_slice(&v.wrapping_add(self.step).to_be_bytes());
            }
        }
        self.next = (start + k) % n;
        let pkts = &self.pkts;
        (0..k).map(move |j| &pkts[(start + j) % n])
    }
}

/// Median relay rate over `churn` and the parse-only baseline of the same packets.
#[allow(clippy::too_many_arguments)]
fn relay_row(
    name: &'static str,
    round: Duration,
    rounds: usize,
    churn: &mut Churn,
    (ra, rb): (&mut Replica, &mut Replica),
    (a, b): (&mut Endpoint, &mut Endpoint),
    a_addr: std::net::SocketAddr,
) -> Row {
    const K: usize = 16;
    let per_call = churn.batch_msgs(K);
    // Not alternated with the baseline: a pause between relay rounds would let the
    // replicas' resend timers fire and count resent (stale) updates in the next round.
    let value = median(rounds, || {
        rate(round, per_call, || {
            relay_round(churn.take(K), ra, rb, a, b, a_addr)
        })
    });
    let baseline = median(rounds, || {
        rate(round, per_call, || {
            for p in churn.take(K) {
                if let Ok(p) = Packet::new_checked(black_box(&p[..]), Dialect::OpenbsdV6) {
                    for m in p.messages() {
                        black_box(m);
                    }
                }
            }
        })
    });
    // The figure is only the relay path's if nothing was refused as stale on the way.
    let (sa, sb) = (ra.table().stats(), rb.table().stats());
    if sa.stale + sa.older + sb.stale + sb.older > 0 || sb.updates == 0 {
        eprintln!(
            "warning: {name}: stale/older updates (a {}/{}, b {}/{}), b applied {}",
            sa.stale, sa.older, sb.stale, sb.older, sb.updates
        );
    }
    Row {
        name,
        unit: "msg/s",
        value,
        baseline_name: "parse the same packets",
        baseline,
    }
}

/// Time until an empty peer holds all `n` states of the other replica (anti-entropy over
/// the in-memory tunnel, real clock: timers run as in the daemon).
fn bulk_sync(
    a: &mut Endpoint,
    b: &mut Endpoint,
    a_addr: std::net::SocketAddr,
    b_addr: std::net::SocketAddr,
    n: u64,
    budget: bool,
) -> String {
    let (mut ra, mut rb) = replica_pair(a, b, a_addr, b_addr, 0, budget);
    fill_tables(&mut [&mut ra], n);
    let (mut wire_buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let start = Instant::now();
    // The empty peer (re)joins: both sides see their session come up, as in the daemon.
    for r in [&mut ra, &mut rb] {
        r.on_peer_down(0, start);
        r.on_peer_up(0, start);
    }
    let limit = Duration::from_secs(60);
    while (rb.table().len() as u64) < n && start.elapsed() < limit {
        let now = Instant::now();
        ra.handle_timeout(now);
        rb.handle_timeout(now);
        shuttle_both(
            (&mut ra, a, a_addr),
            (&mut rb, b, b_addr),
            &mut wire_buf,
            now,
        );
        while rb.poll_local_inject(&mut out).is_some() {}
    }
    let secs = start.elapsed().as_secs_f64();
    let pad = rb.peer_stats(0).map_or(0, |s| s.pad_tx_bytes);
    format!(
        "bulk sync into an empty peer, {}: {} of {n} states in {secs:.2} s (digests {}; {:.1} MB padded back)",
        if budget {
            "default answer budget (requester pays)"
        } else {
            "no answer budget"
        },
        rb.table().len(),
        if ra.digest() == rb.digest() {
            "equal"
        } else {
            "differ"
        },
        pad as f64 / 1e6
    )
}

/// Bytes of resident memory per mirrored state, the insert rate, and the bytes per state of
/// the table's cold-record arena, for `n` states inserted into an empty table (what a bulk
/// sync into an empty peer builds).
fn table_footprint(n: u64) -> (f64, f64, f64) {
    let rss = || -> f64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(f64::NAN, |pages| pages * 4096.0)
    };
    let now = Instant::now();
    let before = rss();
    let mut t = crate::table::StateTable::default();
    let start = Instant::now();
    for id in 1..=n {
        t.apply_versioned(
            &Message::Ins(bench_state(id)),
            now,
            crate::table::Version::new(1, 1),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let after = rss();
    black_box(&t);
    (
        (after - before) / n as f64,
        n as f64 / secs,
        t.arena_len() as f64 / n as f64,
    )
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

/// Datagrams per second from one loopback socket to another, in `BATCH`-sized bursts, over
/// one round; with `tun`, each payload is sealed before sending and opened after receiving.
fn udp_rate(
    round: Duration,
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
    Ok(received as f64 / start.elapsed().as_secs_f64())
}

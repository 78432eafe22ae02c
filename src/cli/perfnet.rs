//! The namespace benchmark's two helpers (driven by `scripts/perf-netns.sh`, root only):
//!
//! - `perf-load`: plays both firewalls in one process. A sender thread in fw-a's namespace
//!   inserts a pool of TCP states, then sends OpenBSD v6 packets of `UPD_C` at an offered
//!   rate; a receiver thread in fw-b's namespace takes whatever arrives. Every update's
//!   `src.seqlo` is its send time (µs since the run began, so sequence numbers advance
//!   like a live connection's), which gives each change's latency at fw-b, coalesced or not,
//!   and the age of the newest version of each state fw-b holds.
//! - `perf-relay`: the plain relay baseline: raw proto 240 ↔ UDP, batched, no crypto, no
//!   state, one thread.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::local::mmsg::{RecvBatch, SendBatch, BATCH};
use crate::local::raw::{link_capture_ring, RawSyncSocket, SyncPath};
use crate::wire::{
    self, ipv4::Ipv4Packet, AddrFamily, Dialect, Message, Packet, PacketWriter, PeerRepr, StateId,
    StateRepr, UpdCRepr,
};

/// Creator id of the benchmark's states.
const CREATOR: u32 = 0x9e7f_0001;
/// Versions of each state the sender remembers (to find the first one fw-b lacks).
const RING: usize = 8;
/// fw-b's receiver's nice when time-shared (perf-netns.sh `--nice`'s default); under
/// `--sched fifo` it runs above everything (see `--rt-priority`).
const RX_NICE: i32 = -10;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Namespace playing fw-a (sender), as in /var/run/netns.
    #[arg(long)]
    pub tx_ns: String,
    /// Namespace playing fw-b (receiver).
    #[arg(long)]
    pub rx_ns: String,
    /// Sync interface in both namespaces.
    #[arg(long, default_value = "sync0")]
    pub iface: String,
    /// States inserted before the sweep.
    #[arg(long, default_value_t = 10_200)]
    pub states: usize,
    /// `UPD_C` per packet, comma-separated sizes to sweep (17 = large, 2 = small).
    #[arg(long, default_value = "17,2")]
    pub per_packet: String,
    /// Offered packets per second, comma-separated; 0 = as fast as the sender can.
    #[arg(long, default_value = "5000,20000,50000,100000,200000,0")]
    pub rates: String,
    /// Seconds per point.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Pids of the two gateways (CPU share per point), comma-separated.
    #[arg(long, default_value = "")]
    pub pids: String,
    /// Label of this run (first column).
    #[arg(long, default_value = "relay")]
    pub label: String,
    /// Send fw-a's packets to this address instead of the pfsync group (a routed path,
    /// e.g. through a WireGuard tunnel, for the side-by-side with boringtun).
    #[arg(long)]
    pub to: Option<std::net::Ipv4Addr>,
    /// Real-time priority of the relays (perf-netns.sh `--sched fifo`; 0 = they run at
    /// `--nice`). fw-a's sender runs one above it, so what it offers does not depend on what
    /// the relays leave it (a firewall's kernel is on another host); fw-b's receiver two
    /// above it, as a kernel's receive softirq preempts every thread (it reads a packet
    /// ring a block at a time, so it takes little: at the relays' priority it starved).
    #[arg(long, default_value_t = 0)]
    pub rt_priority: u8,
    /// CPU for fw-a's sender, CPU for fw-b's receiver (perf-netns.sh `--pin`: both on the
    /// first allowed CPU, the relays on the others). The firewalls then have a core of their
    /// own, as on hosts of their own, and what the relays get does not shrink as the offered
    /// load grows; what the sender offers at max is then what the receiver leaves it.
    /// Unset: both float.
    #[arg(long, value_parser = parse_pin)]
    pub pin: Option<(usize, usize)>,
}

fn parse_pin(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| "expected SENDER_CPU,RECEIVER_CPU".to_string())?;
    let cpu = |x: &str| match x.trim().parse::<usize>() {
        // CPU_SET indexes a fixed set of CPU_SETSIZE bits.
        Ok(c) if c < libc::CPU_SETSIZE as usize => Ok(c),
        Ok(c) => Err(format!("CPU {c}: at most {}", libc::CPU_SETSIZE - 1)),
        Err(e) => Err(format!("{x:?}: {e}")),
    };
    Ok((cpu(a)?, cpu(b)?))
}

/// Bind the calling thread to one CPU (`cpu` < CPU_SETSIZE: `parse_pin`). Asked for
/// explicitly, so a refusal (a CPU outside the cpuset) fails the run.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes bit `cpu` < CPU_SETSIZE
    // within it; the set outlives the call.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("pin to CPU {cpu}: {e}")));
    }
    Ok(())
}

/// Where the calling thread runs: its CPUs and policy (printed under `--pin`, so a run
/// shows what it measured).
fn placement() -> String {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel writes at most its size.
    let cpus: Vec<String> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return "unknown".into();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .map(|c| c.to_string())
            .collect()
    };
    format!(
        "CPUs {} {}",
        cpus.join(","),
        crate::node::privdrop::current_policy()
    )
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Sync interface (firewall side).
    #[arg(long, default_value = "sync0")]
    pub iface: String,
    /// UDP address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The other relay's UDP address.
    #[arg(long)]
    pub peer: SocketAddr,
    /// How it injects: `ip`, the raw socket (the baseline), or `link`, the gateway's
    /// link-layer path (to show what that path alone is worth).
    #[arg(long, value_enum, default_value_t = PathArg::Ip)]
    pub inject: PathArg,
    /// How it captures, likewise.
    #[arg(long, value_enum, default_value_t = PathArg::Ip)]
    pub capture: PathArg,
}

/// A [`SyncPath`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathArg {
    Ip,
    Link,
}

impl From<PathArg> for SyncPath {
    fn from(p: PathArg) -> SyncPath {
        match p {
            PathArg::Ip => SyncPath::Ip,
            PathArg::Link => SyncPath::Link,
        }
    }
}

/// Enter network namespace `name` (this thread only).
fn enter_netns(name: &str) -> io::Result<()> {
    let f = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns on a namespace fd we own affects only the calling thread's net namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// Shared between the sender and the receiver.
struct Shared {
    origin: Instant,
    /// `origin` on the wall clock, for the kernel's receive timestamps.
    origin_wall: std::time::SystemTime,
    /// Send times (µs) of the last `RING` versions of each state, and the next ring slot.
    sent: Vec<AtomicU32>,
    head: Vec<AtomicU32>,
    /// Newest version (send time, µs) of each state seen at fw-b.
    newest: Vec<AtomicU32>,
    stop: AtomicBool,
    /// fw-b's ring is mapped (set once; or the receiver gave up): the sender starts then,
    /// so no inserted state is sent before fw-b can see it.
    rx_ready: AtomicBool,
    /// Receiver counters: packets and changes of our states, since the last reset.
    rx_pkts: AtomicU64,
    rx_changes: AtomicU64,
    /// Receive time (µs, 0 = none yet) of the last packet of ours at fw-b, and the longest
    /// gap between two such packets since the last reset: a stall anywhere on the path
    /// shows here (docs/PERFORMANCE.md, the overload age tail).
    rx_last_us: AtomicU32,
    rx_gap_max_us: AtomicU32,
    /// Packets fw-b's ring had no room for since the last reset: lost in the benchmark,
    /// not on the path (shown per point; 0 unless the receiver falls 0.4 s behind).
    rx_dropped: AtomicU64,
    /// Send time (µs) from which changes belong to the current point: a backlog of the
    /// point before (an overload's queue, released after a stall) is not this point's
    /// delivery, latency or loss.
    point_start_us: AtomicU32,
}

impl Shared {
    fn now_us(&self) -> u32 {
        // Starts at 1000 so the inserted states (seqlo 1) are older than every update.
        (self.origin.elapsed().as_micros() as u32).wrapping_add(1000)
    }
    /// A kernel receive timestamp on the `now_us` scale.
    fn wall_us(&self, t: std::time::SystemTime) -> u32 {
        let us = t
            .duration_since(self.origin_wall)
            .unwrap_or_default()
            .as_micros();
        (us as u32).wrapping_add(1000)
    }
    fn record_sent(&self, idx: usize, t: u32) {
        let h = self.head[idx].fetch_add(1, Ordering::Relaxed) as usize % RING;
        self.sent[idx * RING + h].store(t, Ordering::Relaxed);
    }
    /// How long fw-b has lacked a newer version of state `idx` (0: it has the newest), of
    /// the versions sent since `since`: a point's figure is not the loss of the one before
    /// (after an overload point, a state updated once a second would otherwise count its
    /// lost versions of that point as late at this one).
    fn age_us(&self, idx: usize, now: u32, since: u32) -> u32 {
        let have = self.newest[idx].load(Ordering::Relaxed);
        let mut first_missing = u32::MAX;
        for k in 0..RING {
            let t = self.sent[idx * RING + k].load(Ordering::Relaxed);
            if t > have && t >= since && t < first_missing {
                first_missing = t;
            }
        }
        if first_missing == u32::MAX {
            0
        } else {
            now.saturating_sub(first_missing)
        }
    }
}

fn state(idx: usize) -> StateRepr {
    let mut st = StateRepr {
        id: StateId::new(idx as u64 + 1, CREATOR),
        ifname: wire::name_field("em0"),
        af: AddrFamily::Inet,
        proto: 6,
        direction: 1,
        timeout: 2,
        expire: 86_400,
        ..Default::default()
    };
    st.key[0].addr[0][..4].copy_from_slice(&[10, 7, (idx >> 8) as u8, idx as u8]);
    st.key[0].addr[1][..4].copy_from_slice(&[192, 0, 2, 1]);
    st.key[0].port = [1024 + (idx % 60_000) as u16, 443];
    st.key[1] = st.key[0];
    st.src = peer(1);
    st.dst = peer(1);
    st
}

fn peer(seq: u32) -> PeerRepr {
    PeerRepr {
        seqlo: seq,
        seqhi: seq.wrapping_add(65_535),
        max_win: 65_535,
        mss: 1460,
        state: 4,
        wscale: 7,
        ..Default::default()
    }
}

/// Latency samples in µs (a histogram with 1 µs … 10 s log buckets would do; a sorted
/// vector is exact and small enough for a few million samples).
#[derive(Default)]
struct Samples(Vec<u32>);
impl Samples {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i] as f64
    }
}

fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from the state field (3rd).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn run_load(args: &LoadArgs) -> i32 {
    match load(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("perf-load: {e}");
            1
        }
    }
}

/// `SCHED_FIFO` at `priority` for the calling thread (best effort, like the rest of the
/// benchmark's setup: it runs as root).
fn fifo(priority: u8) {
    let _ = crate::node::privdrop::set_scheduler(crate::config::Scheduler::fifo(priority));
}

fn load(args: &LoadArgs) -> io::Result<()> {
    if args.rt_priority > 97 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rt-priority must be <= 97 (the receiver runs two above the relays)",
        ));
    }
    if args.rt_priority > 0 {
        fifo(args.rt_priority.saturating_add(1).min(99));
    }
    if let Some((tx_cpu, _)) = args.pin {
        pin_to(tx_cpu)?;
        println!("# perf-load: fw-a's sender on {}", placement());
    }
    let n = args.states.max(1);
    let sh = Arc::new(Shared {
        origin: Instant::now(),
        origin_wall: std::time::SystemTime::now(),
        sent: (0..n * RING).map(|_| AtomicU32::new(0)).collect(),
        head: (0..n).map(|_| AtomicU32::new(0)).collect(),
        newest: (0..n).map(|_| AtomicU32::new(0)).collect(),
        stop: AtomicBool::new(false),
        rx_ready: AtomicBool::new(false),
        rx_pkts: AtomicU64::new(0),
        rx_changes: AtomicU64::new(0),
        rx_last_us: AtomicU32::new(0),
        rx_gap_max_us: AtomicU32::new(0),
        rx_dropped: AtomicU64::new(0),
        point_start_us: AtomicU32::new(0),
    });
    let lat = Arc::new(std::sync::Mutex::new(Samples::default()));

    // Receiver: fw-b.
    let rx = {
        let sh = sh.clone();
        let lat = lat.clone();
        let ns = args.rx_ns.clone();
        let iface = args.iface.clone();
        let rt_priority = args.rt_priority;
        let rx_cpu = args.pin.map(|(_, c)| c);
        std::thread::spawn(move || -> io::Result<()> {
            if let Some(c) = rx_cpu {
                pin_to(c)?;
            }
            enter_netns(&ns)?;
            // fw-b stands for a kernel, which takes packets in softirq and never drops them
            // for want of a thread's CPU: the kernel copies them into a ring of 64 MiB
            // (0.4 s of the largest load), this thread reads it a block at a time (handed
            // over full or 1 ms after its first packet), and arrival is the kernel's receive
            // time. Read by a socket, this thread starved under overload at the relays'
            // priority (5 % of a core: 288,000 of the packets gw-b delivered in 8 s dropped
            // at fw-b's socket) and above them took their CPU (a wakeup per few packets).
            let opened = link_capture_ring(&iface, 1 << 20, 64, 1);
            sh.rx_ready.store(true, Ordering::Release);
            let (mut ring, _listener) = opened?;
            let _ = crate::node::privdrop::set_nice(RX_NICE);
            if rt_priority > 0 {
                // Above everything, as a kernel's receive is (≤ 97 + 2, checked above):
                // reading a block a millisecond, it takes 15 % of a core at 100k large
                // packets/s.
                fifo(rt_priority + 2);
            }
            if rx_cpu.is_some() {
                println!("# perf-load: fw-b's receiver on {}", placement());
            }
            let mut local = Vec::with_capacity(1 << 16);
            while !sh.stop.load(Ordering::Relaxed) {
                ring.wait(Duration::from_millis(50));
                let point = sh.point_start_us.load(Ordering::Relaxed);
                ring.drain(|at, d| {
                    let now = sh.wall_us(at);
                    let Ok(ip) = Ipv4Packet::new_checked(d) else {
                        return;
                    };
                    if ip.protocol() != wire::IPPROTO_PFSYNC {
                        return;
                    }
                    let Ok(p) = Packet::new_checked(ip.payload(), Dialect::OpenbsdV6) else {
                        return;
                    };
                    let mut ours = 0;
                    for m in p.messages() {
                        let (id, seq) = match m {
                            Message::UpdC(u) => (u.id, u.src.seqlo),
                            Message::Upd(s) | Message::Ins(s) => (s.id, s.src.seqlo),
                            _ => continue,
                        };
                        if id.creator != CREATOR || id.id == 0 || id.id as usize > n {
                            continue;
                        }
                        let idx = id.id as usize - 1;
                        sh.newest[idx].fetch_max(seq, Ordering::Relaxed);
                        if seq < point {
                            continue;
                        }
                        ours += 1;
                        if seq > 1 {
                            local.push(now.saturating_sub(seq));
                        }
                    }
                    if ours > 0 {
                        sh.rx_pkts.fetch_add(1, Ordering::Relaxed);
                        sh.rx_changes.fetch_add(ours, Ordering::Relaxed);
                        let last = sh.rx_last_us.swap(now, Ordering::Relaxed);
                        if last != 0 {
                            sh.rx_gap_max_us
                                .fetch_max(now.saturating_sub(last), Ordering::Relaxed);
                        }
                    }
                });
                if let Ok(d) = ring.take_drops() {
                    sh.rx_dropped.fetch_add(u64::from(d), Ordering::Relaxed);
                }
                if local.len() > 4096 {
                    lat.lock().unwrap().0.append(&mut local);
                }
            }
            lat.lock().unwrap().0.append(&mut local);
            Ok(())
        })
    };

    // Sender: fw-a, on this thread.
    let res = send_all(args, &sh, &lat, n);
    sh.stop.store(true, Ordering::Relaxed);
    let rx_res = rx
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("receiver panicked")));
    res.and(rx_res)
}

fn send_all(
    args: &LoadArgs,
    sh: &Shared,
    lat: &std::sync::Mutex<Samples>,
    n: usize,
) -> io::Result<()> {
    enter_netns(&args.tx_ns)?;
    let t = Instant::now();
    while !sh.rx_ready.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sock = RawSyncSocket::open(&args.iface, false, args.to.unwrap_or(wire::PFSYNC_GROUP))?;
    let fd = sock.as_raw_fd();
    let to = sock.inject_to();
    let mut sb = SendBatch::new(1500);

    // Insert the pool, paced (the gateways and fw-b learn every state), then wait until
    // fw-b has them all or 10 s passed.
    let t0 = Instant::now();
    let mut idx = 0;
    while idx < n {
        for _ in 0..BATCH {
            if idx >= n {
                break;
            }
            let mut w = PacketWriter::new(Dialect::OpenbsdV6, sb.slot());
            while idx < n && matches!(w.push(&Message::Ins(state(idx))), Ok(true)) {
                idx += 1;
            }
            let len = w.finish();
            sb.commit(len, to);
        }
        sb.flush(fd);
        std::thread::sleep(Duration::from_millis(2));
    }
    while t0.elapsed() < Duration::from_secs(10) && sh.rx_changes.load(Ordering::Relaxed) < n as u64
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let inserted = sh.rx_changes.load(Ordering::Relaxed);
    eprintln!(
        "perf-load: {n} states inserted, {inserted} seen at fw-b after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));

    let pids: Vec<String> = list(&args.pids);
    println!(
        "{:<8} {:>5} {:>9} {:>10} {:>10} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "mode",
        "upd/p",
        "offered",
        "sent p/s",
        "dlvd p/s",
        "changes/s",
        "loss%",
        "p50 µs",
        "p99 µs",
        "age p50",
        "age p99",
        "cpu-a",
        "cpu-b"
    );
    let mut next_state = 0usize;
    for per in list::<usize>(&args.per_packet) {
        for rate in list::<f64>(&args.rates) {
            // Let the previous point's backlog drain first (quiet for 300 ms, at most 5 s).
            let settle = Instant::now();
            loop {
                let before = sh.rx_pkts.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
                if sh.rx_pkts.load(Ordering::Relaxed) == before
                    || settle.elapsed() > Duration::from_secs(5)
                {
                    break;
                }
            }
            let cpu0: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(p)).collect();
            lat.lock().unwrap().0.clear();
            sh.rx_pkts.store(0, Ordering::Relaxed);
            sh.rx_changes.store(0, Ordering::Relaxed);
            sh.rx_last_us.store(0, Ordering::Relaxed);
            sh.rx_gap_max_us.store(0, Ordering::Relaxed);
            sh.rx_dropped.store(0, Ordering::Relaxed);
            let dur = Duration::from_secs_f64(args.secs.max(0.2));
            let start = Instant::now();
            let start_us = sh.now_us();
            sh.point_start_us.store(start_us, Ordering::Relaxed);
            let mut sent = 0u64;
            let mut ages = Samples::default();
            let mut next_sample = start + Duration::from_millis(100);
            // Real-time and unthrottled, the sender rests as the gateway does (below the
            // kernel's real-time throttling, which would stop it 50 ms a second).
            use crate::node::realtime::{thread_cpu_time, Duty};
            let mut duty = Duty::new(start, thread_cpu_time(), args.rt_priority > 0);
            while start.elapsed() < dur {
                if let Some(r) = duty.poll(Instant::now(), thread_cpu_time) {
                    std::thread::sleep(r);
                }
                // Due packets now (token bucket, bursts of at most one batch).
                let due = if rate > 0.0 {
                    ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(sent)
                } else {
                    BATCH as u64
                };
                if due == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                } else {
                    let k = due.min(BATCH as u64) as usize;
                    for _ in 0..k {
                        let t = sh.now_us();
                        let mut w = PacketWriter::new(Dialect::OpenbsdV6, sb.slot());
                        for _ in 0..per {
                            let m = Message::UpdC(UpdCRepr {
                                id: StateId::new(next_state as u64 + 1, CREATOR),
                                src: peer(t),
                                dst: peer(t),
                                expire: 0,
                                timeout: 2,
                                flags: 0,
                            });
                            if !matches!(w.push(&m), Ok(true)) {
                                break;
                            }
                            sh.record_sent(next_state, t);
                            next_state = (next_state + 1) % n;
                        }
                        let len = w.finish();
                        sb.commit(len, to);
                    }
                    let (ok, _) = sb.flush(fd);
                    sent += k as u64;
                    let _ = ok;
                }
                if Instant::now() >= next_sample {
                    next_sample += Duration::from_millis(100);
                    let now = sh.now_us();
                    for i in 0..n {
                        ages.0.push(sh.age_us(i, now, start_us));
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            // What is still in flight gets 300 ms to arrive (counted; its latency shows).
            std::thread::sleep(Duration::from_millis(300));
            let cpu1: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(p)).collect();
            let tck = 100.0; // USER_HZ
            let cpu: Vec<String> = cpu0
                .iter()
                .zip(&cpu1)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => {
                        format!("{:.0}%", (b - a) as f64 / tck / (secs + 0.3) * 100.0)
                    }
                    _ => "-".into(),
                })
                .collect();
            let pk = sh.rx_pkts.load(Ordering::Relaxed) as f64;
            let ch = sh.rx_changes.load(Ordering::Relaxed) as f64;
            let mut l = std::mem::take(&mut *lat.lock().unwrap());
            let offered = if rate > 0.0 {
                format!("{rate:.0}")
            } else {
                "max".into()
            };
            println!(
                "{:<8} {:>5} {:>9} {:>10.0} {:>10.0} {:>11.0} {:>7.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>6} {:>6}",
                args.label,
                per,
                offered,
                sent as f64 / secs,
                pk / secs,
                ch / secs,
                100.0 * (1.0 - ch / (sent as f64 * per as f64).max(1.0)),
                l.pct(0.5),
                l.pct(0.99),
                ages.pct(0.5),
                ages.pct(0.99),
                cpu.first().map_or("-", |s| s.as_str()),
                cpu.get(1).map_or("-", |s| s.as_str()),
            );
            println!(
                "# {} {per} {offered}: longest gap between deliveries at fw-b {:.1} ms, dropped by fw-b's ring {}",
                args.label,
                f64::from(sh.rx_gap_max_us.load(Ordering::Relaxed)) / 1000.0,
                sh.rx_dropped.load(Ordering::Relaxed),
            );
        }
    }
    Ok(())
}

pub fn run_relay(args: &RelayArgs) -> i32 {
    match relay(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("perf-relay: {e}");
            1
        }
    }
}

/// Plain relay: whatever the firewall sends goes to the peer in one UDP datagram, whatever
/// the peer sends is injected; batched both ways, no crypto, no state.
fn relay(args: &RelayArgs) -> io::Result<()> {
    let (inject, capture) = (args.inject.into(), args.capture.into());
    let raw = RawSyncSocket::open_with(&args.iface, true, wire::PFSYNC_GROUP, inject, capture)?;
    let udp = UdpSocket::bind(args.listen)?;
    udp.set_nonblocking(true)?;
    crate::local::mmsg::set_socket_buffers(udp.as_raw_fd(), 32 << 20);
    let (rfd, ufd) = (raw.as_raw_fd(), udp.as_raw_fd());
    let mut rrx = RecvBatch::new(2048);
    let mut urx = RecvBatch::new(2048);
    let mut utx = SendBatch::new(2048);
    let mut rtx = SendBatch::new(2048);
    let head = raw.inject_headroom();
    let (inject_fd, inject, inject_len) = raw.inject_target();
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: rfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ufd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 1000) };
        if rrx.recv(rfd).is_ok() {
            for i in 0..rrx.len() {
                let Some(d) = rrx.data(i) else { continue };
                let Ok(ip) = Ipv4Packet::new_checked(d) else {
                    continue;
                };
                if ip.ttl() != wire::PFSYNC_DFLTTL || raw.is_own(ip.src()) || !raw.admits(&ip) {
                    continue;
                }
                let p = ip.payload();
                utx.slot()[..p.len()].copy_from_slice(p);
                utx.commit(p.len(), args.peer);
            }
            utx.flush(ufd);
        }
        if urx.recv(ufd).is_ok() {
            for i in 0..urx.len() {
                let Some(d) = urx.data(i) else { continue };
                let slot = rtx.slot();
                let Some(room) = slot.get_mut(head..head + d.len()) else {
                    continue; // larger than an IP packet on the sync link
                };
                room.copy_from_slice(d);
                let len = raw.finish_inject(slot, d.len());
                rtx.commit_to(len, inject, inject_len);
            }
            rtx.flush(inject_fd);
        }
    }
}

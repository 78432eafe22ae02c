//! Start-up of a gateway pair (issue #11): N fresh starts of two gateways that list each
//! other as endpoints, started simultaneously (both handshakes cross) and staggered (one
//! side's first initiation hits a closed port). Measures process start → "peer up" in
//! `status` (tunnel session and sync epoch both up) and counts stuck starts and sync
//! restarts after the first session.
//!
//! `startup_pair_comes_up_quickly` is the cheap CI run (N = 10). The full benchmark is
//! `scripts/startup-bench.sh` (N = 200 by default), which runs the ignored
//! `startup_bench` here with `STARTUP_N`, `STARTUP_HOLD_MS` and `STARTUP_OUT`.

#[path = "common/lab.rs"]
mod common;

use std::time::{Duration, Instant};

use common::gw::{bin, status, Net};
use common::netns::{one_at_a_time, skip_unless_root};

/// A start that is not up after this long counts as stuck (the issue saw > 15 s).
const STUCK_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Figures {
    /// Seconds from a gateway's process start to "peer up" in its status.
    times: Vec<f64>,
    stuck: usize,
    /// Gateways whose sync layer opened more than one send epoch (or ran more than the
    /// initial resync) while the pair was up: a sync restart after the first session.
    restarts: usize,
    /// Tunnel sessions established per start, summed (more than one per side: the crossed
    /// handshake completed twice, or a retransmission after the 5 s timeout did).
    sessions: u64,
    runs: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Figures {
    fn summary(&self, what: &str) -> String {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        format!(
            "{what}: {} starts ({} gateway starts): peer up p50 {:.3}s p99 {:.3}s max {:.3}s; \
             stuck {}; sync restarts {}; tunnel sessions {}",
            self.runs,
            self.runs * 2,
            pct(&t, 0.5),
            pct(&t, 0.99),
            t.last().copied().unwrap_or(f64::NAN),
            self.stuck,
            self.restarts,
            self.sessions,
        )
    }
    fn max(&self) -> f64 {
        self.times.iter().copied().fold(0.0, f64::max)
    }
}

fn counter(st: &pfsync_gw::node::status::Status, k: &str) -> u64 {
    st.local.get(k).copied().unwrap_or(0)
}

/// One fresh start of the pair; `delay` between the two process starts.
fn one_start(net: &Net, delay: Duration, hold: Duration, f: &mut Figures) {
    let cfgs: Vec<_> = (0..2)
        .map(|i| net.lab.path(&format!("{}.toml", net.site(i).gw())))
        .collect();
    let mut started = [Instant::now(); 2];
    for i in 0..2 {
        if i == 1 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let _ = std::fs::remove_file(net.control_socket(i));
        started[i] = Instant::now();
        net.lab.spawn(
            &net.site(i).gw(),
            &net.site(i).gw_ns,
            bin(),
            &["run", "--config", cfgs[i].to_str().unwrap()],
            &[("RUST_LOG", "info")],
        );
    }
    let mut up: [Option<Duration>; 2] = [None, None];
    let deadline = started[1] + STUCK_AFTER;
    while up.iter().any(Option::is_none) && Instant::now() < deadline {
        for i in 0..2 {
            if up[i].is_some() {
                continue;
            }
            if let Err(e) = net.lab.check_running(&net.site(i).gw()) {
                panic!("{e}");
            }
            if let Ok(st) = status(&net.control_socket(i)) {
                if st.peers.first().is_some_and(|p| p.established) {
                    up[i] = Some(started[i].elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f.runs += 1;
    for (i, u) in up.iter().enumerate() {
        match u {
            Some(d) => f.times.push(d.as_secs_f64()),
            None => {
                f.stuck += 1;
                f.times.push(STUCK_AFTER.as_secs_f64());
                net.lab.log(&format!(
                    "stuck start (run {}): {} not up; log:\n{}",
                    f.runs,
                    net.site(i).gw(),
                    net.lab.log_tail(&net.site(i).gw(), 30)
                ));
            }
        }
    }
    std::thread::sleep(hold);
    for i in 0..2 {
        if let Ok(st) = status(&net.control_socket(i)) {
            let p = st.peers.first().cloned().unwrap_or_default();
            // Counters added with issue #11 (0 on builds without them): epochs opened,
            // sessions established. Older builds show restarts as extra resyncs.
            let epochs = counter(&st, "epochs_opened");
            f.sessions += counter(&st, "sessions_established");
            if epochs > 1 || p.resyncs > 1 {
                f.restarts += 1;
            }
        }
        net.lab.kill(&net.site(i).gw(), libc::SIGTERM);
    }
}

fn run_bench(tag: &str, n: usize, hold: Duration) -> (Figures, Figures) {
    let net = Net::new(tag, 2, false);
    net.write_gw_config(0, "");
    net.write_gw_config(1, "");
    let (mut simul, mut stag) = (Figures::default(), Figures::default());
    for k in 0..n {
        if k % 2 == 0 {
            one_start(&net, Duration::ZERO, hold, &mut simul);
        } else {
            // 0–490 ms apart: often the first initiation reaches a port nobody listens on.
            let d = Duration::from_millis(((k as u64 * 137) % 50) * 10);
            one_start(&net, d, hold, &mut stag);
        }
    }
    let s = simul.summary("simultaneous");
    let t = stag.summary("staggered");
    net.lab.log(&s);
    net.lab.log(&t);
    eprintln!("{s}\n{t}");
    if let Ok(out) = std::env::var("STARTUP_OUT") {
        let _ = std::fs::write(out, format!("{s}\n{t}\n"));
    }
    (simul, stag)
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// CI: 10 fresh starts, every one up within 2 s (the bound), none stuck, no sync
/// restart, one tunnel session per side.
#[test]
fn startup_pair_comes_up_quickly() {
    if skip_unless_root("startup_pair_comes_up_quickly") {
        return;
    }
    let _one = one_at_a_time();
    let (simul, stag) = run_bench("sup", 10, Duration::from_millis(300));
    for f in [&simul, &stag] {
        assert_eq!(f.stuck, 0, "stuck starts");
        assert_eq!(f.restarts, 0, "sync restarted after the first session");
        assert!(f.max() <= 2.0, "a start took {:.3}s (bound 2 s)", f.max());
    }
}

/// A pair that came up stays on its first session and first sync epoch beyond the 5 s
/// handshake retransmission timeout (today's lost crossed initiation came back then).
#[test]
fn crossed_handshakes_leave_one_sync_start() {
    if skip_unless_root("crossed_handshakes_leave_one_sync_start") {
        return;
    }
    let _one = one_at_a_time();
    let net = Net::new("sx", 2, false);
    net.write_gw_config(0, "");
    net.write_gw_config(1, "");
    for delay in [0u64, 150] {
        let mut f = Figures::default();
        one_start(
            &net,
            Duration::from_millis(delay),
            Duration::from_secs(7),
            &mut f,
        );
        assert_eq!(f.stuck, 0);
        assert_eq!(f.restarts, 0, "delay {delay} ms: sync restarted: {f:?}");
        // Each side: one SessionEstablished for its first session; the crossed one (if
        // both completed) adds at most one more, never a retransmitted third.
        assert!(
            f.sessions <= 4,
            "delay {delay} ms: {} sessions for one start",
            f.sessions
        );
    }
}

/// The full benchmark (`scripts/startup-bench.sh`).
#[test]
#[ignore = "benchmark: run via scripts/startup-bench.sh"]
fn startup_bench() {
    if skip_unless_root("startup_bench") {
        return;
    }
    let n = env_or("STARTUP_N", 200usize);
    let hold = Duration::from_millis(env_or("STARTUP_HOLD_MS", 300u64));
    run_bench("sbn", n, hold);
}

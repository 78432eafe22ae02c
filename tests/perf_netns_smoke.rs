//! Smoke run of the namespace benchmark (scripts/perf-netns.sh --smoke): one tiny point
//! per mode, a few seconds. It checks that the benchmark still runs and that both the
//! plain relay and the gateways deliver; the figures themselves are for docs/PERFORMANCE.md,
//! not for assertions (benchmarks, not timed tests).

use std::process::Command;

/// `scripts/perf-netns.sh --smoke` with `extra` arguments; its stdout (the run must succeed).
fn smoke(extra: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/perf-netns.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--smoke")
        .args(extra)
        .env("PFSYNC_GW", env!("CARGO_BIN_EXE_pfsync-gw"))
        .output()
        .expect("run perf-netns.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "perf-netns.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The row of `mode` delivers: its sender ran and most of what it sent arrived.
fn assert_delivers(stdout: &str, mode: &str) {
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(mode))
        .unwrap_or_else(|| panic!("no {mode} row in:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let sent: f64 = cols[3].parse().unwrap();
    let delivered: f64 = cols[4].parse().unwrap();
    assert!(sent > 500.0, "{mode}: sender did not run: {row}");
    // Loose bound: CI machines are loaded; a broken relay delivers nothing.
    assert!(delivered > sent * 0.5, "{mode} delivered too little: {row}");
}

/// Two runs at once would share the cores (and `--pin`'s layout): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// CPUs of a list like `0-2,5`.
fn cpu_list(s: &str) -> Vec<usize> {
    s.trim()
        .split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP perf_netns_smoke: needs root (namespaces, raw sockets)");
    }
    root
}

#[test]
fn perf_netns_smoke_delivers_through_both_relays() {
    if !is_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stdout = smoke(&[]);
    for mode in ["plain", "gw"] {
        assert_delivers(&stdout, mode);
    }
}

/// `--pin` (the firewalls on CPU 0, the relays on the others) runs and the gateways deliver.
#[test]
fn perf_netns_smoke_pinned() {
    if !is_root() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIP perf_netns_smoke_pinned: needs two CPUs");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stdout = smoke(&["--pin", "--modes", "gw"]);
    assert_delivers(&stdout, "gw");
    // Where every thread ran, as reported by the threads themselves and by taskset: the
    // firewalls (sender at FIFO 2, receiver above it at 3) on one CPU, both gateways'
    // threads only on the others.
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{stdout}"))
            .to_string()
    };
    let fw: usize = line("# pinned: fw-a's sender and fw-b's receiver on CPU ")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        line("# perf-load: fw-a's sender on "),
        format!("CPUs {fw} SCHED_FIFO priority 2")
    );
    assert_eq!(
        line("# perf-load: fw-b's receiver on "),
        format!("CPUs {fw} SCHED_FIFO priority 3")
    );
    let relays: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("# relay "))
        .collect();
    assert_eq!(relays.len(), 2, "{stdout}");
    for r in relays {
        let lists = r.split_once("threads on CPUs ").unwrap().1;
        for l in lists.split_whitespace() {
            assert!(!cpu_list(l).contains(&fw), "{r}");
        }
    }
}

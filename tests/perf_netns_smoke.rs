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
    let stdout = smoke(&["--pin", "--modes", "gw"]);
    assert!(stdout.contains("# pinned:"), "{stdout}");
    assert_delivers(&stdout, "gw");
}

//! Convergence checks: emulated firewalls' tables and gateways' mirrors reach one digest.

use std::time::{Duration, Instant};

use super::emu::emu_status;
use super::gw::{status, Net};

/// One observation of every table: `(who, states, digest)`.
pub fn snapshot(net: &Net, emus: &[&str], gws: &[usize]) -> Vec<(String, u64, String)> {
    let mut v = Vec::new();
    for e in emus {
        match emu_status(net, e) {
            Some(s) => v.push((e.to_string(), s.states, s.digest)),
            None => v.push((e.to_string(), 0, "(no status file)".into())),
        }
    }
    for &i in gws {
        match status(&net.control_socket(i)) {
            Ok(s) => v.push((s.node, s.states as u64, s.digest)),
            Err(e) => v.push((net.site(i).gw(), 0, format!("(status: {e})"))),
        }
    }
    v
}

fn converged(v: &[(String, u64, String)]) -> bool {
    v.iter()
        .all(|(_, n, d)| *n == v[0].1 && *d == v[0].2 && !d.starts_with('('))
}

/// Wait until every table has the same digest (and count) and stays so for one more
/// poll; returns the time it took. Panics after `timeout` with every table's view.
pub fn wait_converged(
    net: &Net,
    emus: &[&str],
    gws: &[usize],
    timeout: Duration,
) -> (Duration, u64) {
    let start = Instant::now();
    let mut last = Vec::new();
    let mut first_equal: Option<Duration> = None;
    loop {
        let v = snapshot(net, emus, gws);
        if converged(&v) {
            // Status files are written periodically; require a second identical view so a
            // coincidence of stale snapshots is not taken for convergence.
            match first_equal {
                Some(t) if v == last => return (t, v[0].1),
                _ => first_equal = Some(start.elapsed()),
            }
        } else {
            first_equal = None;
        }
        last = v;
        if start.elapsed() > timeout {
            // The gateways' own view (peers, resync state, counters) says why.
            for &i in gws {
                if let Ok(s) = status(&net.control_socket(i)) {
                    eprintln!("{}", s.to_text());
                }
            }
            panic!(
                "not converged after {:.1}s:\n{}",
                timeout.as_secs_f64(),
                last.iter()
                    .map(|(w, n, d)| format!("  {w:>8}: {n:>7} states, digest {d}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

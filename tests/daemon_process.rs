//! The daemon as real processes on loopback (emulated firewalls, so no root needed):
//! signals, SIGHUP reload, peer restart, JSON logs.

#[path = "common/proc.rs"]
mod proc;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pfsync_gw::node::status::Status;
use proc::{bin, free_udp_port, keygen, Dir, Running};

struct Daemon {
    child: Running,
    sock: PathBuf,
    log: PathBuf,
}

fn write_config(
    dir: &Path,
    me: &str,
    port: u16,
    hostid: u32,
    peers: &[(&str, &str, u16)],
) -> PathBuf {
    write_config_rate(dir, me, port, hostid, 150, peers)
}

fn write_config_rate(
    dir: &Path,
    me: &str,
    port: u16,
    hostid: u32,
    rate: u32,
    peers: &[(&str, &str, u16)],
) -> PathBuf {
    let mut s = format!(
        "[node]\nname = \"{me}\"\nprivate_key_file = \"{me}.key\"\nlisten = \"127.0.0.1:{port}\"\ncontrol_socket = \"{me}.sock\"\n\n[local]\nmode = \"emulator\"\ndialect = \"openbsd-v6\"\n\n[emulator]\nhostid = {hostid}\nrate = {rate}\nseed = {hostid}\nchurn_for = 4\n"
    );
    for (name, public, pport) in peers {
        s += &format!(
            "\n[[peer]]\nname = \"{name}\"\npublic_key = \"{public}\"\nendpoint = \"127.0.0.1:{pport}\"\npersistent_keepalive = 1\n"
        );
    }
    let p = dir.join(format!("{me}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn start(dir: &Path, me: &str, json: bool) -> Daemon {
    let cfg = dir.join(format!("{me}.toml"));
    let log = dir.join(format!("{me}.log"));
    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(&cfg);
    if json {
        c.arg("--log-json");
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon {
        child: Running(child),
        sock: dir.join(format!("{me}.sock")),
        log,
    }
}

fn status(d: &Daemon) -> Option<Status> {
    pfsync_gw::node::control::query(&d.sock).ok()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, logs: &[&Daemon]) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for d in logs {
        if let Some(st) = status(d) {
            eprintln!(
                "drops: {:?}",
                st.drops.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>()
            );
            for p in &st.peers {
                eprintln!(
                    "peer sync: {:?}",
                    p.sync.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>()
                );
            }
        }
        eprintln!(
            "--- {}:\n{}",
            d.log.display(),
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn signal(d: &Daemon, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, sig) };
}

fn established(d: &Daemon, peer: &str) -> bool {
    status(d).is_some_and(|s| s.peers.iter().any(|p| p.name == peer && p.established))
}

#[test]
fn sighup_adds_a_peer_without_disturbing_the_other_and_sigterm_exits_cleanly() {
    let dir = Dir::new("hup");
    let d = &dir.0;
    let (pa, pb, pc) = (keygen(d, "a.key"), keygen(d, "b.key"), keygen(d, "c.key"));
    let (qa, qb, qc) = (free_udp_port(), free_udp_port(), free_udp_port());
    write_config(d, "a", qa, 0xa, &[("b", &pb, qb)]);
    write_config(d, "b", qb, 0xb, &[("a", &pa, qa), ("c", &pc, qc)]);
    write_config(d, "c", qc, 0xc, &[("b", &pb, qb)]);
    let a = start(d, "a", true);
    let b = start(d, "b", false);
    let c = start(d, "c", false);
    wait_for(
        "a–b tunnel",
        Duration::from_secs(10),
        || established(&a, "b"),
        &[&a, &b],
    );
    let hs_before = status(&a).unwrap().peers[0].last_handshake_secs.unwrap();

    // a learns about c by SIGHUP: the a–b session must survive (no new handshake).
    write_config(d, "a", qa, 0xa, &[("b", &pb, qb), ("c", &pc, qc)]);
    write_config(d, "c", qc, 0xc, &[("b", &pb, qb), ("a", &pa, qa)]);
    signal(&a, libc::SIGHUP);
    signal(&c, libc::SIGHUP);
    wait_for(
        "a–c tunnel after SIGHUP",
        Duration::from_secs(10),
        || established(&a, "c"),
        &[&a, &c],
    );
    let st = status(&a).unwrap();
    let ab = st.peers.iter().find(|p| p.name == "b").unwrap();
    assert!(ab.established);
    assert!(
        ab.last_handshake_secs.unwrap() >= hs_before,
        "the a–b session was re-handshaken by the reload: {ab:?}"
    );

    // JSON logs on request: every line of a's log is a JSON object.
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    for l in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }

    for mut x in [a, b, c] {
        signal(&x, libc::SIGTERM);
        let t = Instant::now();
        let code = loop {
            if let Some(s) = x.child.try_wait().unwrap() {
                break s.code();
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            code,
            Some(0),
            "{}",
            std::fs::read_to_string(&x.log).unwrap()
        );
    }
}

#[test]
fn peer_restart_reconnects_and_resyncs_by_itself() {
    let dir = Dir::new("rst");
    let d = &dir.0;
    let (pa, pb) = (keygen(d, "a.key"), keygen(d, "b.key"));
    let (qa, qb) = (free_udp_port(), free_udp_port());
    write_config(d, "a", qa, 0xa, &[("b", &pb, qb)]);
    write_config(d, "b", qb, 0xb, &[("a", &pa, qa)]);
    let a = start(d, "a", false);
    let mut b = start(d, "b", false);
    wait_for(
        "tunnel",
        Duration::from_secs(10),
        || established(&a, "b"),
        &[&a, &b],
    );
    wait_for(
        "states from b at a",
        Duration::from_secs(10),
        || status(&a).is_some_and(|s| s.states > 50),
        &[&a, &b],
    );

    // SIGKILL b: its emulated firewall and mirror are gone. The new b starts empty and its
    // firewall creates nothing, so everything it ends up with came from a by resync.
    let _ = b.child.kill();
    let _ = b.child.wait();
    std::thread::sleep(Duration::from_millis(500));
    drop(b);
    write_config_rate(d, "b", qb, 0xb, 0, &[("a", &pa, qa)]);
    b = start(d, "b", false);
    let t = Instant::now();
    wait_for(
        "tunnel back",
        Duration::from_secs(10),
        || established(&b, "a"),
        &[&a, &b],
    );
    let back = t.elapsed();
    // The restarted side gets a's states back (resync), and both sides keep syncing:
    // a's mirror and b's firewall end up with the same digest once churn has been flowing.
    let views = |a: &Daemon, b: &Daemon| {
        for d in [a, b] {
            if let Some(s) = status(d) {
                let fw = s.firewall.clone().unwrap_or_default();
                eprintln!(
                    "{}: mirror {} {} firewall {} {} {:?}",
                    s.node, s.states, s.digest, fw.states, fw.digest, fw.counters
                );
            }
        }
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let (Some(x), Some(y)) = (status(&a), status(&b)) {
            let (fa, fb) = (
                x.firewall.unwrap_or_default(),
                y.firewall.unwrap_or_default(),
            );
            if fa.digest == fb.digest && x.digest == y.digest && fb.states > 50 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    views(&a, &b);
    wait_for(
        "restarted b converges with a",
        Duration::from_secs(1),
        || match (status(&a), status(&b)) {
            (Some(x), Some(y)) => {
                let fw = y.firewall.unwrap_or_default();
                let fa = x.firewall.unwrap_or_default();
                fa.digest == fw.digest && x.digest == y.digest && fw.states > 50
            }
            _ => false,
        },
        &[&a, &b],
    );
    eprintln!("tunnel re-established {back:?} after restart");
    assert!(back < Duration::from_secs(8), "{back:?}");
}

/// The nice value of process `pid` (field 19 of /proc/<pid>/stat).
fn nice_of(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(16).unwrap().parse().unwrap()
}

/// The scheduling policy (with `SCHED_RESET_ON_FORK`, if set) and real-time priority of
/// process `pid`.
fn sched_of(pid: u32) -> (i32, i32) {
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain getters; `p` outlives the call.
    let policy = unsafe { libc::sched_getscheduler(pid as i32) };
    assert_eq!(unsafe { libc::sched_getparam(pid as i32, &mut p) }, 0);
    (policy, p.sched_priority)
}

#[test]
fn the_daemon_takes_its_configured_priority_and_by_default_raises_it_when_permitted() {
    let dir = Dir::new("nice");
    let d = &dir.0;
    let pb = keygen(d, "b.key");
    keygen(d, "a.key");
    let (qa, qb) = (free_udp_port(), free_udp_port());
    // a: an explicit (lower) priority, which any user may take.
    let cfg = write_config(d, "a", qa, 0xa, &[("b", &pb, qb)]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[node]\n", "[node]\nnice = 7\nscheduler = \"other\"\n"),
    )
    .unwrap();
    let a = start(d, "a", false);
    wait_for(
        "a's control socket",
        Duration::from_secs(10),
        || status(&a).is_some(),
        &[&a],
    );
    assert_eq!(nice_of(a.child.id()), 7);
    assert_eq!(
        sched_of(a.child.id()).0 & !libc::SCHED_RESET_ON_FORK,
        libc::SCHED_OTHER
    );

    // b: the default, -10 when privileged; otherwise unchanged, and the daemon still runs.
    write_config(d, "b", qb, 0xb, &[]);
    let b = start(d, "b", false);
    wait_for(
        "b's control socket",
        Duration::from_secs(10),
        || status(&b).is_some(),
        &[&b],
    );
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() } == 0;
    let own = nice_of(std::process::id());
    let want = if root { -10 } else { own };
    assert_eq!(nice_of(b.child.id()), want);
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(
        log.contains(&format!("nice {want}")) || log.contains("nice unchanged"),
        "{log}"
    );
    // And real-time scheduling at the lowest priority, likewise.
    if root {
        // What it spawns later starts as an ordinary thread (SCHED_RESET_ON_FORK).
        assert_eq!(
            sched_of(b.child.id()),
            (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 1)
        );
        assert!(log.contains("scheduling: SCHED_FIFO priority 1"), "{log}");
    } else {
        assert_eq!(
            sched_of(b.child.id()).0 & !libc::SCHED_RESET_ON_FORK,
            libc::SCHED_OTHER
        );
        assert!(
            log.contains("scheduling unchanged (default SCHED_FIFO priority 1 not permitted"),
            "{log}"
        );
    }
}

/// Without the right to it (root without CAP_SYS_NICE here), real-time scheduling asked
/// for explicitly stops the daemon with the file, the setting and the reason; the default
/// is best effort: the daemon runs on, time-shared, and says so.
#[test]
fn real_time_scheduling_that_is_refused_stops_the_daemon_only_when_asked_for() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to start the daemon without CAP_SYS_NICE)");
        return;
    }
    let dir = Dir::new("sched-refused");
    let d = &dir.0;
    keygen(d, "a.key");
    let pb = keygen(d, "b.key");
    let (qa, qb) = (free_udp_port(), free_udp_port());
    let cfg = write_config(d, "a", qa, 0xa, &[("b", &pb, qb)]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let no_nice = |cfg: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"])
            .arg(bin())
            .args(["run", "--config"])
            .arg(cfg);
        c
    };
    let explicit = d.join("explicit.toml");
    std::fs::write(
        &explicit,
        text.replace("[node]\n", "[node]\nrt_priority = 5\n"),
    )
    .unwrap();
    let out = no_nice(&explicit).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("explicit.toml: [node] scheduler / rt_priority (SCHED_FIFO priority 5)")
            && err.contains("CAP_SYS_NICE"),
        "{err}"
    );
    // Likewise a priority asked for with `nice`: −20, which only a runner already there
    // would be granted without the capability.
    if nice_of(std::process::id()) > -20 {
        let nice = d.join("nice.toml");
        let text_nice = text.replace("[node]\n", "[node]\nnice = -20\nscheduler = \"other\"\n");
        std::fs::write(&nice, text_nice).unwrap();
        let out = no_nice(&nice).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("nice.toml: [node] nice = -20") && err.contains("CAP_SYS_NICE"),
            "{err}"
        );
    }

    let log = d.join("a.log");
    let a = Daemon {
        child: Running(
            no_nice(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ),
        sock: d.join("a.sock"),
        log,
    };
    wait_for(
        "a's control socket",
        Duration::from_secs(10),
        || status(&a).is_some(),
        &[&a],
    );
    assert_eq!(
        sched_of(a.child.id()).0 & !libc::SCHED_RESET_ON_FORK,
        libc::SCHED_OTHER
    );
    let text = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        text.contains("scheduling unchanged (default SCHED_FIFO priority 1 not permitted"),
        "{text}"
    );
}

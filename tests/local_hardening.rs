//! The daemon's local interfaces against a hostile local user (docs/SECURITY.md, "Local
//! user"): the control socket's mode does not depend on the umask; idle, slow, oversized
//! and too many clients, and descriptor exhaustion, never stop the control socket or
//! `/metrics` for good.

#[path = "common/lab.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proc::{bin, free_tcp_port, free_udp_port, is_root, keygen, Dir, Running};

struct Daemon {
    child: Running,
    sock: PathBuf,
    metrics: SocketAddr,
    log: PathBuf,
}
impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Start an emulator-mode daemon with a control socket and `/metrics`; `nofile` sets its
/// RLIMIT_NOFILE, `umask` its umask, `extra` adds `[node]` lines.
fn start(dir: &Dir, nofile: Option<u64>, umask: Option<u32>, extra: &str) -> Daemon {
    keygen(&dir.0, "gw.key");
    let port = free_tcp_port();
    let cfg = dir.path("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"lh\"\nprivate_key_file = \"gw.key\"\nlisten = \"127.0.0.1:0\"\n\
             control_socket = \"gw.sock\"\nmetrics_listen = \"127.0.0.1:{port}\"\n{extra}\n\
             [local]\nmode = \"emulator\"\ndialect = \"openbsd-v6\"\n\n[emulator]\nrate = 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = spawn(dir, "gw", nofile, umask, Some(port));
    let t = Instant::now();
    while status(&d).is_err() || get_metrics(&d).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "daemon did not come up:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// `pfsync-gw run --config dir/<name>.toml` (socket `<name>.sock`, log `<name>.log`).
fn spawn(
    dir: &Dir,
    name: &str,
    nofile: Option<u64>,
    umask: Option<u32>,
    metrics_port: Option<u16>,
) -> Daemon {
    let cfg = dir.path(&format!("{name}.toml"));
    let log = dir.path(&format!("{name}.log"));
    let mut c = Command::new(bin());
    c.args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: only async-signal-safe calls (setrlimit, umask) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if let Some(n) = nofile {
                let r = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            Ok(())
        });
    }
    Daemon {
        child: Running(c.spawn().unwrap()),
        sock: dir.path(&format!("{name}.sock")),
        metrics: format!("127.0.0.1:{}", metrics_port.unwrap_or(9))
            .parse()
            .unwrap(),
        log,
    }
}

/// One `status` exchange on the control socket, with a client-side deadline.
fn status(d: &Daemon) -> Result<String, String> {
    let mut s = UnixStream::connect(&d.sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"status\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("{\"node\"") {
        Ok(out)
    } else {
        Err(format!("bad reply `{out}`"))
    }
}

/// One `GET /metrics`, with a client-side deadline.
fn get_metrics(d: &Daemon) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&d.metrics, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nUser-Agent: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.0 200 OK") && out.contains("pfsync_gw_states") {
        Ok(out)
    } else {
        Err(format!("bad reply `{out}`"))
    }
}

/// The value of `pfsync_gw_admin_clients_total{listener,event}` in a metrics page.
fn admin_counter(page: &str, listener: &str, event: &str) -> u64 {
    let key = format!("listener=\"{listener}\",event=\"{event}\"}} ");
    page.lines()
        .find(|l| l.starts_with("pfsync_gw_admin_clients_total") && l.contains(&key))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {listener}/{event} counter in:\n{page}"))
}

/// Retry `f` until it succeeds or `limit` passes; returns how long it took.
fn within<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Duration {
    let t = Instant::now();
    loop {
        match f() {
            Ok(_) => return t.elapsed(),
            Err(e) if t.elapsed() >= limit => panic!("{what}: still failing after {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn control_socket_is_0600_whatever_the_umask() {
    let dir = Dir::new("lh-umask");
    // A crashed run's socket, nobody serving it, is replaced (a file of another kind is
    // refused: `the_control_socket_replaces_only_a_stale_socket`).
    drop(std::os::unix::net::UnixListener::bind(dir.path("gw.sock")).unwrap());
    let d = start(&dir, None, Some(0o000), "");
    let m = std::fs::symlink_metadata(&d.sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(
        m.mode() & 0o7777,
        0o600,
        "control socket mode with umask 000"
    );
    assert_eq!(m.uid(), unsafe { libc::geteuid() });
    // The private directory it was bound in is gone.
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pgw"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(d);

    // With a control group: 0660, owned by that group (needs root to chown).
    if unsafe { libc::geteuid() } == 0 {
        let gid = pfsync_gw::config::account::lookup_group("daemon").expect("group daemon");
        let d = start(&dir, None, Some(0o000), "control_group = \"daemon\"");
        let m = std::fs::symlink_metadata(&d.sock).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o660);
        assert_eq!(m.gid(), gid);
        // A member of the group may ask (`status --config` does not need the keys, which
        // it cannot read); another unprivileged user may not.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (nobody, nogroup) = pfsync_gw::config::account::lookup_user("nobody").unwrap();
        let cfg = dir.path("gw.toml");
        let ask = |gid: u32| {
            Command::new(bin())
                .args(["status", "--json", "--config"])
                .arg(&cfg)
                .uid(nobody)
                .gid(gid)
                .output()
                .unwrap()
        };
        let o = ask(gid);
        assert!(o.status.success(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("\"node\""));
        let o = ask(nogroup);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    }
}

#[test]
fn idle_clients_beyond_the_cap_do_not_block_others() {
    // The attack at the usual limit: ~1,030 idle connections used to exhaust the
    // descriptors and end both loops.
    let dir = Dir::new("lh-idle");
    let d = start(&dir, Some(1024), None, "");
    let mut idle_tcp = Vec::new();
    for _ in 0..1100 {
        idle_tcp.push(TcpStream::connect(d.metrics).unwrap());
    }
    let mut idle_unix = Vec::new();
    for _ in 0..200 {
        idle_unix.push(UnixStream::connect(&d.sock).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds = open_fds(d.child.id());
    // The caps hold: 64 per listener plus the daemon's own sockets.
    assert!(fds < 2 * 64 + 40, "daemon holds {fds} descriptors");
    let t_status = within("status during the flood", Duration::from_secs(2), || {
        status(&d)
    });
    let t_metrics = within("/metrics during the flood", Duration::from_secs(2), || {
        get_metrics(&d)
    });
    eprintln!(
        "1100 idle /metrics + 200 idle control clients: daemon holds {fds} fds; status {t_status:?}, /metrics {t_metrics:?}"
    );
    drop(idle_tcp);
    drop(idle_unix);
    let page = get_metrics(&d).unwrap();
    assert!(admin_counter(&page, "metrics", "evicted") >= 1000, "{page}");
    assert!(admin_counter(&page, "control", "evicted") >= 130, "{page}");
    status(&d).unwrap();
}

#[test]
fn descriptor_exhaustion_is_survived() {
    // RLIMIT_NOFILE 40: far fewer descriptors than the clients we open.
    let dir = Dir::new("lh-emfile");
    let d = start(&dir, Some(40), None, "");
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(d.metrics).unwrap());
    }
    let t = Instant::now();
    while open_fds(d.child.id()) < 38 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the descriptors were not exhausted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // /metrics keeps answering: on EMFILE it closes its oldest client to make room.
    let t_during = within(
        "/metrics while out of descriptors",
        Duration::from_secs(3),
        || get_metrics(&d),
    );
    drop(idle);
    // After the clients are gone, both loops are back.
    let t = Instant::now();
    within("status after exhaustion", Duration::from_secs(3), || {
        status(&d)
    });
    within("/metrics after exhaustion", Duration::from_secs(3), || {
        get_metrics(&d)
    });
    let page = get_metrics(&d).unwrap();
    assert!(
        admin_counter(&page, "metrics", "accept_error") >= 1,
        "EMFILE never happened:\n{page}"
    );
    eprintln!(
        "RLIMIT_NOFILE 40, 400 idle clients: /metrics answered in {t_during:?} during, both back {:?} after",
        t.elapsed()
    );
    let log = d.log();
    assert!(log.contains("accept failed"), "{log}");
}

#[test]
fn slow_and_oversized_clients_are_cut_off() {
    let dir = Dir::new("lh-slow");
    let d = start(&dir, None, None, "");
    // An oversized request is answered with an error, not read forever.
    let mut s = UnixStream::connect(&d.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(&[b'x'; 1000]).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("longer than"),
        "{out}"
    );
    // A garbage request gets a JSON error, properly escaped.
    let mut s = UnixStream::connect(&d.sock).unwrap();
    s.write_all(b"st\x01\"atus\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("unknown request"));

    // Slowloris: a client that never finishes its request is closed after the deadline.
    let t = Instant::now();
    let mut slow = UnixStream::connect(&d.sock).unwrap();
    slow.write_all(b"sta").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let n = slow.read_to_end(&mut rest).unwrap_or(0);
    let waited = t.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(10),
        "slow client closed after {waited:?}"
    );
    let mut slow_http = TcpStream::connect(d.metrics).unwrap();
    slow_http.write_all(b"GET /metr").unwrap();
    slow_http
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = slow_http.read_to_end(&mut rest);
    let page = get_metrics(&d).unwrap();
    assert_eq!(admin_counter(&page, "control", "timed_out"), 1, "{page}");
    assert_eq!(admin_counter(&page, "metrics", "timed_out"), 1, "{page}");
    assert_eq!(admin_counter(&page, "control", "bad_request"), 2, "{page}");
    // A wrong path is a 404.
    let mut s = TcpStream::connect(d.metrics).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 404"), "{out}");
}

// ---- least privilege (`[node] user`) ----------------------------------------------------

/// `Key:\tvalue` lines of /proc/<pid>/task/<tid>/status for every thread of `pid`.
fn proc_status(pid: u32) -> Vec<std::collections::HashMap<String, String>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let text = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        out.push(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        );
    }
    out
}

/// Every thread of `pid` runs as `uid`/`gid` with exactly `caps` (hex bitmask) in the
/// permitted, effective and bounding sets, none inheritable or ambient, no new privileges.
fn assert_dropped(pid: u32, uid: u32, gid: u32, caps: u64) {
    assert_caps(pid, uid, gid, &[gid], caps, caps)
}

/// Like [`assert_dropped`], with the supplementary groups and bounding set given.
fn assert_caps(pid: u32, uid: u32, gid: u32, groups: &[u32], caps: u64, bounding: u64) {
    let want = format!("{caps:016x}");
    for st in proc_status(pid) {
        let ids = |k: &str| -> Vec<u32> {
            st[k]
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect()
        };
        assert_eq!(ids("Uid"), vec![uid; 4], "{st:?}");
        assert_eq!(ids("Gid"), vec![gid; 4], "{st:?}");
        assert_eq!(ids("Groups"), groups, "{st:?}");
        for k in ["CapPrm", "CapEff"] {
            assert_eq!(st[k], want, "{k}: {st:?}");
        }
        assert_eq!(st["CapBnd"], format!("{bounding:016x}"), "{st:?}");
        for k in ["CapInh", "CapAmb"] {
            assert_eq!(st[k], "0000000000000000", "{k}: {st:?}");
        }
        assert_eq!(st["NoNewPrivs"], "1");
    }
}

fn query(sock: &std::path::Path) -> Option<pfsync_gw::node::status::Status> {
    pfsync_gw::node::control::query(sock).ok()
}

fn wait(what: &str, limit: Duration, d: &[&Daemon], mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            for x in d {
                eprintln!("--- {}:\n{}", x.log.display(), x.log());
            }
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn privilege_drop_emulator_mode_relays_and_reloads() {
    if !is_root() {
        eprintln!("SKIP privilege_drop_emulator_mode_relays_and_reloads: needs root");
        return;
    }
    let (nobody, nogroup) = pfsync_gw::config::account::lookup_user("nobody").unwrap();
    let dir = Dir::new("lh-drop");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (pa, pb, pc) = (
        keygen(&dir.0, "a.key"),
        keygen(&dir.0, "b.key"),
        keygen(&dir.0, "c.key"),
    );
    // a's key belongs to the account a drops to, so a can re-read it on SIGHUP.
    std::os::unix::fs::chown(dir.path("a.key"), Some(nobody), None).unwrap();
    let (qa, qb) = (free_udp_port(), free_udp_port());
    let write = |me: &str, extra: &str, rate: u32, hostid: u32, peers: &[(&str, &str, u16)]| {
        let mut t = format!(
            "[node]\nname = \"{me}\"\nprivate_key_file = \"{me}.key\"\nlisten = \"127.0.0.1:{}\"\n\
             control_socket = \"{me}.sock\"\n{extra}\n[local]\nmode = \"emulator\"\n\
             dialect = \"openbsd-v6\"\n\n[emulator]\nhostid = {hostid}\nrate = {rate}\n",
            if me == "a" { qa } else { qb }
        );
        for (n, k, p) in peers {
            t += &format!(
                "\n[[peer]]\nname = \"{n}\"\npublic_key = \"{k}\"\nendpoint = \"127.0.0.1:{p}\"\npersistent_keepalive = 1\n"
            );
        }
        let p = dir.path(&format!("{me}.toml"));
        std::fs::write(&p, t).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    write("a", "user = \"nobody\"", 200, 0xa, &[("b", &pb, qb)]);
    write("b", "", 0, 0xb, &[("a", &pa, qa)]);
    let a = spawn(&dir, "a", None, None, None);
    let b = spawn(&dir, "b", None, None, None);
    wait("a–b tunnel", Duration::from_secs(10), &[&a, &b], || {
        query(&a.sock).is_some_and(|s| s.peers.iter().any(|p| p.established))
    });
    assert_dropped(a.child.id(), nobody, nogroup, 0);
    assert!(a.log().contains("privileges dropped"), "{}", a.log());
    // The control socket stays root's, 0600: created before the drop.
    let m = std::fs::symlink_metadata(&a.sock).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));

    // Relaying works after the drop: b's firewall creates nothing, so every state it holds
    // came from a's firewall through the unprivileged a.
    wait(
        "a's states at b's firewall",
        Duration::from_secs(15),
        &[&a, &b],
        || query(&b.sock).is_some_and(|s| s.firewall.is_some_and(|f| f.states > 100)),
    );

    // SIGHUP as nobody: the config (root's, 0644) and a's key (nobody's) are re-read.
    write(
        "a",
        "user = \"nobody\"",
        200,
        0xa,
        &[("b", &pb, qb), ("c", &pc, 9)],
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGHUP) };
    wait(
        "peer c after SIGHUP",
        Duration::from_secs(10),
        &[&a],
        || query(&a.sock).is_some_and(|s| s.peers.iter().any(|p| p.name == "c")),
    );
    assert!(!a.log().contains("reload failed"), "{}", a.log());
    let st = query(&a.sock).unwrap();
    assert!(st.peers.iter().any(|p| p.name == "b" && p.established));
    assert_eq!(st.local.get("config_reloads"), Some(&1), "{:?}", st.local);

    // A config that does not parse is refused, logged and counted; the running one stays.
    std::fs::write(dir.path("a.toml"), "[node\n").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGHUP) };
    wait(
        "the refused reload counted",
        Duration::from_secs(10),
        &[&a],
        || query(&a.sock).is_some_and(|s| s.local.get("config_reload_failures") == Some(&1)),
    );
    assert!(a.log().contains("reload failed"), "{}", a.log());
    let st = query(&a.sock).unwrap();
    assert!(st.peers.iter().any(|p| p.name == "c"), "{:?}", st.peers);
    assert_eq!(st.local.get("config_reloads"), Some(&1));
}

#[test]
fn privilege_drop_needs_root_or_that_user() {
    if !is_root() {
        return;
    }
    // The daemon already runs as nobody and is told to become daemon: exit 1, clear error.
    let dir = Dir::new("lh-drop2");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    keygen(&dir.0, "gw.key");
    let (nobody, nogroup) = pfsync_gw::config::account::lookup_user("nobody").unwrap();
    std::os::unix::fs::chown(dir.path("gw.key"), Some(nobody), None).unwrap();
    let cfg = dir.path("gw.toml");
    std::fs::write(
        &cfg,
        "[node]\nprivate_key_file = \"gw.key\"\nlisten = \"127.0.0.1:0\"\nuser = \"daemon\"\n\
         [local]\nmode = \"emulator\"\ndialect = \"openbsd-v6\"\n",
    )
    .unwrap();
    std::os::unix::fs::chown(&cfg, Some(nobody), None).unwrap();
    let mut c = Command::new(bin());
    c.args(["run", "--config"])
        .arg(&cfg)
        .uid(nobody)
        .gid(nogroup);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("only root can switch to user `daemon`"),
        "{err}"
    );
}

#[test]
fn privilege_drop_raw_mode_keeps_only_cap_net_raw_and_relays() {
    use common::capture::{RawPf, PFSYNC_GROUP};
    use common::gw::{Net, SYNC_IF};
    use common::pf::{packet, tcp_state};
    use pfsync_gw::wire::Message;
    if common::netns::skip_unless_root("privilege_drop_raw_mode_keeps_only_cap_net_raw_and_relays")
    {
        return;
    }
    let (nobody, nogroup) = pfsync_gw::config::account::lookup_user("nobody").unwrap();
    let net = Net::new("drop", 2, false);
    let with_user = |i: usize| {
        let cfg = net.write_gw_config(i, "");
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "[node]\n",
            "[node]\nuser = \"nobody\"\n",
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    // gw-a starts as root and drops to nobody after opening its raw socket.
    with_user(0);
    net.start_gw(0);
    // gw-b starts the way the systemd unit starts it: already the service user, with
    // ambient CAP_NET_RAW + CAP_NET_ADMIN; it drops CAP_NET_ADMIN after start-up.
    let cfg_b = with_user(1);
    let run_dir = net.lab.path("run-b");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(nobody), Some(nogroup)).unwrap();
    let sock_b = run_dir.join("control.sock");
    let text = std::fs::read_to_string(&cfg_b).unwrap().replace(
        &format!("control_socket = \"{}\"", net.control_socket(1).display()),
        &format!("control_socket = \"{}\"", sock_b.display()),
    );
    std::fs::write(&cfg_b, text).unwrap();
    std::os::unix::fs::chown(&net.site(1).keys.private_file, Some(nobody), None).unwrap();
    net.lab.spawn(
        "gw-b",
        &net.site(1).gw_ns,
        "setpriv",
        &[
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all,+net_raw,+net_admin",
            "--ambient-caps=-all,+net_raw,+net_admin",
            "--bounding-set=-all,+net_raw,+net_admin",
            bin(),
            "run",
            "--config",
            cfg_b.to_str().unwrap(),
        ],
        &[],
    );
    common::poll::wait_for("gw-b (setpriv) up", Duration::from_secs(10), |last| {
        if let Err(e) = net.lab.check_running("gw-b") {
            panic!("{e}");
        }
        common::gw::status(&sock_b).map_err(|e| *last = e).ok()
    });
    common::poll::wait_for("gw-b's tunnel", Duration::from_secs(15), |last| {
        let st = common::gw::status(&sock_b).map_err(|e| *last = e).ok()?;
        st.peers.iter().all(|p| p.established).then_some(())
    });
    net.wait_established(&[0], Duration::from_secs(15));
    let raw = 1u64 << pfsync_gw::node::privdrop::CAP_NET_RAW;
    let pid = net.lab.pid("gw-a").expect("gw-a pid");
    assert_dropped(pid, nobody, nogroup, raw);
    let pid = net.lab.pid("gw-b").expect("gw-b pid");
    // CAP_NET_ADMIN (bit 12) is gone from the usable sets; only root could shrink the
    // bounding set, and nothing can raise a capability back from it (NO_NEW_PRIVS).
    assert_caps(pid, nobody, nogroup, &[], raw, raw | 1 << 12);

    // Both directions through the unprivileged gateway: its raw socket captures (fw-a →)
    // and injects (→ fw-a) with only CAP_NET_RAW left.
    for (from, to, creator) in [(0, 1, 0xa), (1, 0, 0xb)] {
        let tx = RawPf::open(&net.site(from).fw_ns, SYNC_IF, true);
        let rx = RawPf::open(&net.site(to).fw_ns, SYNC_IF, true);
        let p = packet(&[Message::Ins(tcp_state(0x100 + creator as u64, creator))]);
        tx.send(&p, PFSYNC_GROUP);
        let t = Instant::now();
        let mut got = false;
        while let Some(left) = Duration::from_secs(5).checked_sub(t.elapsed()) {
            match rx.recv(left) {
                Some(q) if q.payload == p => {
                    assert_eq!(q.ttl, 255);
                    got = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        assert!(
            got,
            "fw-{} → fw-{} not relayed; gw-a: {:?}",
            net.site(from).name,
            net.site(to).name,
            net.status(0)
        );
    }
}

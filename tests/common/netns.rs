//! Network namespaces, veths, bridges, nftables and child processes of one test ("lab").
//!
//! Every name a lab creates carries `pgw-<pid>-<tag>`, so tests can run in parallel and a
//! crashed run's leftovers can be told apart (and are removed by the next lab whose pid
//! differs, see [`reap_stale`]). Interfaces are created directly inside their namespaces
//! (`ip -n NS link add ... peer ... netns NS2`), so their names only need to be unique per
//! namespace and stay short and readable (`sync0`, `tr0`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PREFIX: &str = "pgw-";
const NETNS_DIR: &str = "/var/run/netns";

/// Held by a test that loads the cores or measures time: tests of one binary run in
/// parallel, and a second such test would starve the first's daemons (a test of a slow
/// peer once saw its own gateway fall behind because the overload test ran beside it).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True (after printing why) when the test cannot run here and must return early.
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (network namespaces, raw sockets); CI runs as root");
        return true;
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP {test}: `{tool}` (iproute2/nftables) is not installed");
            return true;
        }
    }
    false
}

/// Run a command, panic with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Delete namespaces left behind by test processes that no longer exist.
pub fn reap_stale() {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// nftables table the labs use for impairments.
pub const NFT_TABLE: &str = "pgwtest";

/// What [`Lab::impair`] does to tunnel traffic on the transit bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impair {
    None,
    /// Drop this percentage of datagrams, at random, each way.
    Loss(u32),
    /// Drop everything.
    Partition,
}

struct Proc {
    child: Child,
    ns: String,
    log: PathBuf,
}

/// One test's namespaces, temp dir and processes; everything is torn down on drop,
/// including when the test panics (then the processes' logs are printed first).
pub struct Lab {
    /// `pgw-<pid>-<tag>`: prefix of every namespace of this lab.
    pub id: String,
    /// Temp dir for configs, keys, sockets, logs and status files.
    pub dir: PathBuf,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<BTreeMap<String, Proc>>,
    started: Instant,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        reap_stale();
        let id = format!("{PREFIX}{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create lab dir");
        Lab {
            id,
            dir,
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        }
    }

    /// Seconds since the lab was created, for progress messages.
    pub fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Print a timestamped progress line (shown with `--nocapture` or on failure).
    pub fn log(&self, msg: &str) {
        eprintln!("[{} +{:6.2}s] {msg}", self.id, self.t());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Full namespace name for `role` (not created).
    pub fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    /// Create namespace `role` with `lo` up; returns its full name.
    pub fn add_ns(&self, role: &str) -> String {
        let ns = self.ns_name(role);
        ip(&["netns", "add", &ns]);
        self.namespaces.lock().unwrap().push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // No IPv6 autoconf chatter on the links (keeps captures to what the test sent), and
        // no routing: new namespaces may inherit ip_forward=1 from the host, and a gateway
        // that routes transit traffic onto the sync link is not what is under test.
        for kv in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.ip_forward=0",
        ] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw", kv])
                .stderr(Stdio::null())
                .status();
        }
        ns
    }

    /// A veth pair `ns_a:if_a` <-> `ns_b:if_b`, both up.
    pub fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) {
        ip(&[
            "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ]);
        ip(&["-n", ns_a, "link", "set", if_a, "up"]);
        ip(&["-n", ns_b, "link", "set", if_b, "up"]);
    }

    /// An interface with nobody else on it (a veth whose peer `<ifname>p` stays in the same
    /// namespace; the `dummy` module is not available on every CI kernel), up.
    pub fn lone_link(&self, ns: &str, ifname: &str) {
        let peer = format!("{ifname}p");
        ip(&[
            "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
        ip(&["-n", ns, "link", "set", &peer, "up"]);
    }

    /// A Linux bridge `br` in `ns`, up, forwarding immediately (no STP delay).
    pub fn bridge(&self, ns: &str, br: &str) {
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            br,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
            // Multicast must be flooded to every port, not snooped (nobody sends IGMP queries).
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", ns, "link", "set", br, "up"]);
    }

    /// Enslave `ns:ifname` to bridge `br` in the same namespace.
    pub fn attach(&self, ns: &str, ifname: &str, br: &str) {
        ip(&["-n", ns, "link", "set", ifname, "master", br]);
    }

    /// Add `cidr` (e.g. `10.1.0.1/24`) to `ns:ifname`.
    pub fn addr(&self, ns: &str, ifname: &str, cidr: &str) {
        ip(&["-n", ns, "addr", "add", cidr, "dev", ifname]);
    }

    /// Load an nftables ruleset (`nft -f -`) in `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {ns} failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Delete an nftables table (`family` e.g. `bridge`, `inet`) in `ns`.
    pub fn nft_delete_table(&self, ns: &str, family: &str, table: &str) {
        run(Command::new("ip").args(["netns", "exec", ns, "nft", "delete", "table", family, table]));
    }

    /// Impair tunnel UDP (`udp dport port`) crossing the bridge in namespace `ns`
    /// (replaces any previous impairment; `Impair::None` heals).
    pub fn impair(&self, ns: &str, port: u16, how: Impair) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", ns, "nft", "delete", "table", "bridge", NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
        let rule = match how {
            Impair::None => return,
            Impair::Loss(pct) => format!("udp dport {port} numgen random mod 100 < {pct} drop"),
            Impair::Partition => format!("udp dport {port} drop"),
        };
        // Bridge family: the transit namespace only switches frames, it never routes.
        self.nft(
            ns,
            &format!(
                "table bridge {NFT_TABLE} {{\n chain filt {{\n  type filter hook forward priority 0; policy accept;\n  {rule}\n }}\n}}\n"
            ),
        );
    }

    /// Spawn `program args` inside `ns` (via `ip netns exec`, which execs, so the child
    /// pid is the program's), stdout+stderr appended to `<dir>/<name>.log`.
    /// `name` identifies the process for [`Lab::kill`] and log dumps.
    pub fn spawn(&self, name: &str, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = self.path(&format!("{name}.log"));
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let _ = writeln!(
            f,
            "=== +{:.2}s start {program} {}",
            self.t(),
            args.join(" ")
        );
        let f2 = f.try_clone().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            // Plain logs (tracing honours NO_COLOR).
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let old = self.procs.lock().unwrap().insert(
            name.to_string(),
            Proc {
                child,
                ns: ns.to_string(),
                log,
            },
        );
        assert!(old.is_none(), "process name `{name}` already running");
    }

    /// The pid of process `name` (`ip netns exec` execs it, so it is the child's pid).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.lock().unwrap().get(name).map(|p| p.child.id())
    }

    /// Send `sig` to process `name` and reap it (waits up to 5 s, then SIGKILL).
    pub fn kill(&self, name: &str, sig: i32) {
        let p = self.procs.lock().unwrap().remove(name);
        let Some(mut p) = p else {
            panic!("no process `{name}`");
        };
        stop_child(&mut p.child, sig);
        self.note(&p.log, &format!("stopped with signal {sig}"));
    }

    /// Send `sig` to process `name` and leave it registered (SIGSTOP, SIGCONT).
    pub fn signal(&self, name: &str, sig: i32) {
        let procs = self.procs.lock().unwrap();
        let p = procs
            .get(name)
            .unwrap_or_else(|| panic!("no process `{name}`"));
        // SAFETY: kill(2) on our own child's pid; it is not reaped while registered.
        unsafe { libc::kill(p.child.id() as i32, sig) };
    }

    /// True while process `name` runs; if it exited, says how (and keeps it registered
    /// so its log is still dumped).
    pub fn check_running(&self, name: &str) -> Result<(), String> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .get_mut(name)
            .ok_or_else(|| format!("no process `{name}`"))?;
        match p.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "`{name}` exited ({st}); log:\n{}",
                tail(&p.log, 40)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Wait for process `name` to exit by itself; returns its exit code.
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            {
                let mut procs = self.procs.lock().unwrap();
                let p = procs.get_mut(name).expect("process");
                if let Ok(Some(st)) = p.child.try_wait() {
                    return st.code();
                }
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of process `name`'s log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.path(&format!("{name}.log")), lines)
    }

    fn note(&self, log: &Path, msg: &str) {
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "=== +{:.2}s {msg}", self.t());
        }
    }
}

fn stop_child(child: &mut Child, sig: i32) {
    // SAFETY: signalling our own child by pid; it has not been reaped yet, so the pid
    // cannot have been reused.
    unsafe { libc::kill(child.id() as i32, sig) };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > end => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, mut p) in procs {
            stop_child(&mut p.child, libc::SIGKILL);
            if failed {
                eprintln!(
                    "----- {name} (ns {}) log, last 80 lines ({}):\n{}",
                    p.ns,
                    p.log.display(),
                    tail(&p.log, 80)
                );
            }
        }
        let nss = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in nss.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if failed {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

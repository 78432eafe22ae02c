//! Two `pfsync-gw emulate` processes in network namespaces joined by a veth pair, syncing
//! directly over real pfsync (raw IP protocol 240, TTL 255, 224.0.0.240): the "plain pfsync
//! without gateway" baseline. Needs root (netns, raw sockets); skipped with a reason otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A private copy of the binary: a target directory shared by several checkouts may get
/// its `pfsync-gw` replaced by another build while these tests run.
fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dst = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pfsync-gw-emulator-test-{}", std::process::id()));
        std::fs::copy(env!("CARGO_BIN_EXE_pfsync-gw"), &dst).expect("copy the binary");
        let help = Command::new(&dst)
            .args(["emulate", "--help"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--initial-states"),
            "{} is not this checkout's build (shared target directory?)",
            env!("CARGO_BIN_EXE_pfsync-gw")
        );
        dst
    })
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces joined by a veth pair (10.77.x.1 / 10.77.x.2); removed on drop.
struct Pair {
    ns: [String; 2],
    dev: [String; 2],
    dir: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pair {
    fn new() -> Result<Pair, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces and raw sockets need it".into());
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let ns = [format!("pfema{tag}"), format!("pfemb{tag}")];
        let dev = [format!("pa{tag}"), format!("pb{tag}")];
        bin();
        if !ip(&["netns", "add", &ns[0]]) {
            return Err("cannot create network namespaces (`ip netns add` failed)".into());
        }
        let p = Pair {
            ns: ns.clone(),
            dev: dev.clone(),
            dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emulator-netns-{tag}")),
        };
        let subnet = 1 + (std::process::id() + n) % 250;
        let ok = ip(&["netns", "add", &ns[1]])
            && ip(&[
                "link", "add", &dev[0], "type", "veth", "peer", "name", &dev[1],
            ])
            && (0..2).all(|i| {
                let addr = format!("10.77.{subnet}.{}/24", i + 1);
                ip(&["link", "set", &dev[i], "netns", &ns[i]])
                    && ip(&["-n", &ns[i], "addr", "add", &addr, "dev", &dev[i]])
                    && ip(&["-n", &ns[i], "link", "set", &dev[i], "up"])
                    && ip(&["-n", &ns[i], "link", "set", "lo", "up"])
            });
        if !ok {
            return Err("cannot set up the veth pair".into());
        }
        std::fs::create_dir_all(&p.dir).map_err(|e| e.to_string())?;
        Ok(p)
    }

    fn status(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i}.json"))
    }

    /// Start `pfsync-gw emulate` in namespace `i` on its veth end.
    fn emulate(&self, i: usize, extra: &[&str]) -> Child {
        let _ = std::fs::remove_file(self.status(i));
        let status = self.status(i);
        let mut args = vec![
            "netns",
            "exec",
            &self.ns[i],
            bin().to_str().unwrap(),
            "emulate",
            "--interface",
            &self.dev[i],
            "--status-file",
            status.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn emulate")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.ns {
            ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_status(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| {
        let dir: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        panic!("{}: {e} (directory holds {dir:?})", p.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
}

fn wait_ok(mut c: Child, limit: Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "emulate exited with {st}");
            return;
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            panic!("emulate did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn no_drops(v: &serde_json::Value) {
    for (k, n) in v["drops"].as_object().unwrap() {
        assert_eq!(n, 0, "drop counter {k}: {v}");
    }
}

#[test]
fn plain_pfsync_between_two_emulators_converges_in_every_dialect() {
    let pair = match Pair::new() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    for d in [
        "openbsd-v6",
        "freebsd-1400",
        "freebsd-1301",
        "freebsd-1500",
        "netbsd-v3",
    ] {
        let common = [
            "--dialect",
            d,
            "--rate",
            "300",
            "--churn-for",
            "2.5",
            "--duration",
            "4.5",
        ];
        let a = pair.emulate(
            0,
            &[&common[..], &["--hostid", "0xa1", "--seed", "1"]].concat(),
        );
        let b = pair.emulate(
            1,
            &[&common[..], &["--hostid", "0xb2", "--seed", "2"]].concat(),
        );
        wait_ok(a, Duration::from_secs(20));
        wait_ok(b, Duration::from_secs(20));
        let (sa, sb) = (read_status(&pair.status(0)), read_status(&pair.status(1)));
        assert_eq!(sa["dialect"], d);
        assert_eq!(sa["hostid"], "000000a1");
        assert_eq!(sa["churning"], false);
        assert!(sa["created"].as_u64().unwrap() > 300, "{d}: {sa}");
        assert!(sa["deleted"].as_u64().unwrap() > 0, "{d}: {sa}");
        assert!(sb["received_packets"].as_u64().unwrap() > 10, "{d}: {sb}");
        assert!(sa["received_packets"].as_u64().unwrap() > 10, "{d}: {sa}");
        assert_eq!(sa["states"], sb["states"], "{d}:\n{sa}\n{sb}");
        assert_eq!(sa["digest"], sb["digest"], "{d}:\n{sa}\n{sb}");
        no_drops(&sa);
        no_drops(&sb);
    }
}

#[test]
fn late_joiner_catches_up_by_bulk_update() {
    let pair = match Pair::new() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let a = pair.emulate(
        0,
        &[
            "--dialect",
            "openbsd-v6",
            "--hostid",
            "0xa1",
            "--initial-states",
            "2000",
            "--churn-for",
            "0",
            "--duration",
            "5",
        ],
    );
    // Let A's INS burst pass unheard: B must get everything from the bulk.
    std::thread::sleep(Duration::from_millis(1500));
    let b = pair.emulate(
        1,
        &[
            "--dialect",
            "openbsd-v6",
            "--hostid",
            "0xb2",
            "--rate",
            "0",
            "--bulk",
            "--duration",
            "2",
        ],
    );
    wait_ok(b, Duration::from_secs(20));
    wait_ok(a, Duration::from_secs(20));
    let (sa, sb) = (read_status(&pair.status(0)), read_status(&pair.status(1)));
    assert_eq!(sa["states"], 2000);
    assert_eq!(sb["states"], 2000, "{sb}");
    assert_eq!(sa["digest"], sb["digest"]);
    assert_eq!(sa["bulk_sent"], 1, "{sa}");
    assert_eq!(sb["bulk_done"], true, "{sb}");
    no_drops(&sb);
}

//! The standard topology and the daemons on it.
//!
//! ```text
//! fw-a ─sync0──sync0─ gw-a ─tr0──┐                 ┌──tr0─ gw-b ─sync0──sync0─ fw-b
//!  10.1.0.2      10.1.0.1  10.99.0.1   [transit: br0]   10.99.0.2  10.2.0.1     10.2.0.2
//!                                         │    │
//!                        attacker 10.99.0.66   gw-c 10.99.0.3 (─ fw-c, 10.3.0.0/24)
//! ```
//!
//! Site `i` (0-based, `a`, `b`, `c`…) has sync subnet `10.<i+1>.0.0/24` (gateway `.1`,
//! firewall `.2`) and transit address `10.99.0.<i+1>`. Gateways are `pfsync-gw run` with
//! `[local] mode = "raw"` on `sync0`; keys come from `pfsync-gw keygen`/`pubkey`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pfsync_gw::node::status::Status;

use super::netns::{run, Lab};
use super::poll::wait_for;

pub const SYNC_IF: &str = "sync0";
pub const TRANSIT_IF: &str = "tr0";
pub const TUNNEL_PORT: u16 = 51900;
pub const ATTACKER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 66);

pub use super::proc::bin;

/// A key pair made by the CLI: private key file (0600) and base64 public key.
#[derive(Debug, Clone)]
pub struct Keys {
    pub private_file: PathBuf,
    pub public: String,
}

pub fn keygen(lab: &Lab, name: &str) -> Keys {
    let private_file = lab.path(&format!("{name}.key"));
    run(Command::new(bin()).args(["keygen", "--out", private_file.to_str().unwrap()]));
    let out = Command::new(bin())
        .arg("pubkey")
        .stdin(std::fs::File::open(&private_file).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "pubkey failed");
    Keys {
        private_file,
        public: String::from_utf8(out.stdout).unwrap().trim().to_string(),
    }
}

/// One site: a firewall namespace and its gateway namespace.
#[derive(Debug, Clone)]
pub struct Site {
    /// `a`, `b`, `c`…
    pub name: String,
    pub fw_ns: String,
    pub gw_ns: String,
    pub fw_addr: Ipv4Addr,
    pub gw_sync_addr: Ipv4Addr,
    pub gw_transit: Ipv4Addr,
    pub keys: Keys,
}

impl Site {
    pub fn gw(&self) -> String {
        format!("gw-{}", self.name)
    }
    pub fn emu(&self) -> String {
        format!("fw-{}", self.name)
    }
    pub fn tunnel_addr(&self) -> SocketAddr {
        SocketAddr::from((self.gw_transit, TUNNEL_PORT))
    }
}

/// A lab with the standard topology.
pub struct Net {
    pub lab: Lab,
    pub transit_ns: String,
    pub sites: Vec<Site>,
    pub attacker_ns: Option<String>,
}

const SITE_NAMES: [&str; 3] = ["a", "b", "c"];

impl Net {
    /// `n_sites` sites (≤ 3) on the transit bridge, plus the attacker if asked.
    pub fn new(tag: &str, n_sites: usize, attacker: bool) -> Net {
        let lab = Lab::new(tag);
        let transit_ns = lab.add_ns("transit");
        lab.bridge(&transit_ns, "br0");
        let mut sites = Vec::new();
        for (i, name) in SITE_NAMES.iter().enumerate().take(n_sites) {
            let fw_ns = lab.add_ns(&format!("fw{name}"));
            let gw_ns = lab.add_ns(&format!("gw{name}"));
            let n = i as u8 + 1;
            lab.veth(&fw_ns, SYNC_IF, &gw_ns, SYNC_IF);
            lab.addr(&fw_ns, SYNC_IF, &format!("10.{n}.0.2/24"));
            lab.addr(&gw_ns, SYNC_IF, &format!("10.{n}.0.1/24"));
            let port = format!("p{name}");
            lab.veth(&gw_ns, TRANSIT_IF, &transit_ns, &port);
            lab.attach(&transit_ns, &port, "br0");
            lab.addr(&gw_ns, TRANSIT_IF, &format!("10.99.0.{n}/24"));
            let keys = keygen(&lab, &format!("gw-{name}"));
            sites.push(Site {
                name: name.to_string(),
                fw_ns,
                gw_ns,
                fw_addr: Ipv4Addr::new(10, n, 0, 2),
                gw_sync_addr: Ipv4Addr::new(10, n, 0, 1),
                gw_transit: Ipv4Addr::new(10, 99, 0, n),
                keys,
            });
        }
        let attacker_ns = attacker.then(|| {
            let ns = lab.add_ns("attacker");
            lab.veth(&ns, TRANSIT_IF, &transit_ns, "patk");
            lab.attach(&transit_ns, "patk", "br0");
            lab.addr(&ns, TRANSIT_IF, &format!("{ATTACKER_ADDR}/24"));
            ns
        });
        Net {
            lab,
            transit_ns,
            sites,
            attacker_ns,
        }
    }

    pub fn site(&self, i: usize) -> &Site {
        &self.sites[i]
    }

    pub fn attacker(&self) -> &str {
        self.attacker_ns
            .as_deref()
            .expect("net built without attacker")
    }

    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.lab.path(&format!("{}.sock", self.sites[i].gw()))
    }

    /// Write gateway `i`'s config: raw mode on `sync0`, every other site as a peer.
    pub fn write_gw_config(&self, i: usize, extra_local: &str) -> PathBuf {
        let s = &self.sites[i];
        let mut t = format!(
            "[node]\nname = \"{}\"\nprivate_key_file = \"{}\"\nlisten = \"{}\"\ncontrol_socket = \"{}\"\n\n\
             [local]\nmode = \"raw\"\ninterface = \"{SYNC_IF}\"\ndialect = \"openbsd-v6\"\nfirewalls = [\"{}\"]\n{extra_local}\n",
            s.gw(),
            s.keys.private_file.display(),
            s.tunnel_addr(),
            self.control_socket(i).display(),
            s.fw_addr,
        );
        for (j, p) in self.sites.iter().enumerate() {
            if j != i {
                t.push_str(&format!(
                    "\n[[peer]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}\"\n",
                    p.gw(),
                    p.keys.public,
                    p.tunnel_addr()
                ));
            }
        }
        let path = self.lab.path(&format!("{}.toml", s.gw()));
        std::fs::write(&path, t).unwrap();
        path
    }

    /// Start gateway `i` (config written if missing) and wait for its control socket.
    pub fn start_gw(&self, i: usize) {
        let cfg = self.lab.path(&format!("{}.toml", self.sites[i].gw()));
        if !cfg.exists() {
            self.write_gw_config(i, "");
        }
        let s = &self.sites[i];
        let sock = self.control_socket(i);
        let _ = std::fs::remove_file(&sock);
        self.lab.spawn(
            &s.gw(),
            &s.gw_ns,
            bin(),
            &["run", "--config", cfg.to_str().unwrap()],
            &[("RUST_LOG", "info")],
        );
        wait_for(
            &format!("{} control socket", s.gw()),
            Duration::from_secs(10),
            |last| {
                if let Err(e) = self.lab.check_running(&s.gw()) {
                    panic!("{e}");
                }
                status(&sock).map_err(|e| *last = e).ok()
            },
        );
    }

    pub fn kill_gw(&self, i: usize, sig: i32) {
        self.lab.kill(&self.sites[i].gw(), sig);
    }

    /// Signal gateway `i` without stopping it for good (SIGSTOP, SIGCONT).
    pub fn signal_gw(&self, i: usize, sig: i32) {
        self.lab.signal(&self.sites[i].gw(), sig);
    }

    pub fn status(&self, i: usize) -> Status {
        status(&self.control_socket(i)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until every gateway in `which` shows all its peers established.
    pub fn wait_established(&self, which: &[usize], timeout: Duration) -> Duration {
        let (_, took) = wait_for("tunnels established", timeout, |last| {
            for &i in which {
                let st = status(&self.control_socket(i)).ok()?;
                let down: Vec<_> = st
                    .peers
                    .iter()
                    .filter(|p| !p.established)
                    .map(|p| p.name.clone())
                    .collect();
                if down.is_empty() && !st.peers.is_empty() {
                    continue;
                }
                *last = format!("{}: peers down {down:?}", st.node);
                return None;
            }
            Some(())
        });
        took
    }
}

/// `pfsync-gw status --socket S --json`, parsed.
pub fn status(sock: &std::path::Path) -> Result<Status, String> {
    let out = Command::new(bin())
        .args(["status", "--socket", sock.to_str().unwrap(), "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad status JSON: {e}"))
}

/// One drop counter (0 when absent).
pub fn drop_count(st: &Status, reason: &str) -> u64 {
    st.drops.get(reason).copied().unwrap_or(0)
}

/// One activity counter of `local` (0 when absent).
pub fn local_count(st: &Status, k: &str) -> u64 {
    st.local.get(k).copied().unwrap_or(0)
}

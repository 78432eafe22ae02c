//! Configuration: one TOML file per node.
//!
//! Every error names the file, the field and the reason, so an operator can fix it without
//! reading the source; the CLI maps [`ConfigError`] to exit code 2.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::wire::Dialect;

pub mod keys;

pub use keys::{Key, KeyError};

/// Default UDP port of the tunnel.
pub const DEFAULT_PORT: u16 = 51900;

/// Process exit code for bad configuration, key or input files. Here, below `node` and
/// `cli`, because both report such errors.
pub const EXIT_BAD_INPUT: i32 = 2;

/// A configuration problem: which file, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the field (`peer[1].endpoint`), empty for whole-file problems.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: field `{}`: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// How the gateway talks to the firewall on the sync side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalMode {
    /// A real pf kernel (or `pfsync-gw emulate`) on `interface`: raw IP protocol 240.
    Raw,
    /// The in-process pf emulator (testbeds, demo).
    Emulator,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    node: RawNode,
    local: RawLocal,
    #[serde(default)]
    emulator: Option<RawEmulator>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(default)]
    name: Option<String>,
    private_key_file: PathBuf,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    control_socket: Option<PathBuf>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    mtu: Option<usize>,
    #[serde(default)]
    rekey_after_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default = "default_mode")]
    mode: LocalMode,
    #[serde(default)]
    interface: Option<String>,
    dialect: String,
    #[serde(default = "default_true")]
    capture_multicast: bool,
    #[serde(default)]
    inject_to: Option<String>,
}

fn default_mode() -> LocalMode {
    LocalMode::Raw
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmulator {
    #[serde(default)]
    hostid: Option<u32>,
    #[serde(default)]
    rate: Option<u32>,
    #[serde(default)]
    max_states: Option<usize>,
    #[serde(default)]
    maxupd: Option<u8>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    churn_for: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    public_key: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    preshared_key_file: Option<PathBuf>,
    #[serde(default)]
    persistent_keepalive: Option<u64>,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub name: String,
    pub private_key: Key,
    pub listen: SocketAddr,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// Largest tunnel datagram we send (bytes of UDP payload).
    pub mtu: usize,
    /// Test aid (`[node] rekey_after_secs`): rekey tunnel sessions this often instead of
    /// WireGuard's 120 s. `None` in production.
    pub rekey_after: Option<Duration>,
    pub local: LocalConfig,
    pub emulator: EmulatorConfig,
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub mode: LocalMode,
    pub interface: Option<String>,
    pub dialect: Dialect,
    pub capture_multicast: bool,
    /// Where injected pfsync goes: the group 224.0.0.240 or the firewall's unicast address.
    pub inject_to: Ipv4Addr,
}

#[derive(Debug, Clone, Default)]
pub struct EmulatorConfig {
    pub hostid: Option<u32>,
    /// State creations per second.
    pub rate: u32,
    pub max_states: usize,
    pub maxupd: u8,
    pub seed: Option<u64>,
    /// Stop creating/changing states after this long (the emulator keeps applying pfsync).
    pub churn_for: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub psk: Option<Key>,
    pub persistent_keepalive: Option<Duration>,
}

impl Config {
    /// Read, parse and validate `path`, loading the key files it references.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parse `text` as if read from `path` (relative key paths resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, reason: String| ConfigError {
            file: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            // A missing field is a schema error, not a syntax error: name table and field.
            if let Some(field) = e
                .message()
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                // The required top-level keys are tables (whose span is the whole file).
                let top = matches!(field, "node" | "local");
                let reason = match e.span().and_then(|s| table_at(text, s.start)) {
                    Some(table) if !top => format!("[{table}]: missing field `{field}`"),
                    _ => format!("missing table `[{field}]`"),
                };
                return err("", reason);
            }
            // toml's message carries line, column and the offending key; keep it on one line.
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            err("", format!("invalid TOML{at}: {msg}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let private_key = Key::load_file(&resolve(&raw.node.private_key_file))
            .map_err(|e| err("node.private_key_file", e.to_string()))?;
        let listen = match &raw.node.listen {
            None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            Some(s) => parse_addr(s).map_err(|r| err("node.listen", r))?,
        };
        let metrics_listen = match &raw.node.metrics_listen {
            None => None,
            Some(s) => Some(parse_addr(s).map_err(|r| err("node.metrics_listen", r))?),
        };
        let rekey_after = match raw.node.rekey_after_secs {
            None => None,
            Some(s) if !(1..=120).contains(&s) => {
                return Err(err(
                    "node.rekey_after_secs",
                    format!(
                        "{s} is outside 1..=120 seconds (a test aid; leave it out in production)"
                    ),
                ))
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        let mtu = raw.node.mtu.unwrap_or(1400);
        if !(576..=65_000).contains(&mtu) {
            return Err(err("node.mtu", format!("{mtu} is outside 576..=65000")));
        }

        let dialect = Dialect::from_name(&raw.local.dialect).ok_or_else(|| {
            err(
                "local.dialect",
                format!(
                    "unknown dialect `{}` (expected one of: {})",
                    raw.local.dialect,
                    Dialect::ALL.map(|d| d.name()).join(", ")
                ),
            )
        })?;
        if raw.local.mode == LocalMode::Raw && raw.local.interface.is_none() {
            return Err(err(
                "local.interface",
                "required when local.mode = \"raw\" (the pfsync sync interface)".into(),
            ));
        }
        let inject_to = match &raw.local.inject_to {
            None => crate::wire::PFSYNC_GROUP,
            Some(s) => s
                .parse::<Ipv4Addr>()
                .map_err(|e| err("local.inject_to", format!("`{s}`: {e}")))?,
        };

        let emu = raw.emulator.unwrap_or(RawEmulator {
            hostid: None,
            rate: None,
            max_states: None,
            maxupd: None,
            seed: None,
            churn_for: None,
        });
        if emu.hostid == Some(0) {
            return Err(err(
                "emulator.hostid",
                "0 is not a valid creator id (pf rejects it)".into(),
            ));
        }

        let mut peers = Vec::with_capacity(raw.peer.len());
        for (i, p) in raw.peer.iter().enumerate() {
            let f = |name: &str| format!("peer[{i}].{name}");
            if p.name.is_empty() {
                return Err(err(&f("name"), "must not be empty".into()));
            }
            if peers.iter().any(|q: &PeerConfig| q.name == p.name) {
                return Err(err(&f("name"), format!("duplicate peer name `{}`", p.name)));
            }
            let public_key = Key::from_base64(&p.public_key)
                .map_err(|e| err(&f("public_key"), e.to_string()))?;
            if public_key == private_key.public() {
                return Err(err(
                    &f("public_key"),
                    "is this node's own public key".into(),
                ));
            }
            if peers
                .iter()
                .any(|q: &PeerConfig| q.public_key == public_key)
            {
                return Err(err(&f("public_key"), "duplicate public key".into()));
            }
            let endpoint = match &p.endpoint {
                None => None,
                Some(s) => Some(parse_addr(s).map_err(|r| err(&f("endpoint"), r))?),
            };
            let psk = match &p.preshared_key_file {
                None => None,
                Some(path) => Some(
                    Key::load_file(&resolve(path))
                        .map_err(|e| err(&f("preshared_key_file"), e.to_string()))?,
                ),
            };
            let persistent_keepalive = match p.persistent_keepalive {
                None | Some(0) => None,
                Some(s) if s > 65_535 => {
                    return Err(err(
                        &f("persistent_keepalive"),
                        format!("{s} is outside 0..=65535 seconds"),
                    ))
                }
                Some(s) => Some(Duration::from_secs(s)),
            };
            peers.push(PeerConfig {
                name: p.name.clone(),
                public_key,
                endpoint,
                psk,
                persistent_keepalive,
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            name: raw.node.name.unwrap_or_else(|| {
                path.file_stem()
                    .map_or("node".into(), |s| s.to_string_lossy().into_owned())
            }),
            private_key,
            listen,
            control_socket: raw.node.control_socket.map(|p| resolve(&p)),
            metrics_listen,
            mtu,
            rekey_after,
            local: LocalConfig {
                mode: raw.local.mode,
                interface: raw.local.interface,
                dialect,
                capture_multicast: raw.local.capture_multicast,
                inject_to,
            },
            emulator: EmulatorConfig {
                hostid: emu.hostid,
                rate: emu.rate.unwrap_or(200),
                max_states: emu.max_states.unwrap_or(10_000),
                maxupd: emu.maxupd.unwrap_or(128),
                seed: emu.seed,
                churn_for: emu.churn_for.map(Duration::from_secs),
            },
            peers,
        })
    }

    /// A human summary for `pfsync-gw check`.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(s, "config {} is valid", self.path.display());
        let _ = writeln!(s, "node `{}`", self.name);
        let _ = writeln!(
            s,
            "  public key        {}",
            self.private_key.public().to_base64()
        );
        let _ = writeln!(s, "  tunnel listen     udp {}", self.listen);
        let _ = writeln!(s, "  tunnel mtu        {} bytes", self.mtu);
        match self.local.mode {
            LocalMode::Raw => {
                let _ = writeln!(
                    s,
                    "  firewall side     raw proto 240 on {} ({}), capture {}, inject to {} ttl 255",
                    self.local.interface.as_deref().unwrap_or("?"),
                    self.local.dialect,
                    if self.local.capture_multicast {
                        "multicast 224.0.0.240 + unicast"
                    } else {
                        "unicast only"
                    },
                    self.local.inject_to
                );
            }
            LocalMode::Emulator => {
                let _ = writeln!(
                    s,
                    "  firewall side     in-process pf emulator ({}), {} states/s",
                    self.local.dialect, self.emulator.rate
                );
            }
        }
        if let Some(c) = &self.control_socket {
            let _ = writeln!(s, "  control socket    {}", c.display());
        }
        if let Some(m) = &self.metrics_listen {
            let _ = writeln!(s, "  metrics           http://{m}/metrics");
        }
        let _ = writeln!(s, "{} peer(s)", self.peers.len());
        for p in &self.peers {
            let _ = writeln!(
                s,
                "  {:<16} {}  endpoint {}{}{}",
                p.name,
                p.public_key.to_base64(),
                p.endpoint
                    .map_or("(learned from its handshakes)".into(), |e| e.to_string()),
                if p.psk.is_some() {
                    ", preshared key"
                } else {
                    ""
                },
                p.persistent_keepalive
                    .map_or(String::new(), |k| format!(", keepalive {}s", k.as_secs()))
            );
        }
        s
    }
}

/// The name of the table whose body contains byte `pos` of `text` (`peer` for `[[peer]]`),
/// or `None` at the top level.
fn table_at(text: &str, pos: usize) -> Option<String> {
    let head = &text[..pos.min(text.len())];
    // toml reports a missing field with the span of the whole table, header included.
    let rest = &text[pos.min(text.len())..];
    let line = if rest.trim_start().starts_with('[') {
        rest.trim_start().lines().next()?
    } else {
        head.lines()
            .rev()
            .map(str::trim_start)
            .find(|l| l.starts_with('['))?
    };
    let name = line.trim_start_matches('[').split(']').next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// `host:port`, `a.b.c.d:port` or `[v6]:port`; names are resolved once, at load time.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!(
            "`{s}` has no port (expected host:port or [v6]:port)"
        ));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("`{s}` does not resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

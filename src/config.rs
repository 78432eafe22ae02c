//! Configuration: one TOML file per node.
//!
//! Every error names the file, the field and the reason, so an operator can fix it without
//! reading the source; the CLI maps [`ConfigError`] to exit code 2.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::local::raw::SyncPath;
use crate::wire::Dialect;

pub mod account;
mod files;
pub mod keys;

pub use account::{NamedId, Privileges, RunAs};
pub use keys::{Key, KeyError};

/// Default UDP port of the tunnel.
pub const DEFAULT_PORT: u16 = 51900;

/// Process exit code for bad configuration, key or input files. Here, below `node` and
/// `cli`, because both report such errors.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Longest `[emulator] churn_for` (a year, in seconds).
pub const MAX_CHURN_FOR: u64 = 365 * 86_400;

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
    #[serde(default)]
    limits: Option<RawLimits>,
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
    /// Drop to this user after opening the sockets.
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// Group allowed to use the control socket (mode 0660 instead of 0600).
    #[serde(default)]
    control_group: Option<String>,
    #[serde(default)]
    rekey_after_secs: Option<u64>,
    /// UDP segmentation/receive offload on the tunnel socket (default on).
    #[serde(default)]
    udp_offload: Option<bool>,
    /// Scheduling priority of the daemon (default `DEFAULT_NICE`).
    #[serde(default)]
    nice: Option<i64>,
    /// Scheduling policy: "fifo" (default), "rr" or "other".
    #[serde(default)]
    scheduler: Option<String>,
    /// Real-time priority under "fifo"/"rr", 1..=99 (default 1).
    #[serde(default)]
    rt_priority: Option<i64>,
    /// Pause under load before reading again, in µs (0 = off).
    #[serde(default)]
    rx_coalesce_us: Option<i64>,
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
    /// Addresses of the firewall(s) on the sync link: the only accepted pfsync sources.
    #[serde(default)]
    firewalls: Option<Vec<String>>,
    /// Capture queueing delay kept under overload by shedding in the kernel (0: off).
    #[serde(default)]
    shed_target_ms: Option<i64>,
    /// How multicast injection leaves the interface: "link" (default) or "ip".
    #[serde(default)]
    inject_path: Option<String>,
    /// How capture reads the interface: "link" (default) or "ip".
    #[serde(default)]
    capture_path: Option<String>,
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
    public_key_next: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    preshared_key_file: Option<PathBuf>,
    #[serde(default)]
    persistent_keepalive: Option<u64>,
    /// Creator ids (pf hostids) of the peer's site's firewalls.
    #[serde(default)]
    creators: Option<Vec<i64>>,
}

/// `[limits]`: bounds on what peers can make this node hold or send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    states: Option<usize>,
    #[serde(default)]
    peer_states: Option<usize>,
    #[serde(default)]
    repair_rate: Option<u64>,
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
    /// `[node] udp_offload`: UDP GSO/GRO on the tunnel socket when the kernel has them.
    pub udp_offload: bool,
    /// `[node] nice`: the daemon's scheduling priority.
    pub nice: Nice,
    /// `[node] scheduler` and `rt_priority`: the daemon's scheduling policy.
    pub scheduler: Scheduler,
    /// `[node] rx_coalesce_us`: the pause the event loop takes while reading fast, instead
    /// of a wakeup per datagram (`None`: off). See `node::coalesce`.
    pub rx_coalesce: Option<Duration>,
    /// Test aid (`[node] rekey_after_secs`): rekey tunnel sessions this often instead of
    /// WireGuard's 120 s. `None` in production.
    pub rekey_after: Option<Duration>,
    pub local: LocalConfig,
    pub emulator: EmulatorConfig,
    pub peers: Vec<PeerConfig>,
    /// `[node] user`, `group`, `control_group`.
    pub privileges: Privileges,
    pub limits: LimitsConfig,
}

/// Priority the daemon takes when `[node] nice` is not set. An HA daemon starved of CPU by
/// the load it is there to carry loses state changes exactly when they matter (conntrackd
/// recommends `Nice -20`, corosync runs real-time by default); -10 wins against ordinary
/// processes without competing with the kernel's own threads.
pub const DEFAULT_NICE: i32 = -10;

/// `[node] nice`: the value, and whether the operator asked for it (then not getting it is
/// an error; the default is best effort, e.g. the unprivileged demo keeps its priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nice {
    pub value: i32,
    pub explicit: bool,
}

impl Default for Nice {
    fn default() -> Nice {
        Nice {
            value: DEFAULT_NICE,
            explicit: false,
        }
    }
}

/// `[node] scheduler`: the kernel's scheduling policy for the daemon's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_FIFO`: runs until it blocks, ahead of every ordinary process.
    Fifo,
    /// `SCHED_RR`: as FIFO, time-sliced with real-time threads of its own priority.
    Rr,
    /// `SCHED_OTHER`: the ordinary time-sharing scheduler (with `[node] nice`).
    Other,
}

/// `[node] rt_priority` when not set: the lowest real-time priority, ahead of every ordinary
/// process and behind every other real-time thread (the kernel's IRQ threads, corosync,
/// keepalived), whose deadlines matter more than a state change's.
pub const DEFAULT_RT_PRIORITY: u8 = 1;

/// `[node] scheduler` and `rt_priority`, and whether the operator set either (then not
/// getting it is an error; the default is best effort, like `nice`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduler {
    pub policy: SchedPolicy,
    pub priority: u8,
    pub explicit: bool,
}

impl Scheduler {
    /// `SCHED_FIFO` at `priority`, as if configured (the benchmark's and tests' threads).
    pub fn fifo(priority: u8) -> Scheduler {
        Scheduler {
            policy: SchedPolicy::Fifo,
            priority,
            explicit: true,
        }
    }
}

impl Default for Scheduler {
    fn default() -> Scheduler {
        Scheduler {
            policy: SchedPolicy::Fifo,
            priority: DEFAULT_RT_PRIORITY,
            explicit: false,
        }
    }
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.policy {
            SchedPolicy::Fifo => write!(f, "SCHED_FIFO priority {}", self.priority),
            SchedPolicy::Rr => write!(f, "SCHED_RR priority {}", self.priority),
            SchedPolicy::Other => f.write_str("SCHED_OTHER"),
        }
    }
}

/// Most mirrored states `[limits] states` may allow.
pub const MAX_STATES: usize = 1 << 24;
/// Highest `[limits] repair_rate`: 100 GB/s of answers, beyond any link.
const MAX_REPAIR_RATE: u64 = 100_000_000_000;

/// `[limits]` (see docs/SECURITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Most states in the mirror (pf's `set limit states`); new ones beyond are refused.
    pub states: usize,
    /// Most states in the creator-id space of one peer.
    pub peer_states: usize,
    /// Opt-in: bytes per second of repair/anti-entropy answers a peer gets beyond 10× what
    /// it sends (requester pays). 0 (default) keeps every answer within 10× its requests.
    pub repair_rate: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            states: 1_000_000,
            peer_states: 500_000,
            repair_rate: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub mode: LocalMode,
    pub interface: Option<String>,
    pub dialect: Dialect,
    pub capture_multicast: bool,
    /// Where injected pfsync goes: the group 224.0.0.240 or the firewall's unicast address.
    pub inject_to: Ipv4Addr,
    /// The firewall(s) on the sync link (raw mode): pfsync from any other source is dropped.
    pub firewalls: Vec<Ipv4Addr>,
    /// `[local] shed_target_ms`: the capture queueing delay the kernel filter keeps under
    /// overload (`None`: no kernel shedding, only the 50 ms bound after reading).
    pub shed_target: Option<Duration>,
    /// `[local] inject_path`: link-layer frames (multicast on Ethernet) or the raw socket.
    pub inject_path: SyncPath,
    /// `[local] capture_path`: a link-layer socket (with `capture_multicast`, on Ethernet)
    /// or the raw socket.
    pub capture_path: SyncPath,
}

/// `[node] rx_coalesce_us` when not set: long enough for a batch to gather at the rates
/// where coalescing engages, short against the queueing those rates bring anyway.
pub const DEFAULT_RX_COALESCE: Duration = Duration::from_micros(100);

/// Capture queueing delay kept under overload when `[local] shed_target_ms` is not set:
/// low enough that a state change reaches the peer's firewall well within a failover's
/// budget, high enough that scheduling hiccups of a busy host are not shed as overload
/// (docs/PERFORMANCE-HISTORY.md has the sweep that chose it).
pub const DEFAULT_SHED_TARGET: Duration = Duration::from_millis(20);

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
    /// Key rotation window: a second public key also accepted for this peer.
    pub public_key_next: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub psk: Option<Key>,
    pub persistent_keepalive: Option<Duration>,
    /// The peer's site's creator ids: it may insert/clear only these. Empty: learned.
    pub creators: Vec<u32>,
}

impl Config {
    /// A config built in memory, not read from a file (`pfsync-gw demo`, in-process tests):
    /// a gateway on 127.0.0.1 (port chosen at bind) whose firewall is the pf emulator,
    /// without control socket, metrics or peers, and default limits.
    pub fn loopback_emulator(
        name: String,
        private_key: Key,
        interface: String,
        dialect: Dialect,
        emulator: EmulatorConfig,
    ) -> Config {
        Config {
            path: PathBuf::from("<in-memory>"),
            name,
            private_key,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_socket: None,
            metrics_listen: None,
            rekey_after: None,
            mtu: 1500,
            udp_offload: true,
            nice: Nice::default(),
            scheduler: Scheduler::default(),
            rx_coalesce: Some(DEFAULT_RX_COALESCE),
            local: LocalConfig {
                mode: LocalMode::Emulator,
                interface: Some(interface),
                dialect,
                capture_multicast: false,
                inject_to: crate::wire::PFSYNC_GROUP,
                firewalls: Vec::new(),
                shed_target: Some(DEFAULT_SHED_TARGET),
                inject_path: SyncPath::default(),
                capture_path: SyncPath::default(),
            },
            emulator,
            peers: Vec::new(),
            privileges: Privileges::default(),
            limits: LimitsConfig::default(),
        }
    }

    /// Read, parse and validate `path`, loading the key files it references.
    ///
    /// The file decides which peers may inject states, so it must be a regular file owned
    /// by root or the running user that group and others cannot write.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(path, &read_config_file(path)?)
    }

    /// Only the control socket path of the config at `path`, without loading the key
    /// files: for `pfsync-gw status --config`, which operators in `control_group` run
    /// without access to the keys.
    pub fn load_control_socket(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
        let text = read_config_file(path)?;
        let raw: RawFile = match toml::from_str(&text) {
            Ok(r) => r,
            // The full parse reports the error with its line (and fails the same way).
            Err(_) => return Config::parse(path, &text).map(|c| c.control_socket),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(raw
            .node
            .control_socket
            .map(|p| if p.is_absolute() { p } else { base.join(p) }))
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

        let privileges = privileges(&raw.node).map_err(|(f, r)| err(f, r))?;
        // Key files may belong to the account we drop to, so that SIGHUP can re-read them.
        let key_owner = privileges.run_as.as_ref().map(|r| r.user.id);
        let private_key = Key::load_file_owned(&resolve(&raw.node.private_key_file), key_owner)
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
        // The sync layer's smallest datagram plus the tunnel's framing.
        let sync_min = crate::sync::MIN_DATAGRAM;
        let min_mtu = sync_min + crate::tunnel::TRANSPORT_OVERHEAD;
        if !(min_mtu..=65_000).contains(&mtu) {
            let why = "the sync layer needs datagrams of";
            return Err(err(
                "node.mtu",
                format!("{mtu} is outside {min_mtu}..=65000 ({why} {sync_min} bytes)"),
            ));
        }
        let nice = match raw.node.nice {
            None => Nice::default(),
            Some(n) if !(-20..=19).contains(&n) => {
                return Err(err("node.nice", format!("{n} is outside -20..=19")))
            }
            Some(n) => Nice {
                value: n as i32,
                explicit: true,
            },
        };
        let scheduler = {
            let policy = match raw.node.scheduler.as_deref() {
                None | Some("fifo") => SchedPolicy::Fifo,
                Some("rr") => SchedPolicy::Rr,
                Some("other") => SchedPolicy::Other,
                Some(x) => {
                    return Err(err(
                        "node.scheduler",
                        format!("unknown policy `{x}` (expected fifo, rr or other)"),
                    ))
                }
            };
            let priority = match raw.node.rt_priority {
                None => DEFAULT_RT_PRIORITY,
                Some(_) if policy == SchedPolicy::Other => {
                    return Err(err(
                        "node.rt_priority",
                        "only with scheduler = \"fifo\" or \"rr\"".into(),
                    ))
                }
                Some(p) if !(1..=99).contains(&p) => {
                    return Err(err("node.rt_priority", format!("{p} is outside 1..=99")))
                }
                Some(p) => p as u8,
            };
            Scheduler {
                policy,
                priority,
                explicit: raw.node.scheduler.is_some() || raw.node.rt_priority.is_some(),
            }
        };

        let rx_coalesce = match raw.node.rx_coalesce_us {
            None => Some(DEFAULT_RX_COALESCE),
            Some(0) => None,
            Some(us) if !(0..=1000).contains(&us) => {
                return Err(err(
                    "node.rx_coalesce_us",
                    format!("{us} is outside 0..=1000 (0 turns receive coalescing off)"),
                ))
            }
            Some(us) => Some(Duration::from_micros(us as u64)),
        };

        let shed_target = match raw.local.shed_target_ms {
            None => Some(DEFAULT_SHED_TARGET),
            Some(0) => None,
            Some(ms) if !(0..=1000).contains(&ms) => {
                return Err(err(
                    "local.shed_target_ms",
                    format!("{ms} is outside 0..=1000 (0 turns kernel shedding off)"),
                ))
            }
            Some(ms) => Some(Duration::from_millis(ms as u64)),
        };

        let sync_path = |field: &str, value: Option<&str>| match value {
            None | Some("link") => Ok(SyncPath::Link),
            Some("ip") => Ok(SyncPath::Ip),
            Some(other) => Err(err(
                field,
                format!("unknown path `{other}` (expected \"link\" or \"ip\")"),
            )),
        };
        let inject_path = sync_path("local.inject_path", raw.local.inject_path.as_deref())?;
        let capture_path = sync_path("local.capture_path", raw.local.capture_path.as_deref())?;

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
        let mut firewalls = Vec::new();
        for (i, a) in raw.local.firewalls.iter().flatten().enumerate() {
            let ip = a
                .parse::<Ipv4Addr>()
                .map_err(|e| err(&format!("local.firewalls[{i}]"), format!("`{a}`: {e}")))?;
            // 0.0.0.0/8 ("this network") and 240.0.0.0/4 (reserved, the broadcast address
            // included) are never a host's source, like the multicast range.
            let first = ip.octets()[0];
            if ip.is_multicast() || first == 0 || first >= 240 {
                return Err(err(
                    &format!("local.firewalls[{i}]"),
                    format!("`{a}` is not a unicast host address"),
                ));
            }
            // A firewall's pfsync on the sync link never comes from one, and a frame that
            // claims to is forged: a capture at the link layer sees it before the kernel's
            // martian check would drop it.
            if ip.is_loopback() {
                return Err(err(
                    &format!("local.firewalls[{i}]"),
                    format!("`{a}` is a loopback address, never a firewall on the sync link"),
                ));
            }
            firewalls.push(ip);
        }
        if firewalls.len() > crate::local::filter::MAX_FIREWALLS {
            return Err(err(
                "local.firewalls",
                format!(
                    "{} addresses; at most {} (one kernel filter test each)",
                    firewalls.len(),
                    crate::local::filter::MAX_FIREWALLS
                ),
            ));
        }
        if raw.local.mode == LocalMode::Raw && firewalls.is_empty() {
            return Err(err(
                "local.firewalls",
                "required when local.mode = \"raw\": the address(es) of the firewall(s) on the \
                 sync link; pfsync from any other source is dropped (see docs/SECURITY.md)"
                    .into(),
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
        let max_rate = crate::local::emulator::MAX_RATE;
        if let Some(r) = emu.rate.filter(|&r| r > max_rate) {
            return Err(err(
                "emulator.rate",
                format!("{r} is outside 0..={max_rate} states per second"),
            ));
        }
        // Added to the start time: beyond what an `Instant` holds, `run` would panic.
        if let Some(s) = emu.churn_for.filter(|&s| s > MAX_CHURN_FOR) {
            return Err(err(
                "emulator.churn_for",
                format!("{s} is outside 0..={MAX_CHURN_FOR} seconds (leave it out: never)"),
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
            if public_key.is_low_order_public() {
                return Err(err(
                    &f("public_key"),
                    "is a low-order point (no secret would go into the handshake)".into(),
                ));
            }
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
            let public_key_next = match &p.public_key_next {
                None => None,
                Some(s) => {
                    let k = Key::from_base64(s)
                        .map_err(|e| err(&f("public_key_next"), e.to_string()))?;
                    if k.is_low_order_public() {
                        return Err(err(
                            &f("public_key_next"),
                            "is a low-order point (no secret would go into the handshake)".into(),
                        ));
                    }
                    if k == private_key.public() {
                        return Err(err(
                            &f("public_key_next"),
                            "is this node's own public key".into(),
                        ));
                    }
                    let taken = k == public_key
                        || peers.iter().any(|q: &PeerConfig| {
                            q.public_key == k || q.public_key_next.as_ref() == Some(&k)
                        });
                    if taken {
                        return Err(err(&f("public_key_next"), "duplicate public key".into()));
                    }
                    Some(k)
                }
            };
            if peers
                .iter()
                .any(|q: &PeerConfig| q.public_key_next.as_ref() == Some(&public_key))
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
                    Key::load_file_owned(&resolve(path), key_owner)
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
            let mut creators = Vec::new();
            for (j, &c) in p.creators.iter().flatten().enumerate() {
                if !(1..=u32::MAX as i64).contains(&c) {
                    return Err(err(
                        &f(&format!("creators[{j}]")),
                        format!("{c} is not a creator id (1..=0xffffffff)"),
                    ));
                }
                creators.push(c as u32);
            }
            peers.push(PeerConfig {
                name: p.name.clone(),
                public_key,
                public_key_next,
                endpoint,
                psk,
                persistent_keepalive,
                creators,
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
            udp_offload: raw.node.udp_offload.unwrap_or(true),
            nice,
            scheduler,
            rx_coalesce,
            rekey_after,
            local: LocalConfig {
                mode: raw.local.mode,
                interface: raw.local.interface,
                dialect,
                capture_multicast: raw.local.capture_multicast,
                inject_to,
                firewalls,
                shed_target,
                inject_path,
                capture_path,
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
            privileges,
            limits: {
                let d = LimitsConfig::default();
                let l = raw.limits.unwrap_or(RawLimits {
                    states: None,
                    peer_states: None,
                    repair_rate: None,
                });
                let states = l.states.unwrap_or(d.states);
                // The table's compact form addresses its record arena with 32 bits: 16 M
                // states keep it below 4 GiB even with IPv6 NAT states and half garbage.
                if !(1..=MAX_STATES).contains(&states) {
                    return Err(err(
                        "limits.states",
                        format!("{states} is outside 1..={MAX_STATES}"),
                    ));
                }
                let repair_rate = l.repair_rate.unwrap_or(d.repair_rate);
                // The budget's credit is an i64 of bytes: a rate beyond any link keeps the
                // refill arithmetic far from wrapping (found by review).
                if repair_rate > MAX_REPAIR_RATE {
                    return Err(err(
                        "limits.repair_rate",
                        format!("{repair_rate} is outside 0..={MAX_REPAIR_RATE} bytes/s"),
                    ));
                }
                LimitsConfig {
                    states,
                    peer_states: l.peer_states.unwrap_or(d.peer_states),
                    repair_rate,
                }
            },
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
        let _ = writeln!(
            s,
            "  udp offload       {}",
            if self.udp_offload {
                "on (if the kernel has it)"
            } else {
                "off"
            }
        );
        let _ = writeln!(
            s,
            "  nice              {}{}",
            self.nice.value,
            if self.nice.explicit {
                ""
            } else {
                " (default, if permitted)"
            }
        );
        let _ = writeln!(
            s,
            "  scheduler         {}{}",
            self.scheduler,
            if self.scheduler.explicit {
                ""
            } else {
                " (default, if permitted)"
            }
        );
        let _ = writeln!(
            s,
            "  rx coalescing     {}",
            match self.rx_coalesce {
                Some(d) => format!("{} µs pause while reading fast", d.as_micros()),
                None => "off".into(),
            }
        );
        match self.local.mode {
            LocalMode::Raw => {
                let _ = writeln!(
                    s,
                    "  firewall side     raw proto 240 on {} ({}), capture {}, inject to {} ttl 255 {}",
                    self.local.interface.as_deref().unwrap_or("?"),
                    self.local.dialect,
                    match (self.local.capture_multicast, self.local.capture_path) {
                        (true, SyncPath::Link) => {
                            "multicast 224.0.0.240 + unicast, from link-layer frames if the interface is Ethernet"
                        }
                        (true, SyncPath::Ip) => "multicast 224.0.0.240 + unicast by the raw socket",
                        (false, _) => "unicast only",
                    },
                    self.local.inject_to,
                    match self.local.inject_path {
                        SyncPath::Link if self.local.inject_to.is_multicast() => {
                            "as link-layer frames if the interface is Ethernet with an address"
                        }
                        _ => "by the raw socket",
                    }
                );
                let fws: Vec<String> = self.local.firewalls.iter().map(|a| a.to_string()).collect();
                let _ = writeln!(
                    s,
                    "  firewalls         {} (pfsync from other sources dropped)",
                    fws.join(", ")
                );
                let _ = writeln!(
                    s,
                    "  overload          {}",
                    match self.local.shed_target {
                        Some(t) => format!(
                            "UPD_C runs shed in the kernel above {} ms capture delay",
                            t.as_millis()
                        ),
                        None => "shed only after reading (kernel shedding off)".into(),
                    }
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
        if let Some(g) = &self.privileges.control_group {
            let _ = writeln!(
                s,
                "  control group     {} (gid {}), socket mode 0660",
                g.name, g.id
            );
        }
        if let Some(r) = &self.privileges.run_as {
            let _ = writeln!(
                s,
                "  runs as           user {} (uid {}), group {} (gid {}) once its sockets are open",
                r.user.name, r.user.id, r.group.name, r.group.id
            );
        }
        let _ = writeln!(s, "{} peer(s)", self.peers.len());
        for p in &self.peers {
            let _ = writeln!(
                s,
                "  {:<16} {}{}  endpoint {}{}{}",
                p.name,
                p.public_key.to_base64(),
                p.public_key_next
                    .as_ref()
                    .map_or(String::new(), |k| format!(" (next {})", k.to_base64())),
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

/// Largest config file we read.
const CONFIG_MAX: u64 = 1 << 20;

/// Read the config file, refusing one that others could have changed.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use files::{open_checked, owners_text, FileError, Rules};
    use std::io::Read;
    let err = |reason: String| ConfigError {
        file: path.to_path_buf(),
        field: String::new(),
        reason,
    };
    let rules = Rules {
        // A config under configuration management is often a link; its target is checked.
        no_symlink: false,
        forbidden_mode: 0o022,
        also_owner: None,
    };
    let f = open_checked(path, rules).map_err(|e| match e {
        FileError::Io(e) => err(format!("cannot read: {e}")),
        FileError::Symlink | FileError::NotRegular => err("not a regular file".into()),
        FileError::Owner { uid, allowed } => err(format!(
            "owned by {}: the config decides who may inject states, so it must be owned by {} (`chown` it)",
            owners_text(&[uid]),
            owners_text(&allowed)
        )),
        FileError::Mode(mode) => err(format!(
            "writable by group or others (mode {mode:o}): the config decides who may inject states; run `chmod go-w {}`",
            path.display()
        )),
    })?;
    let mut text = String::new();
    f.take(CONFIG_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if text.len() as u64 > CONFIG_MAX {
        return Err(err(format!("larger than {CONFIG_MAX} bytes")));
    }
    Ok(text)
}

/// Resolve `[node] user`, `group` and `control_group` (field, reason on error).
fn privileges(n: &RawNode) -> Result<Privileges, (&'static str, String)> {
    let run_as = match &n.user {
        None => {
            if n.group.is_some() {
                return Err((
                    "node.group",
                    "needs `node.user` (the account to drop to)".into(),
                ));
            }
            None
        }
        Some(u) => {
            let (uid, primary) = account::lookup_user(u).map_err(|r| ("node.user", r))?;
            let group = match &n.group {
                None => NamedId {
                    name: account::group_name(primary),
                    id: primary,
                },
                Some(g) => NamedId {
                    name: g.clone(),
                    id: account::lookup_group(g).map_err(|r| ("node.group", r))?,
                },
            };
            Some(RunAs {
                user: NamedId {
                    name: u.clone(),
                    id: uid,
                },
                group,
            })
        }
    };
    let control_group = match &n.control_group {
        None => None,
        Some(g) => Some(NamedId {
            name: g.clone(),
            id: account::lookup_group(g).map_err(|r| ("node.control_group", r))?,
        }),
    };
    Ok(Privileges {
        run_as,
        control_group,
    })
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

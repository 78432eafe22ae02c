//! One node's event loop.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::coalesce::{self, RxCoalesce};
use super::control::{self, SharedStatus};
use super::ratelimit::LogLimiter;
use super::realtime::{self, Duty};
use super::repair::ShedRepair;
use super::status::{FirewallView, PeerView, Status};
use crate::config::{Config, LocalMode, PeerConfig};
use crate::local::emulator::{Emulator, EmulatorConfig};
use crate::local::filter;
use crate::local::mmsg::{RecvBatch, SendBatch};
use crate::local::raw::{ForeignWatch, RawSyncSocket, SyncPath, Untrusted};
use crate::local::shed::ShedControl;
use crate::sync::{Replica, ReplicaConfig, SyncNote};
use crate::tunnel::{self, Endpoint, Identity, PeerId, Recv};
use crate::wire::{self, ipv4::Ipv4Packet};

/// Largest pfsync packet we emit towards the firewall (pfsync0's default MTU 1500 − IPv4).
const LOCAL_PFSYNC_MTU: usize = 1480;
/// How often the shared status snapshot is refreshed.
const STATUS_REFRESH: Duration = Duration::from_millis(200);
/// How often the sync interface's addresses are read again (loop prevention, and the
/// source of link-layer injection): an address change takes effect within this.
const ADDR_REFRESH: Duration = Duration::from_secs(1);
/// How often a one-line summary is logged (what `docker compose up` shows).
const SUMMARY_LOG: Duration = Duration::from_secs(10);
/// Bound on pump iterations per round, so a chatty peer can't starve the sockets.
const MAX_PUMP_ROUNDS: usize = 16;
/// Fair event loop: per round, each source gets at most this many `recvmmsg` batches
/// (`BATCH` datagrams each) before the others get their turn. Above capacity the excess
/// waits (and is shed) in the kernel's socket buffer instead of starving the other stages:
/// a gateway that only drains its capture socket delivers nothing.
const RAW_BATCHES_PER_ROUND: usize = 2;
const UDP_BATCHES_PER_ROUND: usize = 2;
/// pfsync packets injected towards the firewall per round at least; the rest goes in the
/// next round (after the sockets had their turn), so big repairs reach pf in slices, not one
/// burst. A round may inject more: what waits plus what arrived for injection in the round
/// before, so a sustained relay keeps pace and a backlog drains instead of standing (and
/// overflowing the queue).
const INJECT_PER_ROUND: usize = 128;
/// What a round may inject at most, however much arrived (a bulk answer queued at once, a
/// peer's bundles of tiny packets): the sockets get their turn every 1,024 packets.
const INJECT_MAX_PER_ROUND: usize = 8 * INJECT_PER_ROUND;
/// A captured packet that waited longer than this in the kernel's buffer is behind. If it
/// carries only compressed updates (`UPD_C`) it is dropped unapplied: newer updates of the
/// same states are queued behind it (pf sends one per state every few packets while it
/// changes), dropping costs a read and a parse instead of an apply, two seals and a send,
/// and states that stop changing are repaired by a sweep once the shedding has stopped
/// ([`ShedRepair`]). Anything
/// else (inserts, deletes, bulk answers) is applied, and its states are sent to the peers
/// coalesced: each marked dirty once and sent in its current version (newest wins, like
/// pf's `maxupd`) instead of relayed packet by packet. Requests are always relayed.
const CAPTURE_MAX_AGE: Duration = Duration::from_millis(50);

/// Most batches read from the watch socket per status refresh: more than its buffer holds.
const WATCH_BATCHES: usize = 4;

/// Controls a running node from outside its task (signals, demo, tests).
#[derive(Clone)]
pub struct NodeHandle {
    shutdown: watch::Sender<bool>,
    churn: watch::Sender<bool>,
    reload: mpsc::UnboundedSender<Option<Box<Config>>>,
    pub status: SharedStatus,
    pub local_addr: SocketAddr,
}

impl NodeHandle {
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
    /// Start or stop the in-process emulator's churn (emulator mode only).
    pub fn set_churn(&self, on: bool) {
        let _ = self.churn.send(on);
    }
    /// Re-read the config file and apply peer changes (SIGHUP).
    pub fn reload(&self) {
        let _ = self.reload.send(None);
    }
    /// Apply a new config directly (demo/tests).
    pub fn reload_with(&self, cfg: Config) {
        let _ = self.reload.send(Some(Box::new(cfg)));
    }
    pub fn snapshot(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

enum Local {
    Raw(Box<RawSide>),
    Emulated(Box<Emulator>),
}

struct RawSide {
    sock: AsyncFd<RawSyncSocket>,
    rx: RecvBatch,
    tx: SendBatch,
    /// Sheds `UPD_C` runs in the kernel under overload; `None` once the filter could not
    /// be attached (shedding then happens only after the read, by `CAPTURE_MAX_AGE`).
    shed: Option<ShedControl>,
    /// The shape the kernel filter may shed, tested again here to estimate what it shed.
    run: wire::UpdCRun,
    /// The share of `UPD_C` runs the capture filter now drops.
    share: f64,
    /// Counts the pfsync the capture filter drops by its source; `None` when the filter is
    /// not attached (the read path then drops and counts it).
    watch: Option<ForeignWatch>,
}

impl RawSide {
    /// (Re)attach the capture filter: the configured firewalls' pfsync only, and `share` of
    /// their `UPD_C` runs shed. On failure the filter is detached entirely (never an older
    /// share without its controller), the read path's own checks take over until a
    /// restart, and a warning says so.
    fn attach_filter(&mut self, dialect: wire::Dialect, share: f64) {
        let sock = self.sock.get_ref();
        // Without the watch, the read path must see other hosts' pfsync to count it.
        let firewalls = if self.watch.is_some() {
            sock.firewalls()
        } else {
            &[]
        };
        let program = filter::program(dialect, firewalls, filter::threshold(share));
        match sock.attach_capture_filter(&program) {
            Ok(()) => self.share = share,
            Err(e) => {
                let _ = sock.detach_capture_filter();
                self.share = 0.0;
                self.shed = None;
                self.watch = None;
                tracing::warn!("capture filter not attached ({e}): until a restart, pfsync from other hosts is dropped after reading and overload is shed only after reading");
            }
        }
    }
}

struct PeerSlot {
    id: PeerId,
    cfg: PeerConfig,
}

pub struct Node {
    cfg: Config,
    endpoint: Endpoint,
    replica: Replica,
    peers: Vec<PeerSlot>,
    next_peer_id: PeerId,
    udp: AsyncFd<UdpSocket>,
    udp_rx: RecvBatch,
    udp_tx: SendBatch,
    local: Local,
    scratch: Vec<u8>,
    counters: Counters,
    injected_this_round: usize,
    /// Datagrams read from both sockets this round (for `coalesce`).
    read_this_round: u64,
    coalesce: RxCoalesce,
    /// Rests of a real-time loop that kept its core for a while (see realtime.rs).
    duty: Duty,
    /// Packets the pump may inject this round: what waits for injection plus what arrived
    /// during the last round, within `INJECT_PER_ROUND..=INJECT_MAX_PER_ROUND`.
    inject_budget: usize,
    /// `Replica::inject_arrivals` at the start of this round.
    inject_arrivals: u64,
    /// Our bulk requests to the firewall (start-up, reconciliation sweeps).
    bulk: LocalBulk,
    /// A sweep soon after shedding ends (see repair.rs).
    repair: ShedRepair,
    log_limit: LogLimiter,
    started: Instant,
    status: SharedStatus,
    shutdown: watch::Receiver<bool>,
    churn: watch::Receiver<bool>,
    reload: mpsc::UnboundedReceiver<Option<Box<Config>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind tunnel socket {addr}: {err}")]
    Udp { addr: SocketAddr, err: io::Error },
    #[error("cannot open raw pfsync socket on {ifname}: {err} (needs root or CAP_NET_RAW)")]
    Raw { ifname: String, err: io::Error },
    #[error("control socket {path}: {err}")]
    Control { path: String, err: io::Error },
    #[error("metrics listener {addr}: {err}")]
    Metrics { addr: SocketAddr, err: io::Error },
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    #[error("{0}; stopping")]
    SyncInterfaceGone(io::Error),
}

/// The same peer across a reload: same name, and at least one key in common (so a key
/// rotation, `public_key_next` then `public_key`, keeps the peer and its sync state).
fn same_peer(a: &PeerConfig, b: &PeerConfig) -> bool {
    let ka = [Some(&a.public_key), a.public_key_next.as_ref()];
    let kb = [Some(&b.public_key), b.public_key_next.as_ref()];
    a.name == b.name && ka.iter().flatten().any(|k| kb.contains(&Some(*k)))
}

/// Handshake flood and roaming figures (docs/DEPLOYMENT.md, "Counters").
fn tunnel_dos_counters(d: &tunnel::DosStats) -> [(String, u64); 6] {
    [
        ("tunnel_under_load_now".into(), u64::from(d.under_load)),
        ("tunnel_handshakes_processed".into(), d.handshakes_processed),
        ("tunnel_cookie_replies_sent".into(), d.cookie_replies_sent),
        (
            "tunnel_cookie_replies_received".into(),
            d.cookie_replies_received,
        ),
        ("tunnel_mac2_accepted".into(), d.mac2_accepted),
        ("tunnel_roam_fallbacks".into(), d.roam_fallbacks),
    ]
}

/// The node's rarer counters (`bump`ed into `Counters::other`); listed so that they show
/// from the start (the per-packet ones are fields and always do).
const NODE_COUNTERS: [&str; 10] = [
    "inject_rejected",
    "local_bad_ip",
    "local_bad_ttl",
    "local_foreign_source",
    "local_malformed",
    "local_oversized",
    "local_own_ignored",
    "sessions_established",
    "tunnel_oversized",
    "tunnel_send_dropped",
];

/// The driver's counters: the per-packet ones are plain fields (no map lookup on the data
/// path); rare error reasons go through [`bump`] into a small map.
#[derive(Default)]
struct Counters {
    captured: u64,
    injected: u64,
    /// Captured packets that had waited longer than `CAPTURE_MAX_AGE` and were sent to the
    /// peers coalesced (shed load, see docs/DEPLOYMENT.md).
    shed_coalesced: u64,
    /// Packets the kernel dropped from the full capture buffer (`SO_RXQ_OVFL`).
    shed_capture_overflow: u64,
    /// `UPD_C`-only packets older than `CAPTURE_MAX_AGE`, dropped unapplied.
    shed_capture_late: u64,
    /// `UPD_C` runs the capture filter dropped in the kernel (estimated, see `ShedControl`).
    shed_capture_filtered: u64,
    /// The share of `UPD_C` runs the capture filter drops now, in percent (a gauge).
    shed_share_percent_now: u64,
    /// The capture delay shedding keeps under overload, in ms (a gauge: the setting in
    /// force, 0 = no kernel shedding).
    shed_target_ms_now: u64,
    /// Datagrams the kernel dropped from the full tunnel socket buffer (`SO_RXQ_OVFL`).
    tunnel_rx_overflow: u64,
    /// Mean wait of the datagrams read from the tunnel socket in the last round, in µs:
    /// what our ACKs report to the peers (a gauge).
    receive_delay_us_now: u64,
    /// The largest queueing delay a peer reports for what we relay, in µs (a gauge; the
    /// shedding controller steers by it as by the capture queue's).
    peer_delay_us_now: u64,
    /// Mean wait of the packets read from the capture socket in the last round, in µs.
    capture_delay_us_now: u64,
    /// Shedding intervals (10 ms) in which a peer's reported delay alone was above the
    /// target: we shed because a peer fell behind, not because we did.
    shed_for_peer_intervals: u64,
    /// Shedding intervals whose capture queue grew while this thread was off the CPU.
    capture_stalls: u64,
    tunnel_send_failed: u64,
    inject_failed: u64,
    other: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("captured", self.captured),
            ("injected", self.injected),
            ("shed_coalesced", self.shed_coalesced),
            ("shed_capture_overflow", self.shed_capture_overflow),
            ("shed_capture_late", self.shed_capture_late),
            ("shed_capture_filtered", self.shed_capture_filtered),
            ("shed_share_percent_now", self.shed_share_percent_now),
            ("shed_target_ms_now", self.shed_target_ms_now),
            ("tunnel_rx_overflow", self.tunnel_rx_overflow),
            ("receive_delay_us_now", self.receive_delay_us_now),
            ("peer_delay_us_now", self.peer_delay_us_now),
            ("capture_delay_us_now", self.capture_delay_us_now),
            ("shed_for_peer_intervals", self.shed_for_peer_intervals),
            ("capture_stalls", self.capture_stalls),
            ("tunnel_send_failed", self.tunnel_send_failed),
            ("inject_failed", self.inject_failed),
        ]
        .into_iter()
        .chain(self.other.iter().map(|(k, v)| (*k, *v)))
    }
}

/// The mean time the packets read from a socket in one round had waited in it.
#[derive(Default)]
struct MeanWait {
    sum: Duration,
    n: u32,
}

/// A wait counts at most this much: a forward step of the wall clock (the kernel's
/// timestamps are on it) must not read as a long queue for more than a moment.
const MAX_WAIT: Duration = Duration::from_secs(1);

impl MeanWait {
    fn add(&mut self, d: Duration) {
        (self.sum, self.n) = (self.sum + d.min(MAX_WAIT), self.n + 1);
    }
    /// Zero when nothing was read: the socket was empty.
    fn mean(&self) -> Duration {
        self.sum.checked_div(self.n).unwrap_or_default()
    }
}

/// Count a rare event (errors, drops) by name.
fn bump(c: &mut Counters, k: &'static str) {
    bump_by(c, k, 1);
}

fn bump_by(c: &mut Counters, k: &'static str, n: u64) {
    *c.other.entry(k).or_insert(0) += n;
}

/// Count pfsync from a source that is not the firewall; a foreign one is also logged
/// (rate-limited), our own looped-back injection only counted.
fn count_untrusted(
    counters: &mut Counters,
    log_limit: &mut LogLimiter,
    why: Untrusted,
    src: std::net::Ipv4Addr,
    now: Instant,
) {
    bump(counters, why.counter());
    if why == Untrusted::Foreign {
        if let Some(n) = log_limit.allow(why.counter(), now) {
            tracing::warn!(%src, suppressed = n, "pfsync from a host that is not a configured firewall dropped");
        }
    }
}

impl Node {
    /// Open the sockets and build the state machines. Must run inside a tokio runtime.
    pub async fn bind(cfg: Config) -> Result<(Node, NodeHandle), NodeError> {
        let now = Instant::now();
        let udp = bind_udp(cfg.listen).map_err(|err| NodeError::Udp {
            addr: cfg.listen,
            err,
        })?;
        let local_addr = udp.local_addr()?;
        let udp = register(udp)?;

        let local = match cfg.local.mode {
            LocalMode::Raw => {
                let ifname = cfg.local.interface.clone().unwrap_or_default();
                let mut sock = RawSyncSocket::open_with(
                    &ifname,
                    cfg.local.capture_multicast,
                    cfg.local.inject_to,
                    cfg.local.inject_path,
                    cfg.local.capture_path,
                )
                .map_err(|err| NodeError::Raw {
                    ifname: ifname.clone(),
                    err,
                })?;
                let mut rx = RecvBatch::new(65_536);
                rx.enable_timestamps(sock.as_raw_fd());
                sock.set_firewalls(&cfg.local.firewalls);
                let watch = match ForeignWatch::open(&sock, &cfg.local.firewalls) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!("no watch socket ({e}): until a restart, pfsync from other hosts is dropped after reading");
                        None
                    }
                };
                let mut raw = RawSide {
                    sock: register(sock)?,
                    rx,
                    tx: SendBatch::new(wire::ipv4::IPV4_HEADER_LEN + LOCAL_PFSYNC_MTU),
                    shed: cfg.local.shed_target.map(|t| ShedControl::new(now, t)),
                    run: wire::UpdCRun::of(cfg.local.dialect),
                    share: 0.0,
                    watch,
                };
                raw.attach_filter(cfg.local.dialect, 0.0);
                let sock = raw.sock.get_ref();
                if let Some(e) = sock.link_refused() {
                    tracing::warn!(interface = %ifname, "no link-layer injection ({e}): injecting by the raw socket, at a higher cost per packet (docs/DEPLOYMENT.md, Host firewall)");
                }
                if let Some(e) = sock.capture_refused() {
                    tracing::warn!(interface = %ifname, "no link-layer capture ({e}): capturing by the raw socket, at a higher cost per packet (docs/DEPLOYMENT.md, Host firewall)");
                }
                let path = |p| match p {
                    SyncPath::Link => "link-layer frames",
                    SyncPath::Ip => "raw IPv4 socket",
                };
                tracing::info!(
                    interface = %ifname,
                    multicast = cfg.local.capture_multicast,
                    path = path(sock.capture_path()),
                    "capturing pfsync"
                );
                tracing::info!(
                    interface = %ifname,
                    to = %cfg.local.inject_to,
                    path = path(sock.inject_path()),
                    "injecting pfsync"
                );
                Local::Raw(Box::new(raw))
            }
            LocalMode::Emulator => {
                let e = &cfg.emulator;
                let hostid = e.hostid.unwrap_or_else(random_hostid);
                Local::Emulated(Box::new(Emulator::new(
                    EmulatorConfig {
                        dialect: cfg.local.dialect,
                        hostid,
                        rate: e.rate,
                        max_states: e.max_states,
                        maxupd: e.maxupd,
                        seed: e.seed.unwrap_or(hostid as u64),
                        ifname: cfg.local.interface.clone().unwrap_or_else(|| "em0".into()),
                        mtu: LOCAL_PFSYNC_MTU,
                    },
                    now,
                )))
            }
        };

        let identity = Identity::from_private(*cfg.private_key.as_bytes());
        let mut endpoint = Endpoint::new(identity, rand_core::OsRng, now);
        endpoint.set_rekey_after(cfg.rekey_after);
        let public = cfg.private_key.public();
        let node_id = u32::from_be_bytes([
            public.as_bytes()[0],
            public.as_bytes()[1],
            public.as_bytes()[2],
            public.as_bytes()[3],
        ]);
        let mut replica_cfg = ReplicaConfig {
            local_mtu: LOCAL_PFSYNC_MTU,
            max_datagram: cfg.mtu - tunnel::TRANSPORT_OVERHEAD,
            // Versions must keep growing across restarts of this gateway.
            initial_clock: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            incarnation: rand_core::RngCore::next_u32(&mut rand_core::OsRng),
            ..ReplicaConfig::new(node_id, cfg.local.dialect).with_limits(
                cfg.limits.states,
                cfg.limits.peer_states,
                cfg.limits.repair_rate,
            )
        };
        // Prefetching the mirror pays only once its hot entries outgrow the core's cache
        // (docs/PERFORMANCE.md, *A Sapphire Rapids VM*); unknown cache: always.
        replica_cfg.table.prefetch_min_states =
            l2_cache_bytes().unwrap_or(0) / crate::table::StateTable::HOT_BYTES;
        let replica = Replica::new(replica_cfg, now);

        let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
        control::start(&cfg, &status).await?;

        let (sd_tx, sd_rx) = watch::channel(false);
        let (churn_tx, churn_rx) = watch::channel(true);
        let (rl_tx, rl_rx) = mpsc::unbounded_channel();
        let mtu = cfg.mtu;
        let cfg_rx_coalesce = cfg.rx_coalesce;
        let mut node = Node {
            cfg,
            endpoint,
            replica,
            peers: Vec::new(),
            next_peer_id: 0,
            udp,
            udp_rx: RecvBatch::new(65_536),
            udp_tx: SendBatch::new(mtu),
            local,
            scratch: vec![0; 65_536],
            counters: Counters::default(),
            injected_this_round: 0,
            read_this_round: 0,
            coalesce: RxCoalesce::new(now, cfg_rx_coalesce),
            duty: Duty::new(now, realtime::thread_cpu_time(), realtime::is_realtime()),
            inject_budget: INJECT_PER_ROUND,
            inject_arrivals: 0,
            bulk: LocalBulk::new(now),
            repair: ShedRepair::default(),
            log_limit: LogLimiter::new(Duration::from_secs(1)),
            started: now,
            status: status.clone(),
            shutdown: sd_rx,
            churn: churn_rx,
            reload: rl_rx,
        };
        let fd = node.udp.get_ref().as_raw_fd();
        let offload = node.cfg.udp_offload;
        let (gso, gro) = if offload {
            (node.udp_tx.enable_gso(fd), node.udp_rx.enable_gro(fd))
        } else {
            (false, false)
        };
        // How long peers' datagrams wait for us: our ACKs tell them, and they shed for it.
        node.udp_rx.enable_timestamps(fd);
        tracing::debug!(
            gso,
            gro,
            "UDP segmentation/receive offload for the tunnel socket"
        );
        // Every counter exists (at 0) from the start, in `status --json` and on /metrics.
        for k in NODE_COUNTERS {
            node.counters.other.insert(k, 0);
        }
        let peers = node.cfg.peers.clone();
        for p in peers {
            node.add_peer(p, now);
        }
        tracing::info!(
            node = %node.cfg.name,
            listen = %local_addr,
            dialect = %node.cfg.local.dialect,
            peers = node.peers.len(),
            "pfsync-gw started"
        );
        node.refresh_status(now);
        let handle = NodeHandle {
            shutdown: sd_tx,
            churn: churn_tx,
            reload: rl_tx,
            status,
            local_addr,
        };
        Ok((node, handle))
    }

    fn add_peer(&mut self, p: PeerConfig, now: Instant) {
        let id = self.next_peer_id;
        self.next_peer_id += 1;
        self.endpoint.add_peer(
            id,
            *p.public_key.as_bytes(),
            p.psk.as_ref().map(|k| *k.as_bytes()),
            p.endpoint,
            Some(p.persistent_keepalive.unwrap_or(DEFAULT_KEEPALIVE)),
        );
        if let Some(next) = &p.public_key_next {
            self.endpoint
                .set_peer_keys(id, *p.public_key.as_bytes(), Some(*next.as_bytes()));
        }
        self.replica.add_peer(id, now);
        self.replica.set_peer_creators(id, &p.creators);
        tracing::info!(peer = %p.name, endpoint = ?p.endpoint, "peer added");
        self.peers.push(PeerSlot { id, cfg: p });
    }

    /// Apply a new configuration's peer list: unchanged peers keep their sessions.
    fn apply_reload(&mut self, new: Config, now: Instant) {
        if new.listen != self.cfg.listen
            || new.local.dialect != self.cfg.local.dialect
            || new.local.interface != self.cfg.local.interface
            || new.local.inject_to != self.cfg.local.inject_to
            || new.local.inject_path != self.cfg.local.inject_path
            || new.local.capture_path != self.cfg.local.capture_path
            || new.local.capture_multicast != self.cfg.local.capture_multicast
        {
            tracing::warn!("reload: listen address and firewall side changes need a restart; applying key and peer changes only");
        }
        if new.scheduler != self.cfg.scheduler || new.nice != self.cfg.nice {
            tracing::warn!("reload: nice, scheduler and rt_priority take effect at the next start");
        }
        self.reload_private_key(&new);
        self.apply_local_reload(&new, now);
        if new.rx_coalesce != self.cfg.rx_coalesce {
            tracing::info!(rx_coalesce = ?new.rx_coalesce, "reload: receive coalescing updated");
            self.coalesce.set_wait(new.rx_coalesce);
            self.cfg.rx_coalesce = new.rx_coalesce;
        }
        // Removed peers go; a peer whose keys changed entirely is a new peer.
        let mut kept = Vec::new();
        for slot in std::mem::take(&mut self.peers) {
            match new.peers.iter().find(|p| same_peer(p, &slot.cfg)) {
                None => {
                    self.endpoint.remove_peer(slot.id);
                    self.replica.remove_peer(slot.id);
                    tracing::info!(peer = %slot.cfg.name, "reload: peer removed");
                }
                Some(p) => {
                    if (&p.public_key, &p.public_key_next)
                        != (&slot.cfg.public_key, &slot.cfg.public_key_next)
                    {
                        self.endpoint.set_peer_keys(
                            slot.id,
                            *p.public_key.as_bytes(),
                            p.public_key_next.as_ref().map(|k| *k.as_bytes()),
                        );
                        tracing::info!(peer = %p.name, "reload: peer keys changed (rotation)");
                    }
                    if *p != slot.cfg {
                        self.endpoint.update_peer(
                            slot.id,
                            p.psk.as_ref().map(|k| *k.as_bytes()),
                            p.endpoint,
                            Some(p.persistent_keepalive.unwrap_or(DEFAULT_KEEPALIVE)),
                        );
                        self.replica.set_peer_creators(slot.id, &p.creators);
                        tracing::info!(peer = %p.name, "reload: peer updated");
                    }
                    kept.push(PeerSlot {
                        id: slot.id,
                        cfg: p.clone(),
                    });
                }
            }
        }
        self.peers = kept;
        for p in &new.peers {
            if !self.peers.iter().any(|s| same_peer(p, &s.cfg)) {
                self.add_peer(p.clone(), now);
            }
        }
        self.cfg.peers = new.peers;
    }

    /// `[local] firewalls` and `shed_target_ms` take effect at once: both filters are
    /// rebuilt, and a new target starts its controller afresh.
    fn apply_local_reload(&mut self, new: &Config, now: Instant) {
        let Local::Raw(raw) = &mut self.local else {
            return;
        };
        let (old, fresh) = (&self.cfg.local, &new.local);
        if fresh.firewalls == old.firewalls && fresh.shed_target == old.shed_target {
            return;
        }
        raw.sock.get_mut().set_firewalls(&fresh.firewalls);
        let mut share = raw.share;
        if fresh.shed_target != old.shed_target {
            raw.shed = fresh.shed_target.map(|t| ShedControl::new(now, t));
            share = 0.0;
        }
        // The capture filter first: a newly listed firewall passes it before the watch
        // stops counting it.
        raw.attach_filter(old.dialect, share);
        if let Some(w) = &mut raw.watch {
            if let Err(e) = w.set_firewalls(&fresh.firewalls) {
                // Without the watch the capture socket must see everything, to count it.
                tracing::warn!("watch socket filter not updated ({e}): until a restart, other hosts' pfsync is dropped after reading");
                raw.watch = None;
                raw.attach_filter(old.dialect, share);
            }
        }
        tracing::info!(firewalls = ?fresh.firewalls, shed_target = ?fresh.shed_target, "reload: firewall side updated");
        self.cfg.local.firewalls = fresh.firewalls.clone();
        self.cfg.local.shed_target = fresh.shed_target;
    }

    /// SIGHUP key rotation: a new private key replaces ours in the tunnel; sessions keep
    /// running and every peer gets a new handshake with the new key.
    fn reload_private_key(&mut self, new: &Config) {
        if new.private_key != self.cfg.private_key {
            self.endpoint
                .set_identity(Identity::from_private(*new.private_key.as_bytes()));
            self.cfg.private_key = new.private_key.clone();
            tracing::info!(
                public_key = %self.cfg.private_key.public().to_base64(),
                "reload: private key changed; re-handshaking with every peer"
            );
        }
    }

    /// Run until shutdown.
    ///
    /// Each wakeup is one fair round: at most a few `recvmmsg` batches from the firewall's
    /// capture socket, then everything that produced is sent; at most a few batches from the
    /// tunnel socket, then everything that produced is sent and injected. While a source
    /// still has data after its share, the loop goes round again without sleeping (after
    /// letting the runtime poll its other tasks); when all are drained it waits for
    /// readiness or the next timer. Nothing waits on a timer while there is work: a lone
    /// packet is relayed in the wakeup that received it. Only while datagrams arrive fast
    /// does a drained loop pause briefly instead of sleeping, so that the next read returns
    /// a batch ([`RxCoalesce`]).
    pub async fn run(mut self) -> Result<(), NodeError> {
        let mut next_status = Instant::now() + STATUS_REFRESH;
        let mut next_summary = Instant::now() + SUMMARY_LOG;
        let mut next_addrs = Instant::now() + ADDR_REFRESH;
        let mut churn_stop = self.cfg.emulator.churn_for.map(|d| self.started + d);
        let mut busy = false;
        coalesce::precise_timers();
        loop {
            // A real-time loop that kept its core for a while gives it up briefly (see
            // realtime.rs); first thing in a round, so that no path around it skips it.
            let mut now = Instant::now();
            if let Some(rest) = self.duty.poll(now, realtime::thread_cpu_time) {
                std::thread::sleep(rest);
                now = Instant::now();
            }
            // Drained while reading fast: let a batch gather (see coalesce.rs). The runtime
            // thread blocks for the pause; its other tasks are the control socket's.
            let pause = if busy { None } else { self.coalesce.pause() };
            if let Some(d) = pause {
                std::thread::sleep(d);
            }
            let wake = if busy || pause.is_some() {
                // Sources left with work: don't sleep, but let the runtime poll the reactor
                // and the control/metrics tasks, and look at the control channels.
                tokio::task::yield_now().await;
                if self.shutdown.has_changed().unwrap_or(true) && *self.shutdown.borrow_and_update()
                {
                    Wake::Shutdown
                } else if self.churn.has_changed().unwrap_or(false) {
                    self.churn.borrow_and_update();
                    Wake::Churn
                } else {
                    match self.reload.try_recv() {
                        Ok(r) => Wake::Reload(Some(r)),
                        Err(_) => Wake::Round,
                    }
                }
            } else {
                let mut deadline = next_status;
                if let Some(t) = churn_stop {
                    deadline = deadline.min(t);
                }
                deadline = deadline.min(self.bulk.next);
                for d in [
                    self.endpoint.poll_timeout(),
                    self.replica.poll_timeout(),
                    match &self.local {
                        Local::Emulated(e) => e.poll_timeout(),
                        Local::Raw(_) => None,
                    },
                ]
                .into_iter()
                .flatten()
                {
                    deadline = deadline.min(d);
                }
                let deadline = deadline.max(now);
                let raw_ready = async {
                    match &self.local {
                        // The guard is dropped without clearing readiness: the round reads
                        // with `try_io`, which clears it only on `WouldBlock`.
                        Local::Raw(r) => r.sock.readable().await.map(|mut g| g.retain_ready()),
                        Local::Emulated(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = self.udp.readable() => { r?.retain_ready(); Wake::Round }
                    r = raw_ready => { r?; Wake::Round }
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Round,
                    _ = self.shutdown.changed() => Wake::Shutdown,
                    _ = self.churn.changed() => Wake::Churn,
                    r = self.reload.recv() => Wake::Reload(r),
                }
            };
            let now = Instant::now();
            match wake {
                Wake::Shutdown => break,
                Wake::Round => {}
                Wake::Churn => {
                    let on = *self.churn.borrow();
                    if let Local::Emulated(e) = &mut self.local {
                        e.set_churn(on);
                    }
                }
                Wake::Reload(r) => {
                    let cfg = match r {
                        Some(Some(c)) => Ok(*c),
                        Some(None) => Config::load(&self.cfg.path),
                        None => continue,
                    };
                    // Counted, so monitoring sees a SIGHUP that did not take.
                    match cfg {
                        Ok(c) => {
                            self.apply_reload(c, now);
                            bump(&mut self.counters, "config_reloads");
                        }
                        Err(e) => {
                            bump(&mut self.counters, "config_reload_failures");
                            tracing::error!("reload failed, keeping the running config: {e}");
                        }
                    }
                }
            }
            self.endpoint.handle_timeout(now);
            self.replica.handle_timeout(now);
            if self.bulk.due(now, &self.replica) {
                self.replica.request_local_bulk(now);
            }
            if let Local::Emulated(e) = &mut self.local {
                if churn_stop.is_some_and(|t| now >= t) {
                    churn_stop = None;
                    e.set_churn(false);
                }
                e.handle_timeout(now);
            }
            busy = self.round(now);
            if now >= next_status {
                self.count_foreign(now);
                // Before the refresh, so the status shows the sweep owed or asked for now.
                self.poll_repair(now);
                self.refresh_status(now);
                next_status = now + STATUS_REFRESH;
            }
            if now >= next_summary {
                next_summary = now + SUMMARY_LOG;
                self.log_summary();
            }
            if now >= next_addrs {
                next_addrs = now + ADDR_REFRESH;
                if let Local::Raw(raw) = &mut self.local {
                    let sock = raw.sock.get_mut();
                    if let Err(err) = sock.refresh_addrs() {
                        // Exit (and let the supervisor restart us once it is back) rather
                        // than run on, relaying nothing.
                        self.refresh_status(Instant::now());
                        return Err(NodeError::SyncInterfaceGone(err));
                    }
                }
            }
        }
        self.refresh_status(Instant::now());
        tracing::info!("stopped");
        Ok(())
    }

    /// One fair round over the sources; true if any was left with work.
    fn round(&mut self, now: Instant) -> bool {
        self.injected_this_round = 0;
        self.read_this_round = 0;
        let arrivals = self.replica.inject_arrivals();
        let arrived = (arrivals - self.inject_arrivals) as usize;
        self.inject_arrivals = arrivals;
        // What waits now and what will likely arrive meanwhile: a backlog drains within a
        // few rounds instead of standing (a budget of the arrivals alone keeps it as it is).
        let queued = self.replica.prepare_inject(now);
        self.inject_budget = (queued + arrived).clamp(INJECT_PER_ROUND, INJECT_MAX_PER_ROUND);
        let raw_more = self.drain_raw(now, RAW_BATCHES_PER_ROUND);
        self.steer_shedding(now);
        self.pump(now);
        let udp_more = self.drain_udp(now, UDP_BATCHES_PER_ROUND);
        self.pump(now);
        let shedding = match &self.local {
            Local::Raw(r) => r.shed.as_ref().is_some_and(|c| c.capture_overloaded()),
            Local::Emulated(_) => false,
        };
        self.coalesce.on_round(
            now,
            self.read_this_round,
            shedding,
            realtime::thread_cpu_time,
        );
        raw_more || udp_more || self.replica.inject_pending()
    }

    /// Receive up to `budget` batches from the tunnel socket; true if it may hold more.
    /// The mean wait of what was read becomes the delay our ACKs report (an empty socket:
    /// none).
    fn drain_udp(&mut self, now: Instant, budget: usize) -> bool {
        let mut wait = MeanWait::default();
        let more = self.drain_udp_batches(now, budget, &mut wait);
        let delay = wait.mean();
        self.replica.set_receive_delay(delay);
        self.counters.receive_delay_us_now = delay.as_micros() as u64;
        more
    }

    fn drain_udp_batches(&mut self, now: Instant, budget: usize, wait: &mut MeanWait) -> bool {
        for _ in 0..budget {
            match try_recv_batch(&self.udp, &mut self.udp_rx) {
                None => return false,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // ICMP errors for earlier sends surface here; they're not fatal.
                    tracing::debug!("udp recv: {e}");
                    continue;
                }
            }
            self.counters.tunnel_rx_overflow += self.udp_rx.take_overflow();
            self.read_this_round += self.udp_rx.len() as u64;
            let read = std::time::SystemTime::now();
            for i in 0..self.udp_rx.len() {
                if let Some(w) = self.udp_rx.waited(i, read) {
                    wait.add(w);
                }
            }
            // Each datagram is opened where it was received (no copy of it first).
            let (endpoint, replica) = (&mut self.endpoint, &mut self.replica);
            let (counters, log_limit) = (&mut self.counters, &mut self.log_limit);
            self.udp_rx.for_each_mut(|src, data| {
                let (Some(src), Some(data)) = (src, data) else {
                    bump(counters, "tunnel_oversized");
                    return;
                };
                match endpoint.handle_datagram_in_place(src, data, now) {
                    Recv::Data { peer, len } => {
                        let plain = &data[tunnel::TRANSPORT_HEADER_LEN..][..len];
                        // Counted per peer by the replica (`sync_malformed`).
                        if let Err(e) = replica.on_peer_datagram(peer, plain, now) {
                            if let Some(n) = log_limit.allow("sync_malformed", now) {
                                tracing::warn!(%src, suppressed = n, "malformed sync message: {e}");
                            }
                        }
                    }
                    Recv::Dropped(reason) => {
                        if let Some(n) = log_limit.allow("tunnel_drop", now) {
                            tracing::debug!(%src, suppressed = n, ?reason, "tunnel datagram dropped");
                        }
                    }
                    _ => {}
                }
            });
        }
        true
    }

    /// Receive up to `budget` batches from the firewall's capture socket; true if it may
    /// hold more.
    fn drain_raw(&mut self, now: Instant, budget: usize) -> bool {
        let mut wait = MeanWait::default();
        let more = self.drain_raw_batches(now, budget, &mut wait);
        self.counters.capture_delay_us_now = wait.mean().as_micros() as u64;
        more
    }

    fn drain_raw_batches(&mut self, now: Instant, budget: usize, wait: &mut MeanWait) -> bool {
        let Local::Raw(raw) = &mut self.local else {
            return false;
        };
        let RawSide {
            sock,
            rx,
            shed,
            run,
            ..
        } = &mut **raw;
        for _ in 0..budget {
            match try_recv_batch(sock, rx) {
                None => return false,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if let Some(n) = self.log_limit.allow("raw_recv", now) {
                        tracing::warn!(suppressed = n, "raw recv: {e}");
                    }
                    continue;
                }
            }
            let lost = rx.take_overflow();
            if lost > 0 {
                self.counters.shed_capture_overflow += lost;
                // A dump under way may have lost a packet: it must not delete by absence.
                self.replica.note_capture_loss();
            }
            self.read_this_round += rx.len() as u64;
            let read = std::time::SystemTime::now();
            for i in 0..rx.len() {
                let age = rx.waited(i, read).unwrap_or_default();
                // What the packet was: the firewall's `UPD_C` run (which the capture filter
                // may shed) or not; every packet read counts for the controller.
                let eligible = 'packet: {
                    let Some(data) = rx.data(i) else {
                        bump(&mut self.counters, "local_oversized");
                        break 'packet false;
                    };
                    let ip = match Ipv4Packet::new_checked(data) {
                        Ok(ip)
                            if ip.protocol() == wire::IPPROTO_PFSYNC
                                && sock.get_ref().admits(&ip) =>
                        {
                            ip
                        }
                        _ => {
                            bump(&mut self.counters, "local_bad_ip");
                            break 'packet false;
                        }
                    };
                    // Our own injection looped back, or not the firewall: never relayed.
                    if let Some(why) = sock.get_ref().check_source(ip.src()) {
                        count_untrusted(
                            &mut self.counters,
                            &mut self.log_limit,
                            why,
                            ip.src(),
                            now,
                        );
                        break 'packet false;
                    }
                    // pfsync_input()'s rule: anything that crossed a router is not from our firewall.
                    if ip.ttl() != wire::PFSYNC_DFLTTL {
                        bump(&mut self.counters, "local_bad_ttl");
                        if let Some(n) = self.log_limit.allow("local_bad_ttl", now) {
                            tracing::warn!(src = %ip.src(), ttl = ip.ttl(), suppressed = n, "pfsync with TTL != 255 dropped");
                        }
                        break 'packet false;
                    }
                    self.counters.captured += 1;
                    let eligible = shed.is_some() && run.matches(ip.payload());
                    if age > CAPTURE_MAX_AGE && only_upd_c(ip.payload(), self.cfg.local.dialect) {
                        self.counters.shed_capture_late += 1;
                        break 'packet eligible;
                    }
                    let res = if age > CAPTURE_MAX_AGE {
                        self.counters.shed_coalesced += 1;
                        self.replica.on_local_pfsync_coalesced(ip.payload(), now)
                    } else {
                        self.replica.on_local_pfsync(ip.payload(), now)
                    };
                    if let Err(e) = res {
                        bump(&mut self.counters, "local_malformed");
                        if let Some(n) = self.log_limit.allow("local_malformed", now) {
                            tracing::warn!(src = %ip.src(), suppressed = n, "malformed pfsync from firewall dropped: {e}");
                        }
                    }
                    eligible
                };
                wait.add(age);
                if let Some(c) = shed {
                    c.on_captured(now, age, eligible);
                }
            }
        }
        true
    }

    /// Count (and log a sample of) the pfsync from other hosts that the capture filter
    /// dropped since the last call. Bounded: a watch buffer's worth is read, the kernel
    /// counts the rest.
    fn count_foreign(&mut self, now: Instant) {
        let Local::Raw(raw) = &mut self.local else {
            return;
        };
        let RawSide { sock, watch, .. } = &mut **raw;
        let Some(w) = watch else {
            return;
        };
        let (counters, log_limit) = (&mut self.counters, &mut self.log_limit);
        let unseen = w.drain(WATCH_BATCHES, |src| {
            // A firewall's packet here was in flight while the list changed: not counted.
            if let Some(why) = sock.get_ref().check_source(src) {
                count_untrusted(counters, log_limit, why, src, now);
            }
        });
        bump_by(counters, Untrusted::Foreign.counter(), unseen);
    }

    /// Apply the shedding controller's share to the capture socket's kernel filter.
    fn steer_shedding(&mut self, now: Instant) {
        let peer_delay = self.replica.peer_delay(now);
        self.counters.peer_delay_us_now = peer_delay.as_micros() as u64;
        let Local::Raw(raw) = &mut self.local else {
            return;
        };
        let Some(c) = &mut raw.shed else {
            return;
        };
        c.on_peer_delay(peer_delay);
        let changed = c.poll(now, realtime::thread_cpu_time);
        self.counters.shed_capture_filtered = c.shed_estimate();
        self.counters.shed_for_peer_intervals = c.peer_intervals();
        self.counters.capture_stalls = c.stalls();
        let Some(share) = changed else {
            return;
        };
        raw.attach_filter(self.cfg.local.dialect, share);
    }

    /// Move everything the state machines have to say to the sockets, until quiet; at most
    /// `inject_budget` packets towards the firewall per round.
    fn pump(&mut self, now: Instant) {
        for _ in 0..MAX_PUMP_ROUNDS {
            let mut moved = 0usize;

            // Firewall → replica (emulator output is our "capture").
            if let Local::Emulated(e) = &mut self.local {
                while let Some(n) = e.poll_transmit(&mut self.scratch) {
                    moved += 1;
                    self.counters.captured += 1;
                    if let Err(err) = self.replica.on_local_pfsync(&self.scratch[..n], now) {
                        bump(&mut self.counters, "local_malformed");
                        tracing::warn!("emulator produced malformed pfsync: {err}");
                    }
                }
            }

            while let Some(ev) = self.endpoint.poll_event() {
                moved += 1;
                match ev {
                    tunnel::Event::SessionEstablished(p) => {
                        bump(&mut self.counters, "sessions_established");
                        // A rekey or a crossed handshake's second session keeps the sync
                        // stream; only a new stream starts a resync and a sweep.
                        let new_stream = self.replica.on_peer_up(p, now);
                        let first =
                            (self.replica.peer_stats(p)).is_some_and(|s| s.sessions_kept == 1);
                        if new_stream || first {
                            tracing::info!(peer = %self.peer_name(p), "tunnel up");
                        }
                        if new_stream {
                            // After the resync this starts, reconcile the firewall too.
                            self.bulk.soon(now + SWEEP_AFTER_UP);
                        } else {
                            tracing::debug!(peer = %self.peer_name(p), "tunnel session renewed; sync stream kept");
                        }
                    }
                    tunnel::Event::PeerUnreachable(p) => {
                        tracing::warn!(peer = %self.peer_name(p), "peer unreachable");
                        self.replica.on_peer_down(p, now);
                    }
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }
            // Notes are rate-limited per kind (a peer can make the replica note new
            // incarnations or refused clocks as often as it sends datagrams), except creator
            // conflicts: an alarm, noted at most once per peer and creator.
            while let Some((p, note)) = self.replica.poll_note() {
                if let SyncNote::CreatorConflict { owner, .. } = note {
                    let owner =
                        owner.map_or_else(|| "our own firewall".into(), |o| self.peer_name(o));
                    tracing::error!(peer = %self.peer_name(p), %owner, "{note}");
                } else if let Some(n) = self.log_limit.allow(note.kind(), now) {
                    tracing::info!(peer = %self.peer_name(p), suppressed = n, "{note}");
                }
            }

            // Replica → tunnel: each datagram is written into the send slot where its
            // transport header ends and sealed there (no plaintext copy).
            let budget = self.cfg.mtu - tunnel::TRANSPORT_OVERHEAD;
            let body = tunnel::TRANSPORT_HEADER_LEN..tunnel::TRANSPORT_HEADER_LEN + budget;
            let fd = self.udp.get_ref().as_raw_fd();
            for i in 0..self.peers.len() {
                let id = self.peers[i].id;
                while let Some(n) =
                    self.replica
                        .poll_peer_transmit(id, now, &mut self.udp_tx.slot()[body.clone()])
                {
                    moved += 1;
                    match self.endpoint.send_in_place(id, n, now, self.udp_tx.slot()) {
                        tunnel::Send::Datagram(t) => {
                            self.udp_tx.commit(t.len, t.to);
                            if self.udp_tx.is_full() {
                                self.flush_udp(fd);
                            }
                        }
                        tunnel::Send::Queued => {}
                        tunnel::Send::Dropped(_) => bump(&mut self.counters, "tunnel_send_dropped"),
                    }
                }
            }
            while let Some(t) = self.endpoint.poll_transmit(now, self.udp_tx.slot()) {
                moved += 1;
                self.udp_tx.commit(t.len, t.to);
                if self.udp_tx.is_full() {
                    self.flush_udp(fd);
                }
            }
            self.flush_udp(fd);

            // Replica → firewall, in slices: a pf kernel's input queue (and a veth's backlog)
            // drops what arrives in one long burst.
            while self.injected_this_round < self.inject_budget {
                match &mut self.local {
                    Local::Raw(raw) => {
                        // Straight into the send batch's slot: no copy per packet.
                        let sock = raw.sock.get_ref();
                        let head = sock.inject_headroom();
                        let slot = raw.tx.slot();
                        let Some(n) = self
                            .replica
                            .poll_local_inject(&mut slot[head..head + LOCAL_PFSYNC_MTU])
                        else {
                            break;
                        };
                        let len = sock.finish_inject(slot, n);
                        let (_, to, to_len) = sock.inject_target();
                        raw.tx.commit_to(len, to, to_len);
                        if raw.tx.is_full() {
                            flush_raw(raw, &mut self.counters);
                        }
                    }
                    Local::Emulated(e) => {
                        let Some(n) = self
                            .replica
                            .poll_local_inject(&mut self.scratch[..LOCAL_PFSYNC_MTU])
                        else {
                            break;
                        };
                        // In-process: the gateway injects with TTL 255 on the sync interface.
                        if e.on_receive(&self.scratch[..n], wire::PFSYNC_DFLTTL, true, now)
                            .is_err()
                        {
                            bump(&mut self.counters, "inject_rejected");
                        }
                    }
                }
                self.injected_this_round += 1;
                moved += 1;
                self.counters.injected += 1;
            }
            if let Local::Raw(raw) = &mut self.local {
                flush_raw(raw, &mut self.counters);
            }
            if moved == 0 {
                break;
            }
        }
    }

    fn log_summary(&self) {
        let Ok(st) = self.status.lock() else {
            return;
        };
        let up = st.peers.iter().filter(|p| p.established).count();
        let drops: u64 = st.drops.values().sum();
        tracing::info!(
            states = st.states,
            digest = %st.digest,
            peers_up = format_args!("{up}/{}", st.peers.len()),
            captured = st.local.get("captured").copied().unwrap_or(0),
            injected = st.local.get("injected").copied().unwrap_or(0),
            drops,
            "summary"
        );
    }

    fn flush_udp(&mut self, fd: std::os::fd::RawFd) {
        if !self.udp_tx.is_empty() {
            let (_, failed) = self.udp_tx.flush(fd);
            self.counters.tunnel_send_failed += failed as u64;
        }
    }

    fn peer_name(&self, id: PeerId) -> String {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .map_or_else(|| format!("#{id}"), |p| p.cfg.name.clone())
    }

    /// What shedding dropped last is repaired by a sweep once it has stopped (repair.rs).
    fn poll_repair(&mut self, now: Instant) {
        let (c, inject) = (&self.counters, self.replica.stats().inject);
        let shed = c.shed_capture_filtered
            + c.shed_capture_late
            + c.shed_capture_overflow
            + c.inject_failed
            + inject.late
            + inject.dropped;
        let shedding = matches!(&self.local, Local::Raw(r) if r.share > 0.0);
        let gap = sweep_interval(self.replica.table().len());
        if self.repair.poll(now, shed, shedding, self.bulk.idle(), gap) {
            self.bulk.soon(now);
        }
    }

    fn refresh_status(&mut self, now: Instant) {
        // The shedding in force, derived from the capture side.
        (
            self.counters.shed_share_percent_now,
            self.counters.shed_target_ms_now,
        ) = match &self.local {
            Local::Raw(r) if r.shed.is_some() => (
                (r.share * 100.0).round() as u64,
                self.cfg
                    .local
                    .shed_target
                    .map_or(0, |t| t.as_millis() as u64),
            ),
            _ => (0, 0),
        };
        let tdrops = self.endpoint.drops();
        let mut drops: BTreeMap<String, u64> = tunnel::DropReason::ALL
            .iter()
            .map(|r| (format!("tunnel_{}", r.as_str()), tdrops.get(*r)))
            .collect();
        for (k, v) in self.counters.iter() {
            if k.starts_with("local_")
                || k.starts_with("tunnel_")
                || k.starts_with("sync_")
                || k.starts_with("inject_")
            {
                drops.insert(k.to_string(), v);
            }
        }
        let rs = self.replica.stats();
        // Sync stream starts (issue #11/#10.1): a rekey must not add to any of these.
        let mut epochs = [0u64; 5];
        let mut sync_drops = [0u64; 4];
        for slot in &self.peers {
            if let Some(p) = self.replica.peer_stats(slot.id) {
                epochs[0] += p.tx_epochs;
                epochs[1] += p.rx_epochs;
                epochs[2] += p.sessions_kept;
                epochs[3] += p.peer_restarts;
                epochs[4] += p.hello_reqs_rx;
                sync_drops[0] += p.bad_datagrams;
                sync_drops[1] += p.duplicates;
                sync_drops[2] += p.epoch_mismatch;
                sync_drops[3] += p.malformed;
            }
        }
        for (k, v) in [
            "sync_bad_datagram",
            "sync_duplicate",
            "sync_epoch_mismatch",
            "sync_malformed",
        ]
        .into_iter()
        .zip(sync_drops)
        {
            drops.insert(k.to_string(), v);
        }
        drops.insert("local_echo".into(), rs.echoes_dropped);
        drops.extend(
            self.replica
                .security_counters()
                .map(|(k, v)| (k.to_string(), v)),
        );
        drops.insert("inject_queue_overflow".into(), rs.inject.dropped);
        drops.insert(
            "inject_queue_over_share".into(),
            rs.inject.dropped_over_share,
        );
        drops.insert("inject_untranslatable".into(), rs.inject.encode_errors);
        let local: BTreeMap<String, u64> = self
            .counters
            .iter()
            .filter(|(k, _)| !drops.contains_key(*k))
            .map(|(k, v)| (k.to_string(), v))
            .chain([
                ("forwarded".to_string(), rs.forwarded),
                ("bulk_answers".to_string(), rs.bulk_answers),
                ("sweeps".to_string(), rs.sweeps),
                ("sweep_restored".to_string(), rs.sweep_restored),
                ("sweep_unlisted".to_string(), rs.sweep_unlisted),
                ("sweeps_lossy".to_string(), rs.sweeps_lossy),
                ("sweep_deleted".to_string(), rs.sweep_deleted),
                ("sweeps_after_shedding".to_string(), self.repair.sweeps),
                (
                    "sweep_after_shedding_owed_now".to_string(),
                    u64::from(self.repair.owed()),
                ),
                ("stale_refused".to_string(), rs.table.stale),
                ("expired".to_string(), rs.table.expired),
                ("tombstones".to_string(), rs.tombstones as u64),
                ("relayed_verbatim".to_string(), rs.data_verbatim),
                ("relayed_corrected".to_string(), rs.data_corrected),
                ("relayed_reencoded".to_string(), rs.data_reencoded),
                ("injected_joined".to_string(), rs.inject.joined),
                ("shed_inject_late".to_string(), rs.inject.late),
                ("rx_coalesce_pauses".to_string(), self.coalesce.pauses()),
                ("rx_coalesce_trials".to_string(), self.coalesce.trials()),
                (
                    "rx_coalesce_on_now".to_string(),
                    self.coalesce.kept() as u64,
                ),
                (
                    "rx_coalesce_saving_percent_now".to_string(),
                    self.coalesce.saving_percent().max(0.0).round() as u64,
                ),
                ("realtime_rests".to_string(), self.duty.rests),
                ("epochs_opened".to_string(), epochs[0]),
                ("peer_epochs".to_string(), epochs[1]),
                ("sessions_kept".to_string(), epochs[2]),
                ("peer_restarts".to_string(), epochs[3]),
                ("hello_requests".to_string(), epochs[4]),
            ])
            .chain(tunnel_dos_counters(&self.endpoint.dos_stats()))
            .chain(
                self.replica
                    .answer_accounting()
                    .map(|(k, v)| (k.to_string(), v)),
            )
            .collect();
        let peers = self
            .peers
            .iter()
            .map(|slot| {
                let t = self.endpoint.peer_status(slot.id);
                let s = self.replica.peer_stats(slot.id);
                PeerView {
                    name: slot.cfg.name.clone(),
                    public_key: slot.cfg.public_key.to_base64(),
                    endpoint: t.as_ref().and_then(|t| t.endpoint).map(|e| e.to_string()),
                    // Up means relaying works: the tunnel session and the sync epoch inside
                    // it (a packet sent before the epoch handshake travels as a repair).
                    established: t.as_ref().is_some_and(|t| t.established)
                        && s.as_ref().is_some_and(|s| s.established),
                    last_handshake_secs: t
                        .as_ref()
                        .and_then(|t| t.last_handshake)
                        .map(|h| now.saturating_duration_since(h).as_secs_f64()),
                    rx_packets: t.as_ref().map_or(0, |t| t.rx_packets),
                    rx_bytes: t.as_ref().map_or(0, |t| t.rx_bytes),
                    tx_packets: t.as_ref().map_or(0, |t| t.tx_packets),
                    tx_bytes: t.as_ref().map_or(0, |t| t.tx_bytes),
                    retransmits: s.as_ref().map_or(0, |s| s.retransmits),
                    resyncs: s.as_ref().map_or(0, |s| s.resyncs),
                    resync_in_progress: s.as_ref().is_some_and(|s| s.resync_in_progress),
                    delay_us: s.as_ref().map_or(0, |s| s.peer_delay_us),
                    sync: s
                        .iter()
                        .flat_map(|s| s.named())
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                }
            })
            .collect();
        let firewall = match &mut self.local {
            Local::Emulated(e) => Some(FirewallView {
                states: e.table().len(),
                digest: e.digest().to_string(),
                counters: e.stats().counters().into_iter().collect(),
            }),
            Local::Raw(_) => None,
        };
        let st = Status {
            node: self.cfg.name.clone(),
            public_key: self.cfg.private_key.public().to_base64(),
            listen: self
                .udp
                .get_ref()
                .local_addr()
                .map_or_else(|_| self.cfg.listen.to_string(), |a| a.to_string()),
            dialect: self.cfg.local.dialect.to_string(),
            uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
            states: self.replica.table().len(),
            digest: self.replica.digest().to_string(),
            local,
            drops,
            peers,
            firewall,
        };
        if let Ok(mut g) = self.status.lock() {
            *g = st;
        }
    }
}

/// The gateway's own bulk requests to its firewall: one at start (like pfsync on link-up),
/// retried every `PFSYNC_BULK_RETRY` until answered, at most `PFSYNC_MAX_BULKTRIES` times
/// (the kernels' values); then one now and then, so that the replica can reconcile the
/// mirror with the firewall's full dump (deletions nobody saw, states the firewall lacks).
struct LocalBulk {
    next: Instant,
    tries: u32,
    sweeps_at_request: u64,
    /// Deciding, at `next`, whether the last answered dump calls for a quick one.
    deciding: bool,
    answered_at: Instant,
    /// Quick dumps in a row (bounded so that a firewall that keeps missing states from its
    /// dumps cannot make us ask for one every second).
    quick_run: u32,
}

const PFSYNC_BULK_RETRY: Duration = Duration::from_secs(5);
const PFSYNC_MAX_BULKTRIES: u32 = 12;

/// Time between reconciliation sweeps: at least 10 s, longer for big tables so that the
/// dumps stay a small share of the sync link (2,000 states per second of interval).
fn sweep_interval(states: usize) -> Duration {
    Duration::from_secs(10).max(Duration::from_millis(states as u64 / 2))
}

/// Delay to the dump that confirms states missing from the previous one.
const SWEEP_CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// Most quick dumps in a row before the normal interval applies again.
const MAX_QUICK_SWEEPS: u32 = 4;

/// Delay from a tunnel coming up to the reconciliation sweep (the resync goes first).
const SWEEP_AFTER_UP: Duration = Duration::from_secs(3);

impl LocalBulk {
    /// No bulk request is waiting for its answer.
    fn idle(&self) -> bool {
        self.tries == 0
    }

    /// Bring the next sweep forward to `at` unless one is in progress or sooner.
    fn soon(&mut self, at: Instant) {
        if self.tries == 0 && self.next > at {
            self.next = at;
            self.deciding = false;
        }
    }

    fn new(now: Instant) -> LocalBulk {
        LocalBulk {
            next: now,
            tries: 0,
            sweeps_at_request: 0,
            deciding: false,
            answered_at: now,
            quick_run: 0,
        }
    }

    /// Whether to send a bulk request now.
    fn due(&mut self, now: Instant, replica: &Replica) -> bool {
        let sweeps = replica.stats().sweeps;
        if self.tries > 0 && sweeps > self.sweeps_at_request {
            // Answered: decide one second later whether the next dump comes soon (the dump
            // lacked states that a second dump must confirm gone before they are deleted, or
            // repairs brought our firewall's states the mirror lacked). Deciding later lets
            // the DEL_Cs still in flight at BUS END arrive: under churn most dumps miss a
            // few such states, and whole-table dumps every second would cost.
            self.tries = 0;
            self.answered_at = now;
            self.deciding = true;
            self.next = now + SWEEP_CONFIRM_AFTER;
        }
        if self.tries == 0
            && !self.deciding
            && self.quick_run < MAX_QUICK_SWEEPS
            && replica.sweep_wanted()
        {
            self.next = self.next.min(now + SWEEP_CONFIRM_AFTER);
        }
        if now < self.next {
            return false;
        }
        if self.deciding {
            self.deciding = false;
            let soon = replica.sweep_confirmation_pending() || replica.sweep_wanted();
            if !soon || self.quick_run >= MAX_QUICK_SWEEPS {
                self.quick_run = 0;
                self.next = self.answered_at + sweep_interval(replica.table().len());
                return false;
            }
            self.quick_run += 1;
        }
        if self.tries >= PFSYNC_MAX_BULKTRIES {
            // The kernels "pretend OK" after the last try; we try again next round.
            self.tries = 0;
            self.next = now + sweep_interval(replica.table().len());
            return false;
        }
        self.tries += 1;
        self.sweeps_at_request = sweeps;
        self.next = now + PFSYNC_BULK_RETRY;
        true
    }
}

enum Wake {
    Round,
    Shutdown,
    Churn,
    Reload(Option<Option<Box<Config>>>),
}

/// Send what the raw side's batch holds, counting datagrams the kernel refused.
fn flush_raw(raw: &mut RawSide, counters: &mut Counters) {
    if !raw.tx.is_empty() {
        let (_, failed) = raw.tx.flush(raw.sock.get_ref().inject_target().0);
        counters.inject_failed += failed as u64;
    }
}

/// Does this pfsync packet carry nothing but compressed updates?
fn only_upd_c(pkt: &[u8], dialect: wire::Dialect) -> bool {
    wire::Packet::new_checked(pkt, dialect)
        .is_ok_and(|p| p.messages().all(|m| matches!(m, wire::Message::UpdC(_))))
}

/// One `recvmmsg` batch from a registered socket if tokio knows it readable; `None` when it
/// is not, or the read would block (`try_io` then clears the readiness, so the next wakeup
/// comes from the reactor).
///
/// A batch shorter than the slots emptied the socket: the readiness is cleared then too,
/// which saves the `recvmmsg` that would only return `EAGAIN` (one syscall per socket and
/// wakeup at low rates). Nothing is missed: a datagram that arrives after the read queues
/// a new edge, which the reactor sees at its next turn.
fn try_recv_batch<T: AsRawFd>(sock: &AsyncFd<T>, rx: &mut RecvBatch) -> Option<io::Result<usize>> {
    let Some(Ok(mut g)) = poll_now(sock.readable()) else {
        return None;
    };
    let r = g.try_io(|s| rx.recv(s.get_ref().as_raw_fd())).ok()?;
    if r.is_ok() && !rx.is_full() {
        g.clear_ready();
    }
    Some(r)
}

/// Poll a future once without waiting (readiness that tokio already knows of).
fn poll_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Keepalive used when the config sets none: short, so a dead peer is noticed quickly
/// and NAT/firewall pinholes on the transit path stay open.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // One socket for both families, like WireGuard.
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    // Bulk resyncs arrive in bursts; the default buffer drops them.
    crate::local::mmsg::set_socket_buffers(s.as_raw_fd(), 32 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Hand a socket to tokio's reactor.
pub(crate) fn register<T: AsRawFd>(t: T) -> io::Result<AsyncFd<T>> {
    // Readable only: sends never wait for room (a full socket buffer is a send failure,
    // counted), and with write interest every datagram the peer's side consumed would make
    // the socket writable again, an edge and a wakeup for nothing (half of a gateway's
    // wakeups at 5k packets/s).
    // SAFETY: every T we register owns its descriptor (UdpSocket, socket2::Socket), so the
    // fd stays valid and unshared for as long as the AsyncFd lives.
    Ok(unsafe { AsyncFd::register_with_interest(t, tokio::io::Interest::READABLE) }?)
}

fn random_hostid() -> u32 {
    loop {
        let v = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
        if v != 0 {
            return v;
        }
    }
}

/// The size of CPU 0's level-2 cache (per core on current x86 and arm64), from sysfs.
fn l2_cache_bytes() -> Option<usize> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let dir = base.join(format!("index{i}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if read("level")?.trim() != "2" || read("type")?.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(read("size")?.trim())
    })
}

/// `2048K`, `2M`, `512`: sysfs cache sizes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (num, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("99999999999999999999M"), None);
    }
}

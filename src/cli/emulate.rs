//! `pfsync-gw emulate`: run the pf emulator as its own process on a sync interface — a
//! testbed host playing a pf firewall with `pfsync0 syncdev IF`.
//!
//! It sends and receives real pfsync (raw IPv4 protocol 240, TTL 255) on the interface, so
//! two of these talk to each other like two firewalls ("plain pfsync" baseline), or to a
//! gateway exactly as a kernel would.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::local::emulator::{Emulator, EmulatorConfig};
use crate::local::mmsg::{RecvBatch, SendBatch};
use crate::local::raw::RawSyncSocket;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::{Dialect, IPPROTO_PFSYNC, PFSYNC_GROUP};

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// The sync interface (pfsync0's syncdev).
    #[arg(long, value_name = "IF")]
    pub interface: String,
    /// Wire dialect: netbsd-v3, openbsd-v6, freebsd-1301, freebsd-1400, freebsd-1500.
    #[arg(long, default_value = "openbsd-v6", value_parser = parse_dialect)]
    pub dialect: Dialect,
    /// Host id (creatorid of our states), hex (0x…) or decimal; default random non-zero.
    #[arg(long, value_parser = parse_hostid)]
    pub hostid: Option<u32>,
    /// New states per second while churning.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(..=crate::local::emulator::MAX_RATE as i64))]
    pub rate: u32,
    /// State limit (`set limit states`), own and imported states together.
    #[arg(long, default_value_t = 100_000)]
    pub max_states: usize,
    /// `maxupd`: changes of one pending state that force an immediate send.
    #[arg(long, default_value_t = 128)]
    pub maxupd: u8,
    /// Churn RNG seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Unicast destination (`syncpeer`); default the 224.0.0.240 group.
    #[arg(long, value_name = "ADDR")]
    pub syncpeer: Option<Ipv4Addr>,
    /// Stop churn after SECS; keep running and applying received pfsync.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub churn_for: Option<f64>,
    /// Exit after SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Request a bulk update at start (like `ifconfig pfsync0 up`).
    #[arg(long)]
    pub bulk: bool,
    /// Write a JSON status here every 250 ms and at exit (atomically).
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Create N states at start, without the churn rate limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub initial_states: usize,
    /// Largest pfsync packet (pfsync0 MTU minus the IP header).
    #[arg(long, default_value_t = 1480)]
    pub mtu: usize,
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    Dialect::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Dialect::ALL.iter().map(|d| d.name()).collect();
        format!("unknown dialect `{s}` (one of {})", names.join(", "))
    })
}

/// Seconds for `--churn-for` and `--duration`: added to the start time, so bounded (a
/// year, as `[emulator] churn_for`); `inf` or 1e30 panicked there.
fn parse_secs(s: &str) -> Result<f64, String> {
    let max = crate::config::MAX_CHURN_FOR as f64;
    match s.parse::<f64>() {
        Ok(v) if (0.0..=max).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in 0..={max}")),
    }
}

fn parse_hostid(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse::<u32>(),
    }
    .map_err(|e| format!("bad hostid `{s}`: {e}"))?;
    if v == 0 {
        return Err("hostid must be non-zero (creatorid 0 is refused by every kernel)".into());
    }
    Ok(v)
}

fn random_u64() -> u64 {
    rand_core::RngCore::next_u64(&mut rand_core::OsRng)
}

/// Run the subcommand; returns the process exit code.
pub fn run(args: &EmulateArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emulate: cannot start runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run_async(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("emulate: {e}");
            1
        }
    }
}

async fn run_async(args: &EmulateArgs) -> io::Result<()> {
    let hostid = args.hostid.unwrap_or_else(|| loop {
        let h = random_u64() as u32;
        if h != 0 {
            break h;
        }
    });
    let dest = args.syncpeer.unwrap_or(PFSYNC_GROUP);
    // Like the kernel: with a syncpeer it is unicast only, otherwise the group.
    let sock = RawSyncSocket::open(&args.interface, args.syncpeer.is_none(), dest)?;
    // SAFETY: the socket owns its fd, which stays open and unchanged inside the AsyncFd.
    let afd = unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let to = SocketAddr::V4(SocketAddrV4::new(dest, 0));

    let start = Instant::now();
    let mut emu = Emulator::new(
        EmulatorConfig {
            dialect: args.dialect,
            hostid,
            rate: args.rate,
            max_states: args.max_states,
            maxupd: args.maxupd,
            seed: args.seed.unwrap_or_else(random_u64),
            ifname: args.interface.clone(),
            mtu: args.mtu,
        },
        start,
    );
    emu.create_states(args.initial_states);
    if args.bulk {
        emu.request_bulk();
    }
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let mut churn_stop = args.churn_for.map(|s| start + secs(s));
    let end = args.duration.map(|s| start + secs(s));
    if churn_stop.is_some_and(|t| t <= start) {
        emu.set_churn(false);
        churn_stop = None;
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut status_tick = tokio::time::interval(Duration::from_millis(250));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx = RecvBatch::new(16 * 1024);
    let mut tx = SendBatch::new(args.mtu.max(64));
    let status_path = args.status_file.as_deref();

    eprintln!(
        "emulate: {} on {} as hostid {hostid:08x}, sending to {dest}",
        args.dialect, args.interface
    );
    loop {
        let backlog = transmit(&mut emu, &mut tx, &afd, to);
        let mut deadline = emu.poll_timeout();
        if backlog {
            // Paced like the kernels' bulk callouts: a bulk update of 100k states must not
            // arrive as one 30 MB burst that no receiver's socket buffer can hold.
            let next = Instant::now() + PACE_INTERVAL;
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        for t in [churn_stop, end].into_iter().flatten() {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            r = afd.readable() => {
                let mut guard = r?;
                // A bounded number of batches per wakeup keeps timers and sends going.
                for _ in 0..16 {
                    match guard.try_io(|s| rx.recv(s.get_ref().as_raw_fd())) {
                        Ok(Ok(_)) => {
                            let now = Instant::now();
                            for (_, data) in rx.iter() {
                                let Some(data) = data else { continue };
                                receive(&mut emu, afd.get_ref(), data, now);
                            }
                            // Replies (UPD_REQ answers, bulk) go out between batches.
                            transmit(&mut emu, &mut tx, &afd, to);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => break,
                    }
                }
            }
            _ = status_tick.tick() => {
                if let Some(p) = status_path {
                    write_status(p, &mut emu);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let now = Instant::now();
        if churn_stop.is_some_and(|t| t <= now) {
            emu.set_churn(false);
            churn_stop = None;
        }
        emu.handle_timeout(now);
        if end.is_some_and(|t| t <= now) {
            break;
        }
    }
    while transmit(&mut emu, &mut tx, &afd, to) {
        std::thread::sleep(PACE_INTERVAL);
    }
    if let Some(p) = status_path {
        write_status(p, &mut emu);
    }
    Ok(())
}

/// One captured IPv4 datagram: the kernel's checks use the real TTL; our own packets
/// (looped back) are not input.
fn receive(emu: &mut Emulator, sock: &RawSyncSocket, data: &[u8], now: Instant) {
    let Ok(ip) = Ipv4Packet::new_checked(data) else {
        return;
    };
    if ip.protocol() != IPPROTO_PFSYNC || sock.is_own(ip.src()) {
        return;
    }
    // Bound to the interface, so everything arrives on the sync interface.
    let _ = emu.on_receive(ip.payload(), ip.ttl(), true, now);
}

/// Packets sent per pacing interval at most (one `sendmmsg` batch).
const PACE_PACKETS: usize = crate::local::mmsg::BATCH;
const PACE_INTERVAL: Duration = Duration::from_millis(1);

/// Build due packets straight into the send batch's slots and send them, at most
/// `PACE_PACKETS` per call; true if more are waiting.
fn transmit(
    emu: &mut Emulator,
    tx: &mut SendBatch,
    afd: &AsyncFd<RawSyncSocket>,
    to: SocketAddr,
) -> bool {
    let mut sent = 0;
    while sent < PACE_PACKETS {
        let Some(n) = emu.poll_transmit(tx.slot()) else {
            break;
        };
        tx.commit(n, to);
        sent += 1;
        if tx.is_full() {
            tx.flush(afd.get_ref().as_raw_fd());
        }
    }
    if !tx.is_empty() {
        tx.flush(afd.get_ref().as_raw_fd());
    }
    sent == PACE_PACKETS
}

#[derive(serde::Serialize)]
struct StatusJson<'a> {
    states: usize,
    own_states: usize,
    digest: String,
    created: u64,
    updated: u64,
    deleted: u64,
    sent_packets: u64,
    sent_messages: u64,
    received_packets: u64,
    received_messages: u64,
    upd_req_sent: u64,
    upd_req_answered: u64,
    bulk_sent: u64,
    bulk_requests: u64,
    bulk_done: bool,
    drops: BTreeMap<&'a str, u64>,
    churning: bool,
    hostid: String,
    dialect: &'a str,
}

fn status_json(emu: &mut Emulator) -> String {
    let s = emu.stats();
    let j = StatusJson {
        states: emu.table().len(),
        own_states: emu.own_states(),
        digest: emu.digest().to_string(),
        created: s.created,
        updated: s.updated,
        deleted: s.deleted,
        sent_packets: s.sent_packets,
        sent_messages: s.sent_messages,
        received_packets: s.received_packets,
        received_messages: s.received_messages,
        upd_req_sent: s.upd_req_sent,
        upd_req_answered: s.upd_req_answered,
        bulk_sent: s.bulk_sent,
        bulk_requests: s.bulk_requests,
        bulk_done: s.bulk_done,
        drops: s.drops.iter().collect(),
        churning: emu.is_churning(),
        hostid: format!("{:08x}", emu.config().hostid),
        dialect: emu.config().dialect.name(),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

/// Write tmp + rename, so readers never see a partial file.
fn write_status(path: &Path, emu: &mut Emulator) {
    if let Err(e) = replace_file(path, &(status_json(emu) + "\n")) {
        eprintln!("emulate: cannot write {}: {e}", path.display());
    }
}

/// Write `text` to `path` through a new `<path>.tmp` and a rename. The emulator runs as
/// root and the status file may sit in a shared directory: a link (or file) another user
/// left at the tmp name is removed, never written through, and the tmp file is created
/// afresh (O_EXCL, which fails on a link raced in meanwhile).
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostid_parses_hex_and_decimal_not_zero() {
        assert_eq!(parse_hostid("0xdeadbeef"), Ok(0xdead_beef));
        assert_eq!(parse_hostid("42"), Ok(42));
        assert!(parse_hostid("0").is_err());
        assert!(parse_hostid("0x").is_err());
        assert!(parse_dialect("freebsd-1400").is_ok());
        // Found by review: `--churn-for 1e30` (or inf) panicked adding it to the start.
        assert_eq!(parse_secs("2.5"), Ok(2.5));
        for bad in ["inf", "NaN", "1e30", "-1", "x"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
        assert!(parse_dialect("freebsd").unwrap_err().contains("openbsd-v6"));
    }

    /// Found by review: the status file's tmp name was written with `fs::write`, which
    /// follows a symbolic link: a user who could write the directory (say /tmp) made the
    /// emulator, running as root, overwrite any file.
    #[test]
    fn the_status_file_is_never_written_through_a_link() {
        let dir = std::env::temp_dir().join(format!("pfsync-gw-emu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (victim, status) = (dir.join("victim"), dir.join("status.json"));
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("status.json.tmp")).unwrap();
        replace_file(&status, "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "{}\n");
        assert!(!std::fs::symlink_metadata(&status).unwrap().is_symlink());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_is_json_with_the_documented_keys() {
        let mut e = Emulator::new(EmulatorConfig::default(), Instant::now());
        let v: serde_json::Value = serde_json::from_str(&status_json(&mut e)).unwrap();
        for k in [
            "states",
            "digest",
            "created",
            "deleted",
            "sent_packets",
            "received_packets",
            "drops",
            "churning",
            "hostid",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["hostid"], "00000001");
        assert_eq!(v["drops"]["badttl"], 0);
    }
}

//! The control socket (`status`) and the Prometheus `/metrics` endpoint.
//!
//! Both serve the snapshot the driver refreshes a few times a second, so a slow client
//! never stalls the data path. Both face local users who may be hostile, so each listener
//! holds at most [`MAX_CLIENTS`] connections (a new one evicts the oldest), every exchange
//! has a deadline ([`CLIENT_DEADLINE`]), requests are size-limited, and accept errors —
//! descriptor exhaustion included — are retried with backoff: the loops never end.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::AbortHandle;

use super::driver::NodeError;
use super::status::Status;
use crate::bucket::Bucket;
use crate::config::Config;

pub const DEFAULT_SOCKET: &str = "/run/pfsync-gw.sock";

/// Connections one listener holds at once; the 65th evicts the oldest.
pub const MAX_CLIENTS: usize = 64;
/// A client must send its request and take the answer within this time (slowloris).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Longest control request line (`status\n` is 7 bytes).
pub const CONTROL_REQUEST_MAX: usize = 256;
/// Longest HTTP request head we read for `/metrics`.
pub const HTTP_HEAD_MAX: usize = 4096;
/// Backoff between failed `accept()`s (descriptor exhaustion): doubles up to the maximum.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections each listener accepts per second, after a burst of [`ACCEPT_BURST`]: both
/// run on the relay thread, so a local user's connection flood must not take it over.
/// Beyond the pace, connections wait in the kernel's backlog (or are refused by it).
pub const ACCEPT_RATE: u32 = 200;
pub const ACCEPT_BURST: u32 = 64;
/// A token's worth of time at [`ACCEPT_RATE`].
const ACCEPT_STEP: Duration = Duration::from_millis(1000 / ACCEPT_RATE as u64);

pub type SharedStatus = Arc<Mutex<Status>>;

/// Counters of one local listener, exported on `/metrics` as
/// `pfsync_gw_admin_clients_total{listener,event}`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    /// Oldest connection closed to make room (cap reached or descriptors exhausted).
    pub evicted: AtomicU64,
    /// Closed because the exchange did not finish within [`CLIENT_DEADLINE`].
    pub timed_out: AtomicU64,
    /// Unknown or malformed requests (answered with an error).
    pub bad_request: AtomicU64,
    /// `accept()` failures (EMFILE, ENFILE, …), each retried.
    pub accept_errors: AtomicU64,
    /// Accepts that waited for the pace ([`ACCEPT_RATE`]).
    pub paced: AtomicU64,
}

impl ListenerStats {
    fn events(&self) -> [(&'static str, u64); 6] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("accepted", l(&self.accepted)),
            ("evicted", l(&self.evicted)),
            ("timed_out", l(&self.timed_out)),
            ("bad_request", l(&self.bad_request)),
            ("accept_error", l(&self.accept_errors)),
            ("paced", l(&self.paced)),
        ]
    }
}

/// Both listeners' counters.
#[derive(Debug, Default)]
pub struct AdminStats {
    pub control: ListenerStats,
    pub metrics: ListenerStats,
}

impl AdminStats {
    /// Prometheus lines for the counters (appended to the node's exposition).
    pub fn to_prometheus(&self, node: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP pfsync_gw_admin_clients_total Control-socket and metrics connections, by event."
        );
        let _ = writeln!(s, "# TYPE pfsync_gw_admin_clients_total counter");
        let node = super::status::esc(node);
        for (listener, st) in [("control", &self.control), ("metrics", &self.metrics)] {
            for (event, v) in st.events() {
                let _ = writeln!(
                    s,
                    "pfsync_gw_admin_clients_total{{node=\"{node}\",listener=\"{listener}\",event=\"{event}\"}} {v}"
                );
            }
        }
        s
    }
}

/// A control-socket request, parsed from the bytes a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Status,
}

/// Parse a control request: one line (`status`, or empty for status), at most
/// [`CONTROL_REQUEST_MAX`] bytes. Pure, so it can be fuzzed; the error is the message
/// sent back (printable ASCII only).
pub fn parse_control_request(buf: &[u8]) -> Result<ControlRequest, String> {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None if buf.len() >= CONTROL_REQUEST_MAX => {
            return Err(format!("request longer than {CONTROL_REQUEST_MAX} bytes"))
        }
        None => buf,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.trim_ascii();
    match line {
        b"status" | b"" => Ok(ControlRequest::Status),
        other => {
            let shown: String = other
                .iter()
                .take(32)
                .flat_map(|&b| std::ascii::escape_default(b))
                .map(char::from)
                .collect();
            Err(format!("unknown request `{shown}` (expected `status`)"))
        }
    }
}

/// What a `/metrics` HTTP request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRequest {
    /// `GET /metrics` (or `HEAD`).
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Parse the request line of an HTTP request head (pure, fuzzed).
pub fn parse_http_request(head: &[u8]) -> HttpRequest {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HttpRequest::BadRequest;
    };
    if !version.starts_with(b"HTTP/") {
        return HttpRequest::BadRequest;
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return HttpRequest::MethodNotAllowed,
    };
    // Prometheus may add a query string; the path alone decides.
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
    if path == b"/metrics" {
        HttpRequest::Metrics { head_only }
    } else {
        HttpRequest::NotFound
    }
}

/// The connections one listener holds, oldest first.
struct Clients {
    live: VecDeque<AbortHandle>,
}

impl Clients {
    fn new() -> Clients {
        Clients {
            live: VecDeque::with_capacity(MAX_CLIENTS),
        }
    }
    fn prune(&mut self) {
        self.live.retain(|h| !h.is_finished());
    }
    /// Close the oldest connection; false if there is none.
    fn evict_oldest(&mut self, stats: &ListenerStats) -> bool {
        self.prune();
        match self.live.pop_front() {
            Some(h) => {
                h.abort();
                stats.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Takes an accept token from `pace`; none left: how long until one has accrued.
fn accept_wait(pace: &mut Bucket, now: Instant) -> Option<Duration> {
    (!pace.take(now, ACCEPT_RATE, ACCEPT_BURST)).then_some(ACCEPT_STEP)
}

/// The status part of `/metrics`, rendered once per status refresh however often it is
/// scraped (keyed by the snapshot's `uptime_secs`, new at every refresh), and the node.
#[derive(Default)]
struct MetricsCache {
    key: Option<u64>,
    node: String,
    body: String,
}

impl MetricsCache {
    fn get(&mut self, status: &SharedStatus) -> (String, String) {
        if let Ok(s) = status.lock() {
            let key = s.uptime_secs.to_bits();
            if self.key != Some(key) {
                self.key = Some(key);
                self.node.clone_from(&s.node);
                self.body = s.to_prometheus();
            }
        }
        (self.node.clone(), self.body.clone())
    }
}

/// The accept loop shared by both listeners: never returns.
async fn accept_loop<S, A, AF, H, HF>(
    what: &'static str,
    stats: Arc<AdminStats>,
    pick: fn(&AdminStats) -> &ListenerStats,
    mut accept: A,
    handle: H,
) where
    A: FnMut() -> AF,
    AF: Future<Output = io::Result<S>>,
    H: Fn(S, Arc<AdminStats>) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    let mut clients = Clients::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut last_log: Option<Instant> = None;
    let mut pace = Bucket::EMPTY;
    loop {
        if let Some(wait) = accept_wait(&mut pace, Instant::now()) {
            pick(&stats).paced.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            while let Some(wait) = accept_wait(&mut pace, Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        match accept().await {
            Ok(stream) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let st = pick(&stats);
                st.accepted.fetch_add(1, Ordering::Relaxed);
                clients.prune();
                if clients.live.len() >= MAX_CLIENTS {
                    clients.evict_oldest(st);
                }
                let fut = handle(stream, stats.clone());
                let stats2 = stats.clone();
                let task = tokio::spawn(async move {
                    if tokio::time::timeout(CLIENT_DEADLINE, fut).await.is_err() {
                        pick(&stats2).timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                });
                clients.live.push_back(task.abort_handle());
            }
            Err(e) => {
                let st = pick(&stats);
                st.accept_errors.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    last_log = Some(now);
                    tracing::warn!(
                        "{what}: accept failed: {e} (retrying; {} errors so far)",
                        st.accept_errors.load(Ordering::Relaxed)
                    );
                }
                // Out of descriptors: free one of ours (the oldest client) and retry at
                // once; if we hold none, someone else has them, so wait and retry.
                if is_fd_exhaustion(&e) && clients.evict_oldest(st) {
                    // Let the runtime drop the aborted task (and close its socket).
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Create the control socket at `path`, mode 0600 (0660 with `group`: owned by that gid),
/// whatever the umask. The socket is bound inside a fresh 0700 directory next to `path`,
/// its mode (and group) set there, then renamed into place, so it is never reachable with
/// a wider mode, not even for an instant. What the rename would replace must be a socket
/// nobody serves (a crashed run's): a mistyped path must not destroy a file, and a second
/// daemon must not silently take the first one's socket.
pub fn bind_control(
    path: &Path,
    group: Option<u32>,
) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket (refusing to replace it)",
            ));
        }
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another daemon serves this control socket",
            ));
        }
        _ => {}
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short: a unix socket path has ~107 bytes at most.
    let tmpdir = parent.join(format!(".pgw{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmpdir);
    std::fs::DirBuilder::new().mode(0o700).create(&tmpdir)?;
    let tmp = tmpdir.join("s");
    let result = (|| {
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        // rename(2) atomically replaces a stale socket from a crashed run.
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&tmpdir);
    result
}

/// Serve `status` requests on a bound unix socket: one line in (`status`), one JSON
/// document out. Never returns.
pub async fn serve_control(listener: UnixListener, status: SharedStatus, stats: Arc<AdminStats>) {
    accept_loop(
        "control socket",
        stats,
        |s| &s.control,
        || async { listener.accept().await.map(|(s, _)| s) },
        move |mut stream, stats| {
            let status = status.clone();
            async move {
                let mut buf = [0u8; CONTROL_REQUEST_MAX];
                let mut n = 0;
                while n < buf.len() && !buf[..n].contains(&b'\n') {
                    match stream.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(_) => return,
                    }
                }
                let body = match parse_control_request(&buf[..n]) {
                    Ok(ControlRequest::Status) => {
                        let snap = status.lock().map(|s| s.clone()).unwrap_or_default();
                        serde_json::to_string(&snap).unwrap_or_default()
                    }
                    Err(e) => {
                        stats.control.bad_request.fetch_add(1, Ordering::Relaxed);
                        serde_json::json!({ "error": e }).to_string()
                    }
                };
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.write_all(b"\n").await;
            }
        },
    )
    .await
}

/// A minimal HTTP/1.0 responder for `GET /metrics`. Never returns.
pub async fn serve_metrics(listener: TcpListener, status: SharedStatus, stats: Arc<AdminStats>) {
    let cache = Arc::new(Mutex::new(MetricsCache::default()));
    accept_loop(
        "metrics",
        stats,
        |s| &s.metrics,
        || async { listener.accept().await.map(|(s, _)| s) },
        move |mut stream, stats| {
            let (status, cache) = (status.clone(), cache.clone());
            async move {
                let mut buf = vec![0u8; HTTP_HEAD_MAX];
                let mut n = 0;
                // Read the whole head (bounded): unread bytes at close would reset the
                // connection before the client has read the answer.
                let mut complete = false;
                while n < buf.len() {
                    match stream.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(_) => return,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
                        || buf[..n].windows(2).any(|w| w == b"\n\n")
                    {
                        complete = true;
                        break;
                    }
                }
                let req = if complete {
                    parse_http_request(&buf[..n])
                } else {
                    HttpRequest::BadRequest
                };
                let (code, body, head_only) = match req {
                    HttpRequest::Metrics { head_only } => {
                        let (node, mut body) = match cache.lock() {
                            Ok(mut c) => c.get(&status),
                            Err(_) => Default::default(),
                        };
                        body.push_str(&stats.to_prometheus(&node));
                        ("200 OK", body, head_only)
                    }
                    other => {
                        stats.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
                        let code = match other {
                            HttpRequest::NotFound => "404 Not Found",
                            HttpRequest::MethodNotAllowed => "405 Method Not Allowed",
                            _ => "400 Bad Request",
                        };
                        (code, "try GET /metrics\n".to_string(), false)
                    }
                };
                let resp = format!(
                    "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    if head_only { "" } else { body.as_str() }
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        },
    )
    .await
}

/// Bind the control socket and the metrics listener the config asks for (errors are
/// start-up errors) and serve them in the background.
pub async fn start(cfg: &Config, status: &SharedStatus) -> Result<(), NodeError> {
    let stats = Arc::new(AdminStats::default());
    if let Some(path) = &cfg.control_socket {
        let gid = cfg.privileges.control_group.as_ref().map(|g| g.id);
        let l = bind_control(path, gid)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                UnixListener::from_std(l)
            })
            .map_err(|err| NodeError::Control {
                path: path.display().to_string(),
                err,
            })?;
        tokio::spawn(serve_control(l, status.clone(), stats.clone()));
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|err| NodeError::Metrics { addr, err })?;
        tokio::spawn(serve_metrics(l, status.clone(), stats));
    }
    Ok(())
}

/// Ask a running daemon for its status (blocking client).
pub fn query(path: &Path) -> Result<Status, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is the daemon running?)",
            path.display()
        )
    })?;
    // A wedged daemon must not hang `pfsync-gw status` (or a monitoring script) forever.
    let _ = s.set_read_timeout(Some(CLIENT_DEADLINE));
    let _ = s.set_write_timeout(Some(CLIENT_DEADLINE));
    s.write_all(b"status\n")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&out).map_err(|e| format!("{}: bad reply: {e}", path.display()))
}

/// `pfsync-gw status`.
pub fn status_command(socket: Option<PathBuf>, config: Option<PathBuf>, json: bool) -> i32 {
    let path = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => match Config::load_control_socket(&c) {
            Ok(sock) => sock.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            Err(e) => {
                eprintln!("error: {e}");
                return crate::config::EXIT_BAD_INPUT;
            }
        },
        (None, None) => PathBuf::from(DEFAULT_SOCKET),
    };
    match query(&path) {
        Ok(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            } else {
                print!("{}", st.to_text());
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of 64 at once, then 200 a second: a local user's flood of connections
    /// costs the relay thread at most that many accepts and renders.
    #[test]
    fn accepts_are_paced_after_a_burst() {
        let t0 = Instant::now();
        let mut p = Bucket::EMPTY;
        for _ in 0..64 {
            assert_eq!(accept_wait(&mut p, t0), None);
        }
        let w = accept_wait(&mut p, t0).expect("the 65th waits");
        assert!((4_900..=5_100).contains(&w.as_micros()), "{w:?}");
        // Sustained demand, each accept as soon as the pace lets it: 200 a second after
        // the burst.
        let (mut t, mut n) = (t0 + w, 64);
        while t < t0 + Duration::from_secs(10) {
            while let Some(w) = accept_wait(&mut p, t) {
                t += w;
            }
            n += 1;
        }
        assert!((64 + 1_999..=64 + 2_001).contains(&n), "{n}");
        // Idle, the bucket refills to the burst, no further.
        let t2 = t + Duration::from_secs(60);
        let free = (0..100)
            .take_while(|_| accept_wait(&mut p, t2).is_none())
            .count();
        assert_eq!(free, 64);
    }

    /// A node name with a newline or quote cannot break the exposition into forged lines.
    #[test]
    fn admin_counters_escape_the_node_name() {
        let text = AdminStats::default().to_prometheus("gw\"}\nfake_metric 1");
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("pfsync_gw_admin_clients_total{"),
                "{line}"
            );
        }
        assert!(text.contains(r#"node="gw\"}\nfake_metric 1""#), "{text}");
    }

    /// Only a stale socket is replaced: not a file at a mistyped path, not a live daemon's.
    #[test]
    fn the_control_socket_replaces_only_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("pgw-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("important.conf");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind_control(&file, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.join("ctl.sock");
        let live = bind_control(&sock, None).unwrap();
        let err = bind_control(&sock, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(live);
        // The crashed run's socket file stays behind, nobody listening: replaced.
        assert!(sock.exists());
        let again = bind_control(&sock, None).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_requests() {
        assert_eq!(
            parse_control_request(b"status\n"),
            Ok(ControlRequest::Status)
        );
        assert_eq!(
            parse_control_request(b"status\r\n"),
            Ok(ControlRequest::Status)
        );
        assert_eq!(parse_control_request(b""), Ok(ControlRequest::Status));
        assert_eq!(
            parse_control_request(b" status "),
            Ok(ControlRequest::Status)
        );
        let e = parse_control_request(b"st\x01\"x\n").unwrap_err();
        assert!(e.contains("st\\x01\\\"x"), "{e}");
        assert!(parse_control_request(&[b'a'; CONTROL_REQUEST_MAX])
            .unwrap_err()
            .contains("longer"));
    }

    #[test]
    fn http_requests() {
        let m = |s: &str| parse_http_request(s.as_bytes());
        assert_eq!(
            m("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            HttpRequest::Metrics { head_only: false }
        );
        assert_eq!(
            m("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            HttpRequest::Metrics { head_only: true }
        );
        assert_eq!(m("GET / HTTP/1.0\r\n\r\n"), HttpRequest::NotFound);
        assert_eq!(
            m("POST /metrics HTTP/1.0\r\n\r\n"),
            HttpRequest::MethodNotAllowed
        );
        assert_eq!(m("GET /metrics\r\n\r\n"), HttpRequest::BadRequest);
        assert_eq!(m(""), HttpRequest::BadRequest);
    }
}

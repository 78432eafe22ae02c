//! The control socket (`status`) and the Prometheus `/metrics` endpoint.
//!
//! Both serve the snapshot the driver refreshes a few times a second, so a slow client
//! never stalls the data path.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

use super::status::Status;
use crate::config::Config;

pub const DEFAULT_SOCKET: &str = "/run/pfsync-gw.sock";

pub type SharedStatus = Arc<Mutex<Status>>;

/// Serve `status` requests on a unix socket: one line in (`status`), one JSON document out.
pub async fn serve_control(path: PathBuf, status: SharedStatus) -> std::io::Result<()> {
    // A stale socket from a crashed run would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let status = status.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r.take(256));
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let body = match line.trim() {
                "status" | "" => {
                    let snap = status.lock().map(|s| s.clone()).unwrap_or_default();
                    serde_json::to_string(&snap).unwrap_or_default()
                }
                other => format!(
                    "{{\"error\":\"unknown request `{}`\"}}",
                    other.escape_default()
                ),
            };
            let _ = w.write_all(body.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

/// A minimal HTTP/1.0 responder for `GET /metrics`.
pub async fn serve_metrics(listener: TcpListener, status: SharedStatus) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let status = status.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded); we only need the request line.
            while n < buf.len() {
                match stream.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if path == "/metrics" {
                let snap = status.lock().map(|s| s.clone()).unwrap_or_default();
                ("200 OK", snap.to_prometheus())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

/// Ask a running daemon for its status (blocking client).
pub fn query(path: &Path) -> Result<Status, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is the daemon running?)",
            path.display()
        )
    })?;
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
        (None, Some(c)) => match Config::load(&c) {
            Ok(cfg) => cfg
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
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

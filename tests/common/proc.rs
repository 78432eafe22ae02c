//! Helpers of the tests that run the `pfsync-gw` binary as plain processes on this host
//! (`cli_config_errors`, `daemon_process`, `local_hardening`): a temporary folder, key
//! files, free ports, and a child process that is killed when the test ends.
//!
//! Included with `#[path = "common/proc.rs"] mod proc;` (or as `common::proc` through
//! `common/lab.rs`).

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pfsync-gw")
}

/// A fresh folder under the temporary directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `pfsync-gw-<tag>-<pid>`, emptied if a crashed run left it.
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("pfsync-gw-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop, so a failing test leaves no daemon behind.
pub struct Running(pub Child);

impl Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pfsync-gw keygen --out dir/name` (an existing file is kept); returns the public key
/// (`pfsync-gw pubkey`).
pub fn keygen(dir: &Path, name: &str) -> String {
    let key = dir.join(name);
    if !key.exists() {
        let o = Command::new(bin())
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(o.status.success(), "keygen {}: {o:?}", key.display());
    }
    let o = Command::new(bin())
        .arg("pubkey")
        .stdin(std::fs::File::open(&key).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "pubkey {}: {o:?}", key.display());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

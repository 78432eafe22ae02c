//! Opening the files a config names (the config itself, key files) so that what is checked
//! is what is read: open first (optionally refusing symbolic links), then check the open
//! file's owner, mode and type with fstat — no window between check and use.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What a file must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Refuse a symbolic link as the last path component (O_NOFOLLOW).
    pub no_symlink: bool,
    /// Mode bits that must be clear (0o077 for keys, 0o022 for the config).
    pub forbidden_mode: u32,
    /// Owners allowed besides root and the running user (the account we drop to).
    pub also_owner: Option<u32>,
}

#[derive(Debug)]
pub enum FileError {
    Io(io::Error),
    Symlink,
    NotRegular,
    Owner { uid: u32, allowed: Vec<u32> },
    Mode(u32),
}

/// Open `path` read-only under `rules`.
pub fn open_checked(path: &Path, rules: Rules) -> Result<File, FileError> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    // O_NONBLOCK: opening a FIFO must not hang start-up (a FIFO is refused below anyway).
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if rules.no_symlink {
        flags |= libc::O_NOFOLLOW;
    }
    o.custom_flags(flags);
    let f = match o.open(path) {
        Ok(f) => f,
        Err(e) if rules.no_symlink && e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileError::Symlink)
        }
        Err(e) => return Err(FileError::Io(e)),
    };
    let meta = f.metadata().map_err(FileError::Io)?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular);
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut allowed = vec![0, me];
    allowed.extend(rules.also_owner);
    allowed.dedup();
    if !allowed.contains(&meta.uid()) {
        return Err(FileError::Owner {
            uid: meta.uid(),
            allowed,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & rules.forbidden_mode != 0 {
        return Err(FileError::Mode(mode));
    }
    Ok(f)
}

/// `root, pfsync-gw (uid 999)` for messages.
pub fn owners_text(allowed: &[u32]) -> String {
    let mut v: Vec<String> = Vec::new();
    for &u in allowed {
        let s = format!("{} (uid {u})", super::account::user_name(u));
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v.join(" or ")
}

//! Key files: 32-byte Curve25519 keys and preshared keys as 44-character base64 text,
//! the same format as WireGuard's, so `wg pubkey` and `pfsync-gw pubkey` agree.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

/// A 32-byte key. `Debug` never prints it; equality is constant-time.
#[derive(Clone)]
pub struct Key([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cannot read key file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error(
        "key file {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("key file {path} is a symbolic link; name the file itself (links are not followed, so nobody can redirect the daemon to another file)")]
    Symlink { path: String },
    #[error("key file {path} is not a regular file")]
    NotRegular { path: String },
    #[error("key file {path} is owned by {owner}; it must be owned by {allowed} (`chown` it)")]
    Owner {
        path: String,
        owner: String,
        allowed: String,
    },
    #[error("key file {path} is larger than a key file can be ({max} bytes)")]
    TooLarge { path: String, max: usize },
    #[error("not a key: expected 44 characters of base64 encoding 32 bytes, got {0} characters")]
    Length(usize),
    #[error("not a key: invalid base64")]
    Base64,
}

impl Key {
    pub const fn from_bytes(b: [u8; 32]) -> Key {
        Key(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A new private key, clamped as `wg genkey` does.
    pub fn generate() -> Key {
        let secret = StaticSecret::random_from_rng(rand_core::OsRng);
        let mut b = secret.to_bytes();
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Key(b)
    }

    /// A random preshared key.
    pub fn generate_psk() -> Key {
        let mut b = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Key(b)
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        Key(PublicKey::from(&StaticSecret::from(self.0)).to_bytes())
    }

    /// A public key of small order: every Diffie-Hellman with it gives zero, so a
    /// handshake with it would not depend on any secret. (Any clamped scalar times such a
    /// point is the identity, so one multiplication by a fixed scalar decides it.)
    pub fn is_low_order_public(&self) -> bool {
        x25519_dalek::x25519([0x42; 32], self.0) == [0u8; 32]
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let s = s.trim();
        if s.len() != 44 {
            return Err(KeyError::Length(s.len()));
        }
        // Decode into a wiped buffer: the key must not linger in freed heap memory.
        let mut v = zeroize::Zeroizing::new([0u8; 33]);
        let n = STANDARD
            .decode_slice(s, &mut v[..])
            .map_err(|_| KeyError::Base64)?;
        if n != 32 {
            return Err(KeyError::Base64);
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&v[..32]);
        Ok(Key(b))
    }

    /// Read a key file, refusing files that group or others can read.
    pub fn load_file(path: &Path) -> Result<Key, KeyError> {
        Key::load_file_owned(path, None)
    }

    /// Read a key file: a regular file, not a symbolic link, owned by root, the running
    /// user or `also_owner` (the account the daemon drops to), that group and others
    /// cannot access. The text read is wiped from memory afterwards.
    pub fn load_file_owned(path: &Path, also_owner: Option<u32>) -> Result<Key, KeyError> {
        use super::files::{open_checked, owners_text, FileError, Rules};
        let p = path.display().to_string();
        let rules = Rules {
            no_symlink: true,
            forbidden_mode: 0o077,
            also_owner,
        };
        let mut f = open_checked(path, rules).map_err(|e| match e {
            FileError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                KeyError::Io {
                    path: p.clone(),
                    // SAFETY: geteuid cannot fail.
                    reason: format!(
                        "{e}: this process runs as uid {}; after dropping privileges (`[node] user`) the key files must be owned by that user to be re-read on SIGHUP",
                        unsafe { libc::geteuid() }
                    ),
                }
            }
            FileError::Io(e) => KeyError::Io {
                path: p.clone(),
                reason: e.to_string(),
            },
            FileError::Symlink => KeyError::Symlink { path: p.clone() },
            FileError::NotRegular => KeyError::NotRegular { path: p.clone() },
            FileError::Owner { uid, allowed } => KeyError::Owner {
                path: p.clone(),
                owner: owners_text(&[uid]),
                allowed: owners_text(&allowed),
            },
            FileError::Mode(mode) => KeyError::Permissions {
                path: p.clone(),
                mode,
            },
        })?;
        // A key file is one base64 line; read into a fixed buffer we can wipe.
        const MAX: usize = 128;
        let mut buf = [0u8; MAX];
        let mut n = 0;
        let res = loop {
            match std::io::Read::read(&mut f, &mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == MAX {
                        break Err(KeyError::TooLarge {
                            path: p.clone(),
                            max: MAX - 1,
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break Err(KeyError::Io {
                        path: p.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        };
        let key = res.and_then(|()| match std::str::from_utf8(&buf[..n]) {
            Ok(text) => Key::from_base64(text),
            Err(_) => Err(KeyError::Base64),
        });
        zeroize::Zeroize::zeroize(&mut buf);
        key
    }

    /// Write the key as one base64 line to a new file created with mode 0600.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        writeln!(f, "{}", self.to_base64())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Don't leave key bytes in freed memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl zeroize::ZeroizeOnDrop for Key {}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 §6.1 test vector (Alice), as `wg pubkey` would print it.
    const ALICE_PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const ALICE_PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn pubkey_matches_rfc7748_vector() {
        let k = Key::from_base64(ALICE_PRIV).unwrap();
        assert_eq!(k.public().to_base64(), ALICE_PUB);
    }

    #[test]
    fn generated_keys_are_clamped_and_roundtrip() {
        let k = Key::generate();
        assert_eq!(k.as_bytes()[0] & 7, 0);
        assert_eq!(k.as_bytes()[31] & 0xc0, 0x40);
        let t = k.to_base64();
        assert_eq!(t.len(), 44);
        assert_eq!(Key::from_base64(&t).unwrap(), k);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(Key::from_base64("abc"), Err(KeyError::Length(3)));
        assert_eq!(
            Key::from_base64("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="),
            Err(KeyError::Base64)
        );
    }

    #[test]
    fn low_order_public_keys_are_recognised() {
        assert!(Key::from_bytes([0; 32]).is_low_order_public());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(Key::from_bytes(one).is_low_order_public());
        assert!(!Key::generate().public().is_low_order_public());
    }

    #[test]
    fn debug_does_not_leak() {
        let k = Key::generate();
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn file_is_0600_and_group_readable_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pfsync-gw-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let k = Key::generate();
        k.write_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Key::load_file(&p).unwrap(), k);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Key::load_file(&p),
            Err(KeyError::Permissions { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

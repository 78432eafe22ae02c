//! `pfsync_header` (20 bytes, two shapes) and the v5/v6 `pfsync_subheader` (4 bytes).

use super::field::*;

/// v5/v6 `pfsync_header`: `{u8 version; u8 _pad; u16 len; u8 pfcksum[16]}`.
pub(crate) mod v56 {
    pub const VERSION: usize = 0;
    pub const LEN: usize = 2; // u16 BE, bytes from the header start to the end of the frame
    pub const CKSUM: usize = 4;
}

/// NetBSD v3 `pfsync_header`: `{u8 version; u8 af; u8 action; u8 count; u8 pf_chksum[16]}`.
pub(crate) mod netbsd {
    pub const VERSION: usize = 0;
    /// The sender writes 0 and the receiver ignores it.
    pub const AF: usize = 1;
    pub const ACTION: usize = 2;
    pub const COUNT: usize = 3;
    pub const CKSUM: usize = 4;
}

/// `pfsync_subheader`: `{u8 action; u8 len; u16 count}`; `len` is the message size in 32-bit
/// words on OpenBSD and padding (0) on FreeBSD.
pub(crate) mod subheader {
    pub const ACTION: usize = 0;
    pub const LEN: usize = 1;
    pub const COUNT: usize = 2;
    pub const SIZE: usize = 4;
}

/// FreeBSD's EOF subheader as its kernel writes it: action 12, count 1.
pub(crate) const FREEBSD_EOF: [u8; 4] = [12, 0, 0, 1];

/// Parsed subheader fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subheader {
    pub action: u8,
    pub len_words: u8,
    pub count: u16,
}

impl Subheader {
    #[inline]
    pub(crate) fn read(b: &[u8], at: usize) -> Subheader {
        Subheader {
            action: u8_at(b, at + subheader::ACTION),
            len_words: u8_at(b, at + subheader::LEN),
            count: be16(b, at + subheader::COUNT),
        }
    }

    #[inline]
    pub(crate) fn write(&self, b: &mut [u8], at: usize) {
        put_u8(b, at + subheader::ACTION, self.action);
        put_u8(b, at + subheader::LEN, self.len_words);
        put16(b, at + subheader::COUNT, self.count);
    }
}

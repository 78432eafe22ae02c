//! Codec errors: each says what was wrong and where (byte offset from the pfsync header).

use super::Dialect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a structure needs.
    #[error("truncated at offset {offset}: need {needed} bytes, have {have}")]
    Truncated {
        offset: usize,
        needed: usize,
        have: usize,
    },
    /// `pfsync_header.version` is not the dialect's.
    #[error("bad pfsync version {found}")]
    BadVersion { found: u8 },
    /// A length field is inconsistent with the buffer or the structure it describes.
    #[error("bad {field} {value} at offset {offset}")]
    BadLength {
        field: &'static str,
        offset: usize,
        value: usize,
    },
    /// Action code unknown or not allowed in this dialect.
    #[error("bad action {action} at offset {offset}")]
    BadAction { offset: usize, action: u8 },
    /// A field value the receiving kernel would reject.
    #[error("bad {field} {value} at offset {offset}")]
    BadValue {
        offset: usize,
        field: &'static str,
        value: u64,
    },
    /// Bytes after the last message (or after FreeBSD's EOF).
    #[error("{count} trailing bytes at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
    /// FreeBSD packet without its EOF subheader.
    #[error("missing EOF subheader at offset {offset}")]
    MissingEof { offset: usize },
    /// The message has no encoding in this dialect.
    #[error("{what} cannot be expressed in {dialect}")]
    NotExpressible {
        dialect: Dialect,
        what: &'static str,
    },
    /// Output buffer too small.
    #[error("buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall { needed: usize, have: usize },
}

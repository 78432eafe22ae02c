//! pfsync codec: zero-copy packet views and owned representations, per dialect.
//!
//! Layout follows smoltcp's `wire`: byte views with field tables (`header`, `state`, `msg`),
//! owned `Repr`s in [`repr`], framing in [`packet`], and the IPv4 envelope in [`ipv4`].
//! Nothing here allocates on the per-packet path.

mod action;
pub mod display;
pub mod error;
mod field;
mod header;
pub mod ipv4;
mod msg;
pub mod packet;
mod peer;
pub mod repr;
mod state;
pub mod translate;

pub use error::WireError;
pub use packet::{
    detect_dialect, message_wire_len, Messages, Packet, PacketWriter, RunFraming, UpdCRun,
};
pub use repr::*;

/// Result of every fallible codec operation.
pub type Result<T> = core::result::Result<T, WireError>;

/// IP protocol number of pfsync (not IANA-assigned, used by every BSD).
pub const IPPROTO_PFSYNC: u8 = 240;
/// TTL every kernel sends with and requires on receive.
pub const PFSYNC_DFLTTL: u8 = 255;
/// Default multicast destination (`INADDR_PFSYNC_GROUP`).
pub const PFSYNC_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 240);
/// Size of `pfsync_header` in every dialect.
pub const HEADER_LEN: usize = 20;

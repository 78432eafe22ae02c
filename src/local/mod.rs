//! The firewall side: raw proto-240 sockets on the sync interface, batched datagram I/O,
//! and the pf emulator.
pub mod emulator;
pub mod mmsg;
pub mod raw;

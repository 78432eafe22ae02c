//! The firewall side: raw proto-240 sockets on the sync interface, batched datagram I/O, a
//! packet ring for readers that go by receive timestamps, shedding on the capture socket,
//! and the pf emulator.
pub mod emulator;
pub mod filter;
pub mod mmsg;
pub mod raw;
pub mod ring;
pub mod shed;

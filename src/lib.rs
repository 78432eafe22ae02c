//! pfsync-gw: carry BSD pf state synchronisation (pfsync) between firewalls over an
//! authenticated, encrypted and reliable tunnel.
//!
//! Layers, from the bytes up (dependencies point downward only):
//! - [`wire`]: pfsync codec for every dialect (pure).
//! - [`table`]: the state table and pfsync apply semantics (pure).
//! - [`tunnel`]: Noise IKpsk2 sessions, replay window and timers, sans-IO.
//! - [`sync`]: the gateway-to-gateway protocol inside the tunnel: reliable delivery and
//!   anti-entropy resync (pure).
//! - [`local`]: the firewall side: raw proto-240 sockets and the pf emulator.
//! - [`node`]: the tokio driver wiring local ↔ table ↔ sync ↔ tunnel, control socket, metrics.
//! - [`config`], [`cli`]: configuration and the command line.
//!
//! `bucket` (a token bucket, pure) is shared by `tunnel` and `sync`.

mod bucket;
pub mod cli;
pub mod config;
pub mod local;
pub mod node;
pub mod sync;
pub mod table;
pub mod tunnel;
pub mod wire;

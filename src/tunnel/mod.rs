//! The tunnel: WireGuard's protocol (Noise IKpsk2 handshake, transport messages, timers,
//! replay window, mac1, cookie replies and mac2) as a sans-IO state machine, with
//! handshake flood bounds checked before any Diffie-Hellman (`dos.rs`), a send budget for
//! newly roamed endpoints, and live key rotation (`Endpoint::set_identity`,
//! `Endpoint::set_peer_keys`). No sockets, clocks or threads: the
//! driver passes datagrams and `Instant`s in and polls datagrams, deadlines and events out.
//!
//! Driver loop:
//! ```text
//! on datagram:   ep.handle_datagram(src, buf, now, &mut plain)   -> Recv
//! on payload:    ep.send(peer, payload, now, &mut wire)          -> Send
//! on deadline:   ep.handle_timeout(now)                          (deadline = ep.poll_timeout())
//! after each:    while let Some(t) = ep.poll_transmit(now, &mut wire) { sendto(t.to, &wire[..t.len]) }
//!                while let Some(ev) = ep.poll_event() { ... }
//! ```
//! The wire protocol is specified in `docs/PROTOCOL.md` (section "Tunnel").

mod aead;
mod cookie;
mod dh;
mod dos;
mod endpoint;
mod errors;
mod handshake;
mod mac;
mod messages;
mod replay;
mod session;
mod timers;
mod wiped;

pub use cookie::{COOKIE_REFRESH_TIME, COOKIE_REPLY_LEN};
pub use dos::{
    COOKIE_BURST, COOKIE_QUEUE, COOKIE_RATE, HANDSHAKE_BUDGET_BURST, HANDSHAKE_BUDGET_RATE,
    KNOWN_BURST, KNOWN_RATE, LOAD_WINDOW, SOURCE_BUCKETS, SOURCE_BURST, SOURCE_RATE,
    UNDER_LOAD_HOLD, UNDER_LOAD_THRESHOLD,
};
pub use endpoint::{
    DosStats, Endpoint, Event, PeerId, PeerStatus, Recv, Send, Transmit, ROAM_BUDGET_FACTOR,
};
pub use errors::{DropCounters, DropReason};
pub use handshake::{Identity, NOISE_PATTERN, PROLOGUE};
pub use messages::{
    INITIATION_LEN, MAX_PAYLOAD, MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE, MSG_TRANSPORT,
    RESPONSE_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD,
};
pub use replay::WINDOW_SIZE as REPLAY_WINDOW;
pub use timers::{
    HANDSHAKE_INITIATION_RATE, KEEPALIVE_TIMEOUT, MAX_QUEUED_PAYLOADS, PEER_UNREACHABLE_KEEPALIVES,
    REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, ZERO_KEYS_AFTER,
};

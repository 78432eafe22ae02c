//! WireGuard's protocol constants (whitepaper §6, wireguard-go `device/constants.go`) and the
//! per-peer timers that act on them. Timers are plain deadlines: the endpoint arms them on
//! events (`on_*` hooks, named after wireguard-go's `timers*` functions) and fires the ones
//! that are due in `handle_timeout`.

use std::time::{Duration, Instant};

/// The initiator starts a new handshake when sending on a session at least this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Sessions older than this neither send nor receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Rekey after this many messages sent on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept a counter at or above this (leaves room below u64::MAX, which Noise reserves).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// Retransmit an unanswered initiation after this (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to handshake timers.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Passive keepalive: answer received data within this if we have nothing to send.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Give up retrying a handshake after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Responder-side flood limit: at most one accepted initiation per peer per this interval.
pub const HANDSHAKE_INITIATION_RATE: Duration = Duration::from_millis(20);
/// Erase all session keys of a peer this long after the last new session.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(3 * 180);
/// With a persistent keepalive configured, a peer silent for this many intervals is
/// reported unreachable (pfsync-gw addition; WireGuard has no such event).
pub const PEER_UNREACHABLE_KEEPALIVES: u32 = 3;
/// Bounded queue of payloads waiting for a session.
pub const MAX_QUEUED_PAYLOADS: usize = 256;

/// The initiator's receive path rekeys when its session is this old (165 s), so a session
/// that only receives is renewed before it expires.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(180 - 10 - 5);

#[derive(Debug, Default, Clone)]
pub(crate) struct PeerTimers {
    /// Resend the initiation (new ephemeral, new timestamp).
    pub retransmit_handshake: Option<Instant>,
    /// Send a keepalive: we received data and have sent nothing since.
    pub send_keepalive: Option<Instant>,
    /// We sent data and have heard nothing back: start a new handshake.
    pub new_handshake: Option<Instant>,
    /// Erase all keys of this peer.
    pub zero_key_material: Option<Instant>,
    /// Configured persistent keepalive.
    pub persistent_keepalive: Option<Instant>,
    /// Report the peer unreachable (only with a persistent keepalive).
    pub dead_peer: Option<Instant>,
    /// Data arrived while a keepalive was already pending: arm once more after it fires.
    pub need_another_keepalive: bool,
}

/// Which timers fired.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Expired {
    pub retransmit_handshake: bool,
    pub send_keepalive: bool,
    pub new_handshake: bool,
    pub zero_key_material: bool,
    pub persistent_keepalive: bool,
    pub dead_peer: bool,
}

fn take_due(slot: &mut Option<Instant>, now: Instant) -> bool {
    match *slot {
        Some(t) if t <= now => {
            *slot = None;
            true
        }
        _ => false,
    }
}

impl PeerTimers {
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
            self.dead_peer,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Disarm and report every timer due at `now`.
    pub fn take_expired(&mut self, now: Instant) -> Expired {
        Expired {
            retransmit_handshake: take_due(&mut self.retransmit_handshake, now),
            send_keepalive: take_due(&mut self.send_keepalive, now),
            new_handshake: take_due(&mut self.new_handshake, now),
            zero_key_material: take_due(&mut self.zero_key_material, now),
            persistent_keepalive: take_due(&mut self.persistent_keepalive, now),
            dead_peer: take_due(&mut self.dead_peer, now),
        }
    }

    /// A transport message carrying data (not a keepalive) was sent.
    pub fn on_data_sent(&mut self, now: Instant, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    /// A transport message carrying data was received.
    pub fn on_data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// Any authenticated datagram (handshake or transport) was sent.
    ///
    /// Unlike WireGuard, the persistent keepalive restarts only on *sent* packets, so each
    /// side sends at least once per interval and the other side can detect its death.
    pub fn on_authenticated_sent(&mut self, now: Instant, persistent: Option<Duration>) {
        self.send_keepalive = None;
        self.persistent_keepalive = persistent.map(|p| now + p);
    }

    /// Any authenticated datagram was received.
    pub fn on_authenticated_received(&mut self, now: Instant, persistent: Option<Duration>) {
        self.new_handshake = None;
        self.dead_peer = persistent.map(|p| now + p * PEER_UNREACHABLE_KEEPALIVES);
    }

    pub fn on_handshake_initiated(&mut self, now: Instant, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    pub fn on_handshake_complete(&mut self) {
        self.retransmit_handshake = None;
    }

    pub fn on_session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_wireguards() {
        assert_eq!(
            u128::from(REJECT_AFTER_MESSAGES),
            (1u128 << 64) - (1 << 13) - 1
        );
        assert_eq!(ZERO_KEYS_AFTER, REJECT_AFTER_TIME * 3);
        assert_eq!(
            REKEY_ON_RECEIVE_AGE,
            REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        );
    }

    #[test]
    fn deadlines_fire_once() {
        let t0 = Instant::now();
        let mut t = PeerTimers::default();
        t.on_data_sent(t0, Duration::ZERO);
        t.on_data_received(t0);
        assert_eq!(t.next_deadline(), Some(t0 + KEEPALIVE_TIMEOUT));
        let e = t.take_expired(t0 + KEEPALIVE_TIMEOUT);
        assert!(e.send_keepalive && !e.new_handshake);
        assert!(!t.take_expired(t0 + KEEPALIVE_TIMEOUT).send_keepalive);
        // Data sent again does not push the pending new-handshake deadline back.
        t.on_data_sent(t0 + Duration::from_secs(12), Duration::ZERO);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(15)));
        t.on_authenticated_received(t0 + Duration::from_secs(14), None);
        assert_eq!(t.next_deadline(), None);
    }
}

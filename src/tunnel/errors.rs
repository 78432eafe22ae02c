//! Why a datagram (or a payload handed to `send`) was dropped, and per-reason counters.
//!
//! Drops are silent on the wire (no error replies, ever); the counters are how an operator
//! sees them. The driver exports them as metrics.

use core::fmt;

macro_rules! drop_reasons {
    ($($variant:ident => $field:ident: $doc:literal,)*) => {
        /// Reason a datagram or payload was discarded.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in declaration order (for metrics export).
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// Stable snake_case name, used as a metric label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => stringify!($field),)*
                }
            }
        }

        /// Number of drops per [`DropReason`] since the endpoint was created.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct DropCounters {
            $(#[doc = $doc] pub $field: u64,)*
        }

        impl DropCounters {
            /// Counter for one reason.
            pub fn get(&self, reason: DropReason) -> u64 {
                match reason {
                    $(DropReason::$variant => self.$field,)*
                }
            }

            pub(crate) fn record(&mut self, reason: DropReason) {
                match reason {
                    $(DropReason::$variant => self.$field += 1,)*
                }
            }
        }
    };
}

drop_reasons! {
    BadLength => bad_length: "Datagram too short or the wrong size for its message type.",
    BadType => bad_type: "Unknown message type or non-zero reserved bytes.",
    BadMac1 => bad_mac1: "Handshake message whose mac1 does not verify: sender does not know our public key.",
    HandshakeFailed => handshake_failed: "Handshake message that failed Noise processing (bad AEAD, bad payload).",
    UnknownKey => unknown_key: "Initiation from a static key that is not a configured peer.",
    ReplayedHandshake => replayed_handshake: "Initiation whose TAI64N timestamp is not newer than the last accepted one.",
    HandshakeRate => handshake_rate: "Initiation arriving faster than the per-peer rate limit.",
    UnknownIndex => unknown_index: "Response or transport message for a receiver index we do not have.",
    DecryptFailed => decrypt_failed: "Transport message whose AEAD tag does not verify.",
    ReplayedCounter => replayed_counter: "Transport counter already seen, too old for the window, or past the limit.",
    ExpiredSession => expired_session: "Transport message for a session older than REJECT_AFTER_TIME.",
    BufferTooSmall => buffer_too_small: "Caller's output buffer is too small.",
    UnknownPeer => unknown_peer: "`send` for a PeerId that is not configured.",
    PayloadTooLarge => payload_too_large: "`send` payload larger than MAX_PAYLOAD.",
    QueueFull => queue_full: "Payload queued while handshaking, but the per-peer queue is full.",
    NoSession => no_session: "Queued payloads discarded because the handshake gave up or keys were zeroed.",
    UnderLoad => under_load: "Handshake message without a valid mac2 while under load: not processed, answered with a cookie reply.",
    CookieQueueFull => cookie_queue_full: "As under_load, but the cookie-reply ring was full: no reply.",
    CookieRate => cookie_rate: "As under_load, from a source that is not a peer's address, over the cookie-reply rate (2000/s): no reply.",
    SourceRate => source_rate: "Handshake message over its source address's rate (20/s, burst 5), before any Diffie-Hellman.",
    HandshakeBudget => handshake_budget: "Handshake message over the global handshake budget (500/s), before any Diffie-Hellman.",
    BadCookieReply => bad_cookie_reply: "Cookie reply that does not decrypt, or answers no message we sent.",
    RoamBudget => roam_budget: "Transport datagram not sent: the peer's new endpoint has not proven it receives, its budget is used up and no proven address is known.",
    LowOrderKey => low_order_key: "Handshake whose Diffie-Hellman result was all-zero (a low-order public key).",
}

impl DropCounters {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_reasons() {
        let mut c = DropCounters::default();
        c.record(DropReason::BadMac1);
        c.record(DropReason::BadMac1);
        c.record(DropReason::ReplayedCounter);
        assert_eq!(c.bad_mac1, 2);
        assert_eq!(c.get(DropReason::ReplayedCounter), 1);
        assert_eq!(c.total(), 3);
        assert_eq!(DropReason::UnknownKey.as_str(), "unknown_key");
    }
}

//! Handshake flood defences, all checked before any Diffie-Hellman and none allocating
//! per packet (every table is sized once, at construction):
//!
//! 1. **Under-load detection.** More than [`UNDER_LOAD_THRESHOLD`] mac1-valid handshake
//!    messages within one [`LOAD_WINDOW`], or any message refused by a bucket below, puts
//!    the endpoint under load for at least [`UNDER_LOAD_HOLD`]. Under load, handshake messages need a valid mac2 (a cookie
//!    proving the sender receives at its source address); the others get a cookie reply,
//!    never a handshake answer, and are not processed further.
//! 2. **Per-source token bucket** ([`SOURCE_RATE`]/s, burst [`SOURCE_BURST`]), in a
//!    fixed table of [`SOURCE_BUCKETS`] buckets indexed by a keyed hash of the source IP.
//!    Spoofed sources collide into the same buckets instead of growing the table; the key
//!    is random per endpoint so an attacker cannot aim collisions at a peer's bucket.
//! 3. **Global handshake budget** ([`HANDSHAKE_BUDGET_RATE`]/s, burst
//!    [`HANDSHAKE_BUDGET_BURST`]): an upper bound on Diffie-Hellman work per second,
//!    whatever the number of sources. At ≈0.2 ms per handshake this caps handshake CPU at
//!    about 10 % of one core, so transport data and the control socket always get the rest.
//!    Handshakes from a configured peer's current or proven address — the whole address,
//!    port included — use that peer's own reserved bucket ([`KNOWN_RATE`]/s, burst
//!    [`KNOWN_BURST`]) instead, so the peers still get through when attackers with real
//!    addresses and valid cookies use up the global budget, and a host sharing one peer's
//!    IP (a NAT, a user on its host) can neither drain another peer's bucket nor its own.
//! 4. **Cookie replies** wait in a fixed ring of [`COOKIE_QUEUE`] entries (drained by
//!    `poll_transmit`) and are sealed only when sent; when the ring is full further
//!    replies are dropped and counted, so answering a flood costs at most the ring's size
//!    per driver wakeup. Sources other than the peers' addresses get at most
//!    [`COOKIE_RATE`]/s replies (burst [`COOKIE_BURST`]) in all; the peers' addresses always
//!    get one (a peer that moved to a new address during a flood may need a few retries).
//!    A reply (64 bytes) is smaller than what triggers it (92/148).

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::mac::MAC_LEN;
use crate::bucket::Bucket;

/// Length of the window over which handshake messages are counted.
pub const LOAD_WINDOW: Duration = Duration::from_millis(125);
/// mac1-valid handshake messages per LOAD_WINDOW above which the endpoint is under load
/// (≈ 128/s, WireGuard's queue threshold; boringtun uses 100/s).
pub const UNDER_LOAD_THRESHOLD: u32 = 16;
/// How long the endpoint stays under load after the last window over the threshold.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);
/// Handshakes per second per source IP (WireGuard's ratelimiter: 20/s, burst 5).
pub const SOURCE_RATE: u32 = 20;
/// Bucket size per source IP.
pub const SOURCE_BURST: u32 = 5;
/// Number of per-source buckets (fixed; collisions share a bucket).
pub const SOURCE_BUCKETS: usize = 4096;
/// Handshakes per second that may reach Diffie-Hellman, all sources together.
pub const HANDSHAKE_BUDGET_RATE: u32 = 500;
/// Burst of the global handshake budget.
pub const HANDSHAKE_BUDGET_BURST: u32 = 50;
/// Handshakes per second from one configured peer's address (reserved per peer, outside
/// the global budget; a peer needs one per 2 minutes, a few more on loss).
pub const KNOWN_RATE: u32 = 20;
/// Burst of a peer's reserved bucket.
pub const KNOWN_BURST: u32 = 5;
/// Cookie replies per second to sources that are not a configured peer's address.
pub const COOKIE_RATE: u32 = 2_000;
/// Burst of the cookie-reply rate.
pub const COOKIE_BURST: u32 = 200;
/// Pending cookie replies (fixed ring).
pub const COOKIE_QUEUE: usize = 256;

/// A cookie reply waiting to be sealed and sent.
#[derive(Clone, Copy)]
pub(crate) struct PendingCookie {
    pub to: SocketAddr,
    pub receiver: u32,
    pub mac1: [u8; MAC_LEN],
}

/// Verdict of [`Guard::admit`] for a mac1-valid handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go on to Diffie-Hellman.
    Process,
    /// Over the per-source rate.
    SourceRate,
    /// Over the global handshake budget.
    Budget,
}

pub(crate) struct Guard {
    window_start: Option<Instant>,
    window_count: u32,
    loaded_until: Option<Instant>,
    hasher: std::collections::hash_map::RandomState,
    buckets: Box<[Bucket]>,
    budget: Bucket,
    cookies: Bucket,
    ring: Box<[Option<PendingCookie>]>,
    ring_head: usize,
    ring_len: usize,
}

impl Guard {
    pub fn new() -> Self {
        Guard {
            window_start: None,
            window_count: 0,
            loaded_until: None,
            hasher: std::collections::hash_map::RandomState::new(),
            buckets: vec![Bucket::EMPTY; SOURCE_BUCKETS].into_boxed_slice(),
            budget: Bucket::EMPTY,
            cookies: Bucket::EMPTY,
            ring: vec![None; COOKIE_QUEUE].into_boxed_slice(),
            ring_head: 0,
            ring_len: 0,
        }
    }

    /// Count one mac1-valid handshake message; returns whether we are under load now.
    pub fn note_handshake(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < LOAD_WINDOW => self.window_count += 1,
            _ => {
                self.window_start = Some(now);
                self.window_count = 1;
            }
        }
        if self.window_count > UNDER_LOAD_THRESHOLD {
            self.loaded_until = Some(now + UNDER_LOAD_HOLD);
        }
        self.under_load(now)
    }

    pub fn under_load(&self, now: Instant) -> bool {
        self.loaded_until.is_some_and(|t| now < t)
    }

    /// Per-source bucket, then the global budget. Runs after the mac2 check. A source
    /// that is a configured peer's address uses that peer's reserved bucket (`reserved`)
    /// instead, so attackers holding valid cookies for their own addresses cannot use up
    /// the budget the real peers need (under load, spoofing a peer's address gets no
    /// cookie).
    pub fn admit(&mut self, src: SocketAddr, reserved: Option<&mut Bucket>, now: Instant) -> Admit {
        let verdict = self.admit_inner(src, reserved, now);
        if verdict != Admit::Process {
            // Any budget exceeded means load: from now on, senders must prove their
            // address with a cookie. Without this, a flood spoofing a peer's address below
            // the load threshold could keep that address's bucket empty.
            self.loaded_until = Some(now + UNDER_LOAD_HOLD);
        }
        verdict
    }

    fn admit_inner(
        &mut self,
        src: SocketAddr,
        reserved: Option<&mut Bucket>,
        now: Instant,
    ) -> Admit {
        if let Some(b) = reserved {
            return if b.take(now, KNOWN_RATE, KNOWN_BURST) {
                Admit::Process
            } else {
                Admit::SourceRate
            };
        }
        let ip = match src.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut h = self.hasher.build_hasher();
        match ip {
            IpAddr::V4(a) => h.write(&a.octets()),
            // Whole /64 per bucket, as WireGuard does: one host controls its /64.
            IpAddr::V6(a) => h.write(&a.octets()[..8]),
        }
        let i = (h.finish() as usize) % SOURCE_BUCKETS;
        if !self.buckets[i].take(now, SOURCE_RATE, SOURCE_BURST) {
            return Admit::SourceRate;
        }
        if !self
            .budget
            .take(now, HANDSHAKE_BUDGET_RATE, HANDSHAKE_BUDGET_BURST)
        {
            return Admit::Budget;
        }
        Admit::Process
    }

    /// May we answer a source that is not a peer's address with a cookie reply now?
    pub fn cookie_allowed(&mut self, now: Instant) -> bool {
        self.cookies.take(now, COOKIE_RATE, COOKIE_BURST)
    }

    /// Queue a cookie reply; false (drop it) when the ring is full.
    pub fn push_cookie(&mut self, c: PendingCookie) -> bool {
        if self.ring_len == self.ring.len() {
            return false;
        }
        let at = (self.ring_head + self.ring_len) % self.ring.len();
        self.ring[at] = Some(c);
        self.ring_len += 1;
        true
    }

    pub fn pop_cookie(&mut self) -> Option<PendingCookie> {
        if self.ring_len == 0 {
            return None;
        }
        let c = self.ring[self.ring_head].take();
        self.ring_head = (self.ring_head + 1) % self.ring.len();
        self.ring_len -= 1;
        c
    }

    #[cfg(test)]
    pub fn pending_cookies(&self) -> usize {
        self.ring_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_starts_over_threshold_and_holds() {
        let mut g = Guard::new();
        let t = Instant::now();
        for _ in 0..UNDER_LOAD_THRESHOLD {
            assert!(!g.note_handshake(t));
        }
        assert!(g.note_handshake(t));
        assert!(g.under_load(t + UNDER_LOAD_HOLD / 2));
        assert!(!g.under_load(t + UNDER_LOAD_HOLD));
    }

    #[test]
    fn source_bucket_limits_one_address_not_others() {
        let mut g = Guard::new();
        let t = Instant::now();
        let a: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let b: SocketAddr = "198.51.100.7:2".parse().unwrap();
        for _ in 0..SOURCE_BURST {
            assert_eq!(g.admit(a, None, t), Admit::Process);
        }
        // Same IP, other port: same bucket.
        assert_eq!(g.admit(b, None, t), Admit::SourceRate);
        // Refills at SOURCE_RATE per second.
        assert_eq!(
            g.admit(
                a,
                None,
                t + Duration::from_millis(1000 / SOURCE_RATE as u64)
            ),
            Admit::Process
        );
    }

    #[test]
    fn global_budget_caps_many_sources() {
        let mut g = Guard::new();
        let t = Instant::now();
        let mut processed = 0;
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 | i);
            if g.admit(SocketAddr::from((ip, 9)), None, t) == Admit::Process {
                processed += 1;
            }
        }
        assert_eq!(processed, HANDSHAKE_BUDGET_BURST);
    }

    #[test]
    fn cookie_ring_is_bounded() {
        let mut g = Guard::new();
        let c = PendingCookie {
            to: "192.0.2.1:1".parse().unwrap(),
            receiver: 1,
            mac1: [0; 16],
        };
        for _ in 0..COOKIE_QUEUE {
            assert!(g.push_cookie(c));
        }
        assert!(!g.push_cookie(c));
        assert_eq!(g.pending_cookies(), COOKIE_QUEUE);
        assert!(g.pop_cookie().is_some());
        assert!(g.push_cookie(c));
    }
}

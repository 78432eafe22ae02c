//! A token bucket (pure: the caller passes the time), shared by the tunnel's handshake
//! limits and the sync layer's per-peer budgets.

use std::time::Instant;

/// Token bucket in fixed point (1 token = 1e6 micro-tokens), refilled lazily. It starts
/// full: the first `take` finds `burst` tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    micro: u64,
    last: Option<Instant>,
}

impl Bucket {
    pub(crate) const EMPTY: Bucket = Bucket {
        micro: 0,
        last: None,
    };

    /// Take one token at `rate` per second and at most `burst` stored; false if none left.
    pub(crate) fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let cap = u64::from(burst) * 1_000_000;
        self.micro = match self.last {
            None => cap,
            Some(t) => {
                let us = now
                    .saturating_duration_since(t)
                    .as_micros()
                    .min(u128::from(u64::MAX)) as u64;
                self.micro
                    .saturating_add(us.saturating_mul(u64::from(rate)))
                    .min(cap)
            }
        };
        self.last = Some(now);
        if self.micro >= 1_000_000 {
            self.micro -= 1_000_000;
            true
        } else {
            false
        }
    }
}

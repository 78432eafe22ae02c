//! Anti-replay window for transport counters, RFC 6479 ("IPsec Anti-Replay Algorithm
//! without Bit Shifting"), sized like wireguard-go: a ring of 128 × 64-bit blocks, of which
//! one is always being recycled, so 8128 counters behind the highest one are tracked.
//!
//! Use [`ReplayWindow::check`] before decrypting (cheap rejection) and
//! [`ReplayWindow::mark`] only *after* the AEAD tag verified: marking first would let a
//! forged packet with a future counter slide the window and kill genuine traffic.

const BLOCK_BITS: u64 = 64;
const RING_BLOCKS: u64 = 128;
/// Counters this far behind the highest accepted one are still accepted once.
pub const WINDOW_SIZE: u64 = (RING_BLOCKS - 1) * BLOCK_BITS;

#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// Highest counter marked so far (valid once `any` is set).
    last: u64,
    ring: [u64; RING_BLOCKS as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            last: 0,
            ring: [0; RING_BLOCKS as usize],
        }
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64, limit: u64) -> bool {
        if counter >= limit {
            return false;
        }
        if counter > self.last {
            return true;
        }
        if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & bit == 0
    }

    /// Record `counter` as seen; returns false if it was not acceptable.
    pub fn mark(&mut self, counter: u64, limit: u64) -> bool {
        if counter >= limit {
            return false;
        }
        if counter > self.last {
            // Clear the blocks the window slides over (at most the whole ring).
            let current = self.last / BLOCK_BITS;
            let target = counter / BLOCK_BITS;
            let advance = (target - current).min(RING_BLOCKS);
            for i in 1..=advance {
                self.ring[((current + i) % RING_BLOCKS) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        let seen = self.ring[block] & bit != 0;
        self.ring[block] |= bit;
        !seen
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BLOCK_BITS) % RING_BLOCKS) as usize,
            1u64 << (counter % BLOCK_BITS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = u64::MAX - (1 << 13);

    fn accept(w: &mut ReplayWindow, c: u64) -> bool {
        let pre = w.check(c, LIMIT);
        let got = w.mark(c, LIMIT);
        assert_eq!(pre, got, "check and mark disagree at {c}");
        got
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..10_000 {
            assert!(accept(&mut w, c));
            assert!(!accept(&mut w, c));
        }
    }

    #[test]
    fn out_of_order_within_window_once() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 10_000));
        assert!(accept(&mut w, 10_000 - WINDOW_SIZE));
        assert!(!accept(&mut w, 10_000 - WINDOW_SIZE));
        assert!(!accept(&mut w, 10_000 - WINDOW_SIZE - 1));
        assert!(accept(&mut w, 9_999));
        assert!(accept(&mut w, 5_000));
        assert!(!accept(&mut w, 5_000));
        assert!(!accept(&mut w, 10_000));
    }

    #[test]
    fn big_jump_clears_ring() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            assert!(accept(&mut w, c));
        }
        // Jump far ahead: old bits must not make fresh counters look replayed.
        let base = 1_000_000;
        assert!(accept(&mut w, base));
        for c in (base - WINDOW_SIZE)..base {
            assert!(accept(&mut w, c), "{c}");
        }
        assert!(!accept(&mut w, 199));
    }

    #[test]
    fn counter_zero_first_and_limit() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 0));
        assert!(!accept(&mut w, 0));
        assert!(!w.check(LIMIT, LIMIT));
        assert!(!w.mark(u64::MAX, LIMIT));
        assert!(accept(&mut w, LIMIT - 1));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::default();
        assert!(w.check(100_000, LIMIT));
        // A forged packet with a huge counter that fails decryption is only checked:
        // the genuine low counters remain acceptable.
        assert!(accept(&mut w, 1));
    }
}

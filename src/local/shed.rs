//! How much of the capture to shed in the kernel: a PIE-style controller (RFC 8033) on the
//! queueing delay of captured packets. Pure: the driver feeds it each packet's wait (from
//! the kernel's receive timestamp) and applies the share it returns to the capture filter
//! ([`super::filter`]).
//!
//! The delay steered is the capture queue's plus the one a peer reports in its ACKs (how
//! long our datagrams wait in its socket): a relayed packet waits in both, and a receiving
//! gateway cannot shed what the reliable stream brings it, so the sender sheds for it.
//!
//! Why a controller and not a fixed age bound: a bound of T keeps a standing queue of T under
//! sustained overload (every delivered packet is then T late), while shedding at random
//! before the queue keeps the queue short and spreads the loss evenly over the states, each
//! of which pf updates again a few packets later. PIE's gains are tuned for TCP, which
//! backs off; pfsync does not, so the gains here are higher and the share reaches what a
//! several-fold overload needs within a few intervals.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the share is recomputed.
pub const INTERVAL: Duration = Duration::from_millis(10);
/// Share change per second of delay above the target, per interval.
const ALPHA: f64 = 2.0;
/// Share change per second of delay growth since the last interval.
const BETA: f64 = 10.0;
/// Never shed every matching packet: some of each state's updates must get through.
pub const MAX_SHARE: f64 = 0.99;
/// Smallest change worth a new filter in the kernel.
const STEP: f64 = 1.0 / 128.0;
/// Below this share of sheddable packets in what was read, shedding cannot shorten the
/// queue (a bulk answer, an insert storm): the share only decays.
const MIN_ELIGIBLE: f64 = 0.25;
/// Factor the share shrinks by in an interval whose queue was empty (PIE's decay), so a
/// small target does not leave shedding on long after an overload.
const DECAY: f64 = 0.9;
/// A mean wait below this (or half the target, if smaller) is an empty queue.
const EMPTY: f64 = 0.001;

#[derive(Debug, Clone)]
pub struct ShedControl {
    /// The queueing delay steered to, in seconds.
    target: f64,
    share: f64,
    /// The share the kernel filter applies now (changes smaller than `STEP` wait).
    applied: f64,
    sum_wait: f64,
    waits: u32,
    eligible: u32,
    /// When each recent share took effect (newest last): a packet read now was filtered
    /// by the share in force when it arrived, which may be several intervals old.
    history: VecDeque<(Instant, f64)>,
    prev_delay: f64,
    /// The largest delay a peer reported in this interval, in seconds.
    peer_delay: f64,
    /// Intervals in which a peer's delay alone exceeded the target (ours did not).
    peer_intervals: u64,
    next_update: Instant,
    /// Matching packets the kernel dropped, estimated from the share in force and the
    /// matching packets it let through (each was kept with probability 1 − share).
    shed_estimate: f64,
}

impl ShedControl {
    /// A controller keeping the capture queue's delay near `target` under overload.
    pub fn new(now: Instant, target: Duration) -> ShedControl {
        ShedControl {
            target: target.as_secs_f64(),
            share: 0.0,
            applied: 0.0,
            sum_wait: 0.0,
            waits: 0,
            eligible: 0,
            history: VecDeque::new(),
            prev_delay: 0.0,
            peer_delay: 0.0,
            peer_intervals: 0,
            next_update: now + INTERVAL,
            shed_estimate: 0.0,
        }
    }

    /// A captured packet read at `now` had waited `wait` in the kernel's queue; `eligible`:
    /// the filter could have dropped it (it has the shape [`crate::wire::UpdCRun`]).
    #[inline]
    pub fn on_captured(&mut self, now: Instant, wait: Duration, eligible: bool) {
        self.sum_wait += wait.as_secs_f64();
        self.waits += 1;
        self.eligible += u32::from(eligible);
        if eligible && !self.history.is_empty() {
            // It was kept with probability 1 − s: it stands for s / (1 − s) shed ones.
            let arrived = now.checked_sub(wait).unwrap_or(now);
            let s = self
                .history
                .iter()
                .rev()
                .find(|&&(t, _)| t <= arrived)
                .map_or(0.0, |&(_, s)| s);
            self.shed_estimate += s / (1.0 - s);
        }
    }

    /// A peer's queueing delay for what we relay (see the module docs); the largest one
    /// given in an interval counts.
    pub fn on_peer_delay(&mut self, d: Duration) {
        self.peer_delay = self.peer_delay.max(d.as_secs_f64());
    }

    /// Once per [`INTERVAL`]: the new share for the kernel filter, when it changed enough.
    pub fn poll(&mut self, now: Instant) -> Option<f64> {
        if now < self.next_update {
            return None;
        }
        let missed = now.duration_since(self.next_update).as_secs_f64() / INTERVAL.as_secs_f64();
        self.next_update = now + INTERVAL;
        // Nothing read in a whole interval: the queue is empty.
        let local = if self.waits == 0 {
            0.0
        } else {
            self.sum_wait / f64::from(self.waits)
        };
        // A relayed packet waits in both queues: the sum is what it is late by.
        let peer = std::mem::take(&mut self.peer_delay);
        let delay = local + peer;
        let target = self.target;
        if peer > target && local <= target {
            self.peer_intervals += 1;
        }
        // An empty queue decays the share, once for this interval and once for each one
        // nobody polled in (the gateway slept: nothing was captured); a long busy round,
        // whose queue was not empty, does not.
        if delay < (target / 2.0).min(EMPTY) {
            self.share *= DECAY.powf(missed.floor() + 1.0);
        }
        let step = ALPHA * (delay - target) + BETA * (delay - self.prev_delay);
        // Shedding helps only if enough of what queues could be shed.
        let sheddable = f64::from(self.eligible) >= MIN_ELIGIBLE * f64::from(self.waits.max(1));
        let step = if sheddable { step } else { step.min(0.0) };
        self.share = (self.share + step).clamp(0.0, MAX_SHARE);
        self.prev_delay = delay;
        (self.sum_wait, self.waits, self.eligible) = (0.0, 0, 0);
        let changed = (self.share - self.applied).abs() >= STEP
            || (self.share == 0.0) != (self.applied == 0.0);
        changed.then(|| {
            self.applied = self.share;
            // A second of history covers any wait the capture buffer can hold under shedding.
            while self.history.len() > 1 && now - self.history[1].0 > Duration::from_secs(1) {
                self.history.pop_front();
            }
            self.history.push_back((now, self.applied));
            self.applied
        })
    }

    /// The share the kernel filter drops now.
    pub fn applied_share(&self) -> f64 {
        self.applied
    }

    /// Intervals so far in which a peer's reported delay alone exceeded the target.
    pub fn peer_intervals(&self) -> u64 {
        self.peer_intervals
    }

    /// Matching packets shed by the kernel so far (an estimate; see the field).
    pub fn shed_estimate(&self) -> u64 {
        self.shed_estimate as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = crate::config::DEFAULT_SHED_TARGET;

    /// A fluid model of the capture queue: `offered` packets/s (all matching) against a
    /// gateway that processes `capacity`/s; returns the delay and the share after `secs`,
    /// and the worst delay over the last half.
    fn simulate(offered: f64, capacity: f64, secs: f64) -> (f64, f64, f64) {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let (mut queue, mut worst) = (0.0f64, 0.0f64);
        let dt = 0.001;
        let steps = (secs / dt) as usize;
        for i in 0..steps {
            let now = t0 + Duration::from_secs_f64(i as f64 * dt);
            queue = (queue + (offered * (1.0 - c.applied_share()) - capacity) * dt).max(0.0);
            let delay = queue / capacity;
            // The gateway reads capacity·dt packets per ms, each having waited `delay`.
            for _ in 0..(capacity * dt) as usize {
                c.on_captured(now, Duration::from_secs_f64(delay), true);
            }
            if queue == 0.0 {
                // An empty queue: nothing read.
                c.waits = 0;
            }
            c.poll(now);
            if i > steps / 2 {
                worst = worst.max(delay);
            }
        }
        (queue / capacity, c.applied_share(), worst)
    }

    #[test]
    fn sustained_overload_is_shed_down_to_a_short_queue() {
        for factor in [1.5, 3.0, 10.0] {
            let (delay, share, worst) = simulate(100_000.0 * factor, 100_000.0, 3.0);
            let need = 1.0 - 1.0 / factor;
            let bound = 2.0 * TARGET.as_secs_f64();
            assert!(worst < bound, "{factor}×: worst delay {worst}");
            assert!(delay < bound, "{factor}×: delay {delay}");
            assert!(
                (share - need).abs() < 0.1,
                "{factor}×: share {share}, needs {need}"
            );
        }
    }

    /// The receiving gateway is the bottleneck: our capture queue stays empty (we read every
    /// packet at once), the peer's queue fills, and it reports its delay in its ACKs (one per
    /// 32 messages: every 0.3 ms at this rate; modelled as every 5 ms, 1 ms in flight).
    #[test]
    fn a_slow_peer_is_shed_for_although_our_capture_queue_is_empty() {
        for factor in [1.5, 3.0, 10.0] {
            let (offered, peer_capacity) = (100_000.0 * factor, 100_000.0);
            let t0 = Instant::now();
            let mut c = ShedControl::new(t0, TARGET);
            let (mut queue, mut reported, mut worst) = (0.0f64, 0.0f64, 0.0f64);
            let dt = 0.001;
            for i in 0..3000usize {
                let now = t0 + Duration::from_secs_f64(i as f64 * dt);
                let relayed = offered * (1.0 - c.applied_share());
                queue = (queue + (relayed - peer_capacity) * dt).max(0.0);
                for _ in 0..(relayed * dt) as usize {
                    c.on_captured(now, Duration::ZERO, true);
                }
                if i % 5 == 1 {
                    reported = queue / peer_capacity;
                }
                c.on_peer_delay(Duration::from_secs_f64(reported));
                c.poll(now);
                if i > 1500 {
                    worst = worst.max(queue / peer_capacity);
                }
            }
            let need = 1.0 - 1.0 / factor;
            assert!(
                worst < 2.0 * TARGET.as_secs_f64(),
                "{factor}×: worst {worst}"
            );
            let share = c.applied_share();
            assert!(
                (share - need).abs() < 0.1,
                "{factor}×: share {share}, needs {need}"
            );
            assert!(c.peer_intervals() > 0, "counted as shed for the peer");
        }
    }

    #[test]
    fn a_peer_delay_raises_nothing_when_nothing_sheddable_is_captured() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let mut now = t0;
        for _ in 0..50 {
            // Inserts only (or nothing at all): shedding would not shorten the peer's queue.
            for _ in 0..10 {
                c.on_captured(now, Duration::ZERO, false);
            }
            c.on_peer_delay(Duration::from_millis(200));
            now += INTERVAL;
            c.poll(now);
        }
        assert_eq!(c.applied_share(), 0.0);
        // And a report counts for the interval it came in only.
        c.on_peer_delay(Duration::from_millis(200));
        now += INTERVAL;
        c.poll(now);
        assert_eq!(c.peer_delay, 0.0);
    }

    #[test]
    fn below_capacity_nothing_is_shed() {
        let (delay, share, _) = simulate(90_000.0, 100_000.0, 2.0);
        assert_eq!(share, 0.0);
        assert_eq!(delay, 0.0);
    }

    #[test]
    fn the_share_falls_back_to_zero_when_the_overload_ends() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let mut now = t0;
        for _ in 0..50 {
            for _ in 0..100 {
                c.on_captured(now, Duration::from_millis(40), true);
            }
            now += INTERVAL;
            c.poll(now);
        }
        assert!(c.applied_share() > 0.5, "{}", c.applied_share());
        // Each matching packet let through stood for share/(1-share) shed ones.
        let before = c.shed_estimate();
        assert!(before > 0);
        for _ in 0..200 {
            now += INTERVAL;
            c.poll(now);
        }
        assert_eq!(c.applied_share(), 0.0, "an empty queue sheds nothing");
    }

    #[test]
    fn a_queue_of_what_cannot_be_shed_does_not_raise_the_share() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let mut now = t0;
        for _ in 0..50 {
            // A bulk answer: 90 % full updates, long waits.
            for i in 0..100 {
                c.on_captured(now, Duration::from_millis(80), i % 10 == 0);
            }
            now += INTERVAL;
            c.poll(now);
        }
        assert_eq!(c.applied_share(), 0.0);
    }

    #[test]
    fn a_small_target_lets_go_quickly_after_the_overload() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, Duration::from_millis(1));
        (c.share, c.applied) = (0.99, 0.99);
        let mut now = t0;
        // Busy but no longer behind: every packet read at once, 20 intervals (200 ms).
        for _ in 0..20 {
            for _ in 0..100 {
                c.on_captured(now, Duration::ZERO, true);
            }
            now += INTERVAL;
            c.poll(now);
        }
        assert!(c.applied_share() < 0.15, "{}", c.applied_share());
    }

    #[test]
    fn a_gateway_that_slept_through_the_end_of_an_overload_does_not_keep_shedding() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        c.share = 0.6;
        c.applied = 0.6;
        // One packet after a second of silence: the share is gone.
        c.on_captured(t0 + Duration::from_secs(1), Duration::ZERO, true);
        assert_eq!(c.poll(t0 + Duration::from_secs(1)), Some(0.0));
    }

    #[test]
    fn the_estimate_counts_by_the_share_in_force_when_each_packet_arrived() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        for _ in 0..10 {
            c.on_captured(t0, TARGET, true);
        }
        assert_eq!(c.shed_estimate(), 0, "nothing shed before the first share");
        // The share goes to 0.75 at t1 = t0 + 10 ms.
        // A delay at the target, not growing: the share stays where it is.
        (c.share, c.prev_delay) = (0.75, TARGET.as_secs_f64());
        let t1 = t0 + INTERVAL;
        c.on_captured(t1, TARGET, true);
        assert_eq!(c.poll(t1), Some(0.75));
        let t2 = t1 + Duration::from_millis(5);
        for _ in 0..1000 {
            // Read after the change, but queued before it: filtered at share 0.
            c.on_captured(t2, Duration::from_millis(6), true);
            // Queued after it: each kept one stands for 3 shed.
            c.on_captured(t2, Duration::from_millis(4), true);
            c.on_captured(t2, Duration::from_millis(4), false);
        }
        let e = c.shed_estimate();
        assert!((2990..=3000).contains(&e), "{e}");
    }
}

//! How much of the capture to shed in the kernel: a PIE-style controller (RFC 8033) on the
//! queueing delay of captured packets. Pure: the driver feeds it each packet's wait (from
//! the kernel's receive timestamp) and applies the share it returns to the capture filter
//! ([`super::filter`]).
//!
//! A second share, added to the first, steers the delay a peer reports in its ACKs (how long
//! our datagrams wait in its socket): a receiving gateway cannot shed what the reliable
//! stream brings it, so the sender sheds for it. That report is a round trip old, so its
//! gains are lower (a controller that acts on old news at full gain swings between nothing
//! and everything), and the share it alone can set is capped: a peer that lies, or a flood
//! at its port, costs our other peers at most that share of the firewall's updates.
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
/// The most a peer's reported delay alone makes us shed.
pub const PEER_MAX_SHARE: f64 = 0.75;
/// Below this share of an interval on the CPU, a queue that grew in it grew while the
/// gateway was off the CPU: a stall (real-time throttling, a preemption, a descheduled
/// vCPU), not more arrivals than it handles.
const STALL_BUSY: f64 = 0.5;
/// A stall is excused only this long after the last one: off the CPU again and again is
/// not a stall but contention for the CPU (a busier thread of higher priority, the sender
/// on the same core), which shedding does relieve.
const STALL_SPACING: Duration = Duration::from_millis(200);

/// One PIE loop's gains, the factor its share shrinks by per interval whose queue was
/// empty, and the most it sheds.
#[derive(Debug, Clone, Copy)]
struct Gains {
    alpha: f64,
    beta: f64,
    decay: f64,
    max: f64,
}

const CAPTURE: Gains = Gains {
    alpha: ALPHA,
    beta: BETA,
    decay: DECAY,
    max: MAX_SHARE,
};
/// The peer's loop: steady within a few percent for round trips up to 50 ms, within ±0.15
/// at 100 ms (the fluid model in the tests), where the capture's gains swing between 0 and
/// 99 % from 50 ms on. Its gentle decay takes it from its cap to nothing within about a
/// second after an overload, together with the proportional step; at the capture's, on a
/// round trip's lag, it would empty the share while the peer's queue still drains and
/// refill it a round trip later (a limit cycle).
const PEER: Gains = Gains {
    alpha: ALPHA / 10.0,
    beta: BETA / 4.0,
    decay: 0.99,
    max: PEER_MAX_SHARE,
};

/// A PIE loop's state: its share, and the delay it saw in the interval before.
#[derive(Debug, Clone, Copy, Default)]
struct Pie {
    share: f64,
    prev: f64,
}

impl Pie {
    /// One step after `intervals` intervals (more than one: nobody polled in the others,
    /// the gateway slept) whose queue waited `delay`. An empty queue decays the share, once
    /// per interval; a long busy round, whose queue was not empty, does not. Without
    /// `sheddable` the share only falls. `stall`: seconds the gateway was off the CPU while
    /// its queue grew; the growth they cause is not steered against (see
    /// [`ShedControl::poll`]).
    fn step(
        &mut self,
        g: Gains,
        delay: f64,
        target: f64,
        sheddable: bool,
        intervals: f64,
        stall: f64,
    ) {
        if delay < (target / 2.0).min(EMPTY) {
            self.share *= g.decay.powf(intervals);
        }
        let growth = delay - self.prev;
        let growth = if stall > 0.0 { growth.min(0.0) } else { growth };
        let step = g.alpha * (delay - target) + g.beta * growth;
        let step = if sheddable { step } else { step.min(0.0) };
        self.share = (self.share + step).clamp(0.0, g.max);
        // The packets queued during a stall are read over this interval and the next: the
        // next one is compared with the delay the stall added to all of them.
        self.prev = if stall > 0.0 {
            delay.max(self.prev + stall)
        } else {
            delay
        };
    }
}

#[derive(Debug, Clone)]
pub struct ShedControl {
    /// The queueing delay steered to, in seconds.
    target: f64,
    /// The share steered by the capture queue's delay.
    capture: Pie,
    /// The share the kernel filter applies now (changes smaller than `STEP` wait).
    applied: f64,
    sum_wait: f64,
    waits: u32,
    eligible: u32,
    /// When each recent share took effect (newest last): a packet read now was filtered
    /// by the share in force when it arrived, which may be several intervals old.
    history: VecDeque<(Instant, f64)>,
    /// The largest delay a peer reported in this interval, in seconds.
    peer_delay: f64,
    /// The share steered by the peers' delay (added to `share`).
    peer: Pie,
    /// Intervals in which a peer's delay alone exceeded the target (ours did not).
    peer_intervals: u64,
    next_update: Instant,
    /// When the share was last recomputed, and the thread's CPU time then.
    last_update: Instant,
    cpu_at_update: Option<Duration>,
    /// Intervals whose queue grew while the gateway was off the CPU, excused.
    stalls: u64,
    /// When the queue last grew while the gateway was off the CPU (excused or not).
    last_stall: Option<Instant>,
    /// Matching packets the kernel dropped, estimated from the share in force and the
    /// matching packets it let through (each was kept with probability 1 − share).
    shed_estimate: f64,
}

impl ShedControl {
    /// A controller keeping the capture queue's delay near `target` under overload.
    pub fn new(now: Instant, target: Duration) -> ShedControl {
        ShedControl {
            target: target.as_secs_f64(),
            capture: Pie::default(),
            applied: 0.0,
            sum_wait: 0.0,
            waits: 0,
            eligible: 0,
            history: VecDeque::new(),
            peer_delay: 0.0,
            peer: Pie::default(),
            peer_intervals: 0,
            next_update: now + INTERVAL,
            last_update: now,
            cpu_at_update: None,
            stalls: 0,
            last_stall: None,
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
    /// `cpu` reads the calling thread's CPU time (once per interval).
    ///
    /// A queue that grew while the gateway was on the CPU for less than half the interval
    /// grew because the gateway did not run, not because more arrived than it handles: its
    /// growth term is left out. PIE would otherwise answer every stall with a burst of
    /// shedding (a 50 ms stall adds β·50 ms = 0.5 to the share at once) just as the
    /// gateway resumes and drains the backlog at full speed: updates lost for nothing, each
    /// leaving its state's newest version at the peers stale until pf updates it again. The
    /// proportional term still acts on what stays queued, and what waited beyond the late
    /// bound is dropped unapplied by the driver.
    pub fn poll(&mut self, now: Instant, cpu: impl FnOnce() -> Duration) -> Option<f64> {
        if now < self.next_update {
            return None;
        }
        let missed = now.duration_since(self.next_update).as_secs_f64() / INTERVAL.as_secs_f64();
        self.next_update = now + INTERVAL;
        let cpu = cpu();
        let wall = now
            .saturating_duration_since(self.last_update)
            .as_secs_f64();
        let ran = match self.cpu_at_update {
            Some(before) => cpu.saturating_sub(before).as_secs_f64(),
            None => wall,
        };
        (self.last_update, self.cpu_at_update) = (now, Some(cpu));
        // Nothing read in a whole interval: the queue is empty.
        let local = if self.waits == 0 {
            0.0
        } else {
            self.sum_wait / f64::from(self.waits)
        };
        let peer = std::mem::take(&mut self.peer_delay);
        let target = self.target;
        if peer > target && local <= target {
            self.peer_intervals += 1;
        }
        // Shedding helps only if enough of what queues could be shed.
        let sheddable = f64::from(self.eligible) >= MIN_ELIGIBLE * f64::from(self.waits.max(1));
        let intervals = missed.floor() + 1.0;
        // A growth of at least a millisecond: not the jitter of a gateway that sleeps
        // between sparse packets (mostly off the CPU too, and nothing to excuse).
        let off = ran < STALL_BUSY * wall && local > self.capture.prev + EMPTY;
        let isolated = self
            .last_stall
            .is_none_or(|t| now.saturating_duration_since(t) >= STALL_SPACING);
        if off {
            self.last_stall = Some(now);
        }
        let stalled = off && isolated;
        self.stalls += u64::from(stalled);
        let stall = if stalled { wall - ran } else { 0.0 };
        self.capture
            .step(CAPTURE, local, target, sheddable, intervals, stall);
        // The peer's queue grows or not whether we ran: its report is steered as it comes.
        self.peer
            .step(PEER, peer, target, sheddable, intervals, 0.0);
        if peer < target && intervals > 1.0 {
            // The peer's proportional step, once per interval slept through as well
            // (nothing was relayed meanwhile).
            let more = PEER.alpha * (target - peer) * (intervals - 1.0);
            self.peer.share = (self.peer.share - more).max(0.0);
        }
        (self.sum_wait, self.waits, self.eligible) = (0.0, 0, 0);
        let total = (self.capture.share + self.peer.share).min(MAX_SHARE);
        let changed =
            (total - self.applied).abs() >= STEP || (total == 0.0) != (self.applied == 0.0);
        changed.then(|| {
            self.applied = total;
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

    /// Whether our own capture queue's delay, not a peer's report, makes us shed: a
    /// share of at least one filter step steered by the capture alone.
    pub fn capture_overloaded(&self) -> bool {
        self.capture.share >= STEP
    }

    /// Intervals so far in which a peer's reported delay alone exceeded the target.
    pub fn peer_intervals(&self) -> u64 {
        self.peer_intervals
    }

    /// Intervals so far whose queue grew while the gateway was off the CPU.
    pub fn stalls(&self) -> u64 {
        self.stalls
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

    /// Polls of a gateway that was on the CPU the whole time since the last one.
    trait Busy {
        fn poll_busy(&mut self, now: Instant) -> Option<f64>;
    }

    impl Busy for ShedControl {
        fn poll_busy(&mut self, now: Instant) -> Option<f64> {
            let ran = now.saturating_duration_since(self.last_update);
            let cpu = self.cpu_at_update.unwrap_or_default() + ran;
            self.poll(now, || cpu)
        }
    }

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
            c.poll_busy(now);
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

    /// The receiving gateway is the bottleneck at `factor` × its capacity, `rtt` away: our
    /// capture queue stays empty (we read every packet at once); what we relay reaches its
    /// queue half a round trip later, and it reports that queue's delay in an ACK every
    /// `ack` (one per 32 messages under load, every 20 ms when slow), which takes another
    /// half round trip. Returns, over the last half of `secs`: the least and the largest
    /// share, the worst delay of the peer's queue; and the share at the end.
    fn simulate_peer(factor: f64, rtt: f64, ack: f64, secs: f64) -> (f64, f64, f64, f64) {
        let (offered, capacity) = (100_000.0 * factor, 100_000.0);
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let dt = 0.001;
        let lag = ((rtt / 2.0) / dt).round() as usize;
        let steps = (secs / dt) as usize;
        let (mut queue, mut flight, mut acks) = (0.0f64, VecDeque::new(), VecDeque::new());
        let (mut reported, mut lo, mut hi, mut worst) = (0.0f64, 1.0f64, 0.0f64, 0.0f64);
        for i in 0..steps {
            let now = t0 + Duration::from_secs_f64(i as f64 * dt);
            let relayed = offered * (1.0 - c.applied_share());
            for _ in 0..(relayed * dt) as usize {
                c.on_captured(now, Duration::ZERO, true);
            }
            flight.push_back(relayed);
            if flight.len() > lag {
                let arriving = flight.pop_front().unwrap_or(0.0);
                queue = (queue + (arriving - capacity) * dt).max(0.0);
            }
            if i % ((ack / dt).round() as usize).max(1) == 0 {
                acks.push_back((i + lag, queue / capacity));
            }
            while acks.front().is_some_and(|&(at, _)| at <= i) {
                reported = acks.pop_front().map_or(0.0, |(_, d)| d);
            }
            c.on_peer_delay(Duration::from_secs_f64(reported));
            c.poll_busy(now);
            if i > steps / 2 {
                let s = c.applied_share();
                (lo, hi, worst) = (lo.min(s), hi.max(s), worst.max(queue / capacity));
            }
        }
        (lo, hi, worst, c.applied_share())
    }

    #[test]
    fn a_slow_peer_is_shed_for_although_our_capture_queue_is_empty() {
        let t = TARGET.as_secs_f64();
        for factor in [1.5, 3.0] {
            let need = 1.0 - 1.0 / factor;
            // (round trip, ACK period, how far the share may stray, worst delay allowed)
            for (rtt, ack, stray, bound) in [
                (0.001, 0.001, 0.05, 2.0 * t),
                (0.02, 0.001, 0.05, 2.0 * t),
                (0.05, 0.005, 0.05, 2.0 * t),
                (0.1, 0.02, 0.15, 4.0 * t),
            ] {
                let (lo, hi, worst, _) = simulate_peer(factor, rtt, ack, 10.0);
                let at = format!("{factor}×, rtt {rtt}: share {lo:.2}..{hi:.2}, needs {need:.2}");
                assert!(lo > need - stray && hi < need + stray, "{at}");
                assert!(worst < bound, "{at}: worst delay {worst}");
            }
        }
        // Beyond the cap the peer's queue grows: a 4× slower receiver is out of our hands.
        let (lo, _, _, _) = simulate_peer(10.0, 0.02, 0.001, 5.0);
        assert_eq!(lo, PEER_MAX_SHARE);
    }

    /// What the event loop's receive coalescing treats as overload: our capture queue's
    /// own share, not the one a peer's reported delay steers.
    #[test]
    fn only_our_own_queue_counts_as_capture_overload() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let run = |c: &mut ShedControl, from: u32, ours: Duration, peer: Duration| {
            for i in from..from + 100 {
                let now = t0 + INTERVAL * i;
                for _ in 0..100 {
                    c.on_captured(now, ours, true);
                }
                c.on_peer_delay(peer);
                c.poll_busy(now);
            }
        };
        run(&mut c, 1, Duration::ZERO, TARGET * 3);
        assert!(c.applied_share() > 0.1, "{}", c.applied_share());
        assert!(!c.capture_overloaded());
        run(&mut c, 101, TARGET * 3, Duration::ZERO);
        assert!(c.capture_overloaded());
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
            c.poll_busy(now);
        }
        assert_eq!(c.applied_share(), 0.0);
        // And a report counts for the interval it came in only.
        c.on_peer_delay(Duration::from_millis(200));
        now += INTERVAL;
        c.poll_busy(now);
        assert_eq!(c.peer_delay, 0.0);
    }

    /// [`simulate`] with the gateway off the CPU for `stall` at the end of every `period`
    /// (1 s: real-time throttling): nothing read, no poll, no CPU time meanwhile. `seen`: the
    /// controller is told the CPU time (else it is given the wall clock, as if busy).
    /// Returns the largest rise of the share from before a stall to the first poll after
    /// it, the share of what arrived that was shed, and the worst delay.
    fn simulate_stalls(
        offered: f64,
        capacity: f64,
        (stall, period): (f64, f64),
        seen: bool,
    ) -> (f64, f64, f64) {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let (mut queue, mut cpu, mut worst) = (0.0f64, Duration::ZERO, 0.0f64);
        let (mut arrived, mut shed, mut before, mut jump) = (0.0, 0.0, 0.0, 0.0f64);
        let dt = 0.001;
        for i in 0..3000 {
            let t = i as f64 * dt;
            let now = t0 + Duration::from_secs_f64(t);
            let share = c.applied_share();
            arrived += offered * dt;
            shed += offered * share * dt;
            let phase = t % period;
            if phase >= period - stall {
                queue += offered * (1.0 - share) * dt;
                continue;
            }
            cpu += Duration::from_secs_f64(dt);
            queue = (queue + (offered * (1.0 - share) - capacity) * dt).max(0.0);
            let delay = queue / capacity;
            for _ in 0..(capacity * dt) as usize {
                c.on_captured(now, Duration::from_secs_f64(delay), true);
            }
            if queue == 0.0 {
                c.waits = 0;
            }
            let busy = Duration::from_secs_f64(t);
            c.poll(now, || if seen { cpu } else { busy });
            worst = worst.max(delay);
            if phase < period - stall && phase >= period - stall - dt {
                before = c.applied_share();
            } else if t > period && phase < 0.015 {
                jump = jump.max(c.applied_share() - before);
            }
        }
        (jump, shed / arrived, worst)
    }

    /// A stall is not an overload: what queued meanwhile is drained, or dropped by the late
    /// bound, not answered with a burst of shedding as the gateway resumes.
    #[test]
    fn a_stall_is_not_answered_with_a_burst_of_shedding() {
        let stall = 0.05;
        // Below capacity (1.5× the offered load), the backlog of a stall drains in 0.1 s:
        // nothing need be shed.
        let (jump, shed, worst) = simulate_stalls(60_000.0, 90_000.0, (stall, 1.0), true);
        let (blind_jump, blind_shed, _) = simulate_stalls(60_000.0, 90_000.0, (stall, 1.0), false);
        let at = format!("jump {jump}, shed {shed}; blind: jump {blind_jump}, shed {blind_shed}");
        assert!(jump < 0.05 && shed < 0.001, "{at}");
        assert!(blind_jump > 0.3 && blind_shed > 0.01, "{at}");
        assert!(worst < stall + 0.002, "worst delay {worst}");
        // Under a 2× overload the backlog stays (arrivals match the capacity): only the
        // proportional term acts on it, ≈ 0.1 in the two polls that read it, not the
        // growth term's ≈ 0.5 on top.
        let (jump, shed, _) = simulate_stalls(200_000.0, 100_000.0, (stall, 1.0), true);
        let (blind_jump, blind_shed, _) =
            simulate_stalls(200_000.0, 100_000.0, (stall, 1.0), false);
        let at =
            format!("2×: jump {jump}, shed {shed}; blind: jump {blind_jump}, shed {blind_shed}");
        assert!(jump < 0.15 && blind_jump > 0.3, "{at}");
    }

    /// Off the CPU again and again (half of every 20 ms: a thread of higher priority on
    /// the core) is contention, not a stall: shed as if the controller did not know.
    #[test]
    fn contention_for_the_cpu_is_shed_for() {
        let off = (0.01, 0.02);
        // 1.5× what the gateway manages in the half it runs.
        let (_, shed, worst) = simulate_stalls(75_000.0, 100_000.0, off, true);
        let (_, blind_shed, blind_worst) = simulate_stalls(75_000.0, 100_000.0, off, false);
        let at = format!("shed {shed}, worst {worst}; blind: {blind_shed}, {blind_worst}");
        assert!(shed > 0.25 && (shed - blind_shed).abs() < 0.03, "{at}");
        assert!(worst < blind_worst + 0.005, "{at}");
    }

    /// A gateway that sleeps between sparse packets is off the CPU most of every interval;
    /// its waits jitter by microseconds. No stall in that.
    #[test]
    fn sparse_packets_are_no_stall() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        let cpu = Duration::from_micros(50);
        for i in 1..=100u32 {
            let now = t0 + INTERVAL * i;
            c.on_captured(now, Duration::from_micros(10 + u64::from(i % 7) * 5), true);
            c.poll(now, || cpu * i);
        }
        assert_eq!(c.stalls(), 0);
        // A 30 ms stall is one.
        let now = t0 + INTERVAL * 104;
        c.on_captured(now, Duration::from_millis(30), true);
        c.poll(now, || cpu * 104);
        assert_eq!(c.stalls(), 1);
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
            c.poll_busy(now);
        }
        assert!(c.applied_share() > 0.5, "{}", c.applied_share());
        // Each matching packet let through stood for share/(1-share) shed ones.
        let before = c.shed_estimate();
        assert!(before > 0);
        for _ in 0..200 {
            now += INTERVAL;
            c.poll_busy(now);
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
            c.poll_busy(now);
        }
        assert_eq!(c.applied_share(), 0.0);
    }

    #[test]
    fn a_small_target_lets_go_quickly_after_the_overload() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, Duration::from_millis(1));
        (c.capture.share, c.applied) = (0.99, 0.99);
        let mut now = t0;
        // Busy but no longer behind: every packet read at once, 20 intervals (200 ms).
        for _ in 0..20 {
            for _ in 0..100 {
                c.on_captured(now, Duration::ZERO, true);
            }
            now += INTERVAL;
            c.poll_busy(now);
        }
        assert!(c.applied_share() < 0.15, "{}", c.applied_share());
    }

    #[test]
    fn a_gateway_that_slept_through_the_end_of_an_overload_does_not_keep_shedding() {
        let t0 = Instant::now();
        let mut c = ShedControl::new(t0, TARGET);
        c.capture.share = 0.6;
        c.applied = 0.6;
        // The peer's share too (the overload was the peer's).
        c.peer.share = 0.75;
        // One packet after a second of silence: the share is gone.
        c.on_captured(t0 + Duration::from_secs(1), Duration::ZERO, true);
        assert_eq!(c.poll_busy(t0 + Duration::from_secs(1)), Some(0.0));
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
        c.capture = Pie {
            share: 0.75,
            prev: TARGET.as_secs_f64(),
        };
        let t1 = t0 + INTERVAL;
        c.on_captured(t1, TARGET, true);
        assert_eq!(c.poll_busy(t1), Some(0.75));
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

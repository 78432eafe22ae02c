//! The real-time duty cycle: a gateway under `SCHED_FIFO`/`SCHED_RR` that has run for
//! [`MAX_AWAKE`] without sleeping rests for [`REST`].
//!
//! Why: a real-time thread is never preempted by ordinary ones. Under a sustained overload
//! the event loop always has more to read, so it would hold its core until the kernel's
//! real-time throttling (`sched_rt_runtime_us`, 950 ms of every second by default) stops it
//! for the rest of the second: a 50 ms stall, the whole age budget of a state change, once
//! a second. Resting 250 µs every 5 ms gives the same 95 % in slices that the socket
//! buffers absorb, keeps the loop below the throttle, and lets the ordinary threads of its
//! core run meanwhile: `ksoftirqd`, which delivers the gateway's own packets once the
//! kernel defers network work to it, and sshd. Pure: the driver reports its waits and asks.

use std::time::{Duration, Instant};

/// Longest run without sleeping.
pub const MAX_AWAKE: Duration = Duration::from_millis(5);
/// The rest after it.
pub const REST: Duration = Duration::from_micros(250);
/// A wait at least this long slept (the thread was descheduled); a shorter one found its
/// socket ready and returned at once.
pub const SLEPT: Duration = Duration::from_micros(50);

/// Whether the calling thread runs under a real-time policy (set by `[node] scheduler`,
/// systemd's `CPUSchedulingPolicy=` or `chrt`).
pub fn is_realtime() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain getter; 0 is the calling thread.
        let p = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
        p == libc::SCHED_FIFO || p == libc::SCHED_RR
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[derive(Debug, Clone)]
pub struct Duty {
    /// Off for an ordinary thread: the scheduler preempts it.
    on: bool,
    awake_since: Instant,
    /// Rests taken (status counter `realtime_rests`).
    pub rests: u64,
}

impl Duty {
    pub fn new(now: Instant, realtime: bool) -> Duty {
        Duty {
            on: realtime,
            awake_since: now,
            rests: 0,
        }
    }

    /// The loop waited (for readiness, a timer or a coalescing pause) from `start` to `now`.
    pub fn on_wait(&mut self, start: Instant, now: Instant) {
        if now.saturating_duration_since(start) >= SLEPT {
            self.awake_since = now;
        }
    }

    /// The rest due at `now`, if any; the caller sleeps it and reports the wait.
    pub fn rest(&mut self, now: Instant) -> Option<Duration> {
        if !self.on || now.saturating_duration_since(self.awake_since) < MAX_AWAKE {
            return None;
        }
        self.rests += 1;
        Some(REST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn rests_only_after_running_max_awake_without_sleeping() {
        let t0 = Instant::now();
        let mut d = Duty::new(t0, true);
        assert_eq!(d.rest(t0 + MAX_AWAKE - us(1)), None);
        // Waits that returned at once (a ready socket) do not count as sleep.
        d.on_wait(t0 + us(1000), t0 + us(1010));
        assert_eq!(d.rest(t0 + MAX_AWAKE), Some(REST));
        // The rest itself is a sleep: the next is due a whole MAX_AWAKE later.
        let after = t0 + MAX_AWAKE + REST;
        d.on_wait(t0 + MAX_AWAKE, after);
        assert_eq!(d.rest(after + MAX_AWAKE - us(1)), None);
        // So is any wait of SLEPT or more.
        d.on_wait(after + us(4000), after + us(4000) + SLEPT);
        assert_eq!(d.rest(after + MAX_AWAKE + us(1)), None);
        assert_eq!(d.rests, 1);
    }

    #[test]
    fn an_ordinary_thread_never_rests() {
        let t0 = Instant::now();
        let mut d = Duty::new(t0, false);
        assert_eq!(d.rest(t0 + Duration::from_secs(10)), None);
        assert_eq!(d.rests, 0);
    }
}

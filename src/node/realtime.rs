//! The real-time duty cycle: a gateway under `SCHED_FIFO`/`SCHED_RR` whose thread was on the
//! CPU for at least [`BUSY`] of the last [`WINDOW`] rests for [`REST`].
//!
//! Why: a real-time thread is never preempted by ordinary ones. Under a sustained overload
//! the event loop always has more to read, so it would hold its core until the kernel's
//! real-time throttling (`sched_rt_runtime_us`, 950 ms of every second by default) stops it
//! for the rest of the second: a 50 ms stall, the whole age budget of a state change, once
//! a second. Resting 300 µs after 5 ms on the CPU keeps it at or below ≈ 94 %, under that
//! throttle, in pauses the socket buffers absorb, and gives the ordinary threads of its
//! core (sshd, `ksoftirqd` once the kernel defers network work to it) a slot every 5 ms.
//!
//! Busy is measured as the thread's CPU time, not as time since the loop last waited: the
//! control socket's and `/metrics`' tasks run on the same thread while the loop waits, so
//! a client hammering `/metrics` would otherwise look like sleep. Pure but for the clock:
//! the driver asks at the top of every round; the thread's clock is read once a window.

use std::time::{Duration, Instant};

/// The window over which the thread's CPU time is compared with the wall clock.
pub const WINDOW: Duration = Duration::from_millis(5);
/// Share of the window on the CPU from which the thread rests.
pub const BUSY: f64 = 0.9;
/// The rest.
pub const REST: Duration = Duration::from_micros(300);

/// Whether the calling thread runs under a real-time policy (set by `[node] scheduler`,
/// systemd's `CPUSchedulingPolicy=` or `chrt`).
pub fn is_realtime() -> bool {
    #[cfg(target_os = "linux")]
    {
        super::privdrop::current_policy().policy != crate::config::SchedPolicy::Other
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` outlives the call; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[derive(Debug, Clone)]
pub struct Duty {
    /// Off for an ordinary thread: the scheduler preempts it.
    on: bool,
    window_start: Instant,
    cpu_start: Duration,
    /// Rests taken (status counter `realtime_rests`).
    pub rests: u64,
}

impl Duty {
    pub fn new(now: Instant, cpu: Duration, realtime: bool) -> Duty {
        Duty {
            on: realtime,
            window_start: now,
            cpu_start: cpu,
            rests: 0,
        }
    }

    /// The rest due at `now`, if any (the caller sleeps it). `cpu` reads the thread's CPU
    /// time; it is called once a window at most.
    pub fn poll(&mut self, now: Instant, cpu: impl FnOnce() -> Duration) -> Option<Duration> {
        if !self.on {
            return None;
        }
        let wall = now.saturating_duration_since(self.window_start);
        if wall < WINDOW {
            return None;
        }
        let cpu = cpu();
        let used = cpu.saturating_sub(self.cpu_start);
        self.window_start = now;
        self.cpu_start = cpu;
        if used.as_secs_f64() < BUSY * wall.as_secs_f64() {
            return None;
        }
        self.rests += 1;
        Some(REST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rests_after_a_window_spent_on_the_cpu() {
        let t0 = Instant::now();
        let mut d = Duty::new(t0, ms(100), true);
        // Within a window the clock is not even read.
        assert_eq!(d.poll(t0 + ms(4), || unreachable!()), None);
        // 4.6 ms on the CPU of 5: rest.
        assert_eq!(
            d.poll(t0 + ms(5), || ms(100) + Duration::from_micros(4600)),
            Some(REST)
        );
        // The next window held the rest, then 3 ms of work in 5.3: no rest.
        let t1 = t0 + ms(5) + REST + ms(5);
        assert_eq!(d.poll(t1, || ms(108)), None);
        assert_eq!(d.rests, 1);
    }

    #[test]
    fn saturated_it_stays_under_the_kernels_real_time_budget() {
        // Always on the CPU but for the rests: the share of the CPU it keeps.
        let t0 = Instant::now();
        let (mut now, mut cpu) = (t0, Duration::ZERO);
        let mut d = Duty::new(now, cpu, true);
        for _ in 0..10_000 {
            // Rounds of 200 µs of work, the rest slept when due.
            now += Duration::from_micros(200);
            cpu += Duration::from_micros(200);
            if let Some(r) = d.poll(now, || cpu) {
                now += r;
            }
        }
        let share = cpu.as_secs_f64() / now.duration_since(t0).as_secs_f64();
        assert!(share < 0.95 && share > 0.9, "{share}");
    }

    #[test]
    fn an_ordinary_thread_never_rests() {
        let t0 = Instant::now();
        let mut d = Duty::new(t0, Duration::ZERO, false);
        assert_eq!(
            d.poll(t0 + Duration::from_secs(10), || unreachable!()),
            None
        );
        assert_eq!(d.rests, 0);
    }
}

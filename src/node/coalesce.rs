//! Receive coalescing under load, like a NIC's adaptive interrupt moderation: while the
//! gateway reads datagrams fast, it waits a short, fixed time before going back to its
//! sockets instead of sleeping until the next datagram wakes it.
//!
//! Why: at 50k+ datagrams/s an event loop that sleeps whenever its sockets are empty wakes
//! for every two or three datagrams, and each wakeup costs more than the datagrams it
//! handles (the scheduler switch, the waker's cross-CPU wakeup — a VM exit on a virtual
//! machine — and an `epoll_wait`; 16–22 % of each gateway's samples at 100k large packets
//! on the benchmark VM). A pause during which the kernel only queues lets the next
//! `recvmmsg` return a batch, and nobody is woken per datagram. Measured in
//! docs/PERFORMANCE-HISTORY.md (*Receive coalescing*): a third less CPU per gateway at 50k–100k
//! packets/s, and more delivered under overload.
//!
//! Below [`ENGAGE_RATE`] nothing changes: a lone packet is relayed in the wakeup that
//! received it, so the latency of a quiet or moderately loaded path keeps no timer in it.
//! Pure: the driver reports what each round read and asks whether to pause.

use std::time::{Duration, Instant};

/// Datagrams read per second (both sockets) from which the driver pauses: above what the
/// latency targets are set for (5k and 20k packets/s), where a wakeup per datagram starts
/// to cost a sizeable share of a core.
pub const ENGAGE_RATE: f64 = 40_000.0;
/// The rate is measured over windows this long: it follows a load change within a few
/// milliseconds, and a window holds enough datagrams at the engage rate (80) to mean it.
pub const WINDOW: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct RxCoalesce {
    /// The pause; `None` turns coalescing off.
    wait: Option<Duration>,
    window_start: Instant,
    read: u64,
    /// Datagrams per second over the last whole window.
    rate: f64,
    /// Pauses taken so far (status counter `rx_coalesce_pauses`).
    pauses: u64,
}

impl RxCoalesce {
    pub fn new(now: Instant, wait: Option<Duration>) -> RxCoalesce {
        RxCoalesce {
            wait,
            window_start: now,
            read: 0,
            rate: 0.0,
            pauses: 0,
        }
    }

    /// A round at `now` read `read` datagrams.
    pub fn on_round(&mut self, now: Instant, read: u64) {
        self.read += read;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // A window the loop slept through (an idle path) gives a low rate: off at once.
            self.rate = self.read as f64 / elapsed.as_secs_f64();
            self.read = 0;
            self.window_start = now;
        }
    }

    /// The sockets are drained: how long to wait before looking at them again instead of
    /// sleeping until readiness (`None`: sleep as usual).
    pub fn pause(&mut self) -> Option<Duration> {
        let wait = self.wait.filter(|_| self.rate >= ENGAGE_RATE)?;
        self.pauses += 1;
        Some(wait)
    }

    /// `[node] rx_coalesce_us` changed (SIGHUP).
    pub fn set_wait(&mut self, wait: Option<Duration>) {
        self.wait = wait;
    }

    pub fn pauses(&self) -> u64 {
        self.pauses
    }
}

/// Make this thread's timed sleeps precise to a few microseconds. The default timer slack
/// (50 µs) would stretch a 100 µs pause by half; the gateway is no battery-powered laptop.
pub fn precise_timers() {
    const SLACK_NS: libc::c_ulong = 5_000;
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, SLACK_NS) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_RX_COALESCE;

    /// Rounds every `gap`, each reading `per_round`, for `total`; returns the pauses asked.
    fn drive(
        c: &mut RxCoalesce,
        t: &mut Instant,
        gap: Duration,
        per_round: u64,
        total: Duration,
    ) -> u64 {
        let (start, before) = (*t, c.pauses());
        while *t - start < total {
            *t += gap;
            c.on_round(*t, per_round);
            c.pause();
        }
        c.pauses() - before
    }

    #[test]
    fn pauses_only_while_the_rate_is_above_the_engage_rate() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let ms10 = Duration::from_millis(10);
        // 20k/s, one datagram a round: never.
        assert_eq!(drive(&mut c, &mut t, Duration::from_micros(50), 1, ms10), 0);
        // 100k/s in rounds of 10: from the first whole window on, every round.
        let n = drive(&mut c, &mut t, Duration::from_micros(100), 10, ms10);
        assert!((80..=100).contains(&n), "{n}");
        // Back to 20k/s: off within a window and a round.
        drive(
            &mut c,
            &mut t,
            Duration::from_micros(50),
            1,
            Duration::from_millis(3),
        );
        assert_eq!(drive(&mut c, &mut t, Duration::from_micros(50), 1, ms10), 0);
    }

    #[test]
    fn a_loop_that_slept_does_not_pause_on_its_next_packet() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        drive(
            &mut c,
            &mut t,
            Duration::from_micros(100),
            10,
            Duration::from_millis(5),
        );
        assert!(c.pause().is_some());
        // A second of silence, then one datagram: the window spans the silence.
        t += Duration::from_secs(1);
        c.on_round(t, 1);
        assert_eq!(c.pause(), None);
    }

    #[test]
    fn off_never_pauses_and_a_reload_turns_it_on() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, None);
        let ms10 = Duration::from_millis(10);
        assert_eq!(
            drive(&mut c, &mut t, Duration::from_micros(10), 10, ms10),
            0
        );
        c.set_wait(Some(Duration::from_micros(30)));
        assert_eq!(c.pause(), Some(Duration::from_micros(30)));
    }
}

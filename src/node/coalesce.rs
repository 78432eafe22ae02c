//! Receive coalescing under load, like a NIC's adaptive interrupt moderation: while the
//! gateway reads datagrams fast, it waits a short, fixed time before going back to its
//! sockets instead of sleeping until the next datagram wakes it — where that is measured to
//! save CPU.
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
//! Why measured: the pause is a timer, and where a timer costs what a wakeup costs (a VM
//! whose halted vCPU is woken either way) pausing saves little and adds the pause to every
//! packet's latency — 0.3–0.7 ms at p50 at 50k on two later VMs (docs/PERFORMANCE.md). So
//! when the rate first passes [`ENGAGE_RATE`] a trial runs [`PHASES`] [`PHASE`]s with and
//! without pauses, compares the thread's CPU time per datagram read, and keeps pausing only
//! if that saves at least [`MIN_SAVING`]. The thread's own time is what can be measured:
//! the cross-CPU wakeups its wakers pay are not in it, so a trial sees less than the whole
//! saving (where pausing saved a third of each gateway's CPU, most of it was the gateway's
//! own switch-in: 21.5 % of its samples). The decision holds for [`HOLD`], or until the
//! rate leaves [`RATE_BAND`] of the trial's; then the next fast stretch is measured again
//! (the load, the host and its neighbours change).
//!
//! While the gateway sheds its capture for its own queue's delay it pauses whatever a
//! trial said: that delay is at its target then (milliseconds), the pause adds nothing to
//! it, and a batch per wakeup can only deliver more.
//!
//! Below [`ENGAGE_RATE`] nothing changes: a lone packet is relayed in the wakeup that
//! received it, so the latency of a quiet or moderately loaded path keeps no timer in it.
//! Pure: the driver reports what each round read (and, at phase ends, the thread's CPU
//! time) and asks whether to pause.

use std::time::{Duration, Instant};

/// Datagrams read per second (both sockets) from which the driver pauses: above what the
/// latency targets are set for (5k and 20k packets/s), where a wakeup per datagram starts
/// to cost a sizeable share of a core.
pub const ENGAGE_RATE: f64 = 40_000.0;
/// The rate is measured over windows this long: it follows a load change within a few
/// milliseconds, and a window holds enough datagrams at the engage rate (80) to mean it.
pub const WINDOW: Duration = Duration::from_millis(2);
/// One phase of a trial: at the engage rate 4,000 datagrams, tens of milliseconds of CPU.
pub const PHASE: Duration = Duration::from_millis(100);
/// Phases per trial, with and without pauses in the order with, without, without, with,
/// so that a load drifting steadily during the trial weighs on both sides alike (a trial
/// starts as the rate crosses [`ENGAGE_RATE`], often on a ramp).
pub const PHASES: u32 = 4;
/// The share of CPU per datagram pausing must save to be kept: at the VM where it was
/// chosen it saved 40 %; on one where it saves little, trials measured 1–12 % at 50k
/// packets/s (where the 0.3 ms it adds at p50 buys little) and ≈ 13 % at 80k.
pub const MIN_SAVING: f64 = 0.10;
/// How long a decision holds. A trial where pausing does not pay costs its paused phases'
/// latency (2 × [`PHASE`]), under 1 % of the time at this spacing.
pub const HOLD: Duration = Duration::from_secs(30);
/// A decision holds only while the read rate (over [`PHASE`]s) stays within this factor of
/// the trial's: what pausing saves grows with the rate (on one VM 1–12 % at 50k packets/s,
/// ≈ 13 % at 80k), so a new load is measured anew.
pub const RATE_BAND: f64 = 1.5;

/// Whether trial phase `k` pauses: with, without, without, with.
fn pausing_phase(k: u32) -> bool {
    k == 0 || k + 1 == PHASES
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Reading slowly (or coalescing off): sleep until readiness.
    Idle,
    /// Measuring since `began`: phase `k` ([`pausing_phase`]) began at `start`, at thread
    /// CPU time `cpu` and with `read` datagrams counted in all; `cost` holds the CPU time
    /// and datagrams of the phases done, [pausing, not pausing].
    Trial {
        began: Instant,
        k: u32,
        start: Instant,
        cpu: Duration,
        read: u64,
        cost: [(Duration, u64); 2],
    },
    /// Decided until `until`, for loads near `rate` (datagrams/s during the trial); `mark`:
    /// when the current rate window began and the datagrams counted then.
    Hold {
        pause: bool,
        until: Instant,
        rate: f64,
        mark: (Instant, u64),
    },
}

#[derive(Debug, Clone)]
pub struct RxCoalesce {
    /// The pause; `None` turns coalescing off.
    wait: Option<Duration>,
    window_start: Instant,
    read: u64,
    /// Datagrams read in all (the trial's denominator).
    total: u64,
    /// Datagrams per second over the last whole window.
    rate: f64,
    mode: Mode,
    /// Pauses taken so far (status counter `rx_coalesce_pauses`).
    pauses: u64,
    /// Trials completed (status counter `rx_coalesce_trials`).
    trials: u64,
    /// The last trial's saving of CPU per datagram, in percent (negative: pausing cost).
    saving: f64,
    /// The last trial's decision (status gauge `rx_coalesce_on_now`).
    kept: bool,
    /// The gateway sheds (reported each round): pause whatever the trial said.
    overloaded: bool,
}

impl RxCoalesce {
    pub fn new(now: Instant, wait: Option<Duration>) -> RxCoalesce {
        RxCoalesce {
            wait,
            window_start: now,
            read: 0,
            total: 0,
            rate: 0.0,
            mode: Mode::Idle,
            pauses: 0,
            trials: 0,
            saving: 0.0,
            kept: false,
            overloaded: false,
        }
    }

    /// A round at `now` read `read` datagrams; `overloaded`: the gateway is shedding its
    /// capture. `cpu` reads the thread's CPU time; it is called only when a trial phase
    /// starts or ends.
    pub fn on_round(
        &mut self,
        now: Instant,
        read: u64,
        overloaded: bool,
        cpu: impl FnOnce() -> Duration,
    ) {
        self.overloaded = overloaded;
        self.read += read;
        self.total += read;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // A window the loop slept through (an idle path) gives a low rate: off at once.
            self.rate = self.read as f64 / elapsed.as_secs_f64();
            self.read = 0;
            self.window_start = now;
        }
        if self.wait.is_none() {
            self.mode = Mode::Idle;
            return;
        }
        let fast = self.rate >= ENGAGE_RATE;
        if overloaded {
            // Not a load to measure the pause by (see the module docs); a trial under way
            // is dropped and the next fast stretch below overload measured afresh.
            if matches!(self.mode, Mode::Trial { .. }) {
                self.mode = Mode::Idle;
            }
            return;
        }
        if let Mode::Hold {
            until,
            rate,
            ref mut mark,
            ..
        } = self.mode
        {
            let span = now.saturating_duration_since(mark.0);
            let mut moved = false;
            if !fast {
                // Slow stretches are not the load decided for: a window straddling one
                // and the return of the same load would look like a new rate.
                *mark = (now, self.total);
            } else if now < until && span >= PHASE {
                let r = (self.total - mark.1) as f64 / span.as_secs_f64();
                *mark = (now, self.total);
                moved = r > rate * RATE_BAND || r * RATE_BAND < rate;
            }
            if now < until && !moved {
                return;
            }
            self.mode = Mode::Idle;
        }
        let Mode::Trial {
            began,
            k,
            start,
            cpu: cpu0,
            read: read0,
            mut cost,
        } = self.mode
        else {
            if fast {
                self.mode = Mode::Trial {
                    began: now,
                    k: 0,
                    start: now,
                    cpu: cpu(),
                    read: self.total,
                    cost: [(Duration::ZERO, 0); 2],
                };
            }
            return;
        };
        let span = now.saturating_duration_since(start);
        if span < PHASE {
            return;
        }
        // The load fell away during the phase (judged on the phase's average: a single
        // slow window near the engage rate is noise): measure the next fast stretch afresh.
        if ((self.total - read0) as f64) < ENGAGE_RATE * span.as_secs_f64() {
            self.mode = Mode::Idle;
            return;
        }
        let c = cpu();
        let side = &mut cost[usize::from(!pausing_phase(k))];
        side.0 += c.saturating_sub(cpu0);
        side.1 += self.total - read0;
        if k + 1 < PHASES {
            self.mode = Mode::Trial {
                began,
                k: k + 1,
                start: now,
                cpu: c,
                read: self.total,
                cost,
            };
            return;
        }
        self.trials += 1;
        let per = |(t, n): (Duration, u64)| t.as_secs_f64() / n.max(1) as f64;
        let (with, without) = (per(cost[0]), per(cost[1]));
        self.saving = if without > 0.0 {
            (1.0 - with / without) * 100.0
        } else {
            0.0
        };
        self.kept = self.saving >= MIN_SAVING * 100.0;
        let trial = now.saturating_duration_since(began).as_secs_f64();
        self.mode = Mode::Hold {
            pause: self.kept,
            until: now + HOLD,
            rate: (cost[0].1 + cost[1].1) as f64 / trial.max(1e-9),
            mark: (now, self.total),
        };
    }

    /// The sockets are drained: how long to wait before looking at them again instead of
    /// sleeping until readiness (`None`: sleep as usual).
    pub fn pause(&mut self) -> Option<Duration> {
        let wait = self.wait.filter(|_| self.rate >= ENGAGE_RATE)?;
        let on = match self.mode {
            _ if self.overloaded => true,
            Mode::Trial { k, .. } => pausing_phase(k),
            Mode::Hold { pause, .. } => pause,
            Mode::Idle => false,
        };
        if !on {
            return None;
        }
        self.pauses += 1;
        Some(wait)
    }

    /// `[node] rx_coalesce_us` changed (SIGHUP): measured afresh.
    pub fn set_wait(&mut self, wait: Option<Duration>) {
        self.wait = wait;
        self.mode = Mode::Idle;
        (self.kept, self.saving) = (false, 0.0);
    }

    pub fn pauses(&self) -> u64 {
        self.pauses
    }

    pub fn trials(&self) -> u64 {
        self.trials
    }

    /// Whether the last trial kept pausing (status gauge `rx_coalesce_on_now`; it applies
    /// only while the rate is above [`ENGAGE_RATE`] and until the next trial decides).
    pub fn kept(&self) -> bool {
        self.kept
    }

    /// The last trial's saving of CPU per datagram, percent (negative: pausing cost more).
    pub fn saving_percent(&self) -> f64 {
        self.saving
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

    /// An event loop on a thread whose datagrams cost `paused` of CPU each after a pause and
    /// `woken` each after a wakeup, on a clock of its own.
    struct Sim {
        c: RxCoalesce,
        t: Instant,
        cpu: Duration,
        paused: Duration,
        woken: Duration,
        last_paused: bool,
        overloaded: bool,
    }

    const US100: Duration = Duration::from_micros(100);
    const SLOW: Duration = Duration::from_micros(50);

    impl Sim {
        fn new(paused_us: u64, woken_us: u64) -> Sim {
            Sim::with_wait(Some(DEFAULT_RX_COALESCE), paused_us, woken_us)
        }

        fn with_wait(wait: Option<Duration>, paused_us: u64, woken_us: u64) -> Sim {
            let t = Instant::now();
            Sim {
                c: RxCoalesce::new(t, wait),
                t,
                cpu: Duration::ZERO,
                paused: Duration::from_micros(paused_us),
                woken: Duration::from_micros(woken_us),
                last_paused: false,
                overloaded: false,
            }
        }

        /// Rounds every `gap` for `total`, round `i` reading `reads(i)`; returns the
        /// pauses asked.
        fn run_with(&mut self, gap: Duration, total: Duration, reads: impl Fn(u64) -> u64) -> u64 {
            let (start, before) = (self.t, self.c.pauses());
            let mut i = 0;
            while self.t - start < total {
                self.t += gap;
                let n = reads(i);
                i += 1;
                let each = if self.last_paused {
                    self.paused
                } else {
                    self.woken
                };
                self.cpu += each * n as u32;
                let cpu = self.cpu;
                self.c.on_round(self.t, n, self.overloaded, || cpu);
                self.last_paused = self.c.pause().is_some();
            }
            self.c.pauses() - before
        }

        /// Rounds every `gap`, each reading `per_round`, for `total`.
        fn run(&mut self, gap: Duration, per_round: u64, total: Duration) -> u64 {
            self.run_with(gap, total, |_| per_round)
        }

        /// Rounds every 100 µs, each reading `per_round` (10: 100k datagrams/s).
        fn fast(&mut self, per_round: u64, total: Duration) -> u64 {
            self.run(US100, per_round, total)
        }

        /// A whole trial at 100k datagrams/s, from the first window on.
        fn trial(&mut self) -> u64 {
            self.fast(10, PHASE * PHASES + WINDOW)
        }

        fn decided(&self) -> (u64, bool) {
            (self.c.trials(), self.c.kept())
        }
    }

    #[test]
    fn pauses_only_while_the_rate_is_above_the_engage_rate() {
        let mut s = Sim::new(5, 10);
        let ms10 = Duration::from_millis(10);
        // 20k/s, one datagram a round: never.
        assert_eq!(s.run(SLOW, 1, ms10), 0);
        // 100k/s in rounds of 10: from the first whole window on, every round (a trial
        // starts by pausing).
        let n = s.fast(10, ms10);
        assert!((80..=100).contains(&n), "{n}");
        // Back to 20k/s: off within a window and a round.
        s.run(SLOW, 1, Duration::from_millis(3));
        assert_eq!(s.run(SLOW, 1, ms10), 0);
    }

    #[test]
    fn pausing_is_kept_where_it_saves_cpu_and_dropped_where_it_does_not() {
        for (paused_us, woken_us, kept) in [
            (5, 10, true),
            (10, 10, false),
            (19, 20, false),
            (8, 10, true),
        ] {
            let mut s = Sim::new(paused_us, woken_us);
            // The trial: half of its rounds pause.
            let n = s.trial();
            assert!((1_900..=2_100).contains(&n), "{paused_us}/{woken_us}: {n}");
            let saving = s.c.saving_percent();
            assert_eq!(s.decided(), (1, kept), "{paused_us}/{woken_us}: {saving}");
            let expect = (1.0 - paused_us as f64 / woken_us as f64) * 100.0;
            assert!((saving - expect).abs() < 1.0, "{saving}");
            // Held: every round pauses, or none does.
            let n = s.fast(10, Duration::from_secs(1));
            assert_eq!(n, if kept { 10_000 } else { 0 });
            // After the hold, the next fast stretch is measured again.
            s.fast(10, HOLD);
            assert_eq!(s.c.trials(), 2);
        }
    }

    #[test]
    fn a_new_load_is_measured_anew() {
        let mut s = Sim::new(10, 10);
        // Decided at 100k/s: pausing saves nothing.
        s.trial();
        assert_eq!(s.decided(), (1, false));
        // ±30 % keeps the decision.
        let two = Duration::from_secs(2);
        assert_eq!(s.fast(13, two), 0);
        assert_eq!(s.fast(7, two), 0);
        assert_eq!(s.c.trials(), 1);
        // At twice the rate pausing saves half: a new trial within a phase keeps it.
        s.paused = Duration::from_micros(5);
        assert!(s.fast(20, two) > 0);
        assert_eq!(s.decided(), (2, true));
    }

    #[test]
    fn a_trial_pauses_in_its_first_and_last_phases() {
        let mut s = Sim::new(10, 10);
        // The first window (2 ms) is read before the rate is known.
        s.fast(10, WINDOW);
        let per_phase: Vec<u64> = (0..PHASES).map(|_| s.fast(10, PHASE)).collect();
        assert!(per_phase[0] >= 950 && per_phase[3] >= 950, "{per_phase:?}");
        assert!(per_phase[1] <= 50 && per_phase[2] <= 50, "{per_phase:?}");
    }

    #[test]
    fn a_load_near_the_engage_rate_completes_its_trial() {
        let mut s = Sim::new(5, 10);
        // 2 ms windows alternately at 30k and 60k datagrams/s (45k on average): a window
        // below the engage rate now and then does not end the trial.
        let jitter = |i: u64| if (i / 20) % 2 == 0 { 3 } else { 6 };
        s.run_with(US100, PHASE * (PHASES + 1), jitter);
        assert_eq!(s.decided(), (1, true));
    }

    #[test]
    fn a_slow_stretch_between_fast_ones_is_not_a_new_load() {
        let mut s = Sim::new(10, 10);
        s.trial();
        assert_eq!(s.c.trials(), 1);
        for _ in 0..5 {
            // Not a whole number of phases: a rate window straddles the slow stretch's end.
            s.fast(2, Duration::from_millis(1_050));
            s.fast(10, Duration::from_secs(1));
        }
        assert_eq!(s.c.trials(), 1);
        // A lasting fall to 60 % of the trial's rate (still fast) is a new load.
        s.fast(6, Duration::from_secs(1));
        assert_eq!(s.c.trials(), 2);
    }

    #[test]
    fn a_trial_the_load_leaves_decides_nothing() {
        let mut s = Sim::new(5, 10);
        s.fast(10, PHASE + PHASE / 2);
        // 20k/s for a while: the trial is dropped, not decided on half its phases.
        s.run(SLOW, 1, PHASE * 5);
        assert_eq!(s.decided(), (0, false));
        // Fast again: a whole new trial, starting with pauses.
        assert!(s.fast(10, PHASE / 2) > 0);
        s.fast(10, PHASE * PHASES);
        assert_eq!(s.decided(), (1, true));
    }

    #[test]
    fn an_overloaded_gateway_pauses_whatever_the_trial_said() {
        // Pausing saves nothing: dropped by the trial.
        let mut s = Sim::new(10, 10);
        s.trial();
        assert_eq!(s.decided(), (1, false));
        // Shedding: every drained round pauses.
        s.overloaded = true;
        assert_eq!(s.fast(10, Duration::from_secs(1)), 10_000);
        // Overload over: the held decision again.
        s.overloaded = false;
        assert_eq!(s.fast(10, Duration::from_secs(1)), 0);
        // A trial under way when overload begins is dropped, not decided on skewed phases.
        let mut s = Sim::new(10, 10);
        s.fast(10, PHASE + PHASE / 2);
        s.overloaded = true;
        s.fast(10, PHASE * PHASES);
        assert_eq!(s.c.trials(), 0);
        s.overloaded = false;
        s.fast(10, PHASE * (PHASES + 1));
        assert_eq!(s.c.trials(), 1);
        s.overloaded = true;
        // Below the engage rate (from its first whole window) nothing pauses, overloaded
        // or not.
        s.run(SLOW, 1, Duration::from_millis(3));
        assert_eq!(s.run(SLOW, 1, PHASE), 0);
    }

    #[test]
    fn a_loop_that_slept_does_not_pause_on_its_next_packet() {
        let mut s = Sim::new(5, 10);
        s.fast(10, Duration::from_millis(5));
        assert!(s.c.pause().is_some());
        // A second of silence, then one datagram: the window spans the silence.
        s.t += Duration::from_secs(1);
        s.c.on_round(s.t, 1, false, || s.cpu);
        assert_eq!(s.c.pause(), None);
    }

    #[test]
    fn off_never_pauses_and_a_reload_turns_it_on() {
        let mut s = Sim::with_wait(None, 5, 10);
        let fast = Duration::from_micros(10);
        assert_eq!(s.run(fast, 10, Duration::from_millis(10)), 0);
        s.c.set_wait(Some(Duration::from_micros(30)));
        // The next round starts a trial, which pauses first.
        s.t += fast;
        s.c.on_round(s.t, 10, false, || s.cpu);
        assert_eq!(s.c.pause(), Some(Duration::from_micros(30)));
    }
}

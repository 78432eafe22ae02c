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
    /// Measuring: phase `k` ([`pausing_phase`]) began at `start`, at thread CPU time `cpu`
    /// and with `read` datagrams counted in all.
    Trial {
        k: u32,
        start: Instant,
        cpu: Duration,
        read: u64,
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
    /// A trial's CPU time and datagrams: [pausing, not pausing].
    cost: [(Duration, u64); 2],
    /// When the trial under way began.
    trial_start: Instant,
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
            cost: [(Duration::ZERO, 0); 2],
            trial_start: now,
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
                moved = fast && (r > rate * RATE_BAND || r * RATE_BAND < rate);
            }
            if now < until && !moved {
                return;
            }
            self.mode = Mode::Idle;
        }
        match self.mode {
            Mode::Idle | Mode::Hold { .. } => {
                if fast {
                    self.cost = [(Duration::ZERO, 0); 2];
                    self.trial_start = now;
                    self.mode = Mode::Trial {
                        k: 0,
                        start: now,
                        cpu: cpu(),
                        read: self.total,
                    };
                }
            }
            Mode::Trial {
                k,
                start,
                cpu: cpu0,
                read: read0,
            } => {
                let span = now.saturating_duration_since(start);
                if span < PHASE {
                    return;
                }
                // The load fell away during the phase (judged on the phase's average: a
                // single slow window near the engage rate is noise): measure the next fast
                // stretch afresh.
                if ((self.total - read0) as f64) < ENGAGE_RATE * span.as_secs_f64() {
                    self.mode = Mode::Idle;
                    return;
                }
                let c = cpu();
                let side = &mut self.cost[usize::from(!pausing_phase(k))];
                side.0 += c.saturating_sub(cpu0);
                side.1 += self.total - read0;
                self.mode = if k + 1 < PHASES {
                    Mode::Trial {
                        k: k + 1,
                        start: now,
                        cpu: c,
                        read: self.total,
                    }
                } else {
                    self.trials += 1;
                    let per = |(t, n): (Duration, u64)| t.as_secs_f64() / n.max(1) as f64;
                    let (with, without) = (per(self.cost[0]), per(self.cost[1]));
                    self.saving = if without > 0.0 {
                        (1.0 - with / without) * 100.0
                    } else {
                        0.0
                    };
                    let n = self.cost[0].1 + self.cost[1].1;
                    let span = now.saturating_duration_since(self.trial_start);
                    self.kept = self.saving >= MIN_SAVING * 100.0;
                    Mode::Hold {
                        pause: self.kept,
                        until: now + HOLD,
                        rate: n as f64 / span.as_secs_f64().max(1e-9),
                        mark: (now, self.total),
                    }
                };
            }
        }
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

    /// A thread whose datagrams cost `paused` of CPU each after a pause and `woken` each
    /// after a wakeup.
    struct Load {
        cpu: Duration,
        paused: Duration,
        woken: Duration,
        last_paused: bool,
        overloaded: bool,
    }

    impl Load {
        fn new(paused_us: u64, woken_us: u64) -> Load {
            Load {
                cpu: Duration::ZERO,
                paused: Duration::from_micros(paused_us),
                woken: Duration::from_micros(woken_us),
                last_paused: false,
                overloaded: false,
            }
        }
    }

    /// Rounds every `gap`, each reading `per_round`, for `total`; returns the pauses asked.
    fn drive(
        c: &mut RxCoalesce,
        load: &mut Load,
        t: &mut Instant,
        gap: Duration,
        per_round: u64,
        total: Duration,
    ) -> u64 {
        drive_with(c, load, t, gap, total, |_| per_round)
    }

    /// Rounds every `gap` for `total`, round `i` reading `reads(i)`; returns the pauses.
    fn drive_with(
        c: &mut RxCoalesce,
        load: &mut Load,
        t: &mut Instant,
        gap: Duration,
        total: Duration,
        reads: impl Fn(u64) -> u64,
    ) -> u64 {
        let (start, before) = (*t, c.pauses());
        let mut i = 0;
        while *t - start < total {
            *t += gap;
            let n = reads(i);
            i += 1;
            let each = if load.last_paused {
                load.paused
            } else {
                load.woken
            };
            load.cpu += each * n as u32;
            let cpu = load.cpu;
            c.on_round(*t, n, load.overloaded, || cpu);
            load.last_paused = c.pause().is_some();
        }
        c.pauses() - before
    }

    const US100: Duration = Duration::from_micros(100);

    #[test]
    fn pauses_only_while_the_rate_is_above_the_engage_rate() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(5, 10);
        let ms10 = Duration::from_millis(10);
        // 20k/s, one datagram a round: never.
        let slow = Duration::from_micros(50);
        assert_eq!(drive(&mut c, &mut l, &mut t, slow, 1, ms10), 0);
        // 100k/s in rounds of 10: from the first whole window on, every round (a trial
        // starts by pausing).
        let n = drive(&mut c, &mut l, &mut t, US100, 10, ms10);
        assert!((80..=100).contains(&n), "{n}");
        // Back to 20k/s: off within a window and a round.
        drive(&mut c, &mut l, &mut t, slow, 1, Duration::from_millis(3));
        assert_eq!(drive(&mut c, &mut l, &mut t, slow, 1, ms10), 0);
    }

    #[test]
    fn pausing_is_kept_where_it_saves_cpu_and_dropped_where_it_does_not() {
        let phase = PHASE * PHASES;
        for (paused_us, woken_us, kept) in [
            (5, 10, true),
            (10, 10, false),
            (19, 20, false),
            (8, 10, true),
        ] {
            let mut t = Instant::now();
            let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
            let mut l = Load::new(paused_us, woken_us);
            // The trial: half of its rounds pause.
            let n = drive(&mut c, &mut l, &mut t, US100, 10, phase + WINDOW);
            assert!((1_900..=2_100).contains(&n), "{paused_us}/{woken_us}: {n}");
            assert_eq!(c.trials(), 1);
            assert_eq!(
                c.kept(),
                kept,
                "{paused_us}/{woken_us}: {}",
                c.saving_percent()
            );
            let expect = (1.0 - paused_us as f64 / woken_us as f64) * 100.0;
            assert!(
                (c.saving_percent() - expect).abs() < 1.0,
                "{}",
                c.saving_percent()
            );
            // Held: every round pauses, or none does.
            let n = drive(&mut c, &mut l, &mut t, US100, 10, Duration::from_secs(1));
            assert_eq!(n, if kept { 10_000 } else { 0 });
            // After the hold, the next fast stretch is measured again.
            drive(&mut c, &mut l, &mut t, US100, 10, HOLD);
            assert_eq!(c.trials(), 2);
        }
    }

    #[test]
    fn a_new_load_is_measured_anew() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(10, 10);
        // Decided at 100k/s: pausing saves nothing.
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * PHASES + WINDOW);
        assert_eq!((c.trials(), c.kept()), (1, false));
        // ±30 % keeps the decision.
        let two = Duration::from_secs(2);
        assert_eq!(drive(&mut c, &mut l, &mut t, US100, 13, two), 0);
        assert_eq!(drive(&mut c, &mut l, &mut t, US100, 7, two), 0);
        assert_eq!(c.trials(), 1);
        // At twice the rate pausing saves half: a new trial within a phase keeps it.
        l.paused = Duration::from_micros(5);
        assert!(drive(&mut c, &mut l, &mut t, US100, 20, two) > 0);
        assert_eq!((c.trials(), c.kept()), (2, true));
    }

    #[test]
    fn a_trial_pauses_in_its_first_and_last_phases() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(10, 10);
        // The first window (2 ms) is read before the rate is known.
        drive(&mut c, &mut l, &mut t, US100, 10, WINDOW);
        let per_phase: Vec<u64> = (0..PHASES)
            .map(|_| drive(&mut c, &mut l, &mut t, US100, 10, PHASE))
            .collect();
        assert!(per_phase[0] >= 950 && per_phase[3] >= 950, "{per_phase:?}");
        assert!(per_phase[1] <= 50 && per_phase[2] <= 50, "{per_phase:?}");
    }

    #[test]
    fn a_load_near_the_engage_rate_completes_its_trial() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(5, 10);
        // 2 ms windows alternately at 30k and 60k datagrams/s (45k on average): a window
        // below the engage rate now and then does not end the trial.
        let jitter = |i: u64| if (i / 20) % 2 == 0 { 3 } else { 6 };
        drive_with(&mut c, &mut l, &mut t, US100, PHASE * (PHASES + 1), jitter);
        assert_eq!((c.trials(), c.kept()), (1, true));
    }

    #[test]
    fn a_slow_stretch_between_fast_ones_is_not_a_new_load() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(10, 10);
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * PHASES + WINDOW);
        assert_eq!(c.trials(), 1);
        for _ in 0..5 {
            // Not a whole number of phases: a rate window straddles the slow stretch's end.
            drive(
                &mut c,
                &mut l,
                &mut t,
                US100,
                2,
                Duration::from_millis(1_050),
            );
            drive(&mut c, &mut l, &mut t, US100, 10, Duration::from_secs(1));
        }
        assert_eq!(c.trials(), 1);
        // A lasting fall to 60 % of the trial's rate (still fast) is a new load.
        drive(&mut c, &mut l, &mut t, US100, 6, Duration::from_secs(1));
        assert_eq!(c.trials(), 2);
    }

    #[test]
    fn a_trial_the_load_leaves_decides_nothing() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(5, 10);
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE + PHASE / 2);
        // 20k/s for a while: the trial is dropped, not decided on half its phases.
        drive(
            &mut c,
            &mut l,
            &mut t,
            Duration::from_micros(50),
            1,
            PHASE * 5,
        );
        assert_eq!((c.trials(), c.kept()), (0, false));
        // Fast again: a whole new trial, starting with pauses.
        assert!(drive(&mut c, &mut l, &mut t, US100, 10, PHASE / 2) > 0);
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * PHASES);
        assert_eq!((c.trials(), c.kept()), (1, true));
    }

    #[test]
    fn an_overloaded_gateway_pauses_whatever_the_trial_said() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        // Pausing saves nothing: dropped by the trial.
        let mut l = Load::new(10, 10);
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * PHASES + WINDOW);
        assert_eq!((c.trials(), c.kept()), (1, false));
        // Shedding: every drained round pauses.
        l.overloaded = true;
        let n = drive(&mut c, &mut l, &mut t, US100, 10, Duration::from_secs(1));
        assert_eq!(n, 10_000);
        // Overload over: the held decision again.
        l.overloaded = false;
        assert_eq!(
            drive(&mut c, &mut l, &mut t, US100, 10, Duration::from_secs(1)),
            0
        );
        // A trial under way when overload begins is dropped, not decided on skewed phases.
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE + PHASE / 2);
        l.overloaded = true;
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * PHASES);
        assert_eq!(c.trials(), 0);
        l.overloaded = false;
        drive(&mut c, &mut l, &mut t, US100, 10, PHASE * (PHASES + 1));
        assert_eq!(c.trials(), 1);
        l.overloaded = true;
        // Below the engage rate (from its first whole window) nothing pauses, overloaded
        // or not.
        let slow = Duration::from_micros(50);
        drive(&mut c, &mut l, &mut t, slow, 1, Duration::from_millis(3));
        assert_eq!(drive(&mut c, &mut l, &mut t, slow, 1, PHASE), 0);
    }

    #[test]
    fn a_loop_that_slept_does_not_pause_on_its_next_packet() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, Some(DEFAULT_RX_COALESCE));
        let mut l = Load::new(5, 10);
        drive(&mut c, &mut l, &mut t, US100, 10, Duration::from_millis(5));
        assert!(c.pause().is_some());
        // A second of silence, then one datagram: the window spans the silence.
        t += Duration::from_secs(1);
        c.on_round(t, 1, false, || l.cpu);
        assert_eq!(c.pause(), None);
    }

    #[test]
    fn off_never_pauses_and_a_reload_turns_it_on() {
        let mut t = Instant::now();
        let mut c = RxCoalesce::new(t, None);
        let mut l = Load::new(5, 10);
        let ms10 = Duration::from_millis(10);
        let fast = Duration::from_micros(10);
        assert_eq!(drive(&mut c, &mut l, &mut t, fast, 10, ms10), 0);
        c.set_wait(Some(Duration::from_micros(30)));
        // The next round starts a trial, which pauses first.
        t += fast;
        c.on_round(t, 10, false, || l.cpu);
        assert_eq!(c.pause(), Some(Duration::from_micros(30)));
    }
}

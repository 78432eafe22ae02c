//! A reconciliation sweep soon after shedding ends.
//!
//! Shedding (the capture filter's share, captured packets found late, packets that waited
//! too long for injection) drops compressed updates on pf's own rule that a newer update of
//! the same states follows a few packets later; a full capture buffer, a full injection
//! queue or a refused injection lose updates as well. For a state that stops changing, the
//! dropped update was its last: the peers (or our firewall) keep an older version until a
//! sweep compares the firewall's full dump with the mirror. The periodic sweep comes every
//! 10 s or longer (500 s at 1 M states), and a failover in between uses the stale version.
//! So once shedding has stopped for [`CALM`] the driver brings one sweep forward: the dump
//! carries the firewall's newest versions to the mirror and on to the peers, and the
//! firewall gets back what the mirror holds newer. Not during the shedding: a dump of the
//! whole table on top of an overload adds to it, and the repair would be overtaken by the
//! next dropped update anyway. At most one per sweep interval (the driver's: 10 s, longer
//! for big tables), so recurring bursts (or stalls, or a peer that keeps our injection
//! late) at most double the periodic sweeps' share of the sync link.
//!
//! Pure: the driver reports the shed total now and then and asks whether to sweep.

use std::time::{Duration, Instant};

/// How long no packet may have been shed before the shedding counts as over: long enough
/// that a sustained overload (shedding in every 10 ms interval) never looks calm.
pub const CALM: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct ShedRepair {
    /// The shed total last reported.
    seen: u64,
    /// When the total last changed (or the filter last dropped), while a sweep is owed.
    owed_since: Option<Instant>,
    last_sweep: Option<Instant>,
    /// Sweeps asked for so far (status counter `sweeps_after_shedding`).
    pub sweeps: u64,
}

impl ShedRepair {
    /// One look, at `now`:
    /// - `shed`: packets lost so far of the kinds counted; any change is new shedding (it
    ///   also falls, when a reload restarts the filter's estimate);
    /// - `shedding`: the capture filter drops now (its estimate grows in whole packets, so
    ///   a flat total alone does not mean it stopped);
    /// - `can_ask`: no bulk request is in flight (one sent during the shedding may predate
    ///   its last drop: the sweep stays owed until that one is answered);
    /// - `gap`: the least time between two such sweeps.
    ///
    /// True when the owed sweep is to be asked for now.
    pub fn poll(
        &mut self,
        now: Instant,
        shed: u64,
        shedding: bool,
        can_ask: bool,
        gap: Duration,
    ) -> bool {
        if shed != self.seen || shedding {
            self.seen = shed;
            self.owed_since = Some(now);
            return false;
        }
        let Some(t) = self.owed_since else {
            return false;
        };
        let calm = now.saturating_duration_since(t) >= CALM;
        let spaced = self
            .last_sweep
            .is_none_or(|s| now.saturating_duration_since(s) >= gap);
        if !(calm && spaced && can_ask) {
            return false;
        }
        (self.owed_since, self.last_sweep) = (None, Some(now));
        self.sweeps += 1;
        true
    }

    /// Whether a sweep is owed and not yet asked for.
    pub fn owed(&self) -> bool {
        self.owed_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(200);
    const GAP: Duration = Duration::from_secs(10);

    /// Poll every 200 ms (the driver's status cadence) for `d`, the shed total growing by
    /// `per_tick` each time; returns the polls that said sweep, as times since `t0`.
    fn run(
        r: &mut ShedRepair,
        t0: Instant,
        from: Duration,
        d: Duration,
        shed: &mut u64,
        per_tick: u64,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t = from;
        while t < from + d {
            *shed += per_tick;
            if r.poll(t0 + t, *shed, false, true, GAP) {
                out.push(t);
            }
            t += TICK;
        }
        out
    }

    #[test]
    fn one_sweep_once_shedding_has_stopped() {
        let (t0, mut r, mut shed) = (Instant::now(), ShedRepair::default(), 0);
        // Nothing shed: never.
        assert!(run(
            &mut r,
            t0,
            Duration::ZERO,
            Duration::from_secs(5),
            &mut shed,
            0
        )
        .is_empty());
        // A 3 s overload sheds in every poll: no sweep during it.
        let s = Duration::from_secs(5);
        assert!(run(&mut r, t0, s, Duration::from_secs(3), &mut shed, 100).is_empty());
        // Then calm: one sweep, CALM after the last growth, and no more.
        let calm = run(
            &mut r,
            t0,
            s + Duration::from_secs(3),
            Duration::from_secs(20),
            &mut shed,
            0,
        );
        let last_growth = s + Duration::from_secs(3) - TICK;
        assert_eq!(calm.len(), 1, "{calm:?}");
        assert!(
            calm[0] >= last_growth + CALM && calm[0] <= last_growth + CALM + TICK,
            "{calm:?}"
        );
        assert_eq!(r.sweeps, 1);
    }

    #[test]
    fn bursts_closer_than_the_gap_share_one_sweep_per_gap() {
        let (t0, mut r, mut shed) = (Instant::now(), ShedRepair::default(), 0);
        let mut sweeps = Vec::new();
        // A stall's worth of late packets every 2 s for 30 s.
        for k in 0..15u32 {
            let at = Duration::from_secs(2) * k;
            shed += 10;
            assert!(
                !r.poll(t0 + at, shed, false, true, GAP),
                "a sweep while shedding"
            );
            sweeps.extend(run(
                &mut r,
                t0,
                at + TICK,
                Duration::from_secs(2) - TICK,
                &mut shed,
                0,
            ));
        }
        assert!(sweeps.len() >= 2 && sweeps.len() <= 3, "{sweeps:?}");
        for w in sweeps.windows(2) {
            assert!(w[1] - w[0] >= GAP, "{sweeps:?}");
        }
        // What the gap held back is still owed, and comes once the gap has passed.
        let end = Duration::from_secs(30);
        let late = run(&mut r, t0, end, GAP + TICK, &mut shed, 0);
        assert_eq!(late.len(), 1, "{late:?}");
    }
    #[test]
    fn owed_while_the_filter_drops_or_a_request_is_in_flight() {
        let (t0, mut r) = (Instant::now(), ShedRepair::default());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!r.poll(at(0), 5, false, true, GAP));
        // The filter still drops although the estimate stands still: not calm.
        for ms in (200..2_000).step_by(200) {
            assert!(!r.poll(at(ms), 5, true, true, GAP), "at {ms} ms");
        }
        // Calm from 1.8 s on, but a bulk request is in flight until 4 s: still owed.
        for ms in (2_000..4_000).step_by(200) {
            assert!(!r.poll(at(ms), 5, false, false, GAP), "at {ms} ms");
            assert!(r.owed());
        }
        assert!(r.poll(at(4_000), 5, false, true, GAP));
        assert!(!r.owed());
        assert_eq!(r.sweeps, 1);
        // A reload restarts the filter's estimate: a smaller total is new shedding too.
        assert!(!r.poll(at(20_000), 2, false, true, GAP));
        assert!(r.owed());
        assert!(r.poll(at(20_600), 2, false, true, GAP));
    }
}

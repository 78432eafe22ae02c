//! Polling with deadlines: tests wait for conditions, never for fixed amounts of time.

use std::time::{Duration, Instant};

/// Poll `f` every `every` until it returns `Some`, or `Err(elapsed)` after `timeout`.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<(T, Duration), Duration> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() >= timeout {
            return Err(start.elapsed());
        }
        std::thread::sleep(every);
    }
}

/// Like [`poll`] every 50 ms, panicking with `what` (and `why()`, the last observation)
/// on timeout; returns the value and how long it took.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> (T, Duration) {
    match poll(timeout, Duration::from_millis(50), &mut f) {
        Ok(v) => v,
        Err(e) => panic!(
            "timed out after {:.1}s waiting for {what}; last seen: {}",
            e.as_secs_f64(),
            why()
        ),
    }
}

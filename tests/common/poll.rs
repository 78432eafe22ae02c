//! Polling with deadlines: tests wait for conditions, never for fixed amounts of time.

use std::time::{Duration, Instant};

/// Poll `f` every 50 ms until it returns `Some`; returns the value and how long it took.
/// `f` may describe what it saw in `last`, which is printed when `timeout` expires
/// (the test then fails with `what`).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut(&mut String) -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return (v, start.elapsed());
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1}s waiting for {what}; last seen: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

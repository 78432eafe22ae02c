//! Rate-limited logging for per-packet problems: an attacker (or a broken peer) must not
//! be able to flood the log, but the operator still learns that drops happen and how many.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line per reason per interval; the next line reports how many were suppressed.
pub struct LogLimiter {
    interval: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` if a line for `reason` may be logged now.
    pub fn allow(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((t, suppressed)) if now.duration_since(*t) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((t, suppressed)) => {
                let n = *suppressed;
                *t = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_reports_suppressed() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.allow("x", t), Some(0));
        assert_eq!(l.allow("x", t + Duration::from_millis(10)), None);
        assert_eq!(l.allow("x", t + Duration::from_millis(20)), None);
        assert_eq!(l.allow("y", t), Some(0));
        assert_eq!(l.allow("x", t + Duration::from_secs(2)), Some(2));
    }
}

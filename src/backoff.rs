//! Reconnect backoff, no I/O: exponential with jitter; the jitter is passed in. The edge's
//! connection pool and the XMPP component link both use it.

use std::time::Duration;

/// Exponential backoff with jitter for reconnecting to a peer after failures: `base · 2^n`,
/// capped at `max`, then scaled by a jitter factor in `[0.5, 1.0]` so peers do not retry in
/// step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before attempt `failures + 1`; `jitter` in `0.0..=1.0` (clamped) picks a point
    /// in the upper half of the interval.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << failures.min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX, 2.0), Duration::from_secs(300));
    }
}

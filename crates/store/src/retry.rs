//! The one backoff policy: exponential with jitter. Everything that
//! retries waits through it — the KurrentDB backend's re-subscriptions and
//! idempotency-claim waits here, and (re-exported by
//! `marketplace_consumers::retry`) every consumer loop, restart loop and
//! command retry above.

use std::time::Duration;

/// Exponential backoff: `initial`, doubled per attempt up to `max`, each
/// pause drawn uniformly from its upper half (`[d/2, d]`, "equal jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure (before jitter).
    pub initial: Duration,
    /// The longest pause (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// A policy from `initial` up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The pause after failure number `attempt` (from 1), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The pause after failure number `attempt` (from 1), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_the_jitter_stays_in_its_upper_half() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let ceilings: Vec<_> = (1..=5).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, vec![10, 20, 40, 50, 50]);
        assert_eq!(b.ceiling(1_000), Duration::from_millis(50));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = b.delay(3);
            assert!(
                d >= Duration::from_millis(20) && d <= Duration::from_millis(40),
                "{d:?}"
            );
            seen.insert(d.as_micros());
        }
        assert!(seen.len() > 10, "the delays are spread, not one value");
    }
}

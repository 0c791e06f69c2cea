//! The one retry policy: exponential backoff with jitter, and pauses that
//! end early on shutdown.
//!
//! Every loop that reads the log (projections, process managers, live
//! feeds) and every restart loop waits through [`Backoff`], so a Postgres
//! restart makes them all back off the same way, spread out by jitter rather
//! than reconnecting in lockstep.

use std::time::Duration;

use tokio::sync::watch;

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

/// Counts consecutive failures and sleeps through [`Backoff`]; a success
/// starts it over.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: Backoff,
    attempt: u32,
}

impl Retry {
    /// A fresh counter under `policy`.
    pub fn new(policy: Backoff) -> Self {
        Self { policy, attempt: 0 }
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Records a failure and sleeps its backoff; `true` if shutdown was
    /// asked for meanwhile.
    pub async fn failed(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        self.attempt = self.attempt.saturating_add(1);
        pause(self.policy.delay(self.attempt), shutdown).await
    }
}

/// Whether shutdown was asked for (or can no longer be: sender dropped).
pub fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Sleeps `d`; returns `true` at once if shutdown is asked for meanwhile.
pub async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if stopping(shutdown) {
        return true;
    }
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(d) => false,
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

    #[tokio::test]
    async fn a_pause_ends_at_once_on_shutdown() {
        let (tx, mut rx) = watch::channel(false);
        tx.send_replace(true);
        let started = std::time::Instant::now();
        assert!(pause(Duration::from_secs(60), &mut rx).await);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

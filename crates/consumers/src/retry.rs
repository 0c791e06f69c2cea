//! The one retry policy: exponential backoff with jitter ([`Backoff`],
//! from the store crate so its backends use it too), and pauses that end
//! early on shutdown.
//!
//! Every loop that reads the log (projections, process managers, live
//! feeds) and every restart loop waits through [`Backoff`], so a Postgres
//! restart makes them all back off the same way, spread out by jitter rather
//! than reconnecting in lockstep.

use std::time::Duration;

use tokio::sync::watch;

pub use marketplace_store::retry::Backoff;

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

    #[tokio::test]
    async fn a_pause_ends_at_once_on_shutdown() {
        let (tx, mut rx) = watch::channel(false);
        tx.send_replace(true);
        let started = std::time::Instant::now();
        assert!(pause(Duration::from_secs(60), &mut rx).await);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

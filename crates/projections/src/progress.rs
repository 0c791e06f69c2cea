//! How far each projection has come, for read-your-writes.
//!
//! The runtime publishes a projection's position after each committed batch;
//! a query carrying a consistency token waits (bounded) until every
//! projection it reads has passed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketplace_store::Position;
use tokio::sync::watch;

/// Shared, cheap-to-clone registry of projection positions in this process.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<Mutex<HashMap<String, watch::Sender<Position>>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress {
    fn sender(&self, name: &str) -> watch::Sender<Position> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| watch::channel(Position::START).0)
            .clone()
    }

    /// Records that `name` has committed everything up to `position`.
    pub fn advance(&self, name: &str, position: Position) {
        self.sender(name).send_modify(|p| *p = (*p).max(position));
    }

    /// Where `name` is.
    pub fn position(&self, name: &str) -> Position {
        *self.sender(name).borrow()
    }

    /// Waits until every projection in `names` has reached `token`, or
    /// `timeout` passes. Returns whether they all did.
    pub async fn wait_for(&self, names: &[&str], token: Position, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for name in names {
            let mut rx = self.sender(name).subscribe();
            let reached = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= token)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_every_named_projection_passes_the_token() {
        let p = Progress::default();
        p.advance("a", Position(10));
        assert!(
            p.wait_for(&["a"], Position(10), Duration::from_millis(1))
                .await
        );
        assert!(
            !p.wait_for(&["a", "b"], Position(10), Duration::from_millis(20))
                .await
        );
        let p2 = p.clone();
        let waiter = tokio::spawn(async move {
            p2.wait_for(&["a", "b"], Position(12), Duration::from_secs(30))
                .await
        });
        p.advance("b", Position(12));
        p.advance("a", Position(15));
        assert!(waiter.await.expect("join"));
        p.advance("a", Position(3));
        assert_eq!(p.position("a"), Position(15), "positions never go back");
    }
}

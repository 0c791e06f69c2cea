//! The fenced commit. One transaction first moves the build's checkpoint,
//! fenced on its position, its generation and `NOT retired`
//! ([`builds::advance_fenced`]), then folds the batch, then commits: rows
//! and checkpoint take effect together or not at all. A batch that fails is
//! committed again event by event, each with bounded, jittered retries, so
//! a failure is pinned to one event ([`Halt::Failed`]) and the events before
//! it still commit.

use std::borrow::Borrow;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use marketplace_consumers::retry::pause;
use marketplace_store::{Position, RecordedEvent};
use tokio::sync::watch;

use super::{decode_for, Generation, Projection, ProjectionError, ProjectorRuntime};
use crate::builds;

pub(super) use marketplace_consumers::runner::panic_message;

/// Why committing a batch stopped short.
pub(super) enum Halt {
    Fenced,
    /// The database connection failed: not the handler's fault.
    Unavailable,
    Shutdown,
    Failed {
        position: Position,
        error: String,
    },
}

impl ProjectorRuntime {
    /// Commits `batch` whole; if that fails, commits its events one by one,
    /// each with retries, so a failure is pinned to one event and the
    /// events before it still commit.
    pub(super) async fn commit_with_retry<R: Borrow<RecordedEvent> + Sync>(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        batch: &[R],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Position, Halt> {
        if batch.len() > 1 {
            match self.commit_batch(projection, generation, from, batch).await {
                Ok(p) => return Ok(p),
                Err(ProjectionError::Fenced { .. }) => return Err(Halt::Fenced),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(projection = projection.name(), error = %e, "database unavailable; standing by");
                    return Err(Halt::Unavailable);
                }
                Err(e) => {
                    tracing::warn!(projection = projection.name(), error = %e, events = batch.len(), "batch failed; folding its events one by one");
                }
            }
        }
        let mut at = from;
        for event in batch {
            at = self
                .commit_event_with_retry(projection, generation, at, event, shutdown)
                .await?;
        }
        Ok(at)
    }
    async fn commit_event_with_retry<R: Borrow<RecordedEvent> + Sync>(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        event: &R,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Position, Halt> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .commit_batch(projection, generation, from, std::slice::from_ref(event))
                .await
            {
                Ok(p) => return Ok(p),
                Err(ProjectionError::Fenced { .. }) => return Err(Halt::Fenced),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(projection = projection.name(), error = %e, "database unavailable; standing by");
                    return Err(Halt::Unavailable);
                }
                Err(e) if attempt < self.config.max_attempts.max(1) => {
                    let delay = self.config.retry.delay(attempt);
                    tracing::warn!(projection = projection.name(), position = %event.borrow().position, error = %e, attempt, ?delay, "event failed; retrying");
                    if pause(delay, shutdown).await {
                        return Err(Halt::Shutdown);
                    }
                }
                Err(e) => {
                    return Err(Halt::Failed {
                        position: event.borrow().position,
                        error: e.to_string(),
                    })
                }
            }
        }
    }
    /// Folds one batch into the build led under `generation` and moves its
    /// checkpoint from `from`, atomically, provided the build's row is still
    /// at `from` and at `generation` and not retired; otherwise nothing is
    /// applied and the result is [`ProjectionError::Fenced`]. The fold runs
    /// with the build's schema first on the `search_path`; a build that is
    /// not live commits asynchronously (`synchronous_commit = off`).
    pub async fn commit_batch<R: Borrow<RecordedEvent> + Sync>(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        batch: &[R],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = batch.last().map(Borrow::borrow) else {
            return Ok(from);
        };
        let mut tx = self.pool.begin().await?;
        // The fencing check goes first: it locks the row, so a takeover or a
        // switch waits for this commit, and a stale leader folds nothing.
        let moved =
            builds::advance_fenced(&mut tx, projection.name(), generation, from, last.position)
                .await?;
        if !moved {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        let events = decode_for(projection, batch)?;
        match AssertUnwindSafe(projection.apply(&mut tx, &events))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied?,
            Err(panic) => return Err(ProjectionError::Panicked(panic_message(panic.as_ref()))),
        }
        tx.commit().await?;
        Ok(last.position)
    }
}

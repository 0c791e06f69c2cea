//! Catch-up-then-live subscriptions, shared by every backend that can say
//! "something was committed up to position P" through a `watch` channel.
//!
//! The loop reads the log in pages from the last delivered position; when a
//! page comes back empty it parks on the watch channel until a commit is
//! announced (or a slow safety tick passes, in case a notification was lost
//! while a connection was being re-established). It never polls in a busy
//! loop, and because it always reads strictly after the last delivered
//! position from a backend whose `read_all` is final, it can neither skip nor
//! repeat an event across the catch-up/live hand-over.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, Stream};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::{Position, RecordedEvent};

/// What a subscription delivers: an event, owned or shared.
pub(crate) trait Delivered: Send + 'static {
    fn position(&self) -> Position;
}

impl Delivered for RecordedEvent {
    fn position(&self) -> Position {
        self.position
    }
}

impl Delivered for Arc<RecordedEvent> {
    fn position(&self) -> Position {
        self.as_ref().position
    }
}

/// Events fetched per page while catching up.
pub(crate) const PAGE: usize = 1_000;
/// How long a parked subscriber waits before re-reading without a notification.
const SAFETY_TICK: Duration = Duration::from_secs(5);

struct State<F, T> {
    read: F,
    next_from: Position,
    buffer: VecDeque<T>,
    commits: watch::Receiver<Position>,
    failed: bool,
}

/// Builds a subscription from a page reader and a commit announcement channel.
#[allow(clippy::type_complexity)]
pub(crate) fn catch_up_then_live<F, Fut, T>(
    read: F,
    from: Position,
    commits: watch::Receiver<Position>,
) -> Pin<Box<dyn Stream<Item = Result<T, StoreError>> + Send>>
where
    F: Fn(Position) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<T>, StoreError>> + Send + 'static,
    T: Delivered,
{
    let state = State {
        read,
        next_from: from,
        buffer: VecDeque::<T>::new(),
        commits,
        failed: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(event) = st.buffer.pop_front() {
                st.next_from = event.position();
                return Some((Ok(event), st));
            }
            // Mark the current announcement as seen *before* reading, so a
            // commit that lands between the read and the wait still wakes us.
            st.commits.borrow_and_update();
            match (st.read)(st.next_from).await {
                Ok(page) if !page.is_empty() => st.buffer.extend(page),
                Ok(_) => {
                    match tokio::time::timeout(SAFETY_TICK, st.commits.changed()).await {
                        // Announced, or the safety tick: read again.
                        Ok(Ok(())) | Err(_) => {}
                        // The store was dropped: the subscription ends.
                        Ok(Err(_)) => return None,
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "subscription read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

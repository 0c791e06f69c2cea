//! A subscription that never gives up: catch-up then live from a position,
//! in batches, resubscribing after the last delivered event whenever the log
//! fails (connection loss, a Postgres restart) with the shared [`Backoff`].
//!
//! Every consumer reads the log through [`Subscription::next_batch`]; the
//! only ways out of it are a batch, an idle tick (so a leader can check its
//! lock between batches) and shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use marketplace_store::{EventStore, Position, RecordedEvent, SharedEventStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::retry::{Backoff, Retry};

/// How events are gathered into a batch.
///
/// The gathering window adapts to the load. A batch whose first event came
/// after a quiet spell (the consumer waited at least `busy_wait` for it)
/// gathers for `idle_wait`: on a quiet log a command's events are handled
/// at once. A batch whose first event was already waiting, or came sooner,
/// is part of a busy stretch and gathers for `busy_wait`, so that under load
/// one transaction folds many commits' events instead of a few.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most events in one batch.
    pub max_events: usize,
    /// How long to keep gathering after the first event when it followed a
    /// quiet spell (zero: take only what is already there).
    pub idle_wait: Duration,
    /// How long to keep gathering after the first event while the log is
    /// busy (never shorter than `idle_wait`).
    pub busy_wait: Duration,
}

impl Batching {
    /// A window that does not adapt: always `wait`.
    pub fn fixed(max_events: usize, wait: Duration) -> Self {
        Self {
            max_events,
            idle_wait: wait,
            busy_wait: wait,
        }
    }

    /// The window for a batch whose consumer waited `waited` for its first
    /// event.
    pub fn window(&self, waited: Duration) -> Duration {
        let busy = self.busy_wait.max(self.idle_wait);
        if waited < busy {
            busy
        } else {
            self.idle_wait
        }
    }
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_events: 1_000,
            idle_wait: Duration::from_millis(5),
            busy_wait: Duration::from_millis(25),
        }
    }
}

/// What [`Subscription::next_batch`] came back with.
#[derive(Debug)]
pub enum Next {
    /// Events in log order, each after the last one delivered. They are
    /// shared with every other subscriber in this process: read them in
    /// place.
    Batch(Vec<Arc<RecordedEvent>>),
    /// Nothing arrived within the idle period.
    Idle,
    /// Shutdown was asked for.
    Stopped,
}

/// A self-healing subscription to the whole log.
pub struct Subscription {
    name: String,
    store: Arc<dyn EventStore>,
    after: Position,
    events: Option<SharedEventStream>,
    retry: Retry,
    failures: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription delivering the events after `after` (named `name`
    /// in logs).
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        after: Position,
        backoff: Backoff,
    ) -> Self {
        Self {
            name: name.into(),
            store,
            after,
            events: None,
            retry: Retry::new(backoff),
            failures: 0,
        }
    }

    /// A subscription from the log's head as it is now (retried until the
    /// store answers); `None` on shutdown.
    pub async fn from_head(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        backoff: Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Self> {
        let name = name.into();
        let mut retry = Retry::new(backoff);
        loop {
            match store.head().await {
                Ok(head) => return Some(Self::new(name, store, head, backoff)),
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "the event store is unreachable; retrying");
                    if retry.failed(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The last position delivered (or skipped to).
    pub fn position(&self) -> Position {
        self.after
    }

    /// How many times the log failed under this subscription.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Drops every event at or below `position` from now on (events a
    /// consumer already has by other means).
    pub fn skip_to(&mut self, position: Position) {
        self.after = self.after.max(position);
    }

    /// Starts over from just after `position` (after a consumer rolled
    /// back what it was given): the next batch resubscribes there.
    pub fn rewind_to(&mut self, position: Position) {
        self.after = position;
        self.events = None;
    }

    /// The next batch, an idle tick after `idle` without events (`None`:
    /// wait for events indefinitely), or shutdown. Never fails: a failing
    /// log is resubscribed after the last delivered event, with backoff.
    pub async fn next_batch(
        &mut self,
        batching: Batching,
        idle: Option<Duration>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Next {
        let idle_at = idle.map(|d| Instant::now() + d);
        loop {
            let Some(events) = self.events.as_mut() else {
                match self.store.subscribe_all_shared(self.after).await {
                    Ok(events) => self.events = Some(events),
                    Err(e) => {
                        if self.fail(&e.to_string(), shutdown).await {
                            return Next::Stopped;
                        }
                    }
                }
                continue;
            };
            let asked = Instant::now();
            let first = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Next::Stopped,
                _ = sleep_until(idle_at) => return Next::Idle,
                next = events.next() => next,
            };
            let mut batch = Vec::new();
            let mut failure = None;
            match first {
                Some(Ok(e)) => self.take(e, &mut batch),
                Some(Err(e)) => failure = Some(e.to_string()),
                None => failure = Some("the subscription ended".to_owned()),
            }
            if failure.is_none() {
                let window = batching.window(asked.elapsed());
                failure = self.gather(&mut batch, batching.max_events, window).await;
            }
            if let Some(error) = failure {
                self.events = None;
                if batch.is_empty() {
                    if self.fail(&error, shutdown).await {
                        return Next::Stopped;
                    }
                    continue;
                }
                tracing::warn!(consumer = %self.name, %error, "subscription failed; resubscribing after this batch");
            }
            if !batch.is_empty() {
                self.retry.reset();
                return Next::Batch(batch);
            }
        }
    }

    /// Adds what follows the first event, up to `max_events` or for
    /// `window` (zero: only what is already there); returns the error that
    /// cut the batch short, if any.
    async fn gather(
        &mut self,
        batch: &mut Vec<Arc<RecordedEvent>>,
        max_events: usize,
        window: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + window;
        while batch.len() < max_events.max(1) {
            let events = self.events.as_mut()?;
            let next = if window.is_zero() {
                match events.next().now_or_never() {
                    Some(next) => next,
                    None => return None,
                }
            } else {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(next) => next,
                    Err(_) => return None,
                }
            };
            match next {
                Some(Ok(e)) => self.take(e, batch),
                Some(Err(e)) => return Some(e.to_string()),
                None => return Some("the subscription ended".to_owned()),
            }
        }
        None
    }

    fn take(&mut self, event: Arc<RecordedEvent>, batch: &mut Vec<Arc<RecordedEvent>>) {
        if event.position > self.after {
            self.after = event.position;
            batch.push(event);
        }
    }

    /// Logs a failure and backs off; `true` on shutdown.
    async fn fail(&mut self, error: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        self.failures += 1;
        tracing::warn!(consumer = %self.name, %error, attempt = self.retry.attempts() + 1,
            "the log is unreachable; resubscribing after backoff");
        self.retry.failed(shutdown).await
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_short_after_a_quiet_spell_and_long_while_busy() {
        let b = Batching {
            max_events: 100,
            idle_wait: Duration::from_millis(5),
            busy_wait: Duration::from_millis(25),
        };
        assert_eq!(
            b.window(Duration::ZERO),
            b.busy_wait,
            "the event was waiting"
        );
        assert_eq!(
            b.window(Duration::from_millis(10)),
            b.busy_wait,
            "it came soon"
        );
        assert_eq!(
            b.window(Duration::from_secs(1)),
            b.idle_wait,
            "after a quiet spell"
        );
        let fixed = Batching::fixed(100, Duration::ZERO);
        assert_eq!(fixed.window(Duration::ZERO), Duration::ZERO);
        assert_eq!(fixed.window(Duration::from_secs(1)), Duration::ZERO);
        let odd = Batching {
            busy_wait: Duration::from_millis(1),
            ..b
        };
        assert_eq!(
            odd.window(Duration::ZERO),
            b.idle_wait,
            "never shorter when busy than when idle"
        );
    }
}

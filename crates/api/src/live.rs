//! Live updates for GraphQL subscriptions, fed from committed events.
//!
//! Two feeds per API process, each one catch-up subscription to the log
//! (whatever the number of WebSocket clients):
//!
//! - **Orders** (and payment intents, the same way). Every committed event of an `order-…` stream that someone
//!   watches bumps that order's [`watch`] channel with the event's position
//!   and trace context (an [`OrderChange`]).
//!   A subscriber waits until the orders read model has passed it, reads the
//!   order, and sends it if it changed. Watch channels coalesce: a burst of
//!   changes is seen as its latest state, never out of order.
//! - **Notifications.** For each batch of committed events that can notify
//!   (orders, accounts, reviews) while someone listens, the feed waits until
//!   the notifications read model has passed the batch, looks up the rows
//!   those events gave the listening accounts (notification ids are derived
//!   from the event id and the recipient), and sends each to its account's
//!   channel, in log order.
//!
//! Nothing is sent from uncommitted state: the feeds see only what the store
//! delivers after commit, and what they send is read from the read models
//! once those have folded it.
//!
//! While someone listens, each batch is decoded once into [`Envelope`]s and
//! the feeds match [`Event`] exhaustively (`clippy::wildcard_enum_match_arm`
//! is denied here), so a new aggregate is an error here until each feed
//! decides about it. An event that cannot be decoded is passed over: the
//! read models that read it stop at it, so nothing would come of it here.

#![deny(clippy::wildcard_enum_match_arm)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketplace_consumers::{Backoff, Batching, Envelope, Next, Subscription};
use marketplace_domain::Event;
use marketplace_projections::read_models::notifications;
use marketplace_projections::Progress;
use marketplace_store::{EventStore, Position, RecordedEvent};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Events taken from the log in one notification batch at most.
const BATCH: usize = 512;
/// Notifications buffered per account before a slow client misses some.
const PER_ACCOUNT_BUFFER: usize = 256;

/// The latest committed event of a watched order (or payment intent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderChange {
    /// Its position in the log.
    pub position: Position,
    /// The `traceparent` it was written with: what is sent because of it
    /// continues that trace.
    pub traceparent: Option<String>,
}

impl Default for OrderChange {
    fn default() -> Self {
        Self {
            position: Position::START,
            traceparent: None,
        }
    }
}

/// Handles to the live feeds. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    orders: Arc<Mutex<HashMap<Uuid, watch::Sender<OrderChange>>>>,
    /// Where the orders feed started following the log, once it has.
    orders_from: Arc<watch::Sender<Option<Position>>>,
    accounts: Arc<Mutex<HashMap<Uuid, broadcast::Sender<Arc<notifications::NotificationRow>>>>>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            orders: Arc::default(),
            orders_from: Arc::new(watch::channel(None).0),
            accounts: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Live {
    /// Starts both feeds from the head of the log as they first reach it
    /// (retrying while the store is unreachable); they stop when `stop`
    /// turns true.
    pub fn start(
        store: Arc<dyn EventStore>,
        pool: PgPool,
        progress: Progress,
        stop: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let live = Live::default();
        tasks.spawn(feed(
            "orders",
            store.clone(),
            stop.clone(),
            OrdersFeed(live.clone()),
        ));
        tasks.spawn(feed(
            "notifications",
            store,
            stop.clone(),
            NotificationsFeed {
                live: live.clone(),
                pool,
                progress,
                stop,
            },
        ));
        live
    }

    /// Watches one order (or payment intent): the receiver sees the
    /// position (and trace context) of each committed event of its stream
    /// from now on.
    pub fn watch_order(&self, id: Uuid) -> watch::Receiver<OrderChange> {
        let mut map = lock(&self.orders);
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(id)
            .or_insert_with(|| watch::channel(OrderChange::default()).0)
            .subscribe()
    }

    /// Waits (at most `timeout`) until the orders feed follows the log:
    /// from then on every committed order event reaches the watchers
    /// registered before it was dispatched. Returns whether it does.
    pub async fn orders_feed_running(&self, timeout: Duration) -> bool {
        let mut rx = self.orders_from.subscribe();
        let running = tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok());
        running
    }

    /// Listens to one account's new notifications.
    pub fn listen(
        &self,
        account: Uuid,
    ) -> broadcast::Receiver<Arc<notifications::NotificationRow>> {
        let mut map = lock(&self.accounts);
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(account)
            .or_insert_with(|| broadcast::channel(PER_ACCOUNT_BUFFER).0)
            .subscribe()
    }

    fn listening(&self) -> Vec<Uuid> {
        lock(&self.accounts)
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a feed does with each batch of committed events.
trait Sink: Send + 'static {
    /// The feed follows the log from `from` on.
    fn started(&mut self, _from: Position) {}

    /// Whether anyone listens: batches nobody listens to are not decoded.
    fn listening(&self) -> bool;

    fn deliver(&mut self, batch: Vec<Envelope>) -> impl std::future::Future<Output = ()> + Send;
}

/// Decodes `batch`, passing over (with a debug line) what cannot be decoded.
fn decoded(feed: &str, batch: &[Arc<RecordedEvent>]) -> Vec<Envelope> {
    batch
        .iter()
        .filter_map(|e| match Envelope::decode(e) {
            Ok(envelope) => Some(envelope),
            Err(failure) => {
                tracing::debug!(feed, %failure, "live feed: passed over an event it cannot decode");
                None
            }
        })
        .collect()
}

/// Follows the log from its head, batch by batch, through the shared
/// self-healing [`Subscription`] (which resubscribes after the last
/// delivered position, with the shared backoff, if the log fails).
async fn feed(
    name: &'static str,
    store: Arc<dyn EventStore>,
    mut stop: watch::Receiver<bool>,
    mut sink: impl Sink,
) {
    let Some(mut events) =
        Subscription::from_head(name, store, Backoff::default(), &mut stop).await
    else {
        return;
    };
    sink.started(events.position());
    let batching = Batching::fixed(BATCH, Duration::ZERO);
    loop {
        match events.next_batch(batching, None, &mut stop).await {
            Next::Stopped => return,
            Next::Idle => {}
            Next::Batch(batch) => {
                if sink.listening() {
                    sink.deliver(decoded(name, &batch)).await;
                }
            }
        }
    }
}

struct OrdersFeed(Live);

impl Sink for OrdersFeed {
    fn started(&mut self, from: Position) {
        self.0.orders_from.send_replace(Some(from));
    }

    fn listening(&self) -> bool {
        !lock(&self.0.orders).is_empty()
    }

    async fn deliver(&mut self, batch: Vec<Envelope>) {
        let map = lock(&self.0.orders);
        if map.is_empty() {
            return;
        }
        for event in batch {
            match &event.event {
                // Payment intents are followed like orders (their ids never
                // collide: both are UUIDs).
                Event::Order(_) | Event::Payment(_) => {
                    if let Some(tx) = map.get(&event.entity_id()) {
                        tx.send_replace(OrderChange {
                            position: event.position,
                            traceparent: event.metadata.traceparent.clone(),
                        });
                    }
                }
                Event::Account(_) | Event::EmailClaim(_) => {}
                Event::Listing(_) | Event::Review(_) | Event::Asset(_) => {}
            }
        }
    }
}

struct NotificationsFeed {
    live: Live,
    pool: PgPool,
    progress: Progress,
    stop: watch::Receiver<bool>,
}

impl Sink for NotificationsFeed {
    fn listening(&self) -> bool {
        lock(&self.live.accounts)
            .values()
            .any(|tx| tx.receiver_count() > 0)
    }

    async fn deliver(&mut self, batch: Vec<Envelope>) {
        let listening = self.live.listening();
        if listening.is_empty() {
            return;
        }
        let sources: Vec<&Envelope> = batch
            .iter()
            .filter(|e| notifications::can_notify(e.event.aggregate()))
            .collect();
        let Some(last) = sources.last().map(|e| e.position) else {
            return;
        };
        // Only what the read model has folded is sent.
        loop {
            let reached = self
                .progress
                .wait_for(&[notifications::NAME], last, Duration::from_secs(5))
                .await;
            if reached || *self.stop.borrow() {
                break;
            }
            tracing::warn!(position = %last, "live notifications: waiting for the read model");
        }
        let mut order = HashMap::new();
        let mut ids = Vec::with_capacity(sources.len() * listening.len());
        for (i, event) in sources.iter().enumerate() {
            for account in &listening {
                let id = notifications::notification_id(event.event_id, *account);
                order.insert(id, i);
                ids.push(id);
            }
        }
        let mut rows = match notifications::by_ids(&self.pool, &ids).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "live notifications: read failed; this batch is not sent");
                return;
            }
        };
        rows.sort_by_key(|r| order.get(&r.notification_id).copied());
        let accounts = lock(&self.live.accounts);
        for row in rows {
            if let Some(tx) = accounts.get(&row.account_id) {
                let _ = tx.send(Arc::new(row));
            }
        }
    }
}

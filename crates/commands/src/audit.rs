//! Reading the log for audits: a stream's history with the aggregate's
//! state after each event, and an aggregate as it stood at a moment.
//!
//! Events are decoded (and upcast) exactly as the live system decodes them,
//! and folded with the aggregates' own `evolve`. Secrets never leave: the
//! password hash in `account.registered` is redacted from the data shown,
//! and the account state does not serialise it. Personal fields arrive
//! opened by the store (`marketplace-keys`), or `null` once their owner
//! was erased: an audit shows them erased like every other read.

use chrono::{DateTime, Utc};
use marketplace_domain::account::Account;
use marketplace_domain::asset::Asset;
use marketplace_domain::email_claim::EmailClaim;
use marketplace_domain::listing::Listing;
use marketplace_domain::order::Order;
use marketplace_domain::payment::PaymentIntent;
use marketplace_domain::review::Review;
use marketplace_domain::{Aggregate, AggregateKind};
use marketplace_event_schemas::decode;
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError, StreamId};

/// Why an audit read failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error("could not decode {event_type} at revision {revision}: {reason}")]
    Decode {
        /// Its type.
        event_type: String,
        /// Its revision.
        revision: u64,
        /// Why.
        reason: String,
    },
    /// No aggregate type owns this stream category.
    #[error("unknown stream category {0:?}")]
    UnknownCategory(String),
}

/// One event of a history, with the state after it when asked for.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The event as stored, its data redacted of secrets.
    pub event: RecordedEvent,
    /// The aggregate state after it, as JSON.
    pub state_after: Option<serde_json::Value>,
}

/// Removes secrets from an event's data before it is shown.
pub fn redact(event_type: &str, mut data: serde_json::Value) -> serde_json::Value {
    if event_type == "account.registered" {
        if let Some(obj) = data.as_object_mut() {
            if obj.get("password_hash").is_some_and(|h| !h.is_null()) {
                obj.insert("password_hash".into(), "<redacted>".into());
            }
        }
    }
    data
}

fn fold<A: Aggregate>(events: &[RecordedEvent]) -> Result<Vec<serde_json::Value>, AuditError> {
    let mut state = A::default();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let event: A::Event =
            decode(&e.event_type, e.schema_version, e.data.clone()).map_err(|err| {
                AuditError::Decode {
                    event_type: e.event_type.clone(),
                    revision: e.revision,
                    reason: err.to_string(),
                }
            })?;
        state = state.evolve(&event);
        out.push(serde_json::to_value(&state).unwrap_or(serde_json::Value::Null));
    }
    Ok(out)
}

/// The state after each of `events` (all of one stream, in order).
pub fn states_after(
    category: &str,
    events: &[RecordedEvent],
) -> Result<Vec<serde_json::Value>, AuditError> {
    match AggregateKind::of_category(category) {
        Some(AggregateKind::Account) => fold::<Account>(events),
        Some(AggregateKind::Listing) => fold::<Listing>(events),
        Some(AggregateKind::Order) => fold::<Order>(events),
        Some(AggregateKind::Review) => fold::<Review>(events),
        Some(AggregateKind::EmailClaim) => fold::<EmailClaim>(events),
        Some(AggregateKind::Payment) => fold::<PaymentIntent>(events),
        Some(AggregateKind::Asset) => fold::<Asset>(events),
        None => Err(AuditError::UnknownCategory(category.to_owned())),
    }
}

/// Every event of `stream`, oldest first, optionally with the state after each.
pub async fn history(
    store: &dyn EventStore,
    stream: &StreamId,
    with_state: bool,
) -> Result<Vec<HistoryEntry>, AuditError> {
    let events = store.read_stream(stream, 0).await?;
    let states = if with_state {
        states_after(stream.category(), &events)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; events.len()]
    };
    Ok(events
        .into_iter()
        .zip(states)
        .map(|(mut event, state_after)| {
            event.data = redact(&event.event_type, event.data);
            HistoryEntry { event, state_after }
        })
        .collect())
}

/// Aggregate `A` with id `id` as it stood at `at`: its events recorded at or
/// before that moment, folded. `None` if it did not exist yet.
pub async fn as_of<A: Aggregate>(
    store: &dyn EventStore,
    id: uuid::Uuid,
    at: DateTime<Utc>,
) -> Result<Option<A>, AuditError> {
    let stream = crate::handler::stream_of::<A>(id);
    let events = store.read_stream(&stream, 0).await?;
    let mut state: Option<A> = None;
    for e in events.iter().take_while(|e| e.recorded_at() <= at) {
        let event: A::Event =
            decode(&e.event_type, e.schema_version, e.data.clone()).map_err(|err| {
                AuditError::Decode {
                    event_type: e.event_type.clone(),
                    revision: e.revision,
                    reason: err.to_string(),
                }
            })?;
        state = Some(state.unwrap_or_default().evolve(&event));
    }
    Ok(state)
}

/// A place where the log's tamper evidence does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The stream, when the break is inside one.
    pub stream: Option<StreamId>,
    /// The revision, when the break is at an event.
    pub revision: Option<u64>,
    /// The global position where it was noticed.
    pub position: Position,
    /// What is wrong, in words.
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.stream, self.revision) {
            (Some(s), Some(r)) => write!(
                f,
                "{s} revision {r} (position {}): {}",
                self.position, self.reason
            ),
            (Some(s), None) => write!(f, "{s} (position {}): {}", self.position, self.reason),
            _ => write!(f, "position {}: {}", self.position, self.reason),
        }
    }
}

/// Checks one event against the chain state of its stream; returns the
/// breaks and advances the state (on the stored hash, so one edit is
/// reported once, not for every later event).
fn check_event(
    e: &RecordedEvent,
    last: Option<&(u64, Option<String>)>,
    breaks: &mut Vec<ChainBreak>,
) -> (u64, Option<String>) {
    let at = |reason: String| ChainBreak {
        stream: Some(e.stream_id.clone()),
        revision: Some(e.revision),
        position: e.position,
        reason,
    };
    let (expected_revision, expected_prev) = match last {
        Some((r, h)) => (r + 1, h.clone()),
        None => (0, None),
    };
    if e.revision != expected_revision {
        breaks.push(at(format!(
            "expected revision {expected_revision}: events {expected_revision}..{} are missing (deleted?)",
            e.revision.saturating_sub(1)
        )));
    } else if e.metadata.prev_hash != expected_prev {
        breaks.push(at("its link to the previous event's hash is broken".into()));
    }
    let recomputed = marketplace_store::event::chain_hash(
        e.metadata.prev_hash.as_deref(),
        &e.stream_id,
        e.revision,
        e.event_id,
        &e.event_type,
        e.schema_version,
        &e.data,
    );
    match &e.metadata.hash {
        Some(h) if *h == recomputed => {}
        Some(_) => breaks.push(at("its content does not match its hash (edited?)".into())),
        None => breaks.push(at("it carries no hash".into())),
    }
    (e.revision, e.metadata.hash.clone())
}

/// Walks the log (or one stream) and reports every place where the hash
/// chain breaks: an edited event, a missing (deleted) event inside a stream,
/// a broken link, or — on stores whose positions are dense, as the Postgres
/// store's are — a missing global position. `on_progress(done, head)` is
/// called after each page.
pub async fn verify_chains(
    store: &dyn EventStore,
    only: Option<&StreamId>,
    on_progress: &(dyn Fn(Position, Position) + Send + Sync),
) -> Result<Vec<ChainBreak>, AuditError> {
    let mut breaks = Vec::new();
    if let Some(stream) = only {
        let events = store.read_stream(stream, 0).await?;
        let mut last: Option<(u64, Option<String>)> = None;
        for e in &events {
            last = Some(check_event(e, last.as_ref(), &mut breaks));
        }
        let end = events.last().map_or(Position::START, |e| e.position);
        on_progress(end, end);
        return Ok(breaks);
    }
    let head = store.head().await?;
    let mut streams: std::collections::HashMap<StreamId, (u64, Option<String>)> =
        std::collections::HashMap::new();
    let dense = store.dense_positions();
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, 10_000).await?;
        let Some(end) = page.last().map(|e| e.position) else {
            break;
        };
        for e in &page {
            if dense && e.position.0 != from.0 + 1 {
                breaks.push(ChainBreak {
                    stream: None,
                    revision: None,
                    position: e.position,
                    reason: format!(
                        "positions {}..{} are missing from the log (deleted events?)",
                        from.0 + 1,
                        e.position.0 - 1
                    ),
                });
            }
            let next = check_event(e, streams.get(&e.stream_id), &mut breaks);
            streams.insert(e.stream_id.clone(), next);
            from = e.position;
        }
        on_progress(end, head.max(end));
    }
    // On sparse positions the head is the last event's own position.
    if from < head {
        breaks.push(ChainBreak {
            stream: None,
            revision: None,
            position: head,
            reason: format!(
                "positions {}..{} are missing from the log",
                from.0 + 1,
                head.0
            ),
        });
    }
    Ok(breaks)
}

/// Where to stop when showing an aggregate as it stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Events recorded at or before this moment.
    Time(DateTime<Utc>),
    /// Events at or below this global position.
    Position(Position),
}

/// The state of the aggregate of `stream` as it stood at `as_of`, as JSON,
/// with the revision it had then; `None` if it did not exist yet. Works
/// for every aggregate type.
pub async fn state_as_of(
    store: &dyn EventStore,
    stream: &StreamId,
    as_of: AsOf,
) -> Result<Option<(u64, serde_json::Value)>, AuditError> {
    let events: Vec<RecordedEvent> = store
        .read_stream(stream, 0)
        .await?
        .into_iter()
        .take_while(|e| match as_of {
            AsOf::Time(t) => e.recorded_at() <= t,
            AsOf::Position(p) => e.position <= p,
        })
        .collect();
    let revision = events.last().map(|e| e.revision);
    let states = states_after(stream.category(), &events)?;
    Ok(revision.zip(states.into_iter().last()))
}

/// One line of `marketplace audit trace`, as JSON: where the event is in
/// the log, what it is, who caused it, its correlation id and, when it was
/// written inside a trace, its trace id (from its `traceparent`), then its
/// (redacted, as [`trace`] returns it) data.
pub fn trace_line(e: &RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "position": e.position.0,
        "stream": e.stream_id.as_str(),
        "revision": e.revision,
        "eventType": e.event_type,
        "actor": e.metadata.actor,
        "correlationId": e.metadata.correlation_id,
        "traceId": e
            .metadata
            .traceparent
            .as_deref()
            .and_then(marketplace_consumers::trace::trace_id),
        "causationId": e.metadata.causation_id,
        "recordedAt": e.recorded_at(),
        "data": e.data,
    })
}

/// Every event that one request caused, across streams, in log order: the
/// events whose metadata carries `correlation_id` (process managers keep
/// the correlation of the event they react to). Scans the log;
/// `on_progress(done, head)` is called after each page.
pub async fn trace(
    store: &dyn EventStore,
    correlation_id: uuid::Uuid,
    on_progress: &(dyn Fn(Position, Position) + Send + Sync),
) -> Result<Vec<RecordedEvent>, AuditError> {
    let head = store.head().await?;
    let mut from = Position::START;
    let mut found = Vec::new();
    loop {
        let page = store.read_all(from, 10_000).await?;
        let Some(end) = page.last().map(|e| e.position) else {
            break;
        };
        found.extend(
            page.into_iter()
                .filter(|e| e.metadata.correlation_id == Some(correlation_id))
                .map(|mut e| {
                    e.data = redact(&e.event_type, e.data);
                    e
                }),
        );
        from = end;
        on_progress(end, head.max(end));
    }
    Ok(found)
}

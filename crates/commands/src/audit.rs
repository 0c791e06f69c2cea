//! Reading the log for audits: a stream's history with the aggregate's
//! state after each event, and an aggregate as it stood at a moment.
//!
//! Events are decoded (and upcast) exactly as the live system decodes them,
//! and folded with the aggregates' own `evolve`. Secrets never leave: the
//! password hash in `account.registered` is redacted from the data shown,
//! and the account state does not serialise it.

use chrono::{DateTime, Utc};
use marketplace_domain::account::Account;
use marketplace_domain::email_claim::EmailClaim;
use marketplace_domain::listing::Listing;
use marketplace_domain::order::Order;
use marketplace_domain::review::Review;
use marketplace_domain::Aggregate;
use marketplace_event_schemas::decode;
use marketplace_store::{EventStore, RecordedEvent, StoreError, StreamId};

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
            if obj.contains_key("password_hash") {
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
    match category {
        c if c == Account::CATEGORY => fold::<Account>(events),
        c if c == Listing::CATEGORY => fold::<Listing>(events),
        c if c == Order::CATEGORY => fold::<Order>(events),
        c if c == Review::CATEGORY => fold::<Review>(events),
        c if c == EmailClaim::CATEGORY => fold::<EmailClaim>(events),
        other => Err(AuditError::UnknownCategory(other.to_owned())),
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

//! The KurrentDB backend: the store contract of DESIGN.md §2 mapped onto a
//! KurrentDB node or cluster through the official `kurrentdb` gRPC client.
//!
//! It depends on the client only; nothing of the marketplace.
//!
//! # The mapping
//! - **Streams and revisions.** A [`StreamId`] is a KurrentDB stream of the
//!   same name (behind an optional namespace prefix, see
//!   [`KurrentDbEventStore::with_namespace`]); its revisions are KurrentDB's
//!   event numbers. An event is written as JSON (`content-type:
//!   application/json`, `type` = `event_type`, the event id as given) with
//!   user metadata holding `schema_version`, the [`EventMetadata`] and the
//!   audit hash chain. The store, not the server, stamps `recorded_at`.
//! - **Global positions.** KurrentDB writes each event of an append as an
//!   implicitly committed record, so its `$all` position is `(commit,
//!   prepare) = (p, p)`, `p` being its byte offset in the transaction log:
//!   unique, growing in commit order, and final once readable (one writer
//!   orders the log, readers see only committed records). [`Position`] is
//!   that `p`; reading "strictly after `p`" reads `$all` from `(p, p)`
//!   (inclusive on the server) and skips the event at `p`; a subscription
//!   from `(p, p)` is already exclusive. `p` is a byte offset well below
//!   `i64::MAX`, so checkpoints stored as `BIGINT` survive restarts as they
//!   are. Stream reads carry positions since KurrentDB 22.6, which this
//!   backend requires. An append's reported commit position is its last
//!   event's position; when the server reports none (an idempotent retry)
//!   the backend reads that event.
//! - **Expected revisions.** `NoStream`/`Exact(r)` are KurrentDB's
//!   `StreamState::NoStream`/`StreamRevision(r)`; a mismatch is the server's
//!   `WrongExpectedVersion`, mapped to [`StoreError::WrongExpectedRevision`]
//!   with the current revision it carries. `Any` is turned into an exact
//!   expectation on the stream's current last event (retried on a race), so
//!   that the hash chain links to the event actually preceding the append.
//! - **`$all` for the marketplace only.** `read_all`, `subscribe_all` and
//!   `head` use a server-side filter: stream names matching the
//!   `<category>-<uuid>` grammar (under the namespace). System events (`$`
//!   streams) and this backend's bookkeeping streams (whose names contain a
//!   `.` and so are never [`StreamId`]s) are skipped by the server.
//! - **Catch-up subscriptions** to `$all` with that filter. On connection
//!   loss the subscription re-subscribes from the last event it delivered
//!   (with backoff, for up to [`RECONNECT_FOR`]); only then does it yield
//!   [`StoreError::Unavailable`] and end, and the caller resumes from its
//!   checkpoint.
//! - **Transient failures** (connection lost, node unavailable, deadline,
//!   not leader) are [`StoreError::Unavailable`]: retryable, never a silent
//!   drop. An append whose outcome is unknown can be retried with the same
//!   event ids (below).
//!
//! # Event ids: retries and uniqueness
//! KurrentDB deduplicates a retried append only within a stream (by position
//! for an expected revision, by a bounded cache for `Any`) and allows one id
//! in several streams; the contract wants retries recognised at any time and
//! an id used once in the whole log. So before writing, each event id is
//! claimed in a stream of its own, `marketplace.eventid-<id>`, written with
//! `NoStream` (the server lets exactly one writer create a stream) and
//! holding the target stream's name. If every claim is new, the append goes
//! ahead. If a claim names another stream, the id is a
//! [`StoreError::DuplicateEventId`]. If claims existed for this stream, the
//! stream is read: ids stored as the very same append return its original
//! outcome; ids not stored at all (an earlier attempt failed) are written;
//! anything else is a duplicate. Claims are never removed; one of a failed
//! append only lets the same ids be retried on the same stream.
//!
//! # Idempotency keys
//! KurrentDB has no transaction across streams, so a key cannot be recorded
//! atomically with its append. Each key gets a stream,
//! `marketplace.idempotency-<uuid v5 of the key>`, used as a small state
//! machine guarded by expected revisions:
//! 1. `claimed` (with the attempt, the target stream and the event ids) is
//!    appended at the key stream's current revision: of concurrent callers
//!    exactly one wins; a `recorded` key answers
//!    [`StoreError::IdempotencyKeyUsed`] before anything else is checked.
//! 2. The winner appends the events (an ordinary append, so a retry of the
//!    same ids is recognised as above).
//! 3. On success it appends `recorded` (the [`IdempotencyRecord`]); on a
//!    definite failure `released`, which frees the key. On an unknown outcome
//!    (connection lost) the claim stays: a retry carrying the same event ids
//!    resumes it at once.
//! 4. A caller that finds another attempt's claim waits for it (polling the
//!    key stream with backoff). After [`CLAIM_LEASE`] it takes the claim
//!    over: if the claimed ids are in the target stream it records their
//!    outcome, otherwise it releases the key.
//!
//! The events keep the ids their caller chose, as on every backend (the
//! conformance suite checks the stored ids). The command layer derives them
//! deterministically: from the idempotency key for a client's keyed request
//! (`marketplace_commands`' handler) and from the trigger for a saga's step.
//! So a retried request is stopped by the key's stream before it writes, and
//! even without the key's record a retry from the same stream revision
//! carries the very same event ids, recognised by their claims (and by the
//! server's own deduplication).
//!
//! # Snapshots
//! Each stream's snapshots are events of its own bookkeeping stream,
//! `marketplace.snapshot-<stream>`, the last one current (so outside
//! `$all`, like every bookkeeping stream). A write reads the last one and
//! appends at its revision unless that one is newer and of the same
//! version: of racing writers, an older state never replaces a newer. Old
//! snapshots are not truncated (one event per snapshot, written every
//! 1,000 events of its stream by the command layer).
//!
//! Known limit: a claimer stalled for longer than the lease between its
//! append and its `recorded` can see its key released although its events
//! were written; a later request with that key would then append again.
//!
//! # No appends across streams
//! [`EventStore::multi_stream_appends`] is false and
//! [`EventStore::append_streams`] answers [`StoreError::Unsupported`] (the
//! port's defaults): KurrentDB 25.1+ can append to several streams
//! atomically, but the `kurrentdb` Rust crate does not expose that call (its
//! `append_to_stream` and `batch_append` write one stream per request), and
//! an emulation from several appends would not be atomic. Callers check the
//! capability and take the one-stream path (the checkout saga).
//!
//! # Costs
//! An append of `n` events makes `n` claim appends (concurrently), one read
//! of the stream's last event (for the hash chain) and the append itself; an
//! idempotent append adds a read and two appends on the key stream.

mod idempotency;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{
    chain_hash, check_storable, AppendOutcome, EventMetadata, ExpectedRevision, IdempotencyKey,
    IdempotencyRecord, NewEvent, Position, RecordedEvent, Snapshot, StreamId,
};
use crate::port::{EventStore, EventStream};

pub use idempotency::CLAIM_LEASE;

/// How long a subscription keeps re-subscribing after losing its connection
/// before it reports [`StoreError::Unavailable`].
pub const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Events fetched per request while reading a stream or `$all`.
const PAGE: usize = 1_000;

/// How often an `Any` append retries after losing a race for the stream's tail.
const ANY_RACE_RETRIES: usize = 1_000;

/// The user metadata stored with each event.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMetadata {
    schema_version: u32,
    #[serde(flatten)]
    metadata: EventMetadata,
}

/// The claim of one event id: the stream it was (or is being) appended to.
#[derive(Debug, Serialize, Deserialize)]
struct EventIdClaim {
    stream: String,
}

struct Inner {
    settings: ClientSettings,
    client: RwLock<Client>,
    namespace: String,
    stream_filter: String,
}

/// The KurrentDB event store. Cheap to clone (shared).
#[derive(Clone)]
pub struct KurrentDbEventStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KurrentDbEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentDbEventStore")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// Whether a connection string names a KurrentDB (`kurrentdb://`, `esdb://`,
/// `kdb://`, `kurrent://`, with or without `+discover`).
pub fn is_connection_string(s: &str) -> bool {
    let scheme = s.split("://").next().unwrap_or_default();
    s.contains("://")
        && matches!(
            scheme.trim_end_matches("+discover"),
            "kurrentdb" | "esdb" | "kdb" | "kurrent"
        )
}

fn client_error(e: kurrentdb::Error) -> StoreError {
    use kurrentdb::Error as E;
    match e {
        E::ServerError(_)
        | E::NotLeaderException(_)
        | E::ConnectionClosed
        | E::GrpcConnectionError(_)
        | E::DeadlineExceeded => StoreError::Unavailable(e.to_string()),
        E::Grpc {
            code:
                tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted,
            ..
        } => StoreError::Unavailable(e.to_string()),
        E::InternalParsingError(_) => StoreError::Decode(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// The `$all` position of the event at `p`: KurrentDB's `(p, p)`.
fn all_position(p: Position) -> kurrentdb::Position {
    kurrentdb::Position {
        commit: p.0,
        prepare: p.0,
    }
}

impl KurrentDbEventStore {
    /// Connects to the KurrentDB named by `connection_string` (the client's
    /// format, e.g. `kurrentdb://host:2113?tls=false`, `esdb://…`). The
    /// connection is made lazily, on first use, and re-made after a loss.
    /// Must be called inside a tokio runtime.
    pub fn connect(connection_string: &str) -> Result<Self, StoreError> {
        let settings: ClientSettings = connection_string.parse().map_err(|e| {
            StoreError::Backend(format!("invalid KurrentDB connection string: {e}"))
        })?;
        let client = Client::new(settings.clone()).map_err(|e| {
            StoreError::Backend(format!("could not create a KurrentDB client: {e}"))
        })?;
        Ok(Self::build(settings, client, String::new()))
    }

    fn build(settings: ClientSettings, client: Client, namespace: String) -> Self {
        let stream_filter = format!(
            "^{}[a-z0-9_]+-[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$",
            regex_escape(&namespace)
        );
        Self {
            inner: Arc::new(Inner {
                settings,
                client: RwLock::new(client),
                namespace,
                stream_filter,
            }),
        }
    }

    /// The same connection, with every stream name prefixed by
    /// `<namespace>.`: several independent logs on one KurrentDB (each test
    /// of the conformance suite against a shared server uses its own). The
    /// namespace is lowercase letters, digits and `_`.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self, StoreError> {
        if namespace.is_empty()
            || !namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::Backend(format!(
                "invalid namespace {namespace:?}: use [a-z0-9_]+"
            )));
        }
        Ok(Self::build(
            self.inner.settings.clone(),
            self.client(),
            format!("{namespace}."),
        ))
    }

    /// The name of `stream` on the server (with the namespace, if any).
    pub fn server_stream_name(&self, stream: &StreamId) -> String {
        format!("{}{}", self.inner.namespace, stream.as_str())
    }

    /// Where the snapshots of `stream` go: one event each, the last one
    /// current. The `marketplace.` prefix keeps it out of `$all` reads.
    fn snapshot_stream(&self, stream: &StreamId) -> String {
        format!(
            "{}marketplace.snapshot-{}",
            self.inner.namespace,
            stream.as_str()
        )
    }

    fn bookkeeping_stream(&self, kind: &str, id: Uuid) -> String {
        format!("{}marketplace.{kind}-{id}", self.inner.namespace)
    }

    fn client(&self) -> Client {
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The client gives up on a node after its discovery attempts and then
    /// answers every call with `ConnectionClosed`; make a fresh one then.
    fn recover(&self, e: &kurrentdb::Error) {
        if matches!(e, kurrentdb::Error::ConnectionClosed) {
            if let Ok(client) = Client::new(self.inner.settings.clone()) {
                *self.inner.client.write().unwrap_or_else(|e| e.into_inner()) = client;
            }
        }
    }

    fn fail(&self, e: kurrentdb::Error) -> StoreError {
        self.recover(&e);
        client_error(e)
    }

    fn all_filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::on_stream_name().regex(&self.inner.stream_filter)
    }

    fn decode(&self, e: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, StoreError> {
        let name = e
            .stream_id()
            .strip_prefix(self.inner.namespace.as_str())
            .ok_or_else(|| {
                StoreError::Decode(format!("stream {} is outside the namespace", e.stream_id()))
            })?;
        let stream_id = StreamId::parse(name).map_err(|err| StoreError::Decode(err.to_string()))?;
        if e.position.commit == u64::MAX {
            return Err(StoreError::Backend(
                "the server reports no $all position on stream reads (KurrentDB 22.6 or later is required)".into(),
            ));
        }
        let stored: StoredMetadata = serde_json::from_slice(&e.custom_metadata)
            .map_err(|err| StoreError::Decode(format!("metadata of {}: {err}", e.id)))?;
        let data = serde_json::from_slice(&e.data)
            .map_err(|err| StoreError::Decode(format!("data of {}: {err}", e.id)))?;
        Ok(RecordedEvent {
            stream_id,
            revision: e.revision,
            position: Position(e.position.commit),
            event_id: e.id,
            event_type: e.event_type.clone(),
            schema_version: stored.schema_version,
            data,
            metadata: stored.metadata,
        })
    }

    /// Raw events of a server stream from `from` forwards (`max` at most);
    /// empty if it does not exist.
    async fn read_raw(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<kurrentdb::RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from))
            .max_count(max);
        let mut read = match self.client().read_stream(stream, &options).await {
            Ok(r) => r,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(e)),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(e)) => {
                    if let Some(event) = e.event {
                        out.push(event);
                    }
                }
                Ok(None) => return Ok(out),
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Every raw event of a server stream.
    async fn read_raw_all(
        &self,
        stream: &str,
    ) -> Result<Vec<kurrentdb::RecordedEvent>, StoreError> {
        let mut out = Vec::new();
        loop {
            let page = self.read_raw(stream, out.len() as u64, PAGE).await?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// The last raw event of a server stream, if any.
    async fn read_last(
        &self,
        stream: &str,
    ) -> Result<Option<kurrentdb::RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1);
        let mut read = match self.client().read_stream(stream, &options).await {
            Ok(r) => r,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        match read.next().await {
            Ok(e) => Ok(e.and_then(|e| e.event)),
            Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Appends raw events to a server stream; `Ok(Err(current))` on a wrong
    /// expected version.
    async fn append_raw(
        &self,
        stream: &str,
        state: StreamState,
        events: Vec<EventData>,
    ) -> Result<Result<kurrentdb::WriteResult, Option<u64>>, StoreError> {
        let options = AppendToStreamOptions::default().stream_state(state);
        match self
            .client()
            .append_to_stream(stream, &options, events)
            .await
        {
            Ok(w) => Ok(Ok(w)),
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => Ok(Err(match current {
                CurrentRevision::Current(r) => Some(r),
                CurrentRevision::NoStream => None,
            })),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Claims every event id for `stream` (see the module docs).
    async fn claim_event_ids(
        &self,
        stream: &str,
        events: &[NewEvent],
    ) -> Result<Claims, StoreError> {
        let claims = futures::future::join_all(events.iter().map(|e| async move {
            let claim_stream = self.bookkeeping_stream("eventid", e.event_id);
            let claim = EventData::json(
                "eventid.claimed",
                &EventIdClaim {
                    stream: stream.into(),
                },
            )
            .map_err(|err| StoreError::Backend(err.to_string()))?
            // A fresh id: one derived from the event id would make the
            // server take a second claim for a retry of the first.
            .id(Uuid::new_v4());
            match self
                .append_raw(&claim_stream, StreamState::NoStream, vec![claim])
                .await?
            {
                Ok(_) => Ok::<_, StoreError>((e.event_id, None)),
                Err(_) => {
                    let first = self.read_raw(&claim_stream, 0, 1).await?;
                    let owner = first
                        .first()
                        .and_then(|c| serde_json::from_slice::<EventIdClaim>(&c.data).ok())
                        .map(|c| c.stream)
                        .ok_or_else(|| {
                            StoreError::Decode(format!("claim of event id {}", e.event_id))
                        })?;
                    Ok((e.event_id, Some(owner)))
                }
            }
        }))
        .await;
        let mut existed = false;
        for claim in claims {
            let (id, owner) = claim?;
            match owner {
                None => {}
                Some(owner) if owner == stream => existed = true,
                Some(_) => return Ok(Claims::Elsewhere(id)),
            }
        }
        Ok(if existed {
            Claims::SomeExisted
        } else {
            Claims::AllNew
        })
    }

    /// For ids claimed earlier for this stream: the original outcome if they
    /// are stored as the very same append, `None` if none is stored.
    async fn find_stored_append(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let stored = self.read_raw_all(&self.server_stream_name(stream)).await?;
        let start = stored.iter().position(|e| e.id == events[0].event_id);
        let Some(start) = start else {
            return match events
                .iter()
                .find(|n| stored.iter().any(|e| e.id == n.event_id))
            {
                Some(n) => Err(StoreError::DuplicateEventId(n.event_id)),
                None => Ok(None),
            };
        };
        for (i, n) in events.iter().enumerate() {
            if stored.get(start + i).map(|e| e.id) != Some(n.event_id) {
                return Err(StoreError::DuplicateEventId(
                    events.get(i).map_or(n.event_id, |e| e.event_id),
                ));
            }
        }
        let last = self.decode(&stored[start + events.len() - 1])?;
        Ok(Some(AppendOutcome {
            revision: last.revision,
            position: last.position,
        }))
    }

    /// Writes `events` after the stream's tail as `expected` says, with the
    /// hash chain linked to the event before them.
    async fn write(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        let name = self.server_stream_name(stream);
        for _ in 0..ANY_RACE_RETRIES {
            let (state, prev_hash, first_revision) = match expected {
                ExpectedRevision::NoStream => (StreamState::NoStream, None, 0),
                ExpectedRevision::Exact(r) => {
                    let at = self.read_raw(&name, r, 1).await?;
                    let prev = match at.first() {
                        Some(e) if e.revision == r => self.decode(e)?.metadata.hash,
                        // The server will refuse the append: nothing is linked.
                        _ => None,
                    };
                    (StreamState::StreamRevision(r), prev, r + 1)
                }
                ExpectedRevision::Any => match self.read_last(&name).await? {
                    None => (StreamState::NoStream, None, 0),
                    Some(last) => {
                        let last = self.decode(&last)?;
                        (
                            StreamState::StreamRevision(last.revision),
                            last.metadata.hash,
                            last.revision + 1,
                        )
                    }
                },
            };
            let data = encode(stream, events, prev_hash, first_revision)?;
            match self.append_raw(&name, state, data).await? {
                Ok(written) => {
                    let revision = written.next_expected_version;
                    // No position: the server took it for a retry of stored
                    // events; their last one carries it.
                    let position = if written.position.commit == 0 {
                        let at = self.read_raw(&name, revision, 1).await?;
                        let e = at.first().ok_or_else(|| {
                            StoreError::Backend(format!(
                                "{name}@{revision} reported written but not readable"
                            ))
                        })?;
                        self.decode(e)?.position
                    } else {
                        Position(written.position.commit)
                    };
                    return Ok(AppendOutcome { revision, position });
                }
                Err(_) if expected == ExpectedRevision::Any => continue,
                Err(actual) => {
                    return Err(StoreError::WrongExpectedRevision {
                        stream: stream.clone(),
                        expected,
                        actual,
                    })
                }
            }
        }
        Err(StoreError::Backend(format!(
            "an append with no expectation lost {ANY_RACE_RETRIES} races for the tail of {stream}"
        )))
    }
}

enum Claims {
    AllNew,
    SomeExisted,
    Elsewhere(Uuid),
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The events as KurrentDB event data, with `recorded_at` and the hash chain.
fn encode(
    stream: &StreamId,
    events: &[NewEvent],
    mut prev_hash: Option<String>,
    first_revision: u64,
) -> Result<Vec<EventData>, StoreError> {
    let now = Utc::now();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let hash = chain_hash(
            prev_hash.as_deref(),
            stream,
            first_revision + i as u64,
            e.event_id,
            &e.event_type,
            e.schema_version,
            &e.data,
        );
        let metadata = StoredMetadata {
            schema_version: e.schema_version,
            metadata: EventMetadata {
                recorded_at: Some(now),
                prev_hash: prev_hash.clone(),
                hash: Some(hash.clone()),
                ..e.metadata.clone()
            },
        };
        let data = EventData::json(&e.event_type, &e.data)
            .and_then(|d| d.metadata_as_json(&metadata))
            .map_err(|err| StoreError::Backend(format!("encoding {}: {err}", e.event_id)))?
            .id(e.event_id);
        out.push(data);
        prev_hash = Some(hash);
    }
    Ok(out)
}

#[async_trait]
impl EventStore for KurrentDbEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        check_storable(&events, None)?;
        let name = self.server_stream_name(stream);
        match self.claim_event_ids(&name, &events).await? {
            Claims::AllNew => {}
            Claims::Elsewhere(id) => return Err(StoreError::DuplicateEventId(id)),
            Claims::SomeExisted => {
                if let Some(outcome) = self.find_stored_append(stream, &events).await? {
                    return Ok(outcome);
                }
            }
        }
        self.write(stream, expected, &events).await
    }

    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        check_storable(&events, Some(&key))?;
        idempotency::append(self, stream, expected, events, key).await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        idempotency::record(self, key).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = self.server_stream_name(stream);
        let mut out = Vec::new();
        loop {
            let page = self
                .read_raw(&name, from_revision + out.len() as u64, PAGE)
                .await?;
            let done = page.len() < PAGE;
            for e in &page {
                out.push(self.decode(e)?);
            }
            if done {
                return Ok(out);
            }
        }
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = self.server_stream_name(stream);
        let mut out = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = self
                .read_raw(&name, from_revision + out.len() as u64, want)
                .await?;
            let done = page.len() < want;
            for e in &page {
                out.push(self.decode(e)?);
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The server's forward read includes the event at its start.
        let (start, extra) = if from == Position::START {
            (StreamPosition::Start, 0)
        } else {
            (StreamPosition::Position(all_position(from)), 1)
        };
        let options = ReadAllOptions::default()
            .forwards()
            .position(start)
            .filter(self.all_filter())
            .max_count(limit + extra);
        let mut read = self
            .client()
            .read_all(&options)
            .await
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        while let Some(e) = read.next().await.map_err(|e| self.fail(e))? {
            if let Some(e) = e.event {
                let e = self.decode(&e)?;
                if e.position > from || from == Position::START {
                    out.push(e);
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        let state = Subscribing {
            store: self.clone(),
            last: from,
            subscription: None,
            lost_since: None,
            failed: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                if st.failed {
                    return None;
                }
                let item = st.next().await;
                st.failed = item.is_err();
                Some((item, st))
            },
        )))
    }

    fn dense_positions(&self) -> bool {
        false
    }

    /// No: the `kurrentdb` crate does not expose the server's multi-stream
    /// append (KurrentDB 25.1+), so [`EventStore::append_streams`] keeps the
    /// port's default, [`StoreError::Unsupported`], and callers take the
    /// one-stream path (see the module docs).
    fn multi_stream_appends(&self) -> bool {
        false
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .read_last(&self.snapshot_stream(stream))
            .await?
            .and_then(|e| decode_snapshot(&e.data)))
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let name = self.snapshot_stream(stream);
        let stored = StoredSnapshot::from(&snapshot);
        // Read, compare, append at the revision read: a racing writer of
        // an older state loses the race or is refused by the comparison.
        for _ in 0..4 {
            let last = self.read_last(&name).await?;
            let state = match &last {
                Some(e) => {
                    if decode_snapshot(&e.data).is_some_and(|s| {
                        s.version == snapshot.version && s.revision > snapshot.revision
                    }) {
                        return Ok(());
                    }
                    StreamState::StreamRevision(e.revision)
                }
                None => StreamState::NoStream,
            };
            let data = EventData::json("snapshot.stored", &stored)
                .map_err(|err| StoreError::Backend(err.to_string()))?
                .id(Uuid::new_v4());
            if self.append_raw(&name, state, vec![data]).await?.is_ok() {
                return Ok(());
            }
        }
        // Another writer kept winning: it stored a state as new as this.
        Ok(())
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let options = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .filter(self.all_filter())
            .max_count(1);
        let mut read = self
            .client()
            .read_all(&options)
            .await
            .map_err(|e| self.fail(e))?;
        match read.next().await.map_err(|e| self.fail(e))? {
            Some(e) => Ok(e
                .event
                .map_or(Position::START, |e| Position(e.position.commit))),
            None => Ok(Position::START),
        }
    }
}

/// A catch-up subscription that re-subscribes after the last delivered event
/// when its connection is lost.
struct Subscribing {
    store: KurrentDbEventStore,
    last: Position,
    subscription: Option<kurrentdb::Subscription>,
    lost_since: Option<Instant>,
    failed: bool,
}

impl Subscribing {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        let backoff = crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut attempt = 0u32;
        loop {
            if self.subscription.is_none() {
                let start = if self.last == Position::START {
                    StreamPosition::Start
                } else {
                    StreamPosition::Position(all_position(self.last))
                };
                let options = SubscribeToAllOptions::default()
                    .position(start)
                    .filter(self.store.all_filter());
                self.subscription = Some(self.store.client().subscribe_to_all(&options).await);
            }
            let Some(sub) = self.subscription.as_mut() else {
                continue;
            };
            match sub.next().await {
                Ok(e) => {
                    self.lost_since = None;
                    attempt = 0;
                    let Some(raw) = e.event else { continue };
                    let event = self.store.decode(&raw)?;
                    // A re-subscription starts strictly after `last`; this
                    // only guards against a server that would not.
                    if event.position <= self.last && self.last != Position::START {
                        continue;
                    }
                    self.last = event.position;
                    return Ok(event);
                }
                Err(e) => {
                    let err = self.store.fail(e);
                    self.subscription = None;
                    if !err.is_retryable() {
                        return Err(err);
                    }
                    let since = *self.lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECONNECT_FOR {
                        return Err(err);
                    }
                    tracing::warn!(error = %err, after = %self.last, "KurrentDB subscription lost; re-subscribing");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }
}

/// A [`Snapshot`] as its snapshot stream stores it.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    revision: u64,
    position: u64,
    version: u32,
    state: serde_json::Value,
}

impl From<&Snapshot> for StoredSnapshot {
    fn from(s: &Snapshot) -> Self {
        Self {
            revision: s.revision,
            position: s.position.0,
            version: s.version,
            state: s.state.clone(),
        }
    }
}

/// A stored snapshot; `None` for one that does not decode (a snapshot is
/// a cache: the loader then folds the stream).
fn decode_snapshot(data: &[u8]) -> Option<Snapshot> {
    let s: StoredSnapshot = serde_json::from_slice(data).ok()?;
    Some(Snapshot {
        revision: s.revision,
        position: Position(s.position),
        version: s.version,
        state: s.state,
    })
}

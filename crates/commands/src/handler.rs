//! The generic command handler.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use marketplace_consumers::{trace, Envelope};
use marketplace_domain::Aggregate;

use crate::cache::AggregateCache;
use crate::hot::{Entry, HotStreams, Waiting};
use crate::stats::{CommandStats, Outcome};
use marketplace_event_schemas::personal::{EmailIndexKey, SecretKey};
use marketplace_event_schemas::{decode, encode, CodecError};
use marketplace_store::{
    EventMetadata, EventStore, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent,
    Position, Snapshot, StoreError, StreamId,
};
use tracing::Instrument;
use uuid::Uuid;

/// Who and what caused a command: copied into every event it appends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandContext {
    /// Ties everything caused by one request together.
    pub correlation_id: Uuid,
    /// The event or command that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The acting account id, or a process name such as `cli`.
    pub actor: Option<String>,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Makes event ids deterministic: the same step (trigger and name, or
    /// idempotency key) gets the same ids on the same stream whenever it is
    /// decided, so a process manager that repeats a step after a crash is
    /// deduplicated by the store. Unset: fresh ids.
    pub event_id_seed: Option<Uuid>,
    /// The W3C `traceparent` its events carry. The handler fills it from
    /// the command's span when tracing is on; set by a caller, it is the
    /// command span's parent where the caller runs outside any trace.
    pub traceparent: Option<String>,
}

impl CommandContext {
    /// A context for a fresh request by `actor`.
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            actor: Some(actor.into()),
            ..Self::default()
        }
    }

    /// A context for a step a process manager takes because of `trigger`:
    /// same correlation, caused by the trigger, with event ids derived from
    /// the trigger and `step`.
    pub fn caused_by(trigger: &Envelope, actor: &str, step: &str) -> Self {
        Self {
            correlation_id: trigger.metadata.correlation_id.unwrap_or(trigger.event_id),
            causation_id: Some(trigger.event_id),
            actor: Some(actor.to_owned()),
            idempotency_key: None,
            event_id_seed: Some(Uuid::new_v5(&trigger.event_id, step.as_bytes())),
            traceparent: None,
        }
    }

    /// This context with its events' trace context taken from `span` (the
    /// command's), if `span` is traced; borrowed when nothing changes.
    pub(crate) fn traced(&self, span: &tracing::Span) -> Cow<'_, CommandContext> {
        match trace::traceparent_of(span) {
            Some(traceparent) if self.traceparent.as_ref() != Some(&traceparent) => {
                Cow::Owned(CommandContext {
                    traceparent: Some(traceparent),
                    ..self.clone()
                })
            }
            Some(_) | None => Cow::Borrowed(self),
        }
    }

    /// The id of the `index`-th event this context appends to `stream`.
    /// Seeded, it does not depend on the stream's revision: a step repeated
    /// later (a saga replaying after a crash, a client retrying with its
    /// key) carries the very ids it was first stored with, and the store
    /// recognises it as the same append at any time. That is what keeps
    /// the aggregates free of ever-growing "already done" sets.
    pub(crate) fn event_id(&self, stream: &StreamId, index: usize) -> Uuid {
        match self.event_id_seed {
            Some(seed) => Uuid::new_v5(&seed, format!("{stream}#{index}").as_bytes()),
            None => Uuid::now_v7(),
        }
    }
}

/// Namespace of the event-id seeds derived from idempotency keys.
const KEYED_EVENTS: Uuid = Uuid::from_u128(0x6b65_7965_645f_4000_8000_6576_656e_7473);

/// The outcome of [`CommandHandler::execute_idempotent`].
#[derive(Debug, Clone)]
pub enum Idempotent<T> {
    /// First use of the key: the command ran.
    Fresh(T),
    /// The key was used before with the same input: nothing ran; this is
    /// what the first use appended.
    Replayed(IdempotencyRecord),
}

/// How conflicts are retried: the shared jittered backoff
/// ([`marketplace_consumers::retry::Backoff`]) between attempts.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Most attempts in all (the first one included).
    pub max_attempts: u32,
    /// The pause before each retry: from 2 ms, doubling, up to 100 ms.
    pub backoff: marketplace_consumers::retry::Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff: marketplace_consumers::retry::Backoff::new(
                Duration::from_millis(2),
                Duration::from_millis(100),
            ),
        }
    }
}

impl RetryPolicy {
    /// The jittered pause before retry number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }
}

/// Why a command did not take effect. The variants are the classes the API
/// maps to error codes.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The domain refused it (a user error).
    #[error(transparent)]
    Rejected(E),
    /// Concurrent writers kept winning; the retries ran out.
    #[error("too much contention on {stream}: gave up after {attempts} attempts")]
    Conflict {
        /// The contended stream.
        stream: StreamId,
        /// Attempts made.
        attempts: u32,
    },
    /// The event store failed (infrastructure).
    #[error(transparent)]
    Store(StoreError),
    /// A stored event could not be decoded (data or version problem).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The idempotency key was used before with different input.
    #[error("idempotency key reused with different input")]
    IdempotencyKeyReused,
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The event store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A stored event could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl<E> From<LoadError> for CommandError<E> {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(s) => CommandError::Store(s),
            LoadError::Codec(c) => CommandError::Codec(c),
        }
    }
}

/// What an executed command left behind.
#[derive(Debug, Clone)]
pub struct Executed<A> {
    /// The aggregate's state after the command.
    pub state: A,
    /// How many events the command appended (0 for a no-op).
    pub appended: usize,
    /// The position of the stream's last event: the consistency token.
    pub position: Position,
}

/// A loaded aggregate.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// Its state.
    pub state: A,
    /// Its last revision, `None` if the stream does not exist.
    pub revision: Option<u64>,
    /// The position of its last event.
    pub position: Position,
}

/// Loads aggregates from the store, decides commands and appends the result.
#[derive(Clone)]
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    retry: RetryPolicy,
    cache: Arc<AggregateCache>,
    stats: Arc<CommandStats>,
    snapshot_every: u64,
    hot: Arc<HotStreams>,
    /// Orders checked out at placement, queued per listing
    /// ([`crate::flows::checkout`]).
    checkout_hot: Arc<HotStreams>,
    email_index: EmailIndexKey,
}

/// The email index key of a handler nobody gave one (in-memory unit tests
/// only: anything that serves sets the key table's with
/// [`CommandHandler::with_email_index`]).
const UNCONFIGURED_EMAIL_INDEX: [u8; 32] = [0; 32];

/// Aggregates kept in memory by default (see [`CommandHandler::with_cache_capacity`]).
pub const DEFAULT_CACHE_CAPACITY: usize = 50_000;

/// Events read per round trip when a load folds a stream's tail.
const LOAD_PAGE: usize = 1_000;

/// Events between two snapshots of a snapshotted aggregate, by default (see
/// [`CommandHandler::with_snapshot_every`]).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;

impl std::fmt::Debug for CommandHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandler")
            .field("retry", &self.retry)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A batch of commands decided one after another
/// ([`CommandHandler::decide_all`]).
struct DecidedAll<A: Aggregate> {
    /// The state after the last.
    state: A,
    /// The revision after the last.
    revision: Option<u64>,
    /// Each command's event count, or its refusal.
    outcomes: Vec<Result<usize, A::Error>>,
    /// The state right after each command, if asked for.
    states: Vec<A>,
    /// Everything to append.
    new_events: Vec<NewEvent>,
}

/// Hands a stream over to what queued behind its leading command, when
/// that command is done or its caller went away.
struct HandOver<A: Aggregate> {
    handler: CommandHandler,
    id: Uuid,
    stream: StreamId,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Drop for HandOver<A> {
    fn drop(&mut self) {
        let queued = self.handler.hot.take::<Waiting<A>>(&self.stream);
        if queued.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let handler = self.handler.clone();
                runtime.spawn(handler.drain(self.id, self.stream.clone(), queued));
            }
            // No runtime to run them on: the waiting callers see their
            // batch gone and run alone.
            Err(_) => drop(queued),
        }
    }
}

/// The span of one command on `stream`: a child of the caller's span;
/// outside any trace, of the span the context's `traceparent` names, if
/// any.
pub(crate) fn command_span(
    category: &'static str,
    stream: &StreamId,
    ctx: &CommandContext,
) -> tracing::Span {
    let span = tracing::info_span!(
        "command",
        aggregate = category,
        stream = %stream,
        actor = ctx.actor.as_deref().unwrap_or("-"),
    );
    if trace::current_traceparent().is_none() {
        trace::follow(&span, ctx.traceparent.as_deref());
    }
    span
}

/// The span of several commands on `stream` decided together: a child of
/// the caller's span (their own contexts are linked, or carried by their
/// events).
fn batch_span(category: &'static str, stream: &StreamId) -> tracing::Span {
    tracing::info_span!("command.batch", aggregate = category, stream = %stream)
}

/// The stream of aggregate `A` with id `id`.
pub fn stream_of<A: Aggregate>(id: Uuid) -> StreamId {
    // Categories are compile-time constants of lowercase letters.
    StreamId::new(A::CATEGORY, id)
        .unwrap_or_else(|e| panic!("invalid category of {}: {e}", A::CATEGORY))
}

impl CommandHandler {
    /// A handler over `store` with the default retry policy.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            retry: RetryPolicy::default(),
            cache: Arc::new(AggregateCache::new(DEFAULT_CACHE_CAPACITY)),
            stats: Arc::new(CommandStats::default()),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            hot: Arc::new(HotStreams::default()),
            checkout_hot: Arc::new(HotStreams::default()),
            email_index: EmailIndexKey(SecretKey::from_bytes(UNCONFIGURED_EMAIL_INDEX)),
        }
    }

    /// Names email claim streams with `key` (the key table's email index
    /// key). Every process serving one marketplace must use the same key:
    /// the server and the tools set it from `marketplace-keys`.
    pub fn with_email_index(mut self, key: EmailIndexKey) -> Self {
        self.email_index = key;
        self
    }

    /// The key that names email claim streams.
    pub fn email_index(&self) -> &EmailIndexKey {
        &self.email_index
    }

    /// Snapshots a snapshotted aggregate (`Aggregate::SNAPSHOT_VERSION` > 0)
    /// every `events` events of its stream (0: never). A load after a cache
    /// miss or a restart then folds only the events after the snapshot.
    pub fn with_snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = events;
        self
    }

    /// Replaces the aggregate cache with one of `capacity` entries (0: no
    /// cache, every load reads the whole stream).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = Arc::new(AggregateCache::new(capacity));
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// What the commands run through this handler (and its clones) did.
    pub fn stats(&self) -> &CommandStats {
        &self.stats
    }

    /// The store this handler writes to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The state of `A` with id `id` if this handler has it cached (no
    /// I/O): a true state of the stream at some revision, perhaps not the
    /// latest.
    pub fn cached<A: Aggregate>(&self, id: Uuid) -> Option<A> {
        self.cache
            .get::<A>(&stream_of::<A>(id))
            .map(|(state, _, _)| state)
    }

    /// The queues of orders checked out at placement, per listing.
    pub(crate) fn checkout_hot(&self) -> &HotStreams {
        &self.checkout_hot
    }

    /// The conflict retry policy.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// `ctx` with event ids derived from `key`, unless it has a seed: a
    /// client's retry with the same key carries the same ids.
    pub(crate) fn keyed_context(
        &self,
        ctx: &CommandContext,
        key: &IdempotencyKey,
    ) -> CommandContext {
        CommandContext {
            event_id_seed: ctx
                .event_id_seed
                .or_else(|| Some(Uuid::new_v5(&KEYED_EVENTS, key.key.as_bytes()))),
            ..ctx.clone()
        }
    }

    /// `A` with id `id` to decide on, and whether it was read to the
    /// stream's end: the cached state alone unless `read_to_end` (or on a
    /// miss).
    pub(crate) async fn loaded_for_decision<A: Aggregate>(
        &self,
        id: Uuid,
        read_to_end: bool,
    ) -> Result<(Loaded<A>, bool), LoadError> {
        let attempt = if read_to_end { 2 } else { 1 };
        self.for_decision::<A>(id, &stream_of::<A>(id), attempt)
            .await
    }

    /// `A` with id `id` to decide on, taken out of the cache (not copied)
    /// if it is there, and whether it was read to the stream's end (a miss
    /// loads it). The caller puts back what it leaves with
    /// [`remember`](Self::remember) or [`put_back`](Self::put_back).
    pub(crate) async fn taken_for_decision<A: Aggregate>(
        &self,
        id: Uuid,
    ) -> Result<(Loaded<A>, bool), LoadError> {
        if let Some((state, revision, position)) = self.cache.take::<A>(&stream_of::<A>(id)) {
            let loaded = Loaded {
                state,
                revision: Some(revision),
                position,
            };
            return Ok((loaded, false));
        }
        Ok((self.load::<A>(id).await?, true))
    }

    /// Records what an append left `A` with id `id` at: `state` after the
    /// stream went from `before` to `outcome`; snapshots when due.
    pub(crate) fn remember<A: Aggregate>(
        &self,
        id: Uuid,
        state: A,
        before: Option<u64>,
        outcome: marketplace_store::AppendOutcome,
    ) {
        let stream = stream_of::<A>(id);
        self.snapshot_if_due(&stream, &state, before, outcome.revision, outcome.position);
        self.cache
            .put(&stream, state, outcome.revision, outcome.position);
    }

    /// Puts a state taken with [`taken_for_decision`](Self::taken_for_decision)
    /// back, unchanged.
    pub(crate) fn put_back<A: Aggregate>(
        &self,
        id: Uuid,
        state: A,
        revision: u64,
        position: Position,
    ) {
        self.cache
            .put(&stream_of::<A>(id), state, revision, position);
    }

    /// Appends across streams atomically, re-sending the very same events
    /// (so idempotent) on a transient failure.
    pub(crate) async fn append_streams_retrying_transient(
        &self,
        parts: Vec<marketplace_store::StreamAppend>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Vec<marketplace_store::AppendOutcome>, StoreError> {
        let events: usize = parts.iter().map(|p| p.events.len()).sum();
        let span = tracing::info_span!("append", streams = parts.len(), events);
        async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.store.append_streams(parts.clone(), key.cloned()).await {
                    Err(e) if e.is_retryable() && attempt < self.retry.max_attempts => {
                        tracing::warn!(error = %e, "transient append failure; retrying");
                        self.stats.retry("order");
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                    }
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Rebuilds aggregate `A` with id `id` from its stream.
    pub async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, LoadError> {
        let stream = stream_of::<A>(id);
        // Start from the cached state, else the snapshot, if any, and read
        // only the tail.
        let cached = self.cache.get::<A>(&stream);
        let loaded = self.cached_or_snapshot(&stream, cached).await;
        self.read_tail(&stream, loaded, true).await
    }

    /// Where a load starts: the cached state, else the stream's snapshot.
    async fn cached_or_snapshot<A: Aggregate>(
        &self,
        stream: &StreamId,
        cached: Option<(A, u64, Position)>,
    ) -> Loaded<A> {
        match cached {
            Some((state, revision, position)) => Loaded {
                state,
                revision: Some(revision),
                position,
            },
            None => self.load_snapshot::<A>(stream).await,
        }
    }

    /// Like [`load`](Self::load), but a cached state is taken out of the
    /// cache rather than copied (a hot listing with many open
    /// reservations), and what is loaded is not cached: the caller puts
    /// back what it leaves with [`remember`](Self::remember) or
    /// [`put_back`](Self::put_back).
    pub(crate) async fn take_latest<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, LoadError> {
        let stream = stream_of::<A>(id);
        let taken = self.cache.take::<A>(&stream);
        let loaded = self.cached_or_snapshot(&stream, taken).await;
        self.read_tail(&stream, loaded, false).await
    }

    /// Reads `A` with id `id` on from `loaded` (a state taken for a
    /// decision) to its stream's end. Like [`take_latest`](Self::take_latest),
    /// what is read is not cached: the caller puts back what it leaves.
    pub(crate) async fn caught_up<A: Aggregate>(
        &self,
        id: Uuid,
        loaded: Loaded<A>,
    ) -> Result<Loaded<A>, LoadError> {
        self.read_tail(&stream_of::<A>(id), loaded, false).await
    }

    /// Folds `stream`'s events after `loaded` into it; caches the result
    /// (and snapshots it when due) if `cache` and anything was read.
    async fn read_tail<A: Aggregate>(
        &self,
        stream: &StreamId,
        mut loaded: Loaded<A>,
        cache: bool,
    ) -> Result<Loaded<A>, LoadError> {
        // A page at a time: a long tail (a stream without a snapshot) is
        // never all in memory at once.
        let mut read = 0usize;
        loop {
            let from = loaded.revision.map_or(0, |r| r + 1);
            let page = self
                .store
                .read_stream_page(stream, from, LOAD_PAGE)
                .await
                .map_err(LoadError::Store)?;
            let full = page.len() == LOAD_PAGE;
            read += page.len();
            for recorded in page {
                let event: A::Event =
                    decode(&recorded.event_type, recorded.schema_version, recorded.data)?;
                loaded.state = loaded.state.evolve(&event);
                loaded.revision = Some(recorded.revision);
                loaded.position = recorded.position;
            }
            if !full {
                break;
            }
        }
        if let (Some(revision), true) = (loaded.revision, read > 0) {
            if cache {
                self.cache
                    .put(stream, loaded.state.clone(), revision, loaded.position);
            }
            // A long fold is stored as a snapshot either way.
            if self.snapshot_every > 0 && read as u64 >= self.snapshot_every {
                self.snapshot(stream, &loaded.state, revision, loaded.position);
            }
        }
        Ok(loaded)
    }

    /// The state `stream`'s snapshot holds, or the empty state: a snapshot
    /// of another version, one that does not read, or one the store cannot
    /// give is passed over (the events are folded instead).
    async fn load_snapshot<A: Aggregate>(&self, stream: &StreamId) -> Loaded<A> {
        let empty = Loaded {
            state: A::default(),
            revision: None,
            position: Position::START,
        };
        if A::SNAPSHOT_VERSION == 0 || self.snapshot_every == 0 {
            return empty;
        }
        match self.store.read_snapshot(stream).await {
            Ok(Some(snapshot)) if snapshot.version == A::SNAPSHOT_VERSION => {
                match A::from_snapshot(snapshot.state) {
                    Some(state) => Loaded {
                        state,
                        revision: Some(snapshot.revision),
                        position: snapshot.position,
                    },
                    None => {
                        tracing::warn!(%stream, "a snapshot does not read; folding the events");
                        empty
                    }
                }
            }
            Ok(_) => empty,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "could not read a snapshot; folding the events");
                empty
            }
        }
    }

    /// Stores a snapshot of `state` at `revision` in the background, if `A`
    /// is snapshotted and this state may be (never one with personal data).
    fn snapshot<A: Aggregate>(
        &self,
        stream: &StreamId,
        state: &A,
        revision: u64,
        position: Position,
    ) {
        if A::SNAPSHOT_VERSION == 0 || self.snapshot_every == 0 {
            return;
        }
        let Some(data) = state.snapshot() else {
            return;
        };
        let (store, stream) = (self.store.clone(), stream.clone());
        let snapshot = Snapshot {
            revision,
            position,
            version: A::SNAPSHOT_VERSION,
            state: data,
        };
        tokio::spawn(async move {
            if let Err(e) = store.write_snapshot(&stream, snapshot).await {
                tracing::warn!(%stream, error = %e, "could not store a snapshot");
            }
        });
    }

    /// Snapshots after an append that took `stream` from `before` to
    /// `after` across a multiple of the snapshot interval.
    fn snapshot_if_due<A: Aggregate>(
        &self,
        stream: &StreamId,
        state: &A,
        before: Option<u64>,
        after: u64,
        position: Position,
    ) {
        let every = self.snapshot_every;
        if every > 0 && before.map_or(0, |b| (b + 1) / every) != (after + 1) / every {
            self.snapshot(stream, state, after, position);
        }
    }

    /// Executes `command` against aggregate `A` with id `id`: load, decide,
    /// append with the loaded revision; on a conflict reload and retry, with
    /// jittered backoff, up to the policy's bound.
    ///
    /// A command for a stream that another command of this handler is
    /// appending to waits for it, and is then decided with whatever else
    /// queued meanwhile and appended in one batch (see [`crate::hot`]):
    /// a hot stream takes many commands per round trip instead of a storm
    /// of conflicts.
    pub async fn execute<A: Aggregate>(
        &self,
        id: Uuid,
        ctx: &CommandContext,
        command: &A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let stream = stream_of::<A>(id);
        let span = command_span(A::CATEGORY, &stream, ctx);
        let ctx = ctx.traced(&span);
        self.execute_in_span::<A>(id, stream, &ctx, command)
            .instrument(span)
            .await
    }

    async fn execute_in_span<A: Aggregate>(
        &self,
        id: Uuid,
        stream: StreamId,
        ctx: &CommandContext,
        command: &A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        if let Entry::Queued(outcome) = self.hot.enter::<A>(&stream, ctx, command) {
            return match outcome.await {
                Ok(result) => result,
                // The batch's task went away: alone, then.
                Err(_) => self.execute_alone::<A>(id, ctx, command).await,
            };
        }
        let _hand_over = HandOver::<A> {
            handler: self.clone(),
            id,
            stream,
            _aggregate: std::marker::PhantomData,
        };
        self.execute_alone::<A>(id, ctx, command).await
    }

    async fn execute_alone<A: Aggregate>(
        &self,
        id: Uuid,
        ctx: &CommandContext,
        command: &A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        match self.run::<A>(id, ctx, command, None).await? {
            Idempotent::Fresh(done) => Ok(done),
            // Unreachable without a key; kept total rather than panicking.
            Idempotent::Replayed(_) => Err(CommandError::IdempotencyKeyReused),
        }
    }

    /// Runs what queued behind a stream's command, batch after batch, until
    /// nothing waits.
    async fn drain<A: Aggregate>(self, id: Uuid, stream: StreamId, mut queued: Vec<Waiting<A>>) {
        while !queued.is_empty() {
            self.run_queued::<A>(id, queued).await;
            queued = self.hot.take::<Waiting<A>>(&stream);
        }
    }

    /// Decides the queued commands one after another and appends them in
    /// one append; each gets its own outcome. If the batch cannot be
    /// appended as a whole, each command runs alone.
    async fn run_queued<A: Aggregate>(&self, id: Uuid, queued: Vec<Waiting<A>>) {
        let stream = stream_of::<A>(id);
        // Decided and appended for several callers at once: linked to each
        // caller's command span (their events carry their own contexts).
        let span = batch_span(A::CATEGORY, &stream);
        for w in queued.iter().take(trace::SPANS_PER_BATCH) {
            trace::link(&span, w.ctx.traceparent.as_deref());
        }
        self.run_queued_in_span::<A>(id, stream, queued)
            .instrument(span)
            .await;
    }

    async fn run_queued_in_span<A: Aggregate>(
        &self,
        id: Uuid,
        stream: StreamId,
        queued: Vec<Waiting<A>>,
    ) {
        let commands: Vec<(CommandContext, A::Command)> = queued
            .iter()
            .map(|w| (w.ctx.clone(), w.command.clone()))
            .collect();
        for attempt in 1..=self.retry.max_attempts {
            let Ok((mut loaded, verified)) = self.for_decision::<A>(id, &stream, attempt).await
            else {
                break;
            };
            if !verified {
                // Refusals and no-ops of a batch are checked only by its
                // append: decide on the latest state.
                let Ok(latest) = self.load::<A>(id).await else {
                    break;
                };
                loaded = latest;
            }
            let base = loaded.revision;
            let Ok(DecidedAll {
                state,
                revision,
                outcomes,
                states,
                new_events,
            }) = Self::decide_all(&stream, loaded.state, base, &commands, true)
            else {
                break;
            };
            let position = if new_events.is_empty() {
                loaded.position
            } else {
                let expected = base.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                match self
                    .append_retrying_transient(A::CATEGORY, &stream, expected, new_events, None)
                    .await
                {
                    Ok(outcome) if Some(outcome.revision) == revision => {
                        self.snapshot_if_due(
                            &stream,
                            &state,
                            base,
                            outcome.revision,
                            outcome.position,
                        );
                        self.cache
                            .put(&stream, state, outcome.revision, outcome.position);
                        outcome.position
                    }
                    Err(StoreError::WrongExpectedRevision { .. }) => {
                        self.stats.conflict(A::CATEGORY);
                        continue;
                    }
                    // Stored before (repeated steps), or failed: one by one.
                    Ok(_) | Err(_) => break,
                }
            };
            for ((waiting, outcome), state) in queued.into_iter().zip(outcomes).zip(states) {
                let result = match outcome {
                    Ok(appended) => {
                        self.stats.outcome(
                            A::CATEGORY,
                            if appended == 0 {
                                Outcome::NoOp
                            } else {
                                Outcome::Appended
                            },
                        );
                        Ok(Executed {
                            state,
                            appended,
                            position,
                        })
                    }
                    Err(refusal) => {
                        self.stats.outcome(A::CATEGORY, Outcome::Rejected);
                        Err(CommandError::Rejected(refusal))
                    }
                };
                let _ = waiting.reply.send(result);
            }
            return;
        }
        for waiting in queued {
            let result = self
                .execute_alone::<A>(id, &waiting.ctx, &waiting.command)
                .await;
            let _ = waiting.reply.send(result);
        }
    }

    /// Like [`execute`](Self::execute), but once per idempotency key: the
    /// key is recorded with the append, in the same transaction. The same
    /// key with the same `request_hash` returns what the first use
    /// appended and appends nothing; with another hash it fails with
    /// [`CommandError::IdempotencyKeyReused`]. Holds for concurrent
    /// duplicates: the losers see the winner's record.
    pub async fn execute_idempotent<A: Aggregate>(
        &self,
        id: Uuid,
        ctx: &CommandContext,
        command: &A::Command,
        key: IdempotencyKey,
    ) -> Result<Idempotent<Executed<A>>, CommandError<A::Error>> {
        let span = command_span(A::CATEGORY, &stream_of::<A>(id), ctx);
        let ctx = ctx.traced(&span);
        self.run::<A>(id, &ctx, command, Some(key))
            .instrument(span)
            .await
    }

    /// The first record of `key`, if it was used.
    pub async fn idempotency_record(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.store.idempotency_record(&key.key).await
    }

    async fn run<A: Aggregate>(
        &self,
        id: Uuid,
        ctx: &CommandContext,
        command: &A::Command,
        key: Option<IdempotencyKey>,
    ) -> Result<Idempotent<Executed<A>>, CommandError<A::Error>> {
        let result = self.run_counted::<A>(id, ctx, command, key).await;
        let outcome = match &result {
            Ok(Idempotent::Fresh(done)) if done.appended == 0 => Outcome::NoOp,
            Ok(Idempotent::Fresh(_)) => Outcome::Appended,
            Ok(Idempotent::Replayed(_)) => Outcome::Replayed,
            Err(CommandError::Rejected(_)) => Outcome::Rejected,
            Err(CommandError::Conflict { .. }) => Outcome::Conflict,
            Err(CommandError::IdempotencyKeyReused) => Outcome::KeyReused,
            Err(CommandError::Store(_) | CommandError::Codec(_)) => Outcome::Error,
        };
        self.stats.outcome(A::CATEGORY, outcome);
        result
    }

    async fn run_counted<A: Aggregate>(
        &self,
        id: Uuid,
        ctx: &CommandContext,
        command: &A::Command,
        key: Option<IdempotencyKey>,
    ) -> Result<Idempotent<Executed<A>>, CommandError<A::Error>> {
        // With a key, event ids derive from it: a client's retry of the same
        // request from the same stream revision carries the same ids, so
        // any backend (KurrentDB by its own event-id deduplication) stores
        // it once even if the key's record was lost.
        let keyed;
        let ctx = match (&key, ctx.event_id_seed) {
            (Some(k), None) => {
                keyed = CommandContext {
                    event_id_seed: Some(Uuid::new_v5(&KEYED_EVENTS, k.key.as_bytes())),
                    ..ctx.clone()
                };
                &keyed
            }
            _ => ctx,
        };
        let stream = stream_of::<A>(id);
        let replay = |record: IdempotencyRecord, key: &IdempotencyKey| {
            if record.request_hash == key.request_hash {
                Ok(Idempotent::Replayed(record))
            } else {
                Err(CommandError::IdempotencyKeyReused)
            }
        };
        for attempt in 1..=self.retry.max_attempts {
            // Checked on every attempt: a concurrent duplicate that won the
            // race has recorded its key by the time we see the conflict.
            if let Some(key) = &key {
                if let Some(record) = self
                    .store
                    .idempotency_record(&key.key)
                    .await
                    .map_err(CommandError::Store)?
                {
                    return replay(record, key);
                }
            }
            let (mut loaded, verified) = self.for_decision::<A>(id, &stream, attempt).await?;
            let mut decision = loaded.state.decide(command);
            // Appending nothing, or refusing, is checked by no append: taken
            // on a state read to the stream's end.
            if !verified && !matches!(&decision, Ok(events) if !events.is_empty()) {
                loaded = self.load::<A>(id).await?;
                decision = loaded.state.decide(command);
            }
            let events = match decision {
                Ok(events) => events,
                Err(refusal) => {
                    // A duplicate may have committed between the key check and
                    // the load; its effect (e.g. the order now exists) is what
                    // refused us. Its record is visible now.
                    if let Some(key) = &key {
                        if let Some(record) = self
                            .store
                            .idempotency_record(&key.key)
                            .await
                            .map_err(CommandError::Store)?
                        {
                            return replay(record, key);
                        }
                    }
                    return Err(CommandError::Rejected(refusal));
                }
            };
            if events.is_empty() {
                return Ok(Idempotent::Fresh(Executed {
                    state: loaded.state,
                    appended: 0,
                    position: loaded.position,
                }));
            }
            let expected = loaded
                .revision
                .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            let new_events = events
                .iter()
                .enumerate()
                .map(|(i, e)| to_new_event(e, ctx, ctx.event_id(&stream, i)))
                .collect::<Result<Vec<_>, CodecError>>()?;
            match self
                .append_retrying_transient(A::CATEGORY, &stream, expected, new_events, key.as_ref())
                .await
            {
                Ok(outcome) => {
                    let appended = events.len();
                    let state = events.iter().fold(loaded.state, |s, e| s.evolve(e));
                    let expected_revision = loaded
                        .revision
                        .map_or(appended as u64 - 1, |r| r + appended as u64);
                    if outcome.revision != expected_revision {
                        // The store already held these events (a repeated
                        // step): nothing was appended; the state is the
                        // stream's as it stands.
                        let loaded = self.load::<A>(id).await?;
                        return Ok(Idempotent::Fresh(Executed {
                            state: loaded.state,
                            appended: 0,
                            position: outcome.position,
                        }));
                    }
                    self.snapshot_if_due(
                        &stream,
                        &state,
                        loaded.revision,
                        outcome.revision,
                        outcome.position,
                    );
                    self.cache
                        .put(&stream, state.clone(), outcome.revision, outcome.position);
                    return Ok(Idempotent::Fresh(Executed {
                        state,
                        appended,
                        position: outcome.position,
                    }));
                }
                Err(StoreError::WrongExpectedRevision { .. }) => {
                    tracing::debug!(%stream, attempt, "conflict; reloading");
                    self.stats.conflict(A::CATEGORY);
                    if verified && attempt < self.retry.max_attempts {
                        self.stats.retry(A::CATEGORY);
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                    }
                }
                Err(StoreError::IdempotencyKeyUsed(record)) => {
                    if let Some(key) = &key {
                        return replay(*record, key);
                    }
                    return Err(CommandError::Store(StoreError::IdempotencyKeyUsed(record)));
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
        Err(CommandError::Conflict {
            stream,
            attempts: self.retry.max_attempts,
        })
    }

    /// Executes several commands against one aggregate, in order, each
    /// decided against the state the ones before it left, and appends the
    /// events of all of them in **one** append with one expected revision:
    /// a hot aggregate takes many commands per round trip. Each command
    /// keeps its own outcome (a refusal refuses only it) and the event ids
    /// it would get executed alone at that revision. On a conflict all are
    /// decided again from the reloaded state; steps that are idempotent in
    /// the domain (a reservation already held) then append nothing twice.
    pub async fn execute_many<A: Aggregate>(
        &self,
        id: Uuid,
        commands: &[(CommandContext, A::Command)],
    ) -> Result<Vec<Result<(), A::Error>>, CommandError<A::Error>> {
        let stream = stream_of::<A>(id);
        let span = batch_span(A::CATEGORY, &stream);
        // Each command's events carry its caller's trace context, or else
        // the batch's.
        let batch_trace = trace::traceparent_of(&span);
        let traced: Vec<(CommandContext, A::Command)>;
        let commands = match &batch_trace {
            Some(traceparent) if commands.iter().any(|(c, _)| c.traceparent.is_none()) => {
                traced = commands
                    .iter()
                    .map(|(c, command)| {
                        let mut c = c.clone();
                        c.traceparent.get_or_insert_with(|| traceparent.clone());
                        (c, command.clone())
                    })
                    .collect();
                &traced[..]
            }
            Some(_) | None => commands,
        };
        self.execute_many_in_span::<A>(id, stream, commands)
            .instrument(span)
            .await
    }

    async fn execute_many_in_span<A: Aggregate>(
        &self,
        id: Uuid,
        stream: StreamId,
        commands: &[(CommandContext, A::Command)],
    ) -> Result<Vec<Result<(), A::Error>>, CommandError<A::Error>> {
        for attempt in 1..=self.retry.max_attempts {
            let (mut loaded, mut verified) = self.for_decision::<A>(id, &stream, attempt).await?;
            let (base, state, revision, outcomes, new_events) = loop {
                let base = loaded.revision;
                let d = Self::decide_all(&stream, loaded.state, base, commands, false)?;
                // A batch that appends nothing is checked by no append:
                // decided again on a state read to the stream's end. One
                // that appends is, refusals and no-ops included: the
                // expected revision proves the state was the latest.
                if !verified && d.new_events.is_empty() {
                    loaded = self.load::<A>(id).await?;
                    verified = true;
                    continue;
                }
                let outcomes: Vec<Result<(), A::Error>> =
                    d.outcomes.into_iter().map(|o| o.map(|_| ())).collect();
                break (base, d.state, d.revision, outcomes, d.new_events);
            };
            let count = |outcomes: &[Result<(), A::Error>]| {
                for o in outcomes {
                    self.stats.outcome(
                        A::CATEGORY,
                        if o.is_ok() {
                            Outcome::Appended
                        } else {
                            Outcome::Rejected
                        },
                    );
                }
            };
            if new_events.is_empty() {
                count(&outcomes);
                return Ok(outcomes);
            }
            let expected = base.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            match self
                .append_retrying_transient(A::CATEGORY, &stream, expected, new_events, None)
                .await
            {
                Ok(outcome) => {
                    if Some(outcome.revision) == revision {
                        self.snapshot_if_due(
                            &stream,
                            &state,
                            base,
                            outcome.revision,
                            outcome.position,
                        );
                        self.cache
                            .put(&stream, state, outcome.revision, outcome.position);
                    }
                    count(&outcomes);
                    return Ok(outcomes);
                }
                // Some of the batch was stored before (a step repeated after
                // a crash, whose "already done" the state no longer shows):
                // each command alone, in order, so the store recognises the
                // repeated ones and appends the others.
                Err(StoreError::DuplicateEventId(_)) => {
                    tracing::debug!(%stream, "a batch repeats stored steps; one by one");
                    let mut outcomes = Vec::with_capacity(commands.len());
                    for (ctx, command) in commands {
                        match self.execute::<A>(id, ctx, command).await {
                            Ok(_) => outcomes.push(Ok(())),
                            Err(CommandError::Rejected(refusal)) => outcomes.push(Err(refusal)),
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(outcomes);
                }
                Err(StoreError::WrongExpectedRevision { .. }) => {
                    tracing::debug!(%stream, attempt, "conflict on a batch; reloading");
                    self.stats.conflict(A::CATEGORY);
                    // A cached state another process moved past: reload at
                    // once. A race lost on the latest state: back off.
                    if verified && attempt < self.retry.max_attempts {
                        self.stats.retry(A::CATEGORY);
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                    }
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
        Err(CommandError::Conflict {
            stream,
            attempts: self.retry.max_attempts,
        })
    }

    /// The aggregate to decide on, and whether it is known to be the
    /// stream's latest state: on a first attempt the cached state alone,
    /// without reading the tail (an append of what is decided is checked
    /// by its expected revision anyway); otherwise, or on a miss, a load.
    async fn for_decision<A: Aggregate>(
        &self,
        id: Uuid,
        stream: &StreamId,
        attempt: u32,
    ) -> Result<(Loaded<A>, bool), LoadError> {
        if attempt == 1 {
            if let Some((state, revision, position)) = self.cache.get::<A>(stream) {
                let loaded = Loaded {
                    state,
                    revision: Some(revision),
                    position,
                };
                return Ok((loaded, false));
            }
        }
        Ok((self.load::<A>(id).await?, true))
    }

    /// Decides `commands` one after another from `state` at `revision`.
    /// Each command's outcome is its event count or its refusal; with
    /// `keep_states`, `states` holds the state right after each command.
    fn decide_all<A: Aggregate>(
        stream: &StreamId,
        state: A,
        revision: Option<u64>,
        commands: &[(CommandContext, A::Command)],
        keep_states: bool,
    ) -> Result<DecidedAll<A>, CodecError> {
        let mut all = DecidedAll {
            state,
            revision,
            outcomes: Vec::with_capacity(commands.len()),
            states: Vec::new(),
            new_events: Vec::new(),
        };
        for (ctx, command) in commands {
            match all.state.decide(command) {
                Ok(events) => {
                    for (i, e) in events.iter().enumerate() {
                        all.new_events
                            .push(to_new_event(e, ctx, ctx.event_id(stream, i))?);
                    }
                    if !events.is_empty() {
                        let n = events.len() as u64;
                        all.revision = Some(all.revision.map_or(n - 1, |r| r + n));
                    }
                    all.state = events.iter().fold(all.state, |s, e| s.evolve(e));
                    all.outcomes.push(Ok(events.len()));
                }
                Err(refusal) => all.outcomes.push(Err(refusal)),
            }
            if keep_states {
                all.states.push(all.state.clone());
            }
        }
        Ok(all)
    }

    /// Appends, re-sending the very same events (same ids, so idempotent) when
    /// the store reports a transient failure.
    async fn append_retrying_transient(
        &self,
        category: &'static str,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: Option<&IdempotencyKey>,
    ) -> Result<marketplace_store::AppendOutcome, StoreError> {
        let span = tracing::info_span!("append", stream = %stream, events = events.len());
        self.append_in_span(category, stream, expected, events, key)
            .instrument(span)
            .await
    }

    async fn append_in_span(
        &self,
        category: &'static str,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: Option<&IdempotencyKey>,
    ) -> Result<marketplace_store::AppendOutcome, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match key {
                Some(key) => {
                    self.store
                        .append_idempotent(stream, expected, events.clone(), key.clone())
                        .await
                }
                None => self.store.append(stream, expected, events.clone()).await,
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.retry.max_attempts => {
                    tracing::warn!(%stream, error = %e, "transient append failure; retrying");
                    self.stats.retry(category);
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }
}

pub(crate) fn to_new_event<E: marketplace_domain::EventSet>(
    event: &E,
    ctx: &CommandContext,
    event_id: Uuid,
) -> Result<NewEvent, CodecError> {
    let encoded = encode(event)?;
    Ok(NewEvent {
        event_id,
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        data: encoded.data,
        metadata: EventMetadata {
            correlation_id: Some(ctx.correlation_id),
            causation_id: ctx.causation_id,
            actor: ctx.actor.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            traceparent: ctx.traceparent.clone(),
            ..EventMetadata::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use marketplace_domain::listing::ReservationOutcome;
    use marketplace_domain::listing::{
        CreateListing, Listing, ListingCommand, ListingError, ListingSpec, ListingStatus,
        PublishListing,
    };
    use marketplace_domain::values::{
        AccountId, Actor, Category, Currency, Description, ListingId, Money, Quantity, Role, Tags,
        Title,
    };
    use marketplace_store::{InMemoryEventStore, RecordedEvent};

    use super::*;

    fn seller() -> Actor {
        Actor {
            account_id: AccountId(Uuid::now_v7()),
            roles: vec![Role::Seller],
        }
    }

    fn create(id: Uuid, actor: Actor) -> ListingCommand {
        ListingCommand::Create(CreateListing {
            listing_id: ListingId(id),
            actor,
            spec: ListingSpec::Physical {
                quantity: Quantity(5),
            },
            title: Title::parse("Lamp").expect("valid"),
            description: Description::parse("").expect("valid"),
            category: Category::parse("home").expect("valid"),
            tags: Tags::default(),
            price: Money {
                minor: 1000,
                currency: Currency::parse("EUR").expect("valid"),
            },
            at: Utc::now(),
        })
    }

    #[tokio::test]
    async fn appends_decided_events_with_their_context_and_rebuilds_state() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let (id, actor) = (Uuid::now_v7(), seller());
        let ctx = CommandContext::new(actor.account_id.to_string());
        let created = handler
            .execute::<Listing>(id, &ctx, &create(id, actor.clone()))
            .await
            .expect("create");
        assert_eq!(created.appended, 1);
        let published = handler
            .execute::<Listing>(
                id,
                &ctx,
                &ListingCommand::Publish(PublishListing {
                    actor,
                    at: Utc::now(),
                }),
            )
            .await
            .expect("publish");
        assert_eq!(published.state.status, ListingStatus::Published);
        assert!(published.position > created.position);

        let stored = store
            .read_stream(&stream_of::<Listing>(id), 0)
            .await
            .expect("read");
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].event_type, "listing.published");
        assert_eq!(stored[1].metadata.correlation_id, Some(ctx.correlation_id));
        assert_eq!(stored[1].metadata.actor, ctx.actor);
        assert_eq!(
            stored[1].metadata.traceparent, None,
            "untraced: no trace context"
        );
        let loaded = handler.load::<Listing>(id).await.expect("load");
        assert_eq!(loaded.revision, Some(1));
        assert_eq!(loaded.state, published.state);
    }

    #[tokio::test]
    async fn events_carry_the_trace_context_of_the_command_that_appended_them() {
        use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
        use tracing::Instrument;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _traced = tracing::subscriber::set_default(subscriber);
        let ids = |traceparent: &str| {
            let cx = trace::context_of(traceparent).expect("a valid traceparent");
            let span = cx.span().span_context().clone();
            (span.trace_id().to_string(), span.span_id().to_string())
        };
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let (id, actor) = (Uuid::now_v7(), seller());

        // Outside any span, the context's traceparent is the command's parent.
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ctx = CommandContext {
            traceparent: Some(caller.into()),
            ..CommandContext::new(actor.account_id.to_string())
        };
        handler
            .execute::<Listing>(id, &ctx, &create(id, actor.clone()))
            .await
            .expect("create");
        // Inside a span (a request's), that span is.
        let request = tracing::info_span!("request");
        let (request_trace, request_span) =
            ids(&trace::traceparent_of(&request).expect("the request is traced"));
        handler
            .execute::<Listing>(
                id,
                &CommandContext::new(actor.account_id.to_string()),
                &ListingCommand::Publish(PublishListing {
                    actor,
                    at: Utc::now(),
                }),
            )
            .instrument(request)
            .await
            .expect("publish");

        let stored = store
            .read_stream(&stream_of::<Listing>(id), 0)
            .await
            .expect("read");
        let (first_trace, first_span) =
            ids(stored[0].metadata.traceparent.as_deref().expect("traced"));
        assert_eq!(first_trace, "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(
            first_span, "b7ad6b7169203331",
            "the event names the command's span, not its caller's"
        );
        let (second_trace, second_span) =
            ids(stored[1].metadata.traceparent.as_deref().expect("traced"));
        assert_eq!(second_trace, request_trace);
        assert_ne!(second_span, request_span);
    }

    #[tokio::test]
    async fn a_cached_aggregate_catches_up_with_writes_from_another_process() {
        use marketplace_domain::listing::{Change, SellerChange};
        let store = Arc::new(InMemoryEventStore::new());
        // Two handlers with separate caches stand for two processes.
        let here = CommandHandler::new(store.clone());
        let there = CommandHandler::new(store.clone());
        let (id, actor) = (Uuid::now_v7(), seller());
        let ctx = CommandContext::default();
        here.execute::<Listing>(id, &ctx, &create(id, actor.clone()))
            .await
            .expect("create");
        assert_eq!(here.cache.len(), 1, "the state is cached after the append");
        // The other process restocks twice; this one's cache is now stale.
        for _ in 0..2 {
            there
                .execute::<Listing>(
                    id,
                    &ctx,
                    &ListingCommand::Change(SellerChange {
                        actor: actor.clone(),
                        change: Change::Restock(Quantity(5)),
                        at: Utc::now(),
                    }),
                )
                .await
                .expect("restock");
        }
        // Loading reads the tail past the cached revision.
        let loaded = here.load::<Listing>(id).await.expect("load");
        assert_eq!((loaded.revision, loaded.state.stock), (Some(2), 15));
        // A decision on a stale cache is refused by the expected revision
        // and retried on the caught-up state.
        there
            .execute::<Listing>(
                id,
                &ctx,
                &ListingCommand::Publish(PublishListing {
                    actor: actor.clone(),
                    at: Utc::now(),
                }),
            )
            .await
            .expect("publish there");
        let again = here
            .execute::<Listing>(
                id,
                &ctx,
                &ListingCommand::Publish(PublishListing {
                    actor,
                    at: Utc::now(),
                }),
            )
            .await;
        assert!(matches!(
            again,
            Err(CommandError::Rejected(ListingError::AlreadyPublished))
        ));
        let uncached = CommandHandler::new(store.clone()).with_cache_capacity(0);
        assert_eq!(
            uncached.load::<Listing>(id).await.expect("load").state,
            here.load::<Listing>(id).await.expect("load").state
        );
    }

    #[tokio::test]
    async fn a_rejection_appends_nothing() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let id = Uuid::now_v7();
        let buyer = Actor {
            account_id: AccountId(Uuid::now_v7()),
            roles: vec![Role::Buyer],
        };
        let r = handler
            .execute::<Listing>(id, &CommandContext::default(), &create(id, buyer))
            .await;
        assert!(matches!(
            r,
            Err(CommandError::Rejected(ListingError::NotASeller))
        ));
        assert_eq!(store.head().await.expect("head"), Position::START);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commands_on_one_stream_all_land_through_retries() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let (id, actor) = (Uuid::now_v7(), seller());
        handler
            .execute::<Listing>(id, &CommandContext::default(), &create(id, actor.clone()))
            .await
            .expect("create");
        // Ten racing publishers: exactly one publishes, the rest are refused
        // by the domain after reloading, never by a raw store conflict.
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (handler, actor) = (handler.clone(), actor.clone());
                tokio::spawn(async move {
                    handler
                        .execute::<Listing>(
                            id,
                            &CommandContext::default(),
                            &ListingCommand::Publish(PublishListing {
                                actor,
                                at: Utc::now(),
                            }),
                        )
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(_) => ok += 1,
                Err(CommandError::Rejected(ListingError::AlreadyPublished)) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(
            store
                .read_stream(&stream_of::<Listing>(id), 0)
                .await
                .expect("read")
                .len(),
            2
        );
    }

    /// A store that lets another writer slip one event into a stream just
    /// before the first append to it: a deterministic conflict.
    struct InterleavingStore {
        inner: InMemoryEventStore,
        interloper: std::sync::Mutex<Option<NewEvent>>,
    }

    #[async_trait::async_trait]
    impl EventStore for InterleavingStore {
        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedRevision,
            events: Vec<NewEvent>,
        ) -> Result<marketplace_store::AppendOutcome, StoreError> {
            let interloper = self
                .interloper
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(event) = interloper {
                self.inner
                    .append(stream, expected, vec![event])
                    .await
                    .expect("the interloper appends first");
            }
            self.inner.append(stream, expected, events).await
        }
        async fn append_idempotent(
            &self,
            stream: &StreamId,
            expected: ExpectedRevision,
            events: Vec<NewEvent>,
            key: IdempotencyKey,
        ) -> Result<marketplace_store::AppendOutcome, StoreError> {
            self.inner
                .append_idempotent(stream, expected, events, key)
                .await
        }
        async fn idempotency_record(
            &self,
            key: &str,
        ) -> Result<Option<IdempotencyRecord>, StoreError> {
            self.inner.idempotency_record(key).await
        }
        async fn read_stream(
            &self,
            stream: &StreamId,
            from_revision: u64,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_stream(stream, from_revision).await
        }
        async fn read_all(
            &self,
            from: Position,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_all(from, limit).await
        }
        async fn subscribe_all(
            &self,
            from: Position,
        ) -> Result<marketplace_store::EventStream, StoreError> {
            self.inner.subscribe_all(from).await
        }
        async fn head(&self) -> Result<Position, StoreError> {
            self.inner.head().await
        }
    }

    #[tokio::test]
    async fn stats_count_outcomes_conflicts_and_retries() {
        use marketplace_domain::listing::{Change, SellerChange};
        let inner = InMemoryEventStore::new();
        let (id, actor) = (Uuid::now_v7(), seller());
        let plain = CommandHandler::new(Arc::new(inner.clone()));
        plain
            .execute::<Listing>(id, &CommandContext::default(), &create(id, actor.clone()))
            .await
            .expect("create");
        // Another process restocks between this handler's load and append.
        let restock = ListingCommand::Change(SellerChange {
            actor: actor.clone(),
            change: Change::Restock(Quantity(5)),
            at: Utc::now(),
        });
        let other = plain
            .load::<Listing>(id)
            .await
            .expect("load")
            .state
            .decide(&restock)
            .expect("a restock is allowed");
        let interloper =
            to_new_event(&other[0], &CommandContext::default(), Uuid::now_v7()).expect("encode");
        let store = InterleavingStore {
            inner: inner.clone(),
            interloper: std::sync::Mutex::new(Some(interloper)),
        };
        let handler = CommandHandler::new(Arc::new(store));
        let done = handler
            .execute::<Listing>(id, &CommandContext::default(), &restock)
            .await
            .expect("lands after one retry");
        assert_eq!(done.state.stock, 15, "both restocks count");
        let refused = handler
            .execute::<Listing>(id, &CommandContext::default(), &create(id, actor.clone()))
            .await;
        assert!(matches!(refused, Err(CommandError::Rejected(_))));

        let stats = handler.stats().snapshot();
        assert_eq!(stats.conflicts.get(Listing::CATEGORY), Some(&1));
        assert_eq!(stats.retries.get(Listing::CATEGORY), Some(&1));
        assert_eq!(
            stats.outcomes.get(&(Listing::CATEGORY, Outcome::Appended)),
            Some(&1)
        );
        assert_eq!(
            stats.outcomes.get(&(Listing::CATEGORY, Outcome::Rejected)),
            Some(&1)
        );
        // Clones share the counters; another handler has its own.
        assert_eq!(handler.clone().stats().snapshot(), stats);
        let plain = plain.stats().snapshot();
        assert_eq!(
            plain.outcomes.get(&(Listing::CATEGORY, Outcome::Appended)),
            Some(&1)
        );
        assert!(plain.conflicts.is_empty());
    }

    #[tokio::test]
    async fn event_ids_derive_from_the_idempotency_key() {
        let (id, actor) = (Uuid::now_v7(), seller());
        let key = |k: &str| IdempotencyKey {
            key: k.to_owned(),
            request_hash: "h".to_owned(),
        };
        let mut ids = Vec::new();
        // The same request with the same key, against two logs in the same
        // state (a retry whose first attempt's record was lost), and once
        // with another key.
        for k in ["key-1", "key-1", "key-2"] {
            let store = InMemoryEventStore::new();
            let handler = CommandHandler::new(Arc::new(store.clone()));
            handler
                .execute_idempotent::<Listing>(
                    id,
                    &CommandContext::default(),
                    &create(id, actor.clone()),
                    key(k),
                )
                .await
                .expect("create");
            let stored = store
                .read_stream(&stream_of::<Listing>(id), 0)
                .await
                .expect("read");
            ids.push(stored[0].event_id);
        }
        assert_eq!(ids[0], ids[1], "same key, same revision: same event id");
        assert_ne!(ids[0], ids[2], "another key: another event id");
    }

    /// A listing with 100 units on sale, created and published by `handler`.
    async fn on_sale(handler: &CommandHandler) -> (Uuid, Actor) {
        let (id, actor) = (Uuid::now_v7(), seller());
        let ctx = CommandContext::new("test");
        let mut create = create(id, actor.clone());
        if let ListingCommand::Create(c) = &mut create {
            c.spec = ListingSpec::Physical {
                quantity: Quantity(100),
            };
        }
        handler
            .execute::<Listing>(id, &ctx, &create)
            .await
            .expect("create");
        let publish = ListingCommand::Publish(PublishListing {
            actor: actor.clone(),
            at: Utc::now(),
        });
        handler
            .execute::<Listing>(id, &ctx, &publish)
            .await
            .expect("publish");
        (id, actor)
    }

    /// A saga step's context: ids derive from the step, as in a process
    /// manager.
    fn step(trigger: Uuid, name: &str) -> CommandContext {
        CommandContext {
            event_id_seed: Some(Uuid::new_v5(&trigger, name.as_bytes())),
            ..CommandContext::new("saga")
        }
    }

    fn reserve_units(order: Uuid, units: u32) -> ListingCommand {
        ListingCommand::Reserve(marketplace_domain::listing::ReserveStock {
            order_id: marketplace_domain::values::OrderId(order),
            buyer_id: AccountId(Uuid::now_v7()),
            quantity: Quantity(units),
            at: Utc::now(),
        })
    }

    fn reserve(order: Uuid) -> ListingCommand {
        reserve_units(order, 1)
    }

    fn end(order: Uuid, outcome: ReservationOutcome) -> ListingCommand {
        ListingCommand::EndReservation(marketplace_domain::listing::EndReservation {
            order_id: marketplace_domain::values::OrderId(order),
            outcome,
            at: Utc::now(),
        })
    }

    fn commit(order: Uuid) -> ListingCommand {
        end(order, ReservationOutcome::Committed)
    }

    #[tokio::test]
    async fn a_step_repeated_after_its_reservation_ended_is_recognised_by_the_store() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let (id, _) = on_sale(&handler).await;
        let order = Uuid::now_v7();
        let (trigger, shipped) = (Uuid::now_v7(), Uuid::now_v7());
        handler
            .execute::<Listing>(id, &step(trigger, "reserve"), &reserve(order))
            .await
            .expect("reserve");
        // Other orders move the stream on; then this one's reservation is
        // committed (the listing forgets the order).
        for _ in 0..3 {
            let other = Uuid::now_v7();
            handler
                .execute::<Listing>(id, &step(other, "reserve"), &reserve(other))
                .await
                .expect("another reservation");
        }
        handler
            .execute::<Listing>(id, &step(shipped, "commit"), &commit(order))
            .await
            .expect("commit");
        let before = store
            .read_stream(&stream_of::<Listing>(id), 0)
            .await
            .expect("read");
        // The saga repeats the old reserve step (a replay after a crash),
        // from a fresh process (no cache), and the commit too.
        let fresh = CommandHandler::new(Arc::new(store.clone()));
        let again = fresh
            .execute::<Listing>(id, &step(trigger, "reserve"), &reserve(order))
            .await
            .expect("repeated reserve");
        assert_eq!(again.appended, 0, "recognised as already stored");
        let again = fresh
            .execute::<Listing>(id, &step(shipped, "commit"), &commit(order))
            .await
            .expect("repeated commit");
        assert_eq!(again.appended, 0);
        let after = store
            .read_stream(&stream_of::<Listing>(id), 0)
            .await
            .expect("read");
        assert_eq!(after.len(), before.len(), "nothing appended twice");
        let state = fresh.load::<Listing>(id).await.expect("load").state;
        assert_eq!(
            (state.sold, state.reserved.len(), state.available()),
            (1, 3, 96)
        );
        assert_eq!(again.state, state, "the state returned is the stream's");

        // In a batch, beside new orders: the repeated one appends nothing,
        // the others are reserved, in order.
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = vec![
            (step(a, "reserve"), reserve(a)),
            (step(trigger, "reserve"), reserve(order)),
            (step(b, "reserve"), reserve(b)),
        ];
        let outcomes = fresh
            .execute_many::<Listing>(id, &batch)
            .await
            .expect("batch");
        assert_eq!(outcomes, vec![Ok(()), Ok(()), Ok(())]);
        let state = fresh.load::<Listing>(id).await.expect("load").state;
        assert_eq!(
            (state.sold, state.reserved.len(), state.available()),
            (1, 5, 94)
        );
        let stored = store
            .read_stream(&stream_of::<Listing>(id), 0)
            .await
            .expect("read");
        assert_eq!(stored.len(), before.len() + 2);
    }

    /// Two processes (handlers with their own caches) on one log: what one
    /// decides on its cached state without reading the tail is right even
    /// when the other moved the stream on.
    #[tokio::test]
    async fn decisions_on_a_stale_cache_are_checked_or_taken_again() {
        let store = InMemoryEventStore::new();
        let (a, b) = (
            CommandHandler::new(Arc::new(store.clone())),
            CommandHandler::new(Arc::new(store.clone())),
        );
        let (id, _) = on_sale(&a).await;
        let ctx = || CommandContext::new("test");
        // A appends: its state would append; B took all the stock meanwhile
        // (A's cache does not know): the append conflicts, A reloads and
        // refuses.
        let big = Uuid::now_v7();
        b.execute::<Listing>(id, &ctx(), &reserve_units(big, 100))
            .await
            .expect("B takes it all");
        let refused = a
            .execute::<Listing>(id, &ctx(), &reserve(Uuid::now_v7()))
            .await;
        assert!(
            matches!(
                refused,
                Err(CommandError::Rejected(ListingError::OutOfStock {
                    available: 0,
                    ..
                }))
            ),
            "{refused:?}"
        );
        // A's cache now says sold out; B releases: A's refusal on the cached
        // state is taken again on the latest and it reserves.
        b.execute::<Listing>(id, &ctx(), &end(big, ReservationOutcome::Released))
            .await
            .expect("B releases");
        let order = Uuid::now_v7();
        let done = a
            .execute::<Listing>(id, &ctx(), &reserve(order))
            .await
            .expect("A reserves");
        assert_eq!((done.appended, done.state.available()), (1, 99));
        // A's cache says `order` holds a unit; B releases it: A's no-op on
        // the cached state is taken again and reserves anew.
        b.execute::<Listing>(id, &ctx(), &end(order, ReservationOutcome::Released))
            .await
            .expect("B releases");
        let again = a
            .execute::<Listing>(id, &ctx(), &reserve(order))
            .await
            .expect("A reserves again");
        assert_eq!((again.appended, again.state.available()), (1, 99));
        // The same in a batch that appends nothing on the cached state.
        b.execute::<Listing>(id, &ctx(), &end(order, ReservationOutcome::Released))
            .await
            .expect("B releases");
        let outcomes = a
            .execute_many::<Listing>(id, &[(ctx(), reserve(order))])
            .await
            .expect("batch");
        assert_eq!(outcomes, vec![Ok(())]);
        let state = b.load::<Listing>(id).await.expect("load").state;
        assert_eq!((state.reserved.len(), state.available()), (1, 99));
    }

    /// Concurrent commands on one stream: each gets its own outcome (the
    /// stock runs out exactly), and the stream is idle again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queued_commands_keep_their_outcomes_and_free_the_stream() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let (id, _) = on_sale(&handler).await;
        let calls: Vec<_> = (0..150)
            .map(|_| {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let order = Uuid::now_v7();
                    handler
                        .execute::<Listing>(id, &step(order, "reserve"), &reserve(order))
                        .await
                })
            })
            .collect();
        let mut reserved = 0;
        for call in calls {
            match call.await.expect("task") {
                Ok(done) => {
                    assert_eq!(done.appended, 1);
                    reserved += 1;
                }
                Err(CommandError::Rejected(ListingError::OutOfStock { .. })) => {}
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(reserved, 100, "exactly the stock");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while handler.hot.busy() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream stayed busy"
            );
            tokio::task::yield_now().await;
        }
        let state = handler.load::<Listing>(id).await.expect("load").state;
        assert_eq!((state.reserved.len(), state.available()), (100, 0));
    }

    #[tokio::test]
    async fn a_load_after_a_miss_starts_from_the_snapshot() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone())).with_snapshot_every(10);
        let (id, _) = on_sale(&handler).await;
        let stream = stream_of::<Listing>(id);
        for _ in 0..12 {
            let order = Uuid::now_v7();
            handler
                .execute::<Listing>(id, &step(order, "reserve"), &reserve(order))
                .await
                .expect("reserve");
            handler
                .execute::<Listing>(id, &step(order, "commit"), &commit(order))
                .await
                .expect("commit");
        }
        // 26 events: snapshots were due at the 10th and the 20th.
        let snapshot = {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match store.read_snapshot(&stream).await.expect("read") {
                    Some(s) if s.revision == 19 => break s,
                    _ => {
                        assert!(tokio::time::Instant::now() < deadline, "no snapshot at 19");
                        tokio::task::yield_now().await;
                    }
                }
            }
        };
        assert_eq!(snapshot.version, Listing::SNAPSHOT_VERSION);
        // A new process folds the snapshot and the six events after it; so
        // a snapshot whose state was wrong would show.
        let mut doctored = snapshot.clone();
        doctored.state["stock"] = serde_json::json!(1_000);
        store
            .write_snapshot(&stream, doctored)
            .await
            .expect("write");
        let fresh = CommandHandler::new(Arc::new(store.clone()));
        let loaded = fresh.load::<Listing>(id).await.expect("load");
        assert_eq!((loaded.revision, loaded.state.sold), (Some(25), 12));
        assert_eq!(loaded.state.stock, 1_000, "it started from the snapshot");
        // Another version is passed over: the events are folded.
        let mut other = snapshot;
        other.version += 1;
        other.state["stock"] = serde_json::json!(7);
        store.write_snapshot(&stream, other).await.expect("write");
        let folded = CommandHandler::new(Arc::new(store.clone()))
            .with_snapshot_every(0)
            .load::<Listing>(id)
            .await
            .expect("load");
        assert_eq!((folded.state.stock, folded.state.sold), (100, 12));
        let from_other = CommandHandler::new(Arc::new(store.clone()))
            .load::<Listing>(id)
            .await
            .expect("load");
        assert_eq!(
            from_other.state, folded.state,
            "a snapshot of another version is ignored"
        );
    }

    #[test]
    fn backoff_stays_within_its_ceiling() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= p.backoff.max);
        }
    }
}

//! The aggregate cache: recently used aggregate states with their revision.
//!
//! A command on a cached aggregate is decided on the cached state without
//! a read, and a load reads only the tail of its stream (usually nothing)
//! instead of the whole history. The cache is safe across processes
//! without invalidation: an entry is always a true state at its revision,
//! and the append's expected-revision check refuses a decision made on a
//! state that another process has moved past; the retry then reads the
//! tail from the cached revision on. A decision that appends nothing (a
//! no-op, a refusal) is checked by no append, so the handler takes it
//! again on a state read to the stream's end.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use marketplace_store::{Position, StreamId};

struct Entry {
    state: Arc<dyn Any + Send + Sync>,
    revision: u64,
    position: Position,
    used: u64,
}

/// A bounded map from stream to (state, revision, position), shared by the
/// clones of a [`crate::CommandHandler`].
pub(crate) struct AggregateCache {
    entries: Mutex<HashMap<StreamId, Entry>>,
    clock: AtomicU64,
    capacity: usize,
}

impl AggregateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            capacity,
        }
    }

    /// The cached state of `stream` if it is an `A`.
    pub(crate) fn get<A: Clone + Send + Sync + 'static>(
        &self,
        stream: &StreamId,
    ) -> Option<(A, u64, Position)> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get_mut(stream)?;
        entry.used = now;
        let state = entry.state.downcast_ref::<A>()?.clone();
        Some((state, entry.revision, entry.position))
    }

    /// Takes the cached state of `stream` out of the cache, if it is an
    /// `A`: no copy of a large state for a caller that will put back the
    /// state it leaves (the next [`put`](Self::put)). Meanwhile others miss.
    pub(crate) fn take<A: Send + Sync + 'static>(
        &self,
        stream: &StreamId,
    ) -> Option<(A, u64, Position)> {
        let mut entries = self.entries.lock().ok()?;
        if !entries.get(stream)?.state.is::<A>() {
            return None;
        }
        let entry = entries.remove(stream)?;
        drop(entries);
        let state = entry.state.downcast::<A>().ok()?;
        // Only the cache held it: `get` hands out copies.
        let state = Arc::try_unwrap(state).ok()?;
        Some((state, entry.revision, entry.position))
    }

    /// Records `state` as `stream` at `revision`, unless a newer revision is
    /// already cached.
    pub(crate) fn put<A: Send + Sync + 'static>(
        &self,
        stream: &StreamId,
        state: A,
        revision: u64,
        position: Position,
    ) {
        if self.capacity == 0 {
            return;
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.get(stream).is_some_and(|e| e.revision > revision) {
            return;
        }
        entries.insert(
            stream.clone(),
            Entry {
                state: Arc::new(state),
                revision,
                position,
                used: now,
            },
        );
        if entries.len() > self.capacity {
            // Evict the least recently used tenth in one go.
            let mut ages: Vec<(u64, StreamId)> =
                entries.iter().map(|(k, e)| (e.used, k.clone())).collect();
            ages.sort_unstable_by_key(|(used, _)| *used);
            for (_, k) in ages.into_iter().take(self.capacity / 10 + 1) {
                entries.remove(&k);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

//! Counters of what commands did, per aggregate category: outcomes,
//! optimistic-concurrency conflicts, and retries. Read by the API's
//! `/metrics`; cheap enough to update on every command.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// How one command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Appended its events.
    Appended,
    /// Decided nothing to append (already in the asked-for state).
    NoOp,
    /// An idempotent retry: answered from the key's first record.
    Replayed,
    /// Refused by the domain.
    Rejected,
    /// Gave up after its conflict retries.
    Conflict,
    /// The idempotency key was reused with different input.
    KeyReused,
    /// The store or a codec failed.
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Appended => "appended",
            Outcome::NoOp => "noop",
            Outcome::Replayed => "replayed",
            Outcome::Rejected => "rejected",
            Outcome::Conflict => "conflict",
            Outcome::KeyReused => "key_reused",
            Outcome::Error => "error",
        }
    }
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Commands by (aggregate category, outcome).
    pub outcomes: BTreeMap<(&'static str, Outcome), u64>,
    /// Appends refused by a wrong expected revision, by category.
    pub conflicts: BTreeMap<&'static str, u64>,
    /// Retries (after a conflict or a transient store failure), by category.
    pub retries: BTreeMap<&'static str, u64>,
}

/// The live counters of one [`crate::CommandHandler`] (shared by its clones).
#[derive(Debug, Default)]
pub struct CommandStats {
    inner: Mutex<StatsSnapshot>,
}

impl CommandStats {
    fn with(&self, f: impl FnOnce(&mut StatsSnapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(crate) fn outcome(&self, category: &'static str, outcome: Outcome) {
        self.with(|s| *s.outcomes.entry((category, outcome)).or_default() += 1);
    }

    pub(crate) fn conflict(&self, category: &'static str) {
        self.with(|s| *s.conflicts.entry(category).or_default() += 1);
    }

    pub(crate) fn retry(&self, category: &'static str) {
        self.with(|s| *s.retries.entry(category).or_default() += 1);
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

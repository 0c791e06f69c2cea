//! The aggregate trait and the given/when/then test harness.

use std::fmt::Debug;

use serde::Serialize;

use crate::event::EventSet;

/// An event-sourced aggregate: state rebuilt by folding its events, and
/// commands decided against that state.
///
/// `decide` and `evolve` are synchronous and side-effect free on purpose:
/// anything a decision needs from the outside world (the time, a new id, the
/// acting account's roles) is looked up *before* the command is built and
/// travels on it. That keeps decisions replayable and testable as plain
/// values.
pub trait Aggregate: Default + Clone + Debug + Serialize + Send + Sync + 'static {
    /// The stream category, e.g. `listing` for streams `listing-<uuid>`.
    const CATEGORY: &'static str;
    /// The commands this aggregate decides.
    type Command: Clone + Debug + Send + Sync;
    /// The events it records.
    type Event: EventSet;
    /// Why a command was refused.
    type Error: std::error::Error + PartialEq + Send + Sync + 'static;

    /// Validates `command` against the current state and returns the events
    /// that record its effect (possibly none, for an idempotent no-op).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state.
    fn evolve(self, event: &Self::Event) -> Self;

    /// Folds a history into a state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        events.into_iter().fold(Self::default(), Self::evolve)
    }

    /// The version of this aggregate's snapshot form; 0 (the default): it
    /// is never snapshotted. Bump it whenever `evolve` or the state's
    /// fields change meaning: snapshots of another version are ignored,
    /// and the state is folded from the events again.
    const SNAPSHOT_VERSION: u32 = 0;

    /// The state as a snapshot, if this aggregate (and this state) is
    /// snapshotted. A snapshot outlives any erasure of the log, so it never
    /// holds personal data: a state that has some is not snapshotted.
    fn snapshot(&self) -> Option<serde_json::Value> {
        None
    }

    /// A state back from [`snapshot`](Self::snapshot); `None` if it does not
    /// read (then the events are folded instead).
    fn from_snapshot(_snapshot: serde_json::Value) -> Option<Self> {
        None
    }
}

/// Given some history, when a command is decided, then expect events or an
/// error. Used by the aggregate tests next to each aggregate.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
}

/// Starts a given/when/then case from a history of events.
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let history: Vec<_> = history.into_iter().collect();
    Given {
        state: A::replay(&history),
    }
}

/// The outcome of [`Given::when`], to assert on.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the state built from the history.
    pub fn when(self, command: A::Command) -> Then<A> {
        let outcome = self.state.decide(&command);
        Then {
            state: self.state,
            outcome,
        }
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command was accepted with exactly these events, and
    /// returns the state after them for further checks.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                events.iter().fold(self.state, |s, e| s.evolve(e))
            }
            Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
        }
    }

    /// Asserts the command was refused with exactly this error.
    #[track_caller]
    pub fn then_error(self, expected: A::Error) {
        match self.outcome {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }
}

//! The log's newest events as this process's appender committed them, so
//! that the subscribers in this process (projections, process managers,
//! live feeds) read the live tail from memory instead of each querying and
//! decoding the same rows again. Only subscriptions read it: `read_all`
//! (what audits read) always asks the table. Each event is held once and
//! handed out shared ([`EventStore::subscribe_all_shared`]): a batch read
//! by eight local subscribers costs eight reference counts, not eight deep
//! copies of every payload.
//!
//! [`EventStore::subscribe_all_shared`]: crate::EventStore::subscribe_all_shared
//!
//! It only ever answers for a run of positions it holds without a gap:
//! events are pushed after their transaction commits, in commit order (the
//! appender is serial), and a push that does not continue the run (another
//! process, or an append outside the appender, committed in between)
//! starts a new run. A read asking for anything the run does not cover
//! goes to Postgres, so what a reader gets is exactly what the table holds
//! at those positions. The run is bounded ([`RecentEvents::CAPACITY`]).
//!
//! **The appender's own commits in flight.** The `NOTIFY` of a commit often
//! reaches this process's listener before the appender has pushed that
//! commit's rows; a subscriber woken by it would find nothing newer here
//! and query the table for rows about to arrive in memory. So the appender
//! marks the top position of the commit it is waiting for
//! ([`RecentEvents::committing`]); a subscriber at the newest held event,
//! with nothing announced past that mark, waits for the push (the appender
//! wakes every subscriber after it). A commit that fails clears the mark
//! ([`RecentEvents::committed_or_not`]) and wakes them to ask the table.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::DateTime;

use crate::event::{Position, RecordedEvent};

/// A bounded, gap-free run of the newest events this process appended.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    run: RwLock<VecDeque<Arc<RecordedEvent>>>,
    /// The top position of the appender's commit in flight (0: none).
    in_flight: AtomicU64,
}

impl RecentEvents {
    /// Most events held (a few MB): enough for subscribers that keep up;
    /// one that falls behind reads from Postgres.
    pub(crate) const CAPACITY: usize = 32_768;

    /// Adds the rows of a committed transaction, in position order, as the
    /// table holds them (`recorded_at` to the microsecond).
    pub(crate) fn push(&self, rows: Vec<RecordedEvent>) {
        let Some(first) = rows.first().map(|r| r.position) else {
            return;
        };
        let Ok(mut run) = self.run.write() else {
            return;
        };
        if run
            .back()
            .is_some_and(|last| last.position.0 + 1 != first.0)
        {
            run.clear();
        }
        for mut row in rows {
            row.metadata.recorded_at = row
                .metadata
                .recorded_at
                .and_then(|t| DateTime::from_timestamp_micros(t.timestamp_micros()));
            run.push_back(Arc::new(row));
        }
        while run.len() > Self::CAPACITY {
            run.pop_front();
        }
    }

    /// Whether `from` is the newest event this run holds, and `announced`
    /// (the newest position anyone announced) is not past it: a live
    /// subscriber there has nothing to read yet and can wait for the next
    /// announcement without asking Postgres. Sound only while
    /// announcements are not lost: the listener calls
    /// [`forget`](Self::forget) when it may have missed some.
    ///
    /// Also true when what was announced past `from` is no further than the
    /// appender's commit in flight: those rows come here once it commits.
    pub(crate) fn is_newest(&self, from: Position, announced: Position) -> bool {
        let in_flight = Position(self.in_flight.load(Ordering::Acquire));
        self.run
            .read()
            .ok()
            .and_then(|run| run.back().map(|last| last.position))
            .is_some_and(|last| last == from && announced <= last.max(in_flight))
    }

    /// The appender is about to commit rows up to `top`, in order after the
    /// run: until it pushes them (or [`committed_or_not`] says the commit
    /// failed), an announcement up to `top` is its own.
    ///
    /// [`committed_or_not`]: Self::committed_or_not
    pub(crate) fn committing(&self, top: Position) {
        self.in_flight.store(top.0, Ordering::Release);
    }

    /// The commit in flight failed (its outcome may be unknown): nothing is
    /// waited for any longer, and readers go to the table for it.
    pub(crate) fn committed_or_not(&self) {
        self.in_flight.store(0, Ordering::Release);
    }

    /// Drops the run: reads go to Postgres until the next push.
    pub(crate) fn forget(&self) {
        if let Ok(mut run) = self.run.write() {
            run.clear();
        }
    }

    /// Up to `limit` events strictly after `from`, if the run holds the
    /// very next one; `None` sends the reader to Postgres.
    pub(crate) fn read(&self, from: Position, limit: usize) -> Option<Vec<Arc<RecordedEvent>>> {
        let run = self.run.read().ok()?;
        let first = run.front()?.position.0;
        let last = run.back()?.position.0;
        if from.0 + 1 < first || from.0 >= last || limit == 0 {
            return None;
        }
        let start = usize::try_from(from.0 + 1 - first).ok()?;
        Some(run.iter().skip(start).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventMetadata, StreamId};

    fn at(position: u64) -> RecordedEvent {
        RecordedEvent {
            stream_id: StreamId::new("order", uuid::Uuid::now_v7()).expect("stream"),
            revision: 0,
            position: Position(position),
            event_id: uuid::Uuid::now_v7(),
            event_type: "test.happened".into(),
            schema_version: 1,
            data: serde_json::json!({}),
            metadata: EventMetadata::default(),
        }
    }

    fn positions(events: &[Arc<RecordedEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.position.0).collect()
    }

    #[test]
    fn answers_only_for_the_gap_free_run_it_holds() {
        let recent = RecentEvents::default();
        assert!(recent.read(Position(0), 10).is_none(), "empty");
        recent.push(vec![at(5), at(6)]);
        recent.push(vec![at(7)]);
        assert_eq!(
            positions(&recent.read(Position(4), 10).expect("held")),
            [5, 6, 7]
        );
        assert_eq!(positions(&recent.read(Position(5), 1).expect("held")), [6]);
        assert!(recent.read(Position(3), 10).is_none(), "4 is not held");
        assert!(
            recent.read(Position(7), 10).is_none(),
            "nothing after 7 is known"
        );
        // Another process committed 8 and 9: the run starts again at 10,
        // and a reader at 7 must go to the table.
        recent.push(vec![at(10)]);
        assert!(recent.read(Position(7), 10).is_none());
        assert_eq!(
            positions(&recent.read(Position(9), 10).expect("held")),
            [10]
        );
        assert!(
            recent.read(Position(10), 10).is_none(),
            "10 is the last held"
        );
        recent.push(vec![at(11)]);
        assert_eq!(
            positions(&recent.read(Position(9), 10).expect("held")),
            [10, 11]
        );
    }

    #[test]
    fn a_subscriber_at_the_newest_event_waits_unless_more_was_announced() {
        let recent = RecentEvents::default();
        assert!(!recent.is_newest(Position(0), Position(0)), "nothing held");
        recent.push(vec![at(5), at(6)]);
        assert!(recent.is_newest(Position(6), Position(6)));
        assert!(
            !recent.is_newest(Position(5), Position(6)),
            "6 is there to read"
        );
        assert!(
            !recent.is_newest(Position(6), Position(7)),
            "another process announced 7"
        );
        recent.forget();
        assert!(!recent.is_newest(Position(6), Position(6)), "forgotten");
        assert!(recent.read(Position(5), 10).is_none());
    }

    #[test]
    fn an_announcement_of_the_commit_in_flight_is_waited_for_in_memory() {
        let recent = RecentEvents::default();
        recent.push(vec![at(5), at(6)]);
        recent.committing(Position(8));
        assert!(
            recent.is_newest(Position(6), Position(8)),
            "7 and 8 are this appender's commit in flight: wait for its push"
        );
        assert!(
            !recent.is_newest(Position(6), Position(9)),
            "9 is past it: another process's, read the table"
        );
        recent.push(vec![at(7), at(8)]);
        assert_eq!(
            positions(&recent.read(Position(6), 10).expect("held")),
            [7, 8]
        );
        recent.committing(Position(10));
        recent.committed_or_not();
        assert!(
            !recent.is_newest(Position(8), Position(10)),
            "the commit failed, perhaps after committing: ask the table"
        );
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let recent = RecentEvents::default();
        let all: Vec<RecordedEvent> = (1..=RecentEvents::CAPACITY as u64 + 10).map(at).collect();
        recent.push(all.clone());
        assert!(
            recent.read(Position(0), 5).is_none(),
            "the oldest were dropped"
        );
        let tail = recent.read(Position(10), 5).expect("held");
        assert_eq!(positions(&tail), [11, 12, 13, 14, 15]);
    }
}

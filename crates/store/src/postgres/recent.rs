//! The log's newest events as this process's appender committed them, so
//! that the subscribers in this process (projections, process managers,
//! live feeds) read the live tail from memory instead of each querying and
//! decoding the same rows again. Only subscriptions read it: `read_all`
//! (what audits read) always asks the table.
//!
//! It only ever answers for a run of positions it holds without a gap:
//! events are pushed after their transaction commits, in commit order (the
//! appender is serial), and a push that does not continue the run (another
//! process, or an append outside the appender, committed in between)
//! starts a new run. A read asking for anything the run does not cover
//! goes to Postgres, so what a reader gets is exactly what the table holds
//! at those positions. The run is bounded ([`RecentEvents::CAPACITY`]).

use std::collections::VecDeque;
use std::sync::RwLock;

use chrono::DateTime;

use crate::event::{Position, RecordedEvent};

/// A bounded, gap-free run of the newest events this process appended.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    run: RwLock<VecDeque<RecordedEvent>>,
}

impl RecentEvents {
    /// Most events held (a few MB): enough for subscribers that keep up;
    /// one that falls behind reads from Postgres.
    pub(crate) const CAPACITY: usize = 32_768;

    /// Adds the rows of a committed transaction, in position order, as the
    /// table holds them (`recorded_at` to the microsecond).
    pub(crate) fn push(&self, rows: &[RecordedEvent]) {
        let Some(first) = rows.first() else {
            return;
        };
        let Ok(mut run) = self.run.write() else {
            return;
        };
        if run
            .back()
            .is_some_and(|last| last.position.0 + 1 != first.position.0)
        {
            run.clear();
        }
        for row in rows {
            let mut row = row.clone();
            row.metadata.recorded_at = row
                .metadata
                .recorded_at
                .and_then(|t| DateTime::from_timestamp_micros(t.timestamp_micros()));
            run.push_back(row);
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
    pub(crate) fn is_newest(&self, from: Position, announced: Position) -> bool {
        self.run
            .read()
            .ok()
            .and_then(|run| run.back().map(|last| last.position))
            .is_some_and(|last| last == from && announced <= last)
    }

    /// Drops the run: reads go to Postgres until the next push.
    pub(crate) fn forget(&self) {
        if let Ok(mut run) = self.run.write() {
            run.clear();
        }
    }

    /// Up to `limit` events strictly after `from`, if the run holds the
    /// very next one; `None` sends the reader to Postgres.
    pub(crate) fn read(&self, from: Position, limit: usize) -> Option<Vec<RecordedEvent>> {
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

    fn positions(events: &[RecordedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.position.0).collect()
    }

    #[test]
    fn answers_only_for_the_gap_free_run_it_holds() {
        let recent = RecentEvents::default();
        assert!(recent.read(Position(0), 10).is_none(), "empty");
        recent.push(&[at(5), at(6)]);
        recent.push(&[at(7)]);
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
        recent.push(&[at(10)]);
        assert!(recent.read(Position(7), 10).is_none());
        assert_eq!(
            positions(&recent.read(Position(9), 10).expect("held")),
            [10]
        );
        assert!(
            recent.read(Position(10), 10).is_none(),
            "10 is the last held"
        );
        recent.push(&[at(11)]);
        assert_eq!(
            positions(&recent.read(Position(9), 10).expect("held")),
            [10, 11]
        );
    }

    #[test]
    fn a_subscriber_at_the_newest_event_waits_unless_more_was_announced() {
        let recent = RecentEvents::default();
        assert!(!recent.is_newest(Position(0), Position(0)), "nothing held");
        recent.push(&[at(5), at(6)]);
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
    fn holds_at_most_its_capacity() {
        let recent = RecentEvents::default();
        let all: Vec<RecordedEvent> = (1..=RecentEvents::CAPACITY as u64 + 10).map(at).collect();
        recent.push(&all);
        assert!(
            recent.read(Position(0), 5).is_none(),
            "the oldest were dropped"
        );
        let tail = recent.read(Position(10), 5).expect("held");
        assert_eq!(positions(&tail), [11, 12, 13, 14, 15]);
    }
}

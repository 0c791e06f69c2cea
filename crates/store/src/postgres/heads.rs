//! What the appender knows of the log from its own commits: the log's top
//! position after its last commit, and the head (last revision and hash) of
//! the streams it has written or looked up. It lets planning skip the index
//! probes whose answers it already has.
//!
//! **Valid only while no one else has appended.** Every append, in any
//! process, takes the append lock and writes at the stored maximum position
//! plus one, so the top can only grow, and it grows with every commit. If the
//! top read under the lock is still the one recorded here, nothing has been
//! appended since, and every head held here is still the stored one. If it
//! is not, the planning lookup has already probed everything, as it would
//! without this cache (see `PLANNING_LOOKUP` in `appender.rs`), and the heads
//! are dropped.
//!
//! **Event ids are not cached.** While the heads are valid, planning does not
//! look up whether the appended event ids are already stored. The
//! `UNIQUE(event_id)` index checks that again on insert. When it finds one
//! (an idempotent retry, or a duplicate id), the batch is rolled back and
//! planned again with every id looked up, so a retry still gets its stored
//! outcome and a duplicate still gets its own error.
//!
//! Anything the appender cannot vouch for — a failed or unknown commit, a
//! rolled-back batch — forgets everything. The next batch then probes as if
//! the process had just started.

use std::collections::HashMap;

use crate::event::StreamId;

/// A stream's last revision and the hash of its last event.
pub(crate) type Head = (u64, Option<String>);

/// The heads this appender wrote, valid as of the log's top position `top`.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    /// The log's top position after this appender's last commit (0: empty),
    /// or `None` when it knows nothing.
    top: Option<u64>,
    streams: HashMap<StreamId, Head>,
}

impl Heads {
    /// Most streams held (each about 200 bytes). When more would be held,
    /// the map starts again empty: the streams it lost are looked up again.
    pub(crate) const CAPACITY: usize = 16_384;

    /// The top position to check the stored one against, as the planning
    /// lookup's parameter: -1 (never a position) when nothing is known.
    pub(crate) fn expected_top(&self) -> i64 {
        self.top.and_then(|t| i64::try_from(t).ok()).unwrap_or(-1)
    }

    /// Whether the stored top read under the lock (`None`: an empty log)
    /// shows the heads held here are still the stored ones.
    pub(crate) fn still_valid(&self, stored_top: Option<u64>) -> bool {
        self.top.is_some() && self.top == Some(stored_top.unwrap_or(0))
    }

    /// The head held for `stream`, if any (meaningful only while
    /// [`Self::still_valid`]).
    pub(crate) fn get(&self, stream: &StreamId) -> Option<&Head> {
        if self.top.is_some() {
            self.streams.get(stream)
        } else {
            None
        }
    }

    /// Records what a committed batch left: the log's top position and the
    /// heads its planning saw or wrote.
    pub(crate) fn committed(&mut self, top: u64, heads: HashMap<StreamId, Head>) {
        if self.top.is_none() || self.streams.len() + heads.len() > Self::CAPACITY {
            self.streams.clear();
        }
        self.top = Some(top);
        self.streams.extend(heads);
    }

    /// Forgets everything: the next batch looks every head and id up.
    pub(crate) fn forget(&mut self) {
        self.top = None;
        self.streams.clear();
    }

    /// How many streams are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn stream() -> StreamId {
        StreamId::new("order", Uuid::now_v7()).expect("stream")
    }

    #[test]
    fn nothing_known_matches_no_stored_top() {
        let heads = Heads::default();
        assert_eq!(heads.expected_top(), -1);
        assert!(!heads.still_valid(None));
        assert!(!heads.still_valid(Some(0)));
    }

    #[test]
    fn a_commit_is_valid_until_the_top_moves() {
        let (a, b) = (stream(), stream());
        let mut heads = Heads::default();
        heads.committed(7, HashMap::from([(a.clone(), (3, Some("h".into())))]));
        assert_eq!(heads.expected_top(), 7);
        assert!(heads.still_valid(Some(7)));
        assert!(!heads.still_valid(Some(8)));
        assert_eq!(heads.get(&a), Some(&(3, Some("h".into()))));
        assert_eq!(heads.get(&b), None);
        heads.forget();
        assert_eq!(heads.get(&a), None);
        assert!(!heads.still_valid(Some(7)));
    }

    #[test]
    fn an_empty_log_is_top_zero() {
        let mut heads = Heads::default();
        heads.committed(0, HashMap::new());
        assert!(heads.still_valid(None));
        assert!(!heads.still_valid(Some(1)));
    }

    #[test]
    fn a_full_map_starts_again() {
        let mut heads = Heads::default();
        let many: HashMap<_, _> = (0..Heads::CAPACITY)
            .map(|_| (stream(), (0, None)))
            .collect();
        heads.committed(1, many);
        assert_eq!(heads.len(), Heads::CAPACITY);
        let one = stream();
        heads.committed(2, HashMap::from([(one.clone(), (0, None))]));
        assert_eq!(heads.len(), 1);
        assert!(heads.get(&one).is_some());
    }
}

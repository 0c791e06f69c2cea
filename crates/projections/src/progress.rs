//! What the projections of this process are doing, for read-your-writes and
//! for status surfaces.
//!
//! - **Positions.** The runtime publishes a projection's position after each
//!   committed batch (and, while it stands by, the position the leader in
//!   another process has committed); a query carrying a consistency token
//!   waits (bounded) until every projection it reads has passed it.
//!   The position is always the *live* build's (the one the queries read): a
//!   runner building a new version does not move it, it follows the live
//!   build's checkpoint until its own build is switched in.
//! - **Runner states.** Each runner publishes its local [`RunnerStatus`]:
//!   `STANDBY` while another runner holds the projection's leadership lock
//!   (or while its code is older than the live build), `RUNNING` while it
//!   leads, `FAILED` after it gave up on an event, and `STOPPED` when it is
//!   not running; while it leads a build that is not live yet, its
//!   [`RebuildProgress`] too. Cluster-wide status (lag, the leader's state,
//!   rebuilds) is [`crate::status::status`].
//! - **WAL locations.** Beside its position, each projection keeps a short
//!   history of `(position, WAL location)` pairs ([`Progress::record_lsn`]):
//!   a location of the primary's write-ahead log taken *after* the commit
//!   that brought the projection to that position was visible, so the
//!   commit's record lies before it. A read replica that has replayed
//!   that far ([`Progress::lsn_reaching`], compared with the replica's
//!   `pg_last_wal_replay_lsn()`) shows the read model at least at that
//!   position. Whoever reads replicas records them (the API's
//!   `replicas` module, after each move of a read model it serves); the
//!   projector runtime itself records none.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketplace_store::Position;
use tokio::sync::watch;

/// The state of a projection runner, as stored in `projection_checkpoints`
/// (`state`) and published per process in [`Progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProjectionState {
    /// Leading: folding events into the read model.
    Running,
    /// Waiting for the leadership lock another runner holds (per process only;
    /// never written to the table, whose row reflects the leader).
    Standby,
    /// Gave up on an event after retries; waits for a reset or a restart.
    Failed,
    /// Not running (never started, shut down, or its leader is gone).
    Stopped,
}

impl ProjectionState {
    /// The stored name: `RUNNING`, `STANDBY`, `FAILED` or `STOPPED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Running => "RUNNING",
            ProjectionState::Standby => "STANDBY",
            ProjectionState::Failed => "FAILED",
            ProjectionState::Stopped => "STOPPED",
        }
    }

    /// Parses a stored name; anything unknown reads as `STOPPED`.
    pub fn parse(s: &str) -> Self {
        match s {
            "RUNNING" => ProjectionState::Running,
            "STANDBY" => ProjectionState::Standby,
            "FAILED" => ProjectionState::Failed,
            _ => ProjectionState::Stopped,
        }
    }
}

impl std::fmt::Display for ProjectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What this process's runner of one projection is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerStatus {
    /// The runner's state.
    pub state: ProjectionState,
    /// The leadership generation while `RUNNING`.
    pub generation: Option<i64>,
    /// The event it could not fold, while `FAILED`.
    pub failed_position: Option<Position>,
    /// Why, while `FAILED`.
    pub last_error: Option<String>,
    /// While it builds a version that does not serve yet: how far.
    pub rebuild: Option<RebuildProgress>,
}

impl RunnerStatus {
    /// A runner in `state` with no further detail.
    pub fn new(state: ProjectionState) -> Self {
        Self {
            state,
            generation: None,
            failed_position: None,
            last_error: None,
            rebuild: None,
        }
    }
}

/// How far a build that does not serve yet has come.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildProgress {
    /// The version being built.
    pub version: i32,
    /// Its schema.
    pub schema: String,
    /// Its committed checkpoint.
    pub position: Position,
    /// The log head when it last looked.
    pub head: Position,
    /// Still loading in bulk (secondary indexes not built yet).
    pub bulk: bool,
}

impl RebuildProgress {
    /// `position / head`, from 0 to 1 (1 for an empty log).
    pub fn fraction(&self) -> f64 {
        fraction(self.position, self.head)
    }
}

/// `position / head` clamped to 0..=1 (1 when the head is 0).
pub fn fraction(position: Position, head: Position) -> f64 {
    if head.0 == 0 {
        1.0
    } else {
        (position.0 as f64 / head.0 as f64).clamp(0.0, 1.0)
    }
}

impl Default for RunnerStatus {
    fn default() -> Self {
        Self::new(ProjectionState::Stopped)
    }
}

/// A location in Postgres' write-ahead log (a `pg_lsn`, as the byte offset
/// `lsn - '0/0'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalLsn(pub u64);

impl std::fmt::Display for WalLsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// How many `(position, WAL location)` pairs each projection keeps: older
/// tokens are answered with the oldest kept pair, which is later than
/// needed and so still safe.
pub const LSN_HISTORY: usize = 256;

#[derive(Clone)]
struct Entry {
    position: watch::Sender<Position>,
    runner: watch::Sender<RunnerStatus>,
    lsns: Arc<Mutex<VecDeque<(Position, WalLsn)>>>,
}

/// Shared, cheap-to-clone registry of projection positions and runner states
/// in this process.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress {
    fn entry(&self, name: &str) -> Entry {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| Entry {
                position: watch::channel(Position::START).0,
                runner: watch::channel(RunnerStatus::default()).0,
                lsns: Arc::default(),
            })
            .clone()
    }

    /// Records that `name` has committed everything up to `position`.
    pub fn advance(&self, name: &str, position: Position) {
        self.entry(name)
            .position
            .send_modify(|p| *p = (*p).max(position));
    }

    /// Where `name` is.
    pub fn position(&self, name: &str) -> Position {
        *self.entry(name).position.borrow()
    }

    /// Follows the position of `name` (it changes after each commit).
    pub fn subscribe(&self, name: &str) -> watch::Receiver<Position> {
        self.entry(name).position.subscribe()
    }

    /// Records that the primary's WAL was at `lsn` once `name` had
    /// committed everything up to `position` (taken after that commit was
    /// visible). Pairs that do not move the position on are ignored.
    pub fn record_lsn(&self, name: &str, position: Position, lsn: WalLsn) {
        let entry = self.entry(name);
        let mut lsns = entry.lsns.lock().unwrap_or_else(|p| p.into_inner());
        if lsns.back().is_some_and(|(p, l)| *p >= position || *l > lsn) {
            return;
        }
        if lsns.len() >= LSN_HISTORY {
            lsns.pop_front();
        }
        lsns.push_back((position, lsn));
    }

    /// A WAL location by which every projection in `names` had committed
    /// `token`: a replica that has replayed up to it shows them all at
    /// `token` or later. `None` when one of them has no recorded location
    /// at or past `token` yet.
    pub fn lsn_reaching(&self, names: &[&str], token: Position) -> Option<WalLsn> {
        let mut needed = WalLsn(0);
        for name in names {
            let entry = self.entry(name);
            let lsns = entry.lsns.lock().unwrap_or_else(|p| p.into_inner());
            let (_, lsn) = lsns.iter().find(|(p, _)| *p >= token)?;
            needed = needed.max(*lsn);
        }
        Some(needed)
    }

    /// Waits until every projection in `names` has reached `token`, or
    /// `timeout` passes. Returns whether they all did.
    pub async fn wait_for(&self, names: &[&str], token: Position, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for name in names {
            let mut rx = self.entry(name).position.subscribe();
            let reached = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= token)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// Publishes what this process's runner of `name` is doing.
    pub fn set_runner(&self, name: &str, status: RunnerStatus) {
        self.entry(name).runner.send_replace(status);
    }

    /// Updates this process's runner of `name` in place.
    pub fn update_runner(&self, name: &str, f: impl FnOnce(&mut RunnerStatus)) {
        self.entry(name).runner.send_modify(f);
    }

    /// What this process's runner of `name` is doing (`STOPPED` if none).
    pub fn runner(&self, name: &str) -> RunnerStatus {
        self.entry(name).runner.borrow().clone()
    }

    /// Every runner this process knows of, by name.
    pub fn runners(&self) -> Vec<(String, RunnerStatus)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .map(|(name, e)| (name.clone(), e.runner.borrow().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Waits until this process's runner of `name` is in `state`, or
    /// `timeout` passes. Returns whether it got there.
    pub async fn wait_for_state(
        &self,
        name: &str,
        state: ProjectionState,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.entry(name).runner.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|s| s.state == state)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_every_named_projection_passes_the_token() {
        let p = Progress::default();
        p.advance("a", Position(10));
        assert!(
            p.wait_for(&["a"], Position(10), Duration::from_millis(1))
                .await
        );
        assert!(
            !p.wait_for(&["a", "b"], Position(10), Duration::from_millis(20))
                .await
        );
        let p2 = p.clone();
        let waiter = tokio::spawn(async move {
            p2.wait_for(&["a", "b"], Position(12), Duration::from_secs(30))
                .await
        });
        p.advance("b", Position(12));
        p.advance("a", Position(15));
        assert!(waiter.await.expect("join"));
        p.advance("a", Position(3));
        assert_eq!(p.position("a"), Position(15), "positions never go back");
    }

    #[test]
    fn the_wal_location_of_a_token_is_the_first_recorded_at_or_past_it() {
        let p = Progress::default();
        assert_eq!(p.lsn_reaching(&["a"], Position(1)), None);
        p.record_lsn("a", Position(10), WalLsn(100));
        p.record_lsn("a", Position(20), WalLsn(200));
        // Not a move on: ignored.
        p.record_lsn("a", Position(20), WalLsn(250));
        p.record_lsn("b", Position(15), WalLsn(180));
        assert_eq!(p.lsn_reaching(&["a"], Position(3)), Some(WalLsn(100)));
        assert_eq!(p.lsn_reaching(&["a"], Position(11)), Some(WalLsn(200)));
        assert_eq!(p.lsn_reaching(&["a"], Position(21)), None);
        assert_eq!(
            p.lsn_reaching(&["a", "b"], Position(12)),
            Some(WalLsn(200)),
            "the latest of the projections read"
        );
        assert_eq!(
            p.lsn_reaching(&["a", "b"], Position(16)),
            None,
            "b has not recorded a location past 16"
        );
        for i in 0..(LSN_HISTORY as u64 + 10) {
            p.record_lsn("c", Position(i + 1), WalLsn(i + 1));
        }
        assert_eq!(
            p.lsn_reaching(&["c"], Position(1)),
            Some(WalLsn(11)),
            "an evicted pair is answered with a later one"
        );
        assert_eq!(WalLsn(0x1_0000_00AB).to_string(), "1/AB");
    }

    #[tokio::test]
    async fn publishes_runner_states() {
        let p = Progress::default();
        assert_eq!(p.runner("a").state, ProjectionState::Stopped);
        let p2 = p.clone();
        let waiter = tokio::spawn(async move {
            p2.wait_for_state("a", ProjectionState::Running, Duration::from_secs(30))
                .await
        });
        p.set_runner("a", RunnerStatus::new(ProjectionState::Standby));
        p.set_runner(
            "a",
            RunnerStatus {
                generation: Some(3),
                ..RunnerStatus::new(ProjectionState::Running)
            },
        );
        assert!(waiter.await.expect("join"));
        assert_eq!(p.runner("a").generation, Some(3));
        assert_eq!(p.runners().len(), 1);
        for s in ["RUNNING", "STANDBY", "FAILED", "STOPPED"] {
            assert_eq!(ProjectionState::parse(s).as_str(), s);
        }
    }
}

//! Read replicas (`serve --read-database-url`): GraphQL queries that only
//! read read models are answered from Postgres hot standbys of the primary;
//! everything else stays on the primary (mutations, subscriptions, the
//! log's audit queries, `projections`, checkpoints, projections and
//! consistency-token bookkeeping).
//!
//! How a read is routed (see [`Replicas::route`]):
//! - **No `X-Consistency-Token`**: the next replica that is up, round
//!   robin. It may be a little behind; that is what a read without a token
//!   accepts.
//! - **With a token**: first, as without replicas, the primary's read
//!   models must have passed it ([`crate::state::AppState::wait_for`]).
//!   Then a replica answers only once it has *replayed* past the commit
//!   that took them there: the WAL location recorded for that position
//!   ([`Progress::lsn_reaching`]), compared with the replica's
//!   `pg_last_wal_replay_lsn()`. It is polled every `--replica-poll-ms`
//!   for at most `--replica-wait-ms`; after that the primary answers.
//! - **A replica down** (the monitor cannot reach it, it is not in
//!   recovery, or a read on it failed) is skipped until the monitor reaches
//!   it again; a read that failed on it is answered again by the primary,
//!   so a replica never fails a read.
//!
//! Where the WAL locations come from: this module's tracker follows the
//! read models' positions in [`Progress`] (moved after each committed
//! batch, in this process or, for an API-only process, by the checkpoint
//! follower) and after each move reads the primary's
//! `pg_current_wal_insert_lsn()`. Read after the commit was visible, it
//! lies past the commit's record, so a replica that has replayed up to it
//! shows the read model at that position or later. Pairs are kept in
//! memory, [`marketplace_projections::progress::LSN_HISTORY`] per read
//! model; a token with no recorded pair yet (the tracker has not caught
//! up) takes the primary's current location instead, which is later still.
//!
//! The read cache ([`crate::read_cache`]) is filled by primary reads only:
//! its entries are tagged with the primary's positions, and a replica's
//! rows may be older than those. Replica reads still use entries that are
//! current (they are at least as new as anything a replica shows).
//!
//! Metrics: `marketplace_replica_reads_total{target, reason}` for every
//! read that could have gone to a replica, `marketplace_replica_up` and
//! `marketplace_replica_lag_bytes` per replica (numbered in the order
//! given).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use marketplace_projections::{Progress, WalLsn};
use marketplace_store::Position;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Secret;

/// How often every replica is probed (health, replay location, lag).
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a probe of one replica may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a read waits for a replica connection before the primary
/// answers instead.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest pause between two WAL locations recorded by the tracker.
pub const TRACK_INTERVAL: Duration = Duration::from_millis(10);
/// Connections per replica pool.
pub const REPLICA_POOL_SIZE: u32 = 32;

/// `serve --read-database-url` and its waits.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// Hot standbys of the primary, in order (`READ_DATABASE_URL`).
    pub urls: Vec<Secret>,
    /// Longest wait for a replica to replay past a consistency token.
    pub wait: Duration,
    /// How often a replica is asked during that wait.
    pub poll: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            wait: Duration::from_millis(200),
            poll: Duration::from_millis(10),
        }
    }
}

/// Where a read went, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRoute {
    /// A replica: the read carried no consistency token.
    Untokened,
    /// A replica: it had replayed past the read's consistency token.
    CaughtUp,
    /// The primary: no replica replayed past the token within the wait.
    Lagging,
    /// The primary: no replica was up (or could be asked).
    Unavailable,
    /// The primary: the read failed on the replica and was answered again.
    Failed,
}

impl ReadRoute {
    /// Every route, in the order of the metrics page.
    pub const ALL: [ReadRoute; 5] = [
        ReadRoute::Untokened,
        ReadRoute::CaughtUp,
        ReadRoute::Lagging,
        ReadRoute::Unavailable,
        ReadRoute::Failed,
    ];

    /// `replica` or `primary`.
    pub fn target(self) -> &'static str {
        match self {
            ReadRoute::Untokened | ReadRoute::CaughtUp => "replica",
            ReadRoute::Lagging | ReadRoute::Unavailable | ReadRoute::Failed => "primary",
        }
    }

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            ReadRoute::Untokened => "untokened",
            ReadRoute::CaughtUp => "caught_up",
            ReadRoute::Lagging => "lagging",
            ReadRoute::Unavailable => "unavailable",
            ReadRoute::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        match self {
            ReadRoute::Untokened => 0,
            ReadRoute::CaughtUp => 1,
            ReadRoute::Lagging => 2,
            ReadRoute::Unavailable => 3,
            ReadRoute::Failed => 4,
        }
    }
}

/// One replica and what the monitor last saw of it.
#[derive(Debug)]
struct Replica {
    pool: PgPool,
    up: AtomicBool,
    /// Its replay location (0 until known).
    replayed: AtomicU64,
    /// The primary's insert location minus its replay location (-1: unknown).
    lag_bytes: AtomicI64,
}

#[derive(Debug)]
struct Inner {
    primary: PgPool,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    wait: Duration,
    poll: Duration,
    reads: [AtomicU64; 5],
}

/// The configured replicas (none by default), shared by every request.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Replicas {
    inner: Option<Arc<Inner>>,
}

/// Where a query is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary (the default, and every fallback).
    Primary,
    /// The replica of this index.
    Replica(usize),
}

impl Replicas {
    /// Pools for `settings.urls`, opened lazily (a replica that is down at
    /// start does not stop the server), beside the `primary`.
    pub fn connect(settings: &ReplicaSettings, primary: PgPool) -> anyhow::Result<Self> {
        use std::str::FromStr;
        if settings.urls.is_empty() {
            return Ok(Self::default());
        }
        let mut replicas = Vec::new();
        for (i, url) in settings.urls.iter().enumerate() {
            // The primary's statement settings (see `database::connect`).
            let options = sqlx::postgres::PgConnectOptions::from_str(url.expose())
                .with_context(|| {
                    format!(
                        "--read-database-url number {} is not a PostgreSQL URL",
                        i + 1
                    )
                })?
                .options([("plan_cache_mode", "force_generic_plan")]);
            let pool = PgPoolOptions::new()
                .max_connections(REPLICA_POOL_SIZE)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options);
            replicas.push(Replica {
                pool,
                up: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
                lag_bytes: AtomicI64::new(-1),
            });
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                primary,
                replicas,
                next: AtomicUsize::new(0),
                wait: settings.wait,
                poll: settings.poll.max(Duration::from_millis(1)),
                reads: Default::default(),
            })),
        })
    }

    /// How many replicas are configured.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.replicas.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pool of replica `i`.
    pub fn pool(&self, i: usize) -> Option<PgPool> {
        Some(self.inner.as_ref()?.replicas.get(i)?.pool.clone())
    }

    /// Whether the monitor last found replica `i` up.
    pub fn is_up(&self, i: usize) -> bool {
        self.inner
            .as_ref()
            .and_then(|inner| inner.replicas.get(i))
            .is_some_and(|r| r.up.load(Ordering::Relaxed))
    }

    /// Reads counted on `route` so far.
    pub fn reads(&self, route: ReadRoute) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.reads[route.index()].load(Ordering::Relaxed))
    }

    /// Counts a read on `route`.
    pub fn count(&self, route: ReadRoute) {
        if let Some(inner) = &self.inner {
            inner.reads[route.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read on replica `i` failed: skip it until the monitor reaches it
    /// again.
    pub fn mark_down(&self, i: usize) {
        if let Some(replica) = self.inner.as_ref().and_then(|inner| inner.replicas.get(i)) {
            if replica.up.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    replica = i,
                    "a read failed on the replica; the primary answers until it is reachable again"
                );
            }
        }
    }

    /// Starts the monitor (health, replay location and lag of every
    /// replica) and the WAL-location tracker of the `read_models`, until
    /// `stop`. Nothing to start without replicas.
    pub fn start(
        &self,
        progress: Progress,
        read_models: &'static [&'static str],
        stop: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        tasks.spawn(monitor(inner.clone(), stop.clone()));
        tasks.spawn(track(inner, progress, read_models, stop));
    }

    /// Where a query reading `models` is answered: without a token, the
    /// next replica up; with one (already reached on the primary), a
    /// replica once it has replayed past it, waiting at most the
    /// configured wait. Returns the route to count with the target, or
    /// `None` without replicas (nothing to count).
    pub async fn route(
        &self,
        progress: &Progress,
        models: &[&str],
        token: Option<Position>,
    ) -> Option<(Target, ReadRoute)> {
        let inner = self.inner.as_ref()?;
        let Some(token) = token else {
            return Some(match inner.next_up(|_| true) {
                Some(i) => (Target::Replica(i), ReadRoute::Untokened),
                None => (Target::Primary, ReadRoute::Unavailable),
            });
        };
        let needed = match progress.lsn_reaching(models, token) {
            Some(lsn) => lsn,
            None => match insert_lsn(&inner.primary).await {
                Ok(lsn) => lsn,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the primary's WAL location; the primary answers");
                    return Some((Target::Primary, ReadRoute::Lagging));
                }
            },
        };
        // One that the monitor saw past it already, else any that is up.
        let Some(i) = inner
            .next_up(|r| r.replayed.load(Ordering::Relaxed) >= needed.0)
            .or_else(|| inner.next_up(|_| true))
        else {
            return Some((Target::Primary, ReadRoute::Unavailable));
        };
        let replica = &inner.replicas[i];
        let deadline = tokio::time::Instant::now() + inner.wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left.max(inner.poll), replay_lsn(&replica.pool)).await {
                Ok(Ok(Some(replayed))) => {
                    replica.replayed.fetch_max(replayed.0, Ordering::Relaxed);
                    if replayed >= needed {
                        return Some((Target::Replica(i), ReadRoute::CaughtUp));
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    self.mark_down(i);
                    return Some((Target::Primary, ReadRoute::Unavailable));
                }
                Err(_) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::debug!(replica = i, %needed, "the replica has not replayed past the token in time; the primary answers");
                return Some((Target::Primary, ReadRoute::Lagging));
            }
            tokio::time::sleep(inner.poll.min(deadline - now)).await;
        }
    }

    /// The replica families of the `/metrics` page.
    pub fn write_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP marketplace_replica_reads_total GraphQL reads that may go to a read replica, by where they went (replica, primary) and why (untokened, caught_up, lagging, unavailable, failed).\n\
             # TYPE marketplace_replica_reads_total counter\n",
        );
        for route in ReadRoute::ALL {
            let _ = writeln!(
                out,
                "marketplace_replica_reads_total{{target=\"{}\",reason=\"{}\"}} {}",
                route.target(),
                route.reason(),
                self.reads(route)
            );
        }
        out.push_str(
            "# HELP marketplace_replica_up Whether the read replica answered its last probe as a hot standby (by --read-database-url, numbered from 0).\n\
             # TYPE marketplace_replica_up gauge\n",
        );
        let replicas = self.inner.as_ref().map_or(&[][..], |i| &i.replicas[..]);
        for (i, r) in replicas.iter().enumerate() {
            let _ = writeln!(
                out,
                "marketplace_replica_up{{replica=\"{i}\"}} {}",
                u8::from(r.up.load(Ordering::Relaxed))
            );
        }
        out.push_str(
            "# HELP marketplace_replica_lag_bytes WAL the read replica has not replayed yet: the primary's insert location minus its replay location.\n\
             # TYPE marketplace_replica_lag_bytes gauge\n",
        );
        for (i, r) in replicas.iter().enumerate() {
            let lag = r.lag_bytes.load(Ordering::Relaxed);
            if lag >= 0 {
                let _ = writeln!(
                    out,
                    "marketplace_replica_lag_bytes{{replica=\"{i}\"}} {lag}"
                );
            }
        }
    }
}

impl Inner {
    /// The next replica (round robin) that is up and satisfies `ok`.
    fn next_up(&self, ok: impl Fn(&Replica) -> bool) -> Option<usize> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.replicas[i].up.load(Ordering::Relaxed) && ok(&self.replicas[i]))
    }
}

/// What a probe found a replica to be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Health {
    Up,
    NotStandby,
    Unreachable(String),
}

/// The primary's current WAL insert location.
async fn insert_lsn(pool: &PgPool) -> Result<WalLsn, sqlx::Error> {
    let lsn: i64 = sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
        .fetch_one(pool)
        .await?;
    Ok(WalLsn(u64::try_from(lsn).unwrap_or(0)))
}

/// A standby's replay location; `None` when the server is not in recovery
/// (not a standby: its locations mean nothing next to the primary's).
async fn replay_lsn(pool: &PgPool) -> Result<Option<WalLsn>, sqlx::Error> {
    let lsn: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN pg_is_in_recovery() \
                THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END",
    )
    .fetch_one(pool)
    .await?;
    Ok(lsn.map(|l| WalLsn(u64::try_from(l).unwrap_or(0))))
}

/// Probes every replica every [`MONITOR_INTERVAL`]: up (a hot standby that
/// answers within [`PROBE_TIMEOUT`]) or down, its replay location and its
/// lag behind the primary. Logs each change of health once.
async fn monitor(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut last: Vec<Option<Health>> = vec![None; inner.replicas.len()];
    loop {
        let primary = tokio::time::timeout(PROBE_TIMEOUT, insert_lsn(&inner.primary))
            .await
            .ok()
            .and_then(Result::ok);
        let probes = inner
            .replicas
            .iter()
            .map(|r| tokio::time::timeout(PROBE_TIMEOUT, replay_lsn(&r.pool)));
        let results = futures::future::join_all(probes).await;
        for (i, (replica, result)) in inner.replicas.iter().zip(results).enumerate() {
            let (health, replayed) = match result {
                Ok(Ok(Some(lsn))) => (Health::Up, Some(lsn)),
                Ok(Ok(None)) => (Health::NotStandby, None),
                Ok(Err(e)) => (Health::Unreachable(e.to_string()), None),
                Err(_) => (Health::Unreachable("no answer in time".to_owned()), None),
            };
            // Each kind of failure is logged once, not each message of it.
            let kind = match &health {
                Health::Unreachable(_) => Health::Unreachable(String::new()),
                other => other.clone(),
            };
            if last[i].as_ref() != Some(&kind) {
                match &health {
                    Health::Up => tracing::info!(replica = i, "the read replica is up: it serves reads"),
                    Health::NotStandby => tracing::warn!(
                        replica = i,
                        "the read replica is not in recovery (not a hot standby): not used; the primary answers its reads"
                    ),
                    Health::Unreachable(e) => tracing::warn!(
                        replica = i,
                        error = %e,
                        "the read replica is unreachable: the primary answers its reads"
                    ),
                }
            }
            last[i] = Some(kind);
            let up = health == Health::Up;
            if let Some(lsn) = replayed {
                replica.replayed.fetch_max(lsn.0, Ordering::Relaxed);
                let lag = primary.map_or(-1, |p| {
                    i64::try_from(p.0.saturating_sub(lsn.0)).unwrap_or(i64::MAX)
                });
                replica.lag_bytes.store(lag, Ordering::Relaxed);
            } else {
                replica.lag_bytes.store(-1, Ordering::Relaxed);
            }
            replica.up.store(up, Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
        }
    }
}

/// After each move of a read model's position, records the primary's WAL
/// insert location for it ([`Progress::record_lsn`]); the positions are read
/// first, so the location lies past their commits.
async fn track(
    inner: Arc<Inner>,
    progress: Progress,
    read_models: &'static [&'static str],
    mut stop: watch::Receiver<bool>,
) {
    let mut followers: Vec<_> = read_models.iter().map(|m| progress.subscribe(m)).collect();
    if followers.is_empty() {
        return;
    }
    loop {
        let positions: Vec<Position> = read_models.iter().map(|m| progress.position(m)).collect();
        match insert_lsn(&inner.primary).await {
            Ok(lsn) => {
                for (model, position) in read_models.iter().zip(positions) {
                    progress.record_lsn(model, position, lsn);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the primary's WAL location"),
        }
        let changed = futures::future::select_all(
            followers
                .iter_mut()
                .map(|rx| Box::pin(async move { rx.changed().await.is_ok() })),
        );
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            (alive, _, _) = changed => {
                if !alive {
                    return;
                }
            }
        }
        // Paced: under a stream of commits one location per interval is
        // plenty (a token between two is answered with the later one).
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(TRACK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_own_series() {
        let replicas = Replicas::default();
        let mut page = String::new();
        replicas.write_metrics(&mut page);
        for route in ReadRoute::ALL {
            assert!(page.contains(&format!(
                "marketplace_replica_reads_total{{target=\"{}\",reason=\"{}\"}} 0",
                route.target(),
                route.reason()
            )));
        }
        let indexes: Vec<usize> = ReadRoute::ALL.iter().map(|r| r.index()).collect();
        assert_eq!(indexes, [0, 1, 2, 3, 4]);
        assert!(replicas.is_empty());
    }
}

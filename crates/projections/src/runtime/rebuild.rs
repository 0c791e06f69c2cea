//! Rebuilds without downtime (the design is in the parent module's
//! documentation): the bulk load of a build that is not live, its indexes,
//! the switch transaction that makes it live, dropping the build it
//! replaced, and `projections rebuild` ([`ProjectorRuntime::rebuild`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use marketplace_consumers::leader::{LockConnection, PROJECTION_LOCKS};
use marketplace_consumers::retry::{pause, stopping};
use marketplace_store::{Position, RecordedEvent, StoreError};
use sqlx::PgConnection;
use tokio::sync::watch;
use tokio::time::Instant;

use super::commit::{panic_message, Halt};
use super::lead::{Mode, Term};
use super::{decode_for, Generation, Projection, ProjectionError, ProjectorRuntime};
use crate::builds::{self, Build};
use crate::progress::{ProjectionState, RunnerStatus};

/// What [`ProjectorRuntime::rebuild`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// The projection.
    pub name: String,
    /// The version built.
    pub version: i32,
    /// The new build's schema.
    pub schema: String,
    /// Where the build stood when this rebuild started (0 unless resumed).
    pub from: Position,
    /// Where it stood at the end.
    pub position: Position,
    /// Whether it is live now (`false`: interrupted; it stays pending and a
    /// later rebuild resumes it).
    pub switched: bool,
    /// The build it replaced.
    pub replaced: Option<String>,
    /// Retired schemas dropped afterwards.
    pub dropped: Vec<String>,
}

/// A switch that happened.
pub(super) struct Switched {
    /// The new build's checkpoint after the switch.
    pub(super) position: Position,
    /// The schema of the build it replaced.
    pub(super) replaced: Option<String>,
}

/// Whether `e` is Postgres' `lock_not_available` (a `lock_timeout`).
fn is_lock_timeout(e: &ProjectionError) -> bool {
    match e {
        ProjectionError::Sql(sqlx::Error::Database(db)) => db.code().as_deref() == Some("55P03"),
        _ => false,
    }
}

impl ProjectorRuntime {
    /// Rebuilds `projection` at its code version into a new build while the
    /// live one keeps serving, and switches it in once it has caught up:
    /// `marketplace projections rebuild NAME`. Resumes a pending rebuild of
    /// that version if there is one (else a fresh schema, see
    /// [`builds::start_rebuild`]); if another runner leads that rebuild, it
    /// follows it until it is live. Progress is published in
    /// [`Progress`](crate::Progress) ([`RunnerStatus::rebuild`]). Returns when the build is live (and the
    /// one it replaced dropped, if that could be done within a few
    /// seconds), or at shutdown (`switched: false`: the build stays pending).
    /// After it returns, the runners of the live build in `serve` processes
    /// find the new build and take it over.
    pub async fn rebuild(
        &self,
        projection: Arc<dyn Projection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RebuildReport, ProjectionError> {
        let name = projection.name();
        let build = builds::start_rebuild(&self.pool, projection.as_ref()).await?;
        tracing::info!(projection = name, schema = %build.schema, from = %build.position, "rebuilding");
        let mut lock = LockConnection::new(
            (*self.pool.connect_options()).clone(),
            PROJECTION_LOCKS,
            &build.schema,
        );
        let result = self
            .rebuild_terms(projection.as_ref(), &build, &mut lock, &mut shutdown)
            .await;
        lock.close().await;
        self.progress
            .set_runner(name, RunnerStatus::new(ProjectionState::Stopped));
        let (switched, replaced, position) = result?;
        let mut dropped = Vec::new();
        if switched {
            for attempt in 1..=5u32 {
                match builds::drop_retired(&self.pool, Some(name)).await {
                    Ok(d) => {
                        dropped = d;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(projection = name, error = %e, attempt, "could not drop the old build yet");
                        if pause(self.config.retry.delay(attempt), &mut shutdown).await {
                            break;
                        }
                    }
                }
            }
        }
        Ok(RebuildReport {
            name: name.to_owned(),
            version: build.version,
            schema: build.schema,
            from: build.position,
            position,
            switched,
            replaced,
            dropped,
        })
    }
    /// Leads (or follows) the rebuild in `target` until it is live:
    /// (switched, replaced schema, position).
    async fn rebuild_terms(
        &self,
        projection: &dyn Projection,
        target: &Build,
        lock: &mut LockConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(bool, Option<String>, Position), ProjectionError> {
        let name = projection.name();
        let mut position = target.position;
        loop {
            if stopping(shutdown) {
                return Ok((false, None, position));
            }
            let build = match builds::build(&self.pool, &target.schema).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(ProjectionError::Fenced {
                        name: name.to_owned(),
                    })
                }
                Err(e) => {
                    let e = ProjectionError::from(e);
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    tracing::warn!(projection = name, error = %e, "could not read the rebuild");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                    continue;
                }
            };
            position = build.position;
            if build.live && !target.live {
                // Another runner switched it in.
                return Ok((true, None, position));
            }
            match lock
                .try_acquire_following(builds::LIVE_POSITION_SQL, name)
                .await
            {
                Ok((true, _)) => {}
                Ok((false, _)) => {
                    // Another runner leads this rebuild: follow it.
                    self.publish_rebuild(name, &build, build.position, !build.indexed)
                        .await;
                    if pause(
                        self.config.follow_interval.max(Duration::from_millis(100)),
                        shutdown,
                    )
                    .await
                    {
                        return Ok((false, None, position));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not try the rebuild's lock");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                    continue;
                }
            }
            let Some((generation, from)) =
                builds::take_over(&self.pool, &build.schema, true).await?
            else {
                lock.release().await;
                continue;
            };
            let Some(build) = builds::build(&self.pool, &build.schema).await? else {
                lock.release().await;
                continue;
            };
            match self
                .lead(
                    projection,
                    lock,
                    &build,
                    generation,
                    from,
                    shutdown,
                    Mode::UntilLive,
                )
                .await
            {
                Term::Switched { replaced, position } => {
                    let _ =
                        builds::mark(&self.pool, name, generation, ProjectionState::Stopped, None)
                            .await;
                    lock.release().await;
                    return Ok((true, replaced, position));
                }
                Term::Stopped => {
                    let _ =
                        builds::mark(&self.pool, name, generation, ProjectionState::Stopped, None)
                            .await;
                    return Ok((false, None, self.progress_of(&build.schema).await));
                }
                Term::SteppedDown => {
                    lock.release().await;
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                }
                Term::Failed { position, error } => {
                    let failure = Some((position, error.as_str()));
                    let _ = builds::mark(
                        &self.pool,
                        name,
                        generation,
                        ProjectionState::Failed,
                        failure,
                    )
                    .await;
                    lock.release().await;
                    return Err(ProjectionError::Failed {
                        name: name.to_owned(),
                        position,
                        error,
                    });
                }
            }
        }
    }
    /// The checkpoint of the build in `schema` (0 if unreadable).
    async fn progress_of(&self, schema: &str) -> Position {
        match builds::build(&self.pool, schema).await {
            Ok(Some(b)) => b.position,
            _ => Position::START,
        }
    }
    /// Bulk phase of a rebuild: pages of `bulk_batch` events from the
    /// checkpoint until a short page (the head). `Err` ends the term.
    pub(super) async fn bulk_load(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        build: &Build,
        generation: Generation,
        position: &mut Position,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Term> {
        let name = projection.name();
        let size = self.config.bulk_batch.max(1);
        let mut last_check = Instant::now();
        let mut prefetched: Option<
            tokio::task::JoinHandle<Result<Vec<RecordedEvent>, StoreError>>,
        > = None;
        loop {
            if stopping(shutdown) {
                return Err(Term::Stopped);
            }
            if last_check.elapsed() >= self.config.lock_retry {
                last_check = Instant::now();
                if lock
                    .still_leading(builds::BUILD_LEADING_SQL, &build.schema, generation.0)
                    .await
                    == Some(false)
                {
                    tracing::warn!(projection = name, schema = %build.schema, "no longer leads this build");
                    return Err(Term::SteppedDown);
                }
            }
            let page = match prefetched.take() {
                Some(handle) => match handle.await {
                    Ok(page) => page,
                    Err(e) => Err(StoreError::Backend(format!("read task failed: {e}"))),
                },
                None => self.store.read_all(*position, size).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not read the log");
                    return Err(Term::SteppedDown);
                }
            };
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(());
            };
            let at_head = page.len() < size;
            if !at_head {
                let store = self.store.clone();
                prefetched = Some(tokio::spawn(
                    async move { store.read_all(last, size).await },
                ));
            }
            match self
                .commit_with_retry(projection, generation, *position, &page, shutdown)
                .await
            {
                Ok(p) => *position = p,
                Err(Halt::Fenced) => return Err(Term::SteppedDown),
                Err(Halt::Unavailable) => return Err(Term::SteppedDown),
                Err(Halt::Shutdown) => return Err(Term::Stopped),
                Err(Halt::Failed { position, error }) => {
                    return Err(Term::Failed { position, error })
                }
            }
            self.publish_rebuild(name, build, *position, true).await;
            if at_head {
                return Ok(());
            }
        }
    }
    /// Creates the build's secondary indexes and marks it `indexed`, fenced
    /// like a batch commit.
    pub(super) async fn commit_indexes(
        &self,
        projection: &dyn Projection,
        schema: &str,
        generation: Generation,
        position: Position,
    ) -> Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        if !builds::mark_indexed_fenced(&mut tx, schema, generation, position).await? {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        builds::create_indexes(&mut tx, projection).await?;
        tx.commit().await?;
        Ok(())
    }
    /// Tries to switch `build` in (see the module documentation): `None` if
    /// not now (the live build is too far ahead, or a lock was not free
    /// within `lock_timeout`).
    pub(super) async fn switch(
        &self,
        projection: &dyn Projection,
        build: &Build,
        generation: Generation,
        position: Position,
    ) -> Result<Option<Switched>, ProjectionError> {
        let reach = u64::try_from(self.config.bulk_batch.max(1)).unwrap_or(u64::MAX);
        // A first look without locks: is the live build within reach?
        if let Some(live) = builds::live_position(&self.pool, projection.name()).await? {
            if live.0 > position.0.saturating_add(reach) {
                return Ok(None);
            }
        }
        let mut tx = self.pool.begin().await?;
        match self
            .switch_in(&mut tx, projection, build, generation, position, reach)
            .await
        {
            Ok(Some(switched)) => {
                tx.commit().await?;
                Ok(Some(switched))
            }
            Ok(None) => {
                tx.rollback().await?;
                Ok(None)
            }
            Err(e) if is_lock_timeout(&e) => {
                let _ = tx.rollback().await;
                tracing::debug!(projection = projection.name(), "switch: locks busy; later");
                Ok(None)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
    async fn switch_in(
        &self,
        tx: &mut PgConnection,
        projection: &dyn Projection,
        build: &Build,
        generation: Generation,
        position: Position,
        reach: u64,
    ) -> Result<Option<Switched>, ProjectionError> {
        let name = projection.name();
        sqlx::query("SET LOCAL lock_timeout = '500ms'")
            .execute(&mut *tx)
            .await?;
        // The live build's row first: its leader's next commit waits for us.
        let old = builds::lock_live(&mut *tx, name).await?;
        let mine = builds::lock_pending(&mut *tx, &build.schema, generation).await?;
        if mine != Some(position) {
            return Err(ProjectionError::Fenced {
                name: name.to_owned(),
            });
        }
        let mut at = position;
        if let Some(&(_, target)) = old.as_ref() {
            if target > at {
                if target.0 - at.0 > reach {
                    return Ok(None);
                }
                // Bring the new build up to the live one, in this transaction.
                builds::enter(&mut *tx, &build.schema).await?;
                while at < target {
                    let limit = usize::try_from(target.0 - at.0).unwrap_or(usize::MAX);
                    let page: Vec<RecordedEvent> = self
                        .store
                        .read_all(at, limit)
                        .await?
                        .into_iter()
                        .take_while(|e| e.position <= target)
                        .collect();
                    let Some(last) = page.last().map(|e| e.position) else {
                        break;
                    };
                    let page = decode_for(projection, &page)?;
                    match AssertUnwindSafe(projection.apply(&mut *tx, &page))
                        .catch_unwind()
                        .await
                    {
                        Ok(applied) => applied?,
                        Err(panic) => {
                            return Err(ProjectionError::Panicked(panic_message(panic.as_ref())))
                        }
                    }
                    at = last;
                }
                builds::set_position(&mut *tx, &build.schema, at).await?;
            }
        }
        let old_schema = old.as_ref().map(|(s, _)| s.as_str());
        builds::go_live(&mut *tx, old_schema, &build.schema).await?;
        builds::point_views(&mut *tx, old_schema, &build.schema, projection.tables()).await?;
        Ok(Some(Switched {
            position: at,
            replaced: old.map(|(s, _)| s),
        }))
    }
    /// Drops `name`'s retired builds in the background, retrying while
    /// queries still hold the old tables.
    pub(super) fn drop_retired_later(&self, name: &str) {
        let (pool, name, config) = (self.pool.clone(), name.to_owned(), self.config);
        tokio::spawn(async move {
            for attempt in 1..=20u32 {
                match builds::drop_retired(&pool, Some(&name)).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, attempt, "could not drop the old build yet");
                        tokio::time::sleep(config.retry.delay(attempt)).await;
                    }
                }
            }
        });
    }
}

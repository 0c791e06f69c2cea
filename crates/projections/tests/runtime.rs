//! The projector runtime against a real Postgres: leader election across
//! "processes" (separate pools), takeover when the leader dies, fencing of
//! stale leaders, crashes between the fold and the commit, and failures
//! that stop one projection at the failing event.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use marketplace_domain::review::Review;
use marketplace_domain::{Aggregate, AggregateKind};
use marketplace_projections::{
    status, Generation, Progress, ProjectionError, ProjectionState, ProjectorRuntime, RuntimeConfig,
};
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{
    EventMetadata, EventStore, ExpectedRevision, NewEvent, Position, StreamId,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Small knobs so that takeovers and retries happen quickly.
fn fast() -> RuntimeConfig {
    RuntimeConfig {
        max_batch: 10,
        max_wait: Duration::from_millis(2),
        busy_wait: Duration::from_millis(5),
        lock_retry: Duration::from_millis(50),
        leader_check: Duration::from_millis(50),
        follow_interval: Duration::from_millis(10),
        max_attempts: 3,
        retry: marketplace_consumers::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(20),
        ),
        bulk_batch: 100,
    }
}

/// One "process": its own pool (named `app`), store, progress and runtime.
struct Process {
    pool: PgPool,
    store: PostgresEventStore,
    progress: Progress,
    runtime: ProjectorRuntime,
}

impl Process {
    async fn start(db: &marketplace_embedded_postgres::testdb::TestDatabase, app: &str) -> Self {
        let pool = named_pool(db, app).await;
        let store = PostgresEventStore::new(pool.clone()).await.expect("store");
        let progress = Progress::default();
        let runtime =
            ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone())
                .with_config(fast());
        Self {
            pool,
            store,
            progress,
            runtime,
        }
    }

    fn run(
        &self,
        projection: Arc<Counting>,
        stop: &watch::Sender<bool>,
    ) -> JoinHandle<Result<(), ProjectionError>> {
        let (runtime, stop_rx) = (self.runtime.clone(), stop.subscribe());
        tokio::spawn(async move { runtime.run(projection, stop_rx).await })
    }

    async fn reaches(&self, name: &str, position: Position) -> bool {
        self.progress.wait_for(&[name], position, DEADLINE).await
    }

    async fn is(&self, name: &str, state: ProjectionState) -> bool {
        self.progress.wait_for_state(name, state, DEADLINE).await
    }
}

async fn status_of(
    pool: &PgPool,
    store: &PostgresEventStore,
    name: &str,
) -> status::ProjectionStatus {
    status::status(pool, store)
        .await
        .expect("status")
        .into_iter()
        .find(|s| s.name == name)
        .expect("listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_at_a_time_and_a_standby_takes_over_when_the_leader_dies() {
    const NAME: &str = "counting";
    let db = migrated_db().await;
    let writer = Process::start(&db, "writer").await;
    let a = Process::start(&db, "runner-a").await;
    let b = Process::start(&db, "runner-b").await;
    let (stop, _) = watch::channel(false);
    let first = append_ticks(&writer.store, 50).await;

    let task_a = a.run(Counting::new(NAME), &stop);
    assert!(a.is(NAME, ProjectionState::Running).await);
    let task_b = b.run(Counting::new(NAME), &stop);
    assert!(b.is(NAME, ProjectionState::Standby).await);
    // The standby follows the leader's checkpoint (read-your-writes there).
    assert!(b.reaches(NAME, first).await);
    assert_eq!(a.progress.runner(NAME).state, ProjectionState::Running);
    assert_eq!(b.progress.runner(NAME).state, ProjectionState::Standby);
    let s = status_of(&writer.pool, &writer.store, NAME).await;
    assert_eq!(
        (s.state, s.has_leader, s.generation),
        (ProjectionState::Running, true, 1)
    );

    // Events keep coming while the leader dies.
    let appender = {
        let store = writer.store.clone();
        tokio::spawn(async move {
            for _ in 0..150 {
                append_ticks(&store, 2).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    assert!(a.reaches(NAME, Position(first.0 + 60)).await);
    assert!(!appender.is_finished(), "the leader must die mid-stream");
    // Process death: the task goes, its connections go, its lock goes.
    task_a.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), a.pool.close()).await;
    terminate(&db, "runner-a").await;
    let killed_at = a.progress.position(NAME);
    assert!(task_a.await.expect_err("aborted").is_cancelled());

    assert!(b.is(NAME, ProjectionState::Running).await);
    appender.await.expect("appender");
    let head = writer.store.head().await.expect("head");
    assert_eq!(head, Position(first.0 + 300));
    assert!(killed_at < head, "the standby had work left");
    assert!(b.reaches(NAME, head).await, "the standby caught up");

    let (rows, most) = applied(&writer.pool, NAME).await;
    assert_eq!(rows, 350, "every event applied");
    assert_eq!(most, 1, "no event applied twice");
    let (position, state, generation, _, _) = checkpoint_row(&writer.pool, NAME).await;
    assert_eq!((position, state.as_str(), generation), (350, "RUNNING", 2));
    let s = status_of(&writer.pool, &writer.store, NAME).await;
    assert_eq!((s.lag_events, s.lag_seconds), (0, 0.0));
    assert!(s.has_leader);

    stop.send(true).expect("stop");
    task_b.await.expect("join").expect("stopped cleanly");
    let s = status_of(&writer.pool, &writer.store, NAME).await;
    assert_eq!((s.state, s.has_leader), (ProjectionState::Stopped, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_lock_connection_dies_steps_down_and_nothing_is_applied_twice() {
    const NAME: &str = "counting";
    let db = migrated_db().await;
    let writer = Process::start(&db, "writer").await;
    let a = Process::start(&db, "runner-a").await;
    let b = Process::start(&db, "runner-b").await;
    let (stop, _) = watch::channel(false);
    let _task_a = a.run(Counting::new(NAME), &stop);
    assert!(a.is(NAME, ProjectionState::Running).await);
    let _task_b = b.run(Counting::new(NAME), &stop);
    assert!(b.is(NAME, ProjectionState::Standby).await);
    let head = append_ticks(&writer.store, 40).await;
    assert!(a.reaches(NAME, head).await);

    // The leader's process lives on, but its connections are cut: it must
    // notice, step down, and leave the projection to whoever leads next.
    assert!(terminate(&db, "runner-a").await > 0);
    eventually("a new generation leads", || async {
        checkpoint_row(&writer.pool, NAME).await.2 >= 2
    })
    .await;
    let head = append_ticks(&writer.store, 40).await;
    eventually("one runner leads and the other stands by", || async {
        let states = [a.progress.runner(NAME).state, b.progress.runner(NAME).state];
        states.contains(&ProjectionState::Running) && states.contains(&ProjectionState::Standby)
    })
    .await;
    let leader = if a.progress.runner(NAME).state == ProjectionState::Running {
        &a
    } else {
        &b
    };
    assert!(leader.reaches(NAME, head).await);
    let (rows, most) = applied(&writer.pool, NAME).await;
    assert_eq!((rows, most), (80, 1));
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_commit_after_a_takeover_is_refused() {
    const NAME: &str = "counting";
    let db = migrated_db().await;
    let p = Process::start(&db, "runner").await;
    let projection = Counting::new(NAME);
    append_ticks(&p.store, 4).await;
    let events = p.store.read_all(Position::START, 10).await.expect("read");

    let (old, from) = p
        .runtime
        .take_over(projection.as_ref())
        .await
        .expect("lead");
    assert_eq!((old, from), (Generation(1), Position::START));
    let at = p
        .runtime
        .commit_batch(projection.as_ref(), old, from, &events[..2])
        .await
        .expect("the leader commits");
    // A new leader takes over from the stored checkpoint …
    let (new, resumed) = p
        .runtime
        .take_over(projection.as_ref())
        .await
        .expect("take over");
    assert_eq!((new, resumed), (Generation(2), at));
    // … and the old one's late commit, though from the right position, fails.
    match p
        .runtime
        .commit_batch(projection.as_ref(), old, at, &events[2..])
        .await
    {
        Err(ProjectionError::Fenced { name }) => assert_eq!(name, NAME),
        other => panic!("expected the stale commit to be fenced, got {other:?}"),
    }
    // So does a commit from a position that has moved on.
    let done = p
        .runtime
        .commit_batch(projection.as_ref(), new, at, &events[2..])
        .await
        .expect("the new leader commits");
    assert!(matches!(
        p.runtime
            .commit_batch(projection.as_ref(), new, at, &events[2..])
            .await,
        Err(ProjectionError::Fenced { .. })
    ));
    assert_eq!(done, events[3].position);
    assert_eq!(applied(&p.pool, NAME).await, (4, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_the_fold_and_the_commit_applies_nothing_twice() {
    const NAME: &str = "counting";
    let db = migrated_db().await;
    let writer = Process::start(&db, "writer").await;
    let head = append_ticks(&writer.store, 30).await;

    // The first process folds a batch containing event 15, then "crashes"
    // before its commit.
    let a = Process::start(&db, "runner-a").await;
    let (stop, _) = watch::channel(false);
    let doomed = Counting::new(NAME);
    doomed.set_fault(Fault::HangOnce(Position(15)));
    let task_a = a.run(doomed.clone(), &stop);
    tokio::time::timeout(DEADLINE, doomed.hung.notified())
        .await
        .expect("the fold reached event 15");
    task_a.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), a.pool.close()).await;
    terminate(&db, "runner-a").await;
    let (position, ..) = checkpoint_row(&writer.pool, NAME).await;
    assert!(position < 15, "the hung batch was not committed");
    let (rows, _) = applied(&writer.pool, NAME).await;
    assert_eq!(rows, position, "only committed batches left rows");

    // The restarted process resumes from the checkpoint; in-process errors
    // and panics after the fold roll back and are retried.
    let b = Process::start(&db, "runner-b").await;
    let again = Counting::new(NAME);
    again.set_fault(Fault::ErrorOnce(Position(20)));
    let panicky = Counting::new("panicky");
    panicky.set_fault(Fault::PanicOnce(Position(7)));
    let _task_b = b.run(again, &stop);
    let _task_p = b.run(panicky, &stop);
    assert!(b.reaches(NAME, head).await);
    assert!(b.reaches("panicky", head).await);
    assert_eq!(applied(&writer.pool, NAME).await, (30, 1));
    assert_eq!(applied(&writer.pool, "panicky").await, (30, 1));
    for name in [NAME, "panicky"] {
        let (position, state, _, error, failed) = checkpoint_row(&writer.pool, name).await;
        assert_eq!((position, state.as_str()), (30, "RUNNING"));
        assert_eq!((error, failed), (None, None), "cleared by the next commit");
    }
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_keeps_failing_marks_its_projection_failed_at_that_event() {
    let db = migrated_db().await;
    let p = Process::start(&db, "runner").await;
    let (stop, _) = watch::channel(false);
    let steady = Counting::new("steady");
    let broken = Counting::new("broken");
    broken.set_fault(Fault::Always(Position(15)));
    let head = append_ticks(&p.store, 30).await;
    let _steady = p.run(steady, &stop);
    let task = p.run(broken.clone(), &stop);

    assert!(p.is("broken", ProjectionState::Failed).await);
    let local = p.progress.runner("broken");
    assert_eq!(local.failed_position, Some(Position(15)));
    assert!(local
        .last_error
        .expect("error")
        .contains("injected failure"));
    let (position, state, _, error, failed) = checkpoint_row(&p.pool, "broken").await;
    assert_eq!((position, state.as_str(), failed), (14, "FAILED", Some(15)));
    assert!(error.expect("error").contains("injected failure"));
    assert_eq!(applied(&p.pool, "broken").await, (14, 1), "nothing skipped");

    // The other projection keeps going; the failed one stays put.
    let head2 = append_ticks(&p.store, 10).await;
    assert!(p.reaches("steady", head2).await);
    assert_eq!(p.progress.runner("steady").state, ProjectionState::Running);
    let s = status_of(&p.pool, &p.store, "broken").await;
    assert_eq!(s.state, ProjectionState::Failed);
    assert_eq!(
        (s.position, s.failed_position),
        (Position(14), Some(Position(15)))
    );
    assert_eq!((s.head, s.lag_events), (head2, head2.0 - 14));
    assert!(s.lag_seconds >= 0.0);
    assert!(s.last_error.expect("error").contains("injected failure"));
    assert_eq!(checkpoint_row(&p.pool, "broken").await.0, 14);
    assert!(head < head2);

    // Fixed and reset: it resumes from its checkpoint.
    broken.set_fault(Fault::Always(Position(35)));
    assert!(p.runtime.reset_failed("broken").await.expect("reset"));
    assert!(!p.runtime.reset_failed("broken").await.expect("reset twice"));
    eventually("it fails again, at the next bad event", || async {
        let r = p.progress.runner("broken");
        r.state == ProjectionState::Failed && r.failed_position == Some(Position(35))
    })
    .await;
    assert_eq!(applied(&p.pool, "broken").await, (34, 1));

    // Shut down while FAILED: the runner says so.
    stop.send(true).expect("stop");
    match task.await.expect("join") {
        Err(ProjectionError::Failed { name, position, .. }) => {
            assert_eq!((name.as_str(), position), ("broken", Position(35)));
        }
        other => panic!("expected FAILED, got {other:?}"),
    }

    // Fixed and restarted: a runner started on a FAILED projection retries.
    let q = Process::start(&db, "runner-2").await;
    let (stop, _) = watch::channel(false);
    let fixed = Counting::new("broken");
    let _task = q.run(fixed, &stop);
    assert!(q.reaches("broken", head2).await);
    assert_eq!(applied(&p.pool, "broken").await, (40, 1));
    let s = status_of(&p.pool, &p.store, "broken").await;
    assert_eq!(
        (s.state, s.lag_events, s.failed_position),
        (ProjectionState::Running, 0, None)
    );
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_cannot_be_decoded_fails_only_the_projections_that_read_its_aggregate() {
    let db = migrated_db().await;
    let p = Process::start(&db, "runner").await;
    let (stop, _) = watch::channel(false);
    append_ticks(&p.store, 2).await;
    // A stream no aggregate owns, then a review no code can read.
    let foreign = StreamId::new("tick", Uuid::now_v7()).expect("stream");
    let odd = |event_type: &str| NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        data: serde_json::json!({ "not": "an event" }),
        metadata: EventMetadata::default(),
    };
    p.store
        .append(&foreign, ExpectedRevision::Any, vec![odd("test.ticked")])
        .await
        .expect("append");
    let review = StreamId::new(Review::CATEGORY, Uuid::now_v7()).expect("stream");
    let poison = p
        .store
        .append(
            &review,
            ExpectedRevision::Any,
            vec![odd("review.submitted")],
        )
        .await
        .expect("append")
        .position;
    let head = append_ticks(&p.store, 2).await;

    let accounts_only = Counting::reading("accounts_only", |a| a == AggregateKind::Account);
    let everything = Counting::new("everything");
    let _a = p.run(accounts_only, &stop);
    let _b = p.run(everything, &stop);

    assert!(p.reaches("accounts_only", head).await);
    assert_eq!(applied(&p.pool, "accounts_only").await, (4, 1));
    assert!(p.is("everything", ProjectionState::Failed).await);
    let (position, _, _, error, failed) = checkpoint_row(&p.pool, "everything").await;
    assert_eq!(failed, Some(i64::try_from(poison.0).expect("position")));
    assert_eq!(position, i64::try_from(poison.0 - 1).expect("position"));
    assert!(error.expect("error").contains("review.submitted"));
    assert_eq!(
        applied(&p.pool, "everything").await,
        (2, 1),
        "the foreign event is passed over, not applied"
    );
    stop.send(true).expect("stop");
}

//! Helpers shared by the projection integration tests: fresh migrated
//! databases, pools that look like separate processes, a counting test
//! projection with injectable faults, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use marketplace_consumers::Envelope;
use marketplace_domain::account::{Account, AccountEvent, FundsDeposited};
use marketplace_domain::values::AccountId;
use marketplace_domain::{Aggregate, AggregateKind};
use marketplace_embedded_postgres::testdb::{test_cluster_admin_url, TestDatabase};
use marketplace_projections::{Projection, ProjectionError};
use marketplace_store::postgres::{migrate, PostgresEventStore};
use marketplace_store::{
    EventMetadata, EventStore, ExpectedRevision, NewEvent, Position, StreamId,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

/// How long any convergence may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A fresh database with the store's and the read models' migrations and
/// the `test_applied` table of [`Counting`].
pub async fn migrated_db() -> TestDatabase {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("store migrations");
    marketplace_projections::migrate(&pool)
        .await
        .expect("read model migrations");
    sqlx::query(
        "CREATE TABLE test_applied (
            projection    TEXT    NOT NULL,
            event_id      UUID    NOT NULL,
            position      BIGINT  NOT NULL,
            applications  INT     NOT NULL,
            PRIMARY KEY (projection, event_id)
        )",
    )
    .execute(&pool)
    .await
    .expect("test_applied");
    pool.close().await;
    db
}

/// A fresh migrated database, a pool and a store on it.
pub async fn setup() -> (PgPool, PostgresEventStore) {
    let db = migrated_db().await;
    let pool = db.pool().await;
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    (pool, store)
}

/// A pool whose connections carry `application_name = app`, so that a test
/// can kill them all, like a process that dies.
pub async fn named_pool(db: &TestDatabase, app: &str) -> PgPool {
    let options = PgConnectOptions::from_str(&db.url)
        .expect("url")
        .application_name(app);
    PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .expect("pool")
}

/// Terminates every backend of `app` on `db` from an admin connection;
/// returns how many.
pub async fn terminate(db: &TestDatabase, app: &str) -> i64 {
    let mut admin = PgConnection::connect(&test_cluster_admin_url().await)
        .await
        .expect("admin");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = $2",
    )
    .bind(app)
    .bind(&db.name)
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    let _ = admin.close().await;
    n
}

/// Appends `n` deposits to one new account's stream; returns the last
/// position.
pub async fn append_ticks(store: &PostgresEventStore, n: usize) -> Position {
    let account = Uuid::now_v7();
    let stream = StreamId::new(Account::CATEGORY, account).expect("stream");
    let events = (0..n)
        .map(|i| {
            new_event(AccountEvent::FundsDeposited(FundsDeposited {
                account_id: AccountId(account),
                deposit_id: Uuid::now_v7(),
                amount: eur(i64::try_from(i).expect("small") + 1),
                deposited_at: chrono::Utc::now(),
            }))
        })
        .collect();
    store
        .append(&stream, ExpectedRevision::Any, events)
        .await
        .expect("append")
        .position
}

/// Polls `check` every 20 ms until it holds; panics after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`Counting`] does wrong, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing.
    None,
    /// Writes its rows, then returns an error, the first time it sees the
    /// event at this position.
    ErrorOnce(Position),
    /// Writes its rows, then panics, the first time.
    PanicOnce(Position),
    /// Writes its rows, signals [`Counting::hung`], then never returns (a
    /// crash between the fold and the commit), the first time.
    HangOnce(Position),
    /// Returns an error every time it sees the event at this position.
    Always(Position),
}

/// A projection that counts how often each event was applied, in
/// `test_applied` (a double application shows as `applications = 2`).
pub struct Counting {
    name: &'static str,
    reads: fn(AggregateKind) -> bool,
    fault: Mutex<Fault>,
    /// Signalled when a [`Fault::HangOnce`] is hit.
    pub hung: Notify,
}

impl Counting {
    /// A counting projection called `name` that reads every aggregate,
    /// with no fault.
    pub fn new(name: &'static str) -> Arc<Self> {
        Self::reading(name, |_| true)
    }

    /// A counting projection called `name` that reads the aggregates
    /// `reads` holds for, with no fault.
    pub fn reading(name: &'static str, reads: fn(AggregateKind) -> bool) -> Arc<Self> {
        Arc::new(Self {
            name,
            reads,
            fault: Mutex::new(Fault::None),
            hung: Notify::new(),
        })
    }

    /// Replaces the fault.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().expect("fault") = fault;
    }
}

fn injected(e: &Envelope) -> ProjectionError {
    ProjectionError::Decode {
        event_type: e.event.event_type().to_owned(),
        position: e.position,
        reason: "injected failure".to_owned(),
    }
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        self.name
    }

    fn version(&self) -> i32 {
        1
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        (self.reads)(aggregate)
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let positions: Vec<i64> = events
            .iter()
            .map(|e| i64::try_from(e.position.0).expect("position"))
            .collect();
        sqlx::query(
            "INSERT INTO test_applied (projection, event_id, position, applications) \
             SELECT $1, id, pos, 1 FROM UNNEST($2::uuid[], $3::bigint[]) AS t(id, pos) \
             ON CONFLICT (projection, event_id) \
             DO UPDATE SET applications = test_applied.applications + 1",
        )
        .bind(self.name)
        .bind(&ids)
        .bind(&positions)
        .execute(&mut *tx)
        .await?;
        let fault = *self.fault.lock().expect("fault");
        let at = |p: Position| events.iter().find(|e| e.position == p);
        match fault {
            Fault::ErrorOnce(p) => {
                if let Some(e) = at(p) {
                    self.set_fault(Fault::None);
                    return Err(injected(e));
                }
            }
            Fault::PanicOnce(p) => {
                if at(p).is_some() {
                    self.set_fault(Fault::None);
                    panic!("injected panic at {p}");
                }
            }
            Fault::HangOnce(p) => {
                if at(p).is_some() {
                    self.set_fault(Fault::None);
                    self.hung.notify_one();
                    std::future::pending::<()>().await;
                }
            }
            Fault::Always(p) => {
                if let Some(e) = at(p) {
                    return Err(injected(e));
                }
            }
            Fault::None => {}
        }
        Ok(())
    }
}

/// How `name`'s events were applied: (rows, most applications of one event).
pub async fn applied(pool: &PgPool, name: &str) -> (i64, i32) {
    sqlx::query_as(
        "SELECT count(*), COALESCE(max(applications), 0) FROM test_applied WHERE projection = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("applied")
}

/// The checkpoint row of `name`: (position, state, generation, last_error,
/// failed_position).
pub async fn checkpoint_row(
    pool: &PgPool,
    name: &str,
) -> (i64, String, i64, Option<String>, Option<i64>) {
    sqlx::query_as(
        "SELECT position, state, generation, last_error, failed_position \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("checkpoint row")
}

/// A new event of `e`, with a fresh id and default metadata.
pub fn new_event<E: marketplace_domain::EventSet>(e: E) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: e.event_type().to_owned(),
        schema_version: e.schema_version(),
        data: e.to_data().expect("encode"),
        metadata: EventMetadata::default(),
    }
}

/// Appends `events` to the stream of aggregate `A` with `id`; returns the
/// position of the last.
pub async fn append<A: Aggregate>(
    store: &PostgresEventStore,
    id: Uuid,
    events: Vec<A::Event>,
) -> Position {
    let s = StreamId::new(A::CATEGORY, id).expect("stream");
    store
        .append(
            &s,
            ExpectedRevision::Any,
            events.into_iter().map(new_event).collect(),
        )
        .await
        .expect("append")
        .position
}

/// `minor` cents of EUR.
pub fn eur(minor: i64) -> marketplace_domain::values::Money {
    use marketplace_domain::values::{Currency, Money};
    Money {
        minor,
        currency: Currency::parse("EUR").expect("valid"),
    }
}

//! Where the database comes from: `DATABASE_URL`, or the embedded cluster.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use marketplace_embedded_postgres::EmbeddedPostgres;
use marketplace_keys::{Keyring, MasterKey, SealingStore};
use marketplace_store::{EventStore, KurrentDbEventStore, PostgresEventStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::EventStoreChoice;

/// The name of the marketplace database inside the embedded cluster.
pub const EMBEDDED_DATABASE: &str = "marketplace";

/// A database URL, and the embedded cluster behind it if we started one.
#[derive(Debug)]
pub struct Database {
    /// Connection URL.
    pub url: String,
    /// The embedded cluster, to stop on shutdown.
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Uses `url` if given, else starts (or reuses) the embedded cluster under `data_dir`.
    pub async fn acquire(url: Option<String>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(url) = url.filter(|u| !u.trim().is_empty()) {
            return Ok(Self {
                url,
                embedded: None,
            });
        }
        tracing::info!(dir = %data_dir.display(), "DATABASE_URL is unset; using the embedded PostgreSQL");
        let pg = EmbeddedPostgres::start_or_reuse(data_dir).await?;
        pg.ensure_database(EMBEDDED_DATABASE).await?;
        Ok(Self {
            url: pg.database_url(EMBEDDED_DATABASE),
            embedded: Some(pg),
        })
    }

    /// Stops the embedded cluster if we started it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(pg) = self.embedded {
            pg.stop().await?;
        }
        Ok(())
    }
}

/// A pool sized for serving.
pub async fn connect(url: &str, max: u32) -> anyhow::Result<PgPool> {
    use std::str::FromStr;
    // Every statement here is prepared once per connection and run with
    // parameters; planning a catalogue page (its CTEs and subqueries) costs
    // more than running it, so each is planned once, generically, instead
    // of anew for every execution. `bench read` measured it: search 713 ->
    // 816 req/s, category 1,514 -> 2,151, myOrders 1,585 -> 1,716.
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a PostgreSQL connection URL")?
        .options([("plan_cache_mode", "force_generic_plan")]);
    // No ping before each acquire: it was a round trip per statement
    // (4.5 % of the server's CPU in a flash sale, `perf`). A connection
    // that died (a database restart) fails its next statement instead, and
    // is dropped; every write path and consumer retries such a failure.
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("could not connect to PostgreSQL")
}

/// Applies every migration: event store first, then the key table, then
/// read models.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    marketplace_store::postgres::migrate(pool).await?;
    marketplace_keys::migrate(pool).await?;
    marketplace_projections::migrate(pool).await?;
    marketplace_commands::process::migrate(pool).await?;
    Ok(())
}

/// Opens the event store `choice` names, behind the [`SealingStore`] that
/// seals personal fields on append and opens them on read with the data
/// keys on `pool` (wrapped by `master`). Everything reads and writes the
/// log through it; only `audit verify` and anchors read
/// [`SealingStore::raw`].
pub async fn open_event_store(
    pool: &PgPool,
    choice: &EventStoreChoice,
    master: &MasterKey,
) -> anyhow::Result<SealingStore> {
    let raw = open_raw_event_store(pool, choice).await?;
    Ok(SealingStore::new(
        raw,
        Keyring::new(pool.clone(), master.clone()),
    ))
}

/// A command handler over `store` that names email claims with the key
/// table's email index key.
pub async fn command_handler(
    store: &SealingStore,
) -> anyhow::Result<marketplace_commands::CommandHandler> {
    let index = store
        .keyring()
        .email_index_key()
        .await
        .context("could not read the email index key")?;
    Ok(marketplace_commands::CommandHandler::new(Arc::new(store.clone())).with_email_index(index))
}

/// Opens the event store `choice` names: the Postgres one on `pool`, or a
/// KurrentDB (connected lazily; the read models stay on `pool`). Events
/// come as stored: personal fields sealed.
pub async fn open_raw_event_store(
    pool: &PgPool,
    choice: &EventStoreChoice,
) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match choice {
        EventStoreChoice::Postgres => Arc::new(
            PostgresEventStore::new(pool.clone())
                .await
                .context("could not start the event store")?,
        ),
        EventStoreChoice::KurrentDb(url) => {
            tracing::info!("event store: KurrentDB");
            Arc::new(
                KurrentDbEventStore::connect(url.expose())
                    .context("could not open the KurrentDB event store")?,
            )
        }
    })
}

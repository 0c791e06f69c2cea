//! Building and running the server: `Application::build(settings)`, then
//! `run_until_stopped()`.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use marketplace_commands::process;
use marketplace_consumers::{Registry, Runner};
use marketplace_projections::{builds, Progress, ProjectorRuntime};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::Tokens;
use crate::config::{ServeRole, Settings};
use crate::database::{connect, migrate, open_event_store};
use crate::graphql::build_schema;
use crate::http::{app, ops_app};
use crate::live::Live;
use crate::state::AppState;

/// A built, not yet running, marketplace.
pub struct Application {
    listener: Option<TcpListener>,
    role: ServeRole,
    state: AppState,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shutdown: crate::shutdown::ShutdownSettings,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects, migrates, starts the projectors (roles `all`, `projector`)
    /// and binds the listener: the whole API (roles `all`, `api`), or only
    /// `/healthz`, `/readyz` and `/metrics` (role `projector`, for its
    /// probes and Prometheus). A projector whose code
    /// version is newer than its live build rebuilds it in the background
    /// while the old build keeps serving, and switches it in once it has
    /// caught up (see `marketplace_projections::runtime`).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = connect(&settings.database_url, 32).await?;
        migrate(&pool).await?;
        let sealing = open_event_store(&pool, &settings.event_store, &settings.master_key).await?;
        let store: Arc<dyn marketplace_store::EventStore> = Arc::new(sealing.clone());
        let progress = Progress::default();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if settings.role != ServeRole::Api {
            let runtime = ProjectorRuntime::new(pool.clone(), store.clone(), progress.clone());
            for projection in marketplace_projections::all() {
                let (runtime, stop_rx) = (runtime.clone(), stop_rx.clone());
                tasks.spawn(async move {
                    let name = projection.name();
                    if let Err(e) = runtime.run(projection, stop_rx).await {
                        tracing::error!(projection = name, error = %e, "projection stopped");
                    }
                });
            }
        } else {
            tasks.spawn(follow_checkpoints(
                pool.clone(),
                progress.clone(),
                stop_rx.clone(),
            ));
        }
        let handler = crate::database::command_handler(&sealing)
            .await?
            .with_cache_capacity(settings.aggregate_cache);
        let consumers = Registry::default();
        let payments = crate::payments::Payments::new(&settings.payments);
        let assets = crate::assets::Assets::open(&settings.assets)
            .map_err(|e| anyhow::anyhow!("asset storage: {e}"))?;
        if settings.role != ServeRole::Api {
            // The process managers run beside the projectors: one per
            // deployment's projector role.
            // One leader per process manager across every process (the
            // others stand by); it never stops before shutdown.
            let runner = Runner::new(pool.clone(), store.clone(), consumers.clone());
            let gateway = Arc::new(payments.gateway.clone());
            for pm in process::managers(&handler, settings.fee, gateway) {
                tasks.spawn(process::run(pm, runner.clone(), stop_rx.clone()));
            }
        }
        // The live feeds serve subscriptions: only where the API runs.
        let live = if settings.role == ServeRole::Projector {
            Live::default()
        } else {
            Live::start(
                store.clone(),
                pool.clone(),
                progress.clone(),
                stop_rx.clone(),
                &mut tasks,
            )
        };
        // Replicas serve GraphQL reads: only where the API runs.
        let replicas = if settings.role == ServeRole::Projector {
            if !settings.replicas.urls.is_empty() {
                tracing::warn!(
                    "--read-database-url is ignored by a projector (it serves no GraphQL)"
                );
            }
            crate::replicas::Replicas::default()
        } else {
            crate::replicas::Replicas::connect(&settings.replicas, pool.clone())?
        };
        replicas.start(
            progress.clone(),
            crate::state::READ_MODELS,
            stop_rx.clone(),
            &mut tasks,
        );
        let state = AppState {
            replicas,
            requests: Arc::default(),
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(settings.rate_limits)),
            roles: crate::roles::CurrentRoles::new(handler.clone()),
            cache: Arc::new(crate::read_cache::ReadCache::new(progress.clone())),
            live,
            fee: settings.fee,
            checkout_at_placement: !settings.checkout_in_saga
                && marketplace_commands::flows::checkout::checks_out_at_placement(&handler),
            handler,
            pool,
            progress,
            tokens: Tokens::new(&settings.jwt_secret, settings.token_ttl),
            consistency_wait: settings.consistency_wait,
            consumers,
            trusted_proxies: Arc::new(settings.trusted_proxies.clone()),
            keyring: sealing.keyring().clone(),
            payments,
            assets,
            stopping: crate::shutdown::Stopping::default(),
        };
        if let Some(schedule) = settings.anchors.clone() {
            tasks.spawn(write_anchors(sealing.raw(), schedule, stop_rx.clone()));
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        Ok(Self {
            listener: Some(listener),
            role: settings.role,
            state,
            stop,
            tasks,
            shutdown: settings.shutdown,
        })
    }

    /// Where it listens: the API, or a projector-only process's operational
    /// routes (None once serving has started).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops gracefully: drains
    /// (unready, `Connection: close`, WebSockets closed with 1012) for the
    /// configured drain, stops accepting, lets requests in flight finish
    /// within the grace period, and stops the projectors and process
    /// managers, whose leaders release their locks (see
    /// [`crate::shutdown`]); last it flushes the trace exporter.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stopping = self.state.stopping.clone();
        let settings = self.shutdown;
        match self.listener.take() {
            Some(listener) => {
                let schema = build_schema(self.state.clone());
                let router = match self.role {
                    ServeRole::Projector => ops_app(self.state.clone(), schema),
                    ServeRole::Api | ServeRole::All => app(self.state.clone(), schema),
                };
                let (close, closed) = tokio::sync::oneshot::channel::<()>();
                // Connect info gives the handlers the peer address, which
                // keys the anonymous rate limit.
                let mut server = tokio::spawn(
                    axum::serve(
                        listener,
                        router.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(async {
                        let _ = closed.await;
                    })
                    .into_future(),
                );
                tokio::select! {
                    () = shutdown => {}
                    served = &mut server => {
                        // It stopped by itself: an error (it only stops
                        // when told to otherwise).
                        self.stop_consumers().await;
                        return served
                            .context("server task")?
                            .context("server error");
                    }
                }
                stopping.begin_drain();
                if !settings.drain.is_zero() {
                    tracing::info!(drain = ?settings.drain, "draining: unready, closing connections");
                    tokio::time::sleep(settings.drain).await;
                }
                let _ = close.send(());
                if let Ok(served) = tokio::time::timeout(settings.grace, &mut server).await {
                    served.context("server task")?.context("server error")?;
                } else {
                    tracing::warn!(
                        grace = ?settings.grace,
                        in_flight = stopping.in_flight(),
                        "requests still in flight after the grace period are answered UNAVAILABLE"
                    );
                    stopping.cut();
                    // Cut requests answer at once; a connection that does
                    // not even take its answer is dropped.
                    if tokio::time::timeout(Duration::from_secs(5), &mut server)
                        .await
                        .is_err()
                    {
                        server.abort();
                    }
                }
            }
            None => {
                shutdown.await;
                stopping.begin_drain();
            }
        }
        self.stop_consumers().await;
        Ok(())
    }

    /// Stops the projectors, process managers and live feeds, and waits for
    /// them: leaders mark their consumers STOPPED and release their locks.
    async fn stop_consumers(&mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
        // What the last requests and steps traced goes out now (the
        // exporter blocks: off the runtime's threads).
        let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
    }
}

/// In an API-only process the projectors run elsewhere: follow their
/// committed checkpoints so consistency tokens still work. Only the live
/// builds count: a rebuild in progress is not what the queries read.
async fn follow_checkpoints(pool: PgPool, progress: Progress, mut stop: watch::Receiver<bool>) {
    loop {
        match builds::live_positions(&pool).await {
            Ok(rows) => {
                for (name, position) in rows {
                    progress.advance(&name, position);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read projection checkpoints"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// `serve --anchor-every`: signs the log's head every `schedule.every` and
/// appends the anchor to `schedule.file` (a head already anchored is not
/// signed again). Failures are logged and retried at the next tick.
async fn write_anchors(
    raw: Arc<dyn marketplace_store::EventStore>,
    schedule: crate::config::AnchorSchedule,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(schedule.every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match marketplace_keys::anchor::anchor_head(&*raw, &schedule.key, chrono::Utc::now()).await
        {
            Ok(anchor) if last == Some(anchor.position) => {}
            Ok(anchor) => match crate::anchors::append_to_file(&schedule.file, &anchor) {
                Ok(()) => last = Some(anchor.position),
                Err(e) => tracing::warn!(error = %e, "could not write an anchor"),
            },
            Err(marketplace_keys::anchor::AnchorError::EmptyLog) => {}
            Err(e) => tracing::warn!(error = %e, "could not anchor the log's head"),
        }
    }
}

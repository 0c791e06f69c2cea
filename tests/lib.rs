//! Test support for the black-box end-to-end tests: [`spawn_app`] starts the
//! whole marketplace (event store, projectors, API) on a fresh database and a
//! random port, and [`TestApp`] talks GraphQL to it over real HTTP.
//!
//! Every app of a test process exports its spans to the process's
//! in-process OTLP collector ([`otlp::collector`]): the tracing subscriber
//! is process-wide, so it is installed once, pointed there, whichever test
//! comes first. The collector keeps only the traces a test watches.

pub mod otlp;

use std::future::IntoFuture;

use anyhow::Context;
use marketplace_api::{Application, Settings};
use marketplace_embedded_postgres::testdb::TestDatabase;
use serde_json::{json, Value};

/// A running marketplace and an HTTP client for it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The database it runs on.
    pub db: TestDatabase,
    /// The master key it serves with (tools must use the same one).
    pub master_key: marketplace_keys::MasterKey,
    client: reqwest::Client,
}

/// Starts the marketplace on a fresh database (one per test), on port 0.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with settings adjusted by `tweak` (limits, say).
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(TestDatabase::create().await, tweak).await
}

/// Installs the process's telemetry (once; every test of this binary must
/// go through here, never `telemetry::init_for_tests`, since the first
/// install decides for the process): logs if `TEST_LOG` is set, and
/// spans exported to [`otlp::collector`] every 100 ms (or on
/// [`flush_traces`]). Only the traces a test starts (with a sampled
/// `traceparent`) are recorded: the other tests' requests cost next to
/// nothing.
pub fn init_telemetry() {
    let tracing = marketplace_api::telemetry::TracingSettings {
        export_delay: std::time::Duration::from_millis(100),
        new_traces: false,
        ..marketplace_api::telemetry::TracingSettings::otlp(otlp::collector().endpoint.clone())
    };
    marketplace_api::telemetry::init_for_tests_with(&tracing);
}

/// Sends every finished span to the collector now.
pub async fn flush_traces() {
    tokio::task::spawn_blocking(marketplace_api::telemetry::flush)
        .await
        .expect("flush the trace exporter");
}

/// [`spawn_app_with`] on a database the test made (and perhaps prepared).
pub async fn spawn_app_on(db: TestDatabase, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_telemetry();
    let mut settings = Settings::for_database(db.url.clone());
    tweak(&mut settings);
    let master_key = settings.master_key.clone();
    let app = Application::build(settings)
        .await
        .expect("build the application");
    let addr = app.local_addr().expect("the API listens");
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        base: format!("http://{addr}"),
        db,
        master_key,
        client: reqwest::Client::new(),
    }
}

/// Polls `check` every 25 ms until it holds, for at most 120 s (a bound on
/// hangs, never a timing assumption); panics naming `what` otherwise.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// A marketplace on given settings that stops when told to: the graceful
/// stop a SIGTERM starts (`run_until_stopped`'s shutdown future completes).
#[derive(Debug)]
pub struct Served {
    /// A client for it.
    pub app: TestApp,
    signal: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Builds and serves `settings` (on `db`, which `settings` must point at).
pub async fn serve(db: &TestDatabase, settings: Settings) -> Served {
    init_telemetry();
    let master_key = settings.master_key.clone();
    let app = Application::build(settings)
        .await
        .expect("build the application");
    let addr = app.local_addr().expect("it listens");
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = signalled.await;
    }));
    Served {
        app: TestApp {
            base: format!("http://{addr}"),
            db: db.clone(),
            master_key,
            client: reqwest::Client::new(),
        },
        signal: Some(signal),
        task,
    }
}

impl Served {
    /// Starts the graceful stop, as SIGTERM does.
    pub fn signal_stop(&mut self) {
        if let Some(signal) = self.signal.take() {
            let _ = signal.send(());
        }
    }

    /// Waits (with a deadline of 120 s) until the stop has completed;
    /// returns what `run_until_stopped` returned.
    pub async fn stopped(self) -> anyhow::Result<()> {
        tokio::time::timeout(std::time::Duration::from_secs(120), self.task)
            .await
            .context("the server did not stop within 120 s")?
            .context("the server task")?
    }
}

/// A GraphQL operation for the WebSocket client, answered as raw JSON
/// (`{"data": …}` or `{"errors": …}`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Operation {
    /// The document.
    pub query: String,
    /// Its variables.
    pub variables: Value,
}

impl graphql_ws_client::graphql::GraphqlOperation for Operation {
    type Response = Value;
    type Error = serde_json::Error;

    fn decode(&self, data: Value) -> Result<Value, serde_json::Error> {
        Ok(data)
    }
}

/// One GraphQL response.
#[derive(Debug, Clone)]
pub struct Gql {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Gql {
    /// `data.<path>` (dot-separated); panics with the whole body if absent.
    pub fn data(&self, path: &str) -> &Value {
        let mut v = &self.body["data"];
        for key in path.split('.') {
            v = &v[key];
        }
        assert!(
            self.body.get("errors").is_none(),
            "unexpected errors in {}",
            self.body
        );
        v
    }

    /// The `extensions.code` of the first error; panics if there is none.
    pub fn error_code(&self) -> &str {
        self.body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code, got {}", self.body))
    }
}

/// Options of one request.
#[derive(Debug, Default, Clone)]
pub struct Req<'a> {
    /// Bearer token.
    pub token: Option<&'a str>,
    /// `X-Consistency-Token`.
    pub consistency: Option<&'a str>,
}

impl TestApp {
    /// POSTs a GraphQL operation.
    pub async fn gql(&self, query: &str, variables: Value, opts: Req<'_>) -> Gql {
        self.try_gql(query, variables, opts).await.expect("request")
    }

    async fn try_gql(&self, query: &str, variables: Value, opts: Req<'_>) -> anyhow::Result<Gql> {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.base))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = opts.token {
            req = req.bearer_auth(t);
        }
        if let Some(c) = opts.consistency {
            req = req.header("x-consistency-token", c);
        }
        let resp = req.send().await.context("send")?;
        let status = resp.status().as_u16();
        let body = resp.json().await.context("json body")?;
        Ok(Gql { status, body })
    }

    /// Registers an account; returns (token, account id, consistency token).
    pub async fn register(&self, email: &str, roles: &[&str]) -> (String, String, String) {
        let r = self
            .gql(
                "mutation($input: RegisterInput!) { register(input: $input) { token consistencyToken account { id } } }",
                json!({ "input": { "email": email, "password": "correct horse battery", "displayName": "Someone", "roles": roles } }),
                Req::default(),
            )
            .await;
        (
            r.data("register.token").as_str().expect("token").to_owned(),
            r.data("register.account.id")
                .as_str()
                .expect("id")
                .to_owned(),
            r.data("register.consistencyToken")
                .as_str()
                .expect("ct")
                .to_owned(),
        )
    }

    /// Logs in; returns the token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .gql(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({ "e": email, "p": password }),
                Req::default(),
            )
            .await;
        r.data("login.token").as_str().expect("token").to_owned()
    }

    /// Polls `order(id)` as `token` until its status satisfies `done`, with a
    /// deadline; returns the order's JSON.
    pub async fn wait_order(&self, token: &str, id: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let r = self
                .gql(
                    "query($id: ID!) { order(id: $id) { id status statusReason trackingCode total { amount currencyCode } lines { quantity unitPrice { amount } listing { id } } } }",
                    json!({ "id": id }),
                    Req { token: Some(token), ..Req::default() },
                )
                .await;
            let order = r.data("order").clone();
            if order["status"].as_str().is_some_and(&done) {
                return order;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "order {id} did not reach the expected status: {order}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Opens a `graphql-transport-ws` connection to `/graphql` with the
    /// real `graphql-ws-client`, sending `token` in `ConnectionInit`'s
    /// payload as browsers do. The connection lives as long as the client.
    pub async fn ws(
        &self,
        token: Option<&str>,
    ) -> Result<graphql_ws_client::Client, graphql_ws_client::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/graphql", self.base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("a WebSocket request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| graphql_ws_client::Error::Unknown(e.to_string()))?;
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("graphql-transport-ws"),
            "the server must select the graphql-transport-ws subprotocol"
        );
        let mut builder = graphql_ws_client::Client::build(socket);
        if let Some(token) = token {
            builder = builder.payload(json!({ "Authorization": format!("Bearer {token}") }))?;
        }
        let (client, actor) = builder.build().await?;
        tokio::spawn(actor.into_future());
        Ok(client)
    }

    /// The position of the last event in the log (a consistency token that
    /// covers everything written so far).
    pub async fn head(&self) -> i64 {
        let pool = self.db.pool().await;
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&pool)
            .await
            .expect("head");
        pool.close().await;
        head
    }

    /// `PUT /assets` with `body` as `content_type`; returns the status and
    /// the JSON answer.
    pub async fn upload_asset(
        &self,
        token: Option<&str>,
        body: Vec<u8>,
        content_type: &str,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .put(format!("{}/assets", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("upload");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Uploads `body` as a SELLER's asset; returns its content hash.
    pub async fn stored_asset(&self, seller_token: &str, body: &[u8]) -> String {
        let (status, answer) = self
            .upload_asset(Some(seller_token), body.to_vec(), "application/pdf")
            .await;
        assert!(status == 201 || status == 200, "upload: {status} {answer}");
        answer["contentHash"]
            .as_str()
            .expect("contentHash")
            .to_owned()
    }

    /// The number of events in the log.
    pub async fn event_count(&self) -> i64 {
        let pool = self.db.pool().await;
        let n = sqlx_count(&pool).await;
        pool.close().await;
        n
    }
}

async fn sqlx_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

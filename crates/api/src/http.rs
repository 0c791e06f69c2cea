//! HTTP routes: `/graphql` (POST, GET, GraphiQL), `/healthz`, `/readyz`,
//! `/metrics`, the payment provider's `POST /payments/callback`, and the
//! digital assets' `PUT /assets` and `GET /assets/{hash}` (see
//! [`crate::assets`]).
//!
//! Each request has a span (a child of the caller's when it sends a W3C
//! `traceparent`), each GraphQL operation one under it, and each WebSocket
//! connection one under its upgrade request's (or, with a `traceparent` in
//! `ConnectionInit`'s payload, one continuing that trace), which its
//! subscriptions' spans are under.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use marketplace_projections::status::ConsumerKind;
use marketplace_projections::ProjectionState;

use async_graphql::ParseRequestError;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::GraphQLRequest;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use marketplace_store::Position;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use crate::error::ApiError;
use crate::graphql::admission::Caller;
use crate::graphql::{MarketplaceSchema, Viewer};
use crate::ratelimit::{retry_after_seconds, ClientKey};
use crate::state::{
    read_model_of, reads_no_read_model, AppState, READ_MODELS, REQUIRED_READ_MODELS,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header that carries a consistency token.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

#[derive(Clone)]
struct Http {
    state: AppState,
    schema: MarketplaceSchema,
    /// One schema per read replica, over its pool ([`AppState::on_replica`]).
    replicas: Arc<Vec<MarketplaceSchema>>,
    /// Parsed documents of recent requests ([`crate::documents`]).
    documents: Arc<crate::documents::Documents>,
}

impl Http {
    fn new(state: AppState, schema: MarketplaceSchema) -> Self {
        let replicas = (0..state.replicas.len())
            .filter_map(|i| state.on_replica(i))
            .map(crate::graphql::build_schema)
            .collect();
        Self {
            state,
            schema,
            replicas: Arc::new(replicas),
            documents: Arc::default(),
        }
    }
}

/// The whole HTTP surface, for the server and for tests. `/graphql` is rate
/// limited per client with the state's limiter (see [`crate::ratelimit`]);
/// anonymous calls are keyed by the peer address (or, from a trusted proxy,
/// the client it forwards for: [`crate::proxy`]), so serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` (without it,
/// anonymous calls are not limited).
pub fn app(state: AppState, schema: MarketplaceSchema) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphiql/{file}", get(crate::graphiql::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/payments/callback", post(payment_callback))
        // Uploads stream past the JSON body limit, under the asset limit.
        .route("/assets", put(put_asset).layer(DefaultBodyLimit::disable()))
        .route("/assets/{hash}", get(get_asset))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A bug that panics in a handler answers a coded INTERNAL (logged
        // with a reference) instead of dropping the connection.
        .layer(CatchPanicLayer::custom(panic_response))
        // Every log line of a request (an INTERNAL error's included) carries
        // its request id, which the response echoes in `x-request-id`.
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(
            state.stopping.clone(),
            while_stopping,
        ))
        .with_state(Http::new(state, schema))
}

/// Only the operational routes, `/healthz`, `/readyz` and `/metrics`: what a
/// projector-only process serves, for its probes and for Prometheus.
pub fn ops_app(state: AppState, schema: MarketplaceSchema) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(
            state.stopping.clone(),
            while_stopping,
        ))
        .with_state(Http {
            state,
            schema,
            replicas: Arc::default(),
            documents: Arc::default(),
        })
}

/// While the process stops (see [`crate::shutdown`]): every response asks
/// the client to close its connection, so that none stays on this replica,
/// and a request still running when the grace period ends is answered
/// `UNAVAILABLE` (a client retries it elsewhere) rather than dropped.
async fn while_stopping(
    State(stopping): State<crate::shutdown::Stopping>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let _counted = stopping.request();
    let mut response = tokio::select! {
        response = next.run(request) => response,
        () = stopping.was_cut() => error_response(
            ApiError::Unavailable {
                message: "this server is stopping: try again".into(),
                retry_after_seconds: 1,
            },
            Media::Json,
        ),
    };
    if stopping.is_draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The media type of a GraphQL response, negotiated from `Accept`
/// (GraphQL over HTTP): `application/graphql-response+json` when the client
/// lists it, else `application/json` (also for `*/*` or no `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/json`: GraphQL errors travel with HTTP 200.
    Json,
    /// `application/graphql-response+json`: a request that fails before
    /// execution (parse, validation, variables) is a 400 without `data`.
    GraphqlResponseJson,
}

/// `application/graphql-response+json`.
pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

impl Media {
    /// The media type for `headers`, or `None` when the client accepts none
    /// that a GraphQL response can be sent as.
    pub fn negotiate(headers: &HeaderMap) -> Option<Media> {
        let accept: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|range| {
                let mut parts = range.split(';');
                let media = parts.next()?.trim().to_ascii_lowercase();
                // `q=0` means "not acceptable".
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (!media.is_empty() && !refused).then_some(media)
            })
            .collect();
        if accept.is_empty() {
            return Some(Media::Json);
        }
        if accept.iter().any(|m| m == GRAPHQL_RESPONSE_JSON) {
            return Some(Media::GraphqlResponseJson);
        }
        accept
            .iter()
            .any(|m| m == "application/json" || m == "application/*" || m == "*/*")
            .then_some(Media::Json)
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Media::Json => "application/json; charset=utf-8",
            Media::GraphqlResponseJson => "application/graphql-response+json; charset=utf-8",
        })
    }
}

/// A GraphQL response as `media`, with the status GraphQL over HTTP asks
/// for: with `application/graphql-response+json`, a request error (no data,
/// only errors without a path: the document did not parse, validate, or
/// take its variables) is a 400 and carries no `data` entry.
fn graphql_response(response: async_graphql::Response, media: Media) -> Response {
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    // Refused by the per-operation rate limit (admission): the same answer
    // as a request refused before it was read.
    let retry_after = request_error
        .then(|| response.errors.first())
        .flatten()
        .and_then(|e| e.extensions.as_ref())
        .filter(|x| x.get("code") == Some(&async_graphql::Value::from("RATE_LIMITED")))
        .and_then(|x| match x.get("retryAfterSeconds") {
            Some(async_graphql::Value::Number(n)) => n.as_u64(),
            _ => None,
        });
    // A dependency is down (the payment provider's breaker is open): the
    // field error carries the seconds, the response `Retry-After`, and when
    // nothing else was answered, a 503.
    let unavailable = response
        .errors
        .iter()
        .filter_map(|e| e.extensions.as_ref())
        .filter(|x| x.get("code") == Some(&async_graphql::Value::from("UNAVAILABLE")))
        .find_map(|x| match x.get("retryAfterSeconds") {
            Some(async_graphql::Value::Number(n)) => n.as_u64(),
            _ => None,
        });
    let nothing_answered = response.data == async_graphql::Value::Null;
    let mut body = serde_json::to_value(&response).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not serialise a GraphQL response");
        serde_json::json!({ "errors": [{ "message": "internal error", "extensions": { "code": "INTERNAL" } }] })
    });
    let status = if retry_after.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else if unavailable.is_some() && nothing_answered {
        StatusCode::SERVICE_UNAVAILABLE
    } else if request_error && media == Media::GraphqlResponseJson {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    if status != StatusCode::OK {
        if let Some(object) = body.as_object_mut() {
            object.remove("data");
        }
    }
    let mut http = (status, body.to_string()).into_response();
    http.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    if let Some(seconds) = retry_after.or(unavailable) {
        http.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    http
}

/// The span of one request: method, path (never the query string, which
/// may carry a GET query's variables) and request id. A W3C `traceparent`
/// (and `tracestate`) header makes it a child of the caller's span.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    );
    if let Some(parent) = remote_parent(&HeaderCarrier(request.headers())) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The caller's trace context from a W3C `traceparent` (and `tracestate`)
/// in `carrier`, if it names a valid one.
fn remote_parent(
    carrier: &dyn opentelemetry::propagation::Extractor,
) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Request headers as a propagator reads them.
struct HeaderCarrier<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `ConnectionInit`'s payload as a propagator reads it (its string
/// entries, e.g. `{"traceparent": "00-…"}`).
struct PayloadCarrier<'a>(&'a serde_json::Value);

impl opentelemetry::propagation::Extractor for PayloadCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

fn error_response(e: ApiError, media: Media) -> Response {
    let status = match e {
        ApiError::BadUserInput(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response_with(status, e, media)
}

/// A request-level error (before any GraphQL execution): `status`, and a
/// body with `errors` only.
fn error_response_with(status: StatusCode, e: ApiError, media: Media) -> Response {
    let retry_after = match e {
        ApiError::RateLimited {
            retry_after_seconds,
        }
        | ApiError::Unavailable {
            retry_after_seconds,
            ..
        } => Some(retry_after_seconds),
        _ => None,
    };
    let mut error = e.into_graphql().into_server_error(Default::default());
    // Nothing in the document caused it: no (made-up) location.
    error.locations.clear();
    let body = serde_json::json!({ "errors": [error] });
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn too_large(media: Media) -> Response {
    error_response_with(
        StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::BadUserInput(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        )),
        media,
    )
}

fn not_acceptable() -> Response {
    error_response_with(
        StatusCode::NOT_ACCEPTABLE,
        ApiError::BadUserInput(format!(
            "GraphQL responses are sent as application/json or {GRAPHQL_RESPONSE_JSON}; \
             the Accept header allows neither"
        )),
        Media::Json,
    )
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    error_response_with(
        StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::internal(format!("handler panicked: {detail}")),
        Media::Json,
    )
}

/// The address an anonymous caller is keyed by: the TCP peer (when the
/// server was built with connect info), or behind a trusted proxy the
/// client it forwards for (see [`crate::proxy`]).
fn client_ip(http: &Http, request: &Request) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    Some(
        http.state
            .trusted_proxies
            .client_ip(peer, request.headers()),
    )
}

/// The caller of a request, from its `Authorization` header. The token
/// vouches for the account id; the roles are the ones the account holds now
/// (none if it does not exist), never more than the token names.
async fn viewer_from(http: &Http, authorization: Option<&HeaderValue>) -> Result<Viewer, ApiError> {
    let Some(value) = authorization else {
        return Ok(Viewer(None));
    };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    let Some(mut claims) = token.and_then(|t| http.state.tokens.verify(t.trim())) else {
        return Err(ApiError::Unauthenticated(
            "the bearer token is invalid or expired; sign in again".into(),
        ));
    };
    let current = http
        .state
        .roles
        .of(claims.sub)
        .await
        .map_err(ApiError::internal)?;
    claims.roles.retain(|r| current.contains(r));
    Ok(Viewer(Some(Arc::new(claims))))
}

/// The bucket a caller is charged to: an account as itself; everyone else
/// (anonymous, or with a bad token) by address.
fn client_of(viewer: &Viewer, client_ip: Option<IpAddr>) -> Option<ClientKey> {
    match viewer {
        Viewer(Some(claims)) => Some(ClientKey::Account(claims.sub)),
        Viewer(None) => client_ip.map(ClientKey::ip),
    }
}

/// Authenticates a request and takes its first token: the caller, or why
/// it is refused. The operation's further tokens (one per mutation field)
/// are taken by [`crate::graphql::admission`].
async fn admit(
    http: &Http,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
) -> Result<(Viewer, Caller), ApiError> {
    let viewer = viewer_from(http, headers.get(header::AUTHORIZATION)).await;
    let client = client_of(viewer.as_ref().unwrap_or(&Viewer(None)), client_ip);
    if let Some(client) = client {
        if let Err(wait) = http.state.limiter.check(client) {
            return Err(ApiError::RateLimited {
                retry_after_seconds: retry_after_seconds(wait),
            });
        }
    }
    Ok((viewer?, Caller { client, prepaid: 1 }))
}

/// The read models a request's operation reads: what a consistency token
/// must wait for. Mutations read the write side (their payloads wait for
/// what they show themselves); a document that does not parse, or names no
/// operation, waits for every read model.
fn read_models_for(request: &mut async_graphql::Request) -> Vec<&'static str> {
    use async_graphql::parser::types::OperationType;
    let name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else {
        return READ_MODELS.to_vec();
    };
    match crate::graphql::admission::selected_fields(doc, name.as_deref()) {
        Some((OperationType::Query | OperationType::Subscription, roots, all)) => {
            if roots
                .iter()
                .any(|r| read_model_of(r).is_none() && !reads_no_read_model(r))
            {
                return READ_MODELS.to_vec();
            }
            let mut models: Vec<&'static str> = Vec::new();
            for model in all.iter().filter_map(|f| read_model_of(f)) {
                if !models.contains(&model) {
                    models.push(model);
                }
            }
            models
        }
        Some((OperationType::Mutation, _, _)) => Vec::new(),
        None => READ_MODELS.to_vec(),
    }
}

async fn execute(
    http: &Http,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
    media: Media,
    mut request: async_graphql::Request,
) -> Response {
    let (viewer, caller) = match admit(http, headers, client_ip).await {
        Ok(admitted) => admitted,
        Err(refused) => return error_response(refused, media),
    };
    if request.query.trim().is_empty() {
        return error_response(
            ApiError::BadUserInput("the request has no query".into()),
            media,
        );
    }
    http.documents.prepare(&mut request);
    let mut consistency = None;
    if let Some(raw) = headers.get(CONSISTENCY_HEADER) {
        let Some(token) = raw.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return error_response(
                ApiError::BadUserInput(
                    "X-Consistency-Token must be a token returned by a mutation".into(),
                ),
                media,
            );
        };
        // Only the read models this operation reads: a failed or lagging
        // read model it does not touch cannot hold it up.
        let models = read_models_for(&mut request);
        if !http.state.wait_for(&models, Position(token)).await {
            return consistency_timeout(http, token, media);
        }
        consistency = Some(token);
    }
    let label = operation_label(&mut request);
    let operation = tracing::info_span!(
        "graphql",
        otel.name = format!("graphql {label}"),
        operation = %label,
    );
    let mut response = match replica_for(http, &mut request, consistency).await {
        Some((replica, route)) => {
            execute_on_replica(http, replica, route, request, viewer, caller)
                .instrument(operation)
                .await
        }
        None => {
            http.schema
                .execute(request.data(viewer).data(caller))
                .instrument(operation)
                .await
        }
    };
    ApiError::code_request_errors(&mut response);
    if let Some(token) = consistency {
        response.extensions.insert(
            "consistency".into(),
            async_graphql::Value::from_json(serde_json::json!({
                "token": token.to_string(),
                "reached": true,
            }))
            .unwrap_or_default(),
        );
    }
    graphql_response(response, media)
}

/// The read models a query reads when it may be answered by a read
/// replica: a query (not a mutation or subscription) each of whose root
/// fields reads read models only. `None` for anything else, which the
/// primary answers.
fn replica_readable(request: &mut async_graphql::Request) -> Option<Vec<&'static str>> {
    use async_graphql::parser::types::OperationType;
    let name = request.operation_name.clone();
    let doc = request.parsed_query().ok()?;
    let (ty, roots, all) = crate::graphql::admission::selected_fields(doc, name.as_deref())?;
    let reads_read_models = |root: &String| read_model_of(root).is_some() || root == "__typename";
    if ty != OperationType::Query || roots.is_empty() || !roots.iter().all(reads_read_models) {
        return None;
    }
    let mut models: Vec<&'static str> = Vec::new();
    for model in all.iter().filter_map(|f| read_model_of(f)) {
        if !models.contains(&model) {
            models.push(model);
        }
    }
    Some(models)
}

/// The replica that answers this request, if any (see
/// [`crate::replicas`]); a read that could have gone to one but goes to
/// the primary is counted here.
async fn replica_for(
    http: &Http,
    request: &mut async_graphql::Request,
    token: Option<u64>,
) -> Option<(usize, crate::replicas::ReadRoute)> {
    use crate::replicas::Target;
    if http.replicas.is_empty() {
        return None;
    }
    let models = replica_readable(request)?;
    let replicas = &http.state.replicas;
    match replicas
        .route(&http.state.progress, &models, token.map(Position))
        .await?
    {
        (Target::Replica(i), route) if i < http.replicas.len() => Some((i, route)),
        (Target::Replica(_) | Target::Primary, route) => {
            replicas.count(route);
            None
        }
    }
}

/// Runs a query on replica `replica`; if it fails there with an internal
/// error (the replica went away, say), the primary answers it again, so
/// that a replica never fails a read.
async fn execute_on_replica(
    http: &Http,
    replica: usize,
    route: crate::replicas::ReadRoute,
    request: async_graphql::Request,
    viewer: Viewer,
    caller: Caller,
) -> async_graphql::Response {
    let mut again = async_graphql::Request::new(request.query.clone());
    again.operation_name = request.operation_name.clone();
    again.variables = request.variables.clone();
    again.extensions = request.extensions.clone();
    let response = http.replicas[replica]
        .execute(request.data(viewer.clone()).data(caller))
        .await;
    let internal = async_graphql::Value::from(ApiError::internal("").code());
    let failed = response.errors.iter().any(|e| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .is_some_and(|code| *code == internal)
    });
    let replicas = &http.state.replicas;
    if !failed {
        replicas.count(route);
        return response;
    }
    replicas.mark_down(replica);
    replicas.count(crate::replicas::ReadRoute::Failed);
    http.schema.execute(again.data(viewer).data(caller)).await
}

/// What a request's span calls its operation: the operation's name (the
/// one asked for, or the document's only one), else its type.
fn operation_label(request: &mut async_graphql::Request) -> String {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    if let Some(name) = &request.operation_name {
        return name.clone();
    }
    let kind = |ty: OperationType| match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    match request.parsed_query().map(|doc| &doc.operations) {
        Ok(DocumentOperations::Single(op)) => kind(op.node.ty).to_owned(),
        Ok(DocumentOperations::Multiple(ops)) if ops.len() == 1 => ops
            .keys()
            .next()
            .map_or_else(|| "operation".to_owned(), ToString::to_string),
        Ok(DocumentOperations::Multiple(_)) | Err(_) => "operation".to_owned(),
    }
}

/// The read models did not reach a consistency token within the bounded
/// wait: a clear, retryable error (503, `Retry-After`, code `CONFLICT`)
/// rather than an answer that would not show the caller's own write.
fn consistency_timeout(http: &Http, token: u64, media: Media) -> Response {
    let waited = http.state.consistency_wait.as_millis();
    tracing::warn!(token, waited_ms = %waited, "read models did not reach the consistency token in time");
    let mut response = error_response_with(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Conflict(format!(
            "the read models have not caught up with X-Consistency-Token {token} within \
             {waited} ms; retry shortly, or send the query without the token"
        )),
        media,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}

async fn graphql_post(State(http): State<Http>, request: Request) -> Response {
    let Some(media) = Media::negotiate(request.headers()) else {
        return not_acceptable();
    };
    let client_ip = client_ip(&http, &request);
    let headers = request.headers().clone();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error_response_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadUserInput(
                "POST /graphql takes a JSON body: send Content-Type: application/json".into(),
            ),
            media,
        );
    }
    // `GraphQLRequest` streams the body without a limit; buffer it under
    // `DefaultBodyLimit` first.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(media)
        }
        Err(rejection) => {
            return error_response(
                ApiError::BadUserInput(format!(
                    "could not read the request body: {}",
                    rejection.body_text()
                )),
                media,
            )
        }
    };
    let mut buffered = Request::new(Body::from(body));
    *buffered.method_mut() = Method::POST;
    *buffered.headers_mut() = headers.clone();
    match GraphQLRequest::<GraphQLRejection>::from_request(buffered, &()).await {
        Ok(request) => execute(&http, &headers, client_ip, media, request.into_inner()).await,
        Err(GraphQLRejection(ParseRequestError::PayloadTooLarge)) => too_large(media),
        Err(GraphQLRejection(e)) => error_response(
            ApiError::BadUserInput(format!("malformed GraphQL request: {e}")),
            media,
        ),
    }
}

async fn graphql_get(State(http): State<Http>, request: Request) -> Response {
    let client_ip = client_ip(&http, &request);
    if request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return graphql_ws(http, client_ip, request).await;
    }
    let query = request.uri().query().unwrap_or_default();
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if query.is_empty() && wants_html {
        return crate::graphiql::page().into_response();
    }
    let Some(media) = Media::negotiate(request.headers()) else {
        return not_acceptable();
    };
    match parse_get(request.uri()) {
        Ok(graphql) if is_mutation(&graphql) => {
            // GET must be safe: a link or a prefetch must never change state.
            let mut response = error_response_with(
                StatusCode::METHOD_NOT_ALLOWED,
                ApiError::BadUserInput("mutations must be sent with POST".into()),
                media,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        Ok(graphql) => execute(&http, request.headers(), client_ip, media, graphql).await,
        Err(e) => error_response(
            ApiError::BadUserInput(format!("malformed GraphQL GET request: {e}")),
            media,
        ),
    }
}

/// The parameters of a GraphQL GET request (GraphQL over HTTP:
/// `query`, `operationName`, and JSON-encoded `variables` and `extensions`).
#[derive(Debug, serde::Deserialize)]
struct GetParams {
    #[serde(default)]
    query: String,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

fn parse_get(uri: &axum::http::Uri) -> Result<async_graphql::Request, String> {
    let axum::extract::Query(params) =
        axum::extract::Query::<GetParams>::try_from_uri(uri).map_err(|e| e.body_text())?;
    let mut request = async_graphql::Request::new(params.query);
    if let Some(name) = params.operation_name.filter(|n| !n.is_empty()) {
        request = request.operation_name(name);
    }
    if let Some(variables) = params.variables.filter(|v| !v.is_empty()) {
        let json: serde_json::Value =
            serde_json::from_str(&variables).map_err(|e| format!("invalid variables: {e}"))?;
        if !json.is_object() && !json.is_null() {
            return Err("variables must be a JSON object".into());
        }
        request = request.variables(async_graphql::Variables::from_json(json));
    }
    if let Some(extensions) = params.extensions.filter(|v| !v.is_empty()) {
        let json: serde_json::Value =
            serde_json::from_str(&extensions).map_err(|e| format!("invalid extensions: {e}"))?;
        let serde_json::Value::Object(map) = json else {
            return Err("extensions must be a JSON object".into());
        };
        for (key, value) in map {
            request.extensions.insert(
                key,
                async_graphql::Value::from_json(value).map_err(|e| e.to_string())?,
            );
        }
    }
    Ok(request)
}

/// The WebSocket subprotocol served (graphql-ws's `graphql-transport-ws`).
pub const WS_PROTOCOL: &str = "graphql-transport-ws";

/// Subscriptions: a WebSocket upgrade of `GET /graphql` speaking
/// `graphql-transport-ws`. The token comes from the upgrade request's
/// `Authorization` header or from `ConnectionInit`'s payload
/// (`{"Authorization": "Bearer …"}`, as browsers cannot set headers); a bad
/// token in the payload closes the socket with 4403.
async fn graphql_ws(http: Http, client_ip: Option<IpAddr>, request: Request) -> Response {
    if http.state.stopping.is_draining() {
        return error_response(
            ApiError::Unavailable {
                message: "this server is shutting down: connect again".into(),
                retry_after_seconds: 1,
            },
            Media::Json,
        );
    }
    let (mut parts, _body) = request.into_parts();
    let offered = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == WS_PROTOCOL));
    if !offered {
        return error_response(
            ApiError::BadUserInput(format!(
                "WebSocket clients must offer the {WS_PROTOCOL} subprotocol"
            )),
            Media::Json,
        );
    }
    let (viewer, _) = match admit(&http, &parts.headers, client_ip).await {
        Ok(admitted) => admitted,
        Err(refused) => return error_response(refused, Media::Json),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return error_response(
                ApiError::BadUserInput(format!(
                    "not a valid WebSocket upgrade: {}",
                    rejection.body_text()
                )),
                Media::Json,
            )
        }
    };
    let schema = http.schema.clone();
    // A child of the upgrade request's span (which a `traceparent` header
    // made a child of the caller's).
    let connection = tracing::info_span!("graphql.ws", otel.name = "graphql websocket");
    upgrade
        .protocols([WS_PROTOCOL])
        .on_upgrade(move |socket| {
            serve_ws(socket, http, schema, viewer, client_ip, connection.clone())
                .instrument(connection)
        })
        .into_response()
}

/// Runs one `graphql-transport-ws` connection. Like async-graphql-axum's
/// `GraphQLWebSocket::serve`, except that a refused `ConnectionInit` closes
/// with the protocol's `4403: Forbidden` rather than a generic 1002.
async fn serve_ws(
    socket: axum::extract::ws::WebSocket,
    http: Http,
    schema: MarketplaceSchema,
    header_viewer: Viewer,
    client_ip: Option<IpAddr>,
    connection: tracing::Span,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};

    let stopping = http.state.stopping.clone();
    let forbidden = Arc::new(AtomicBool::new(false));
    let refused = forbidden.clone();
    let on_init = move |payload: serde_json::Value| async move {
        let token = ["Authorization", "authorization"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
            .and_then(|v| HeaderValue::from_str(v).ok());
        let viewer = match token {
            Some(token) => viewer_from(&http, Some(&token)).await.map_err(|e| {
                refused.store(true, Ordering::SeqCst);
                async_graphql::Error::new(e.message())
            })?,
            None => header_viewer,
        };
        // Every operation on this socket draws from the same buckets as
        // HTTP requests do (nothing is prepaid here).
        let caller = Caller {
            client: client_of(&viewer, client_ip),
            prepaid: 0,
        };
        // A `traceparent` in the payload (browsers cannot set headers on
        // the upgrade) makes the connection's subscriptions continue that
        // trace.
        let trace = match remote_parent(&PayloadCarrier(&payload)) {
            Some(parent) => {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let span = tracing::info_span!(
                    parent: None,
                    "graphql.ws.init",
                    otel.name = "graphql websocket init"
                );
                let _ = span.set_parent(parent);
                span
            }
            None => connection,
        };
        let mut data = async_graphql::Data::default();
        data.insert(crate::graphql::ConnectionTrace(trace));
        data.insert(viewer);
        data.insert(caller);
        data.insert(crate::graphql::SubscriptionBudget::default());
        Ok(data)
    };
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|m| futures::future::ready(m.is_ok()))
        .filter_map(|m| {
            futures::future::ready(match m {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                _ => None,
            })
        });
    let protocol = async_graphql::http::WebSocketProtocols::GraphQLWS;
    let mut output = async_graphql::http::WebSocket::new(schema, input, protocol)
        .on_connection_init(on_init)
        .map(|m| match m {
            async_graphql::http::WsMessage::Text(text) => Message::Text(text.into()),
            async_graphql::http::WsMessage::Close(code, reason) => {
                let code = if forbidden.load(Ordering::SeqCst) {
                    4403
                } else {
                    code
                };
                Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
            }
        });
    // A stopping server closes with Service Restart: the client's cue to
    // reconnect, to another replica.
    let drained = stopping.drained();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            message = output.next() => match message {
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            () = &mut drained => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: crate::shutdown::WS_CLOSE_SERVICE_RESTART,
                        reason: "server restarting: reconnect".into(),
                    })))
                    .await;
                break;
            }
        }
    }
}

/// Whether the operation a request would run is a mutation (the named one,
/// or the only one). Unparseable queries are left to the executor's errors.
fn is_mutation(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    let ty = match (&doc.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| op.node.ty)
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    ty == Some(OperationType::Mutation)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers and every read model a replica needs
/// ([`REQUIRED_READ_MODELS`]) has a live build with a running leader (here
/// or in a projector process): 200, else 503. The JSON body names every
/// read model's state; those not RUNNING but not required are listed under
/// `degraded`, and do not fail readiness. A FAILED process manager
/// (`processManagers`) fails readiness: orders would stop moving.
async fn readyz(State(http): State<Http>) -> Response {
    if http.state.stopping.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "draining": true })),
        )
            .into_response();
    }
    let store = http.state.handler.store();
    let status = match marketplace_projections::status::status(&http.state.pool, &**store).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "ready": false,
                    "database": "unreachable",
                })),
            )
                .into_response();
        }
    };
    let mut projections = serde_json::Map::new();
    let mut degraded = Vec::new();
    let mut ready = true;
    for name in READ_MODELS {
        let state = status
            .iter()
            .find(|p| p.name == *name && p.kind == ConsumerKind::Projection)
            .filter(|p| p.schema.is_some())
            .map_or("STOPPED", |p| p.state.as_str());
        if state != "RUNNING" {
            if REQUIRED_READ_MODELS.contains(name) {
                ready = false;
            } else {
                degraded.push(*name);
            }
        }
        projections.insert((*name).to_owned(), state.into());
    }
    // A FAILED process manager stops orders from moving: not ready. One
    // with no leader at the moment (standby elsewhere taking over) is not.
    let mut managers = serde_json::Map::new();
    for pm in status
        .iter()
        .filter(|p| p.kind == ConsumerKind::ProcessManager)
    {
        if pm.state == ProjectionState::Failed {
            ready = false;
        }
        managers.insert(pm.name.clone(), pm.state.as_str().into());
    }
    // An open breaker degrades deposits only: reads and orders paid from
    // the wallet keep working, so the process stays ready.
    let payments = http.state.payments.stats();
    let breaker = payments.state();
    if breaker != marketplace_commands::payments::BreakerState::Closed {
        degraded.push("payments");
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "database": "ok",
        "projections": projections,
        "processManagers": managers,
        "payments": {
            "breaker": breaker.as_str(),
            "retryAfterSeconds": payments.retry_after().map(retry_after_seconds),
        },
        "degraded": degraded,
    });
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(http): State<Http>) -> Response {
    let page = crate::metrics::render(&http.state).await;
    ([("content-type", "text/plain; version=0.0.4")], page).into_response()
}

/// A provider callback: `{"intentId", "status", "chargeId", "last4",
/// "reason"}` (see [`crate::payments`]).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentCallback {
    intent_id: uuid::Uuid,
    #[serde(flatten)]
    result: crate::payments::ProviderResult,
}

/// `POST /payments/callback`: the provider reports a charge's result. It
/// must carry the callback secret; it may come more than once, and race the
/// charge's own answer: settling deduplicates (one success, one credit).
/// Answers 204 once recorded (or already recorded), 401 without the secret,
/// 400 for a body that breaks the protocol, 404 for an unknown intent, 409
/// for a capture the provider had declined.
async fn payment_callback(State(http): State<Http>, headers: HeaderMap, body: Bytes) -> Response {
    use marketplace_commands::flows::deposit::{settle, SettleError};
    use marketplace_commands::{CommandContext, CommandError};
    use marketplace_domain::payment::PaymentError;

    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !http.state.payments.accepts_callback(bearer) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(callback) = serde_json::from_slice::<PaymentCallback>(&body) else {
        return (StatusCode::BAD_REQUEST, "malformed callback").into_response();
    };
    let outcome = match callback.result.outcome() {
        Ok(outcome) => outcome,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let ctx = CommandContext::new("payments-provider");
    let intent = marketplace_domain::values::PaymentIntentId(callback.intent_id);
    match settle(&http.state.handler, intent, &outcome, &ctx).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(SettleError::Intent(CommandError::Rejected(PaymentError::NotFound))) => {
            StatusCode::NOT_FOUND.into_response()
        }
        Err(SettleError::Intent(CommandError::Rejected(e))) => {
            (StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(intent = %callback.intent_id, error = %e, "payment callback failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `PUT /assets`: see [`crate::assets`].
async fn put_asset(State(http): State<Http>, request: Request) -> Response {
    use marketplace_commands::CommandContext;
    use marketplace_domain::asset::{asset_id, Asset, AssetCommand, RecordUpload};
    use marketplace_domain::values::{AccountId, ContentType, Role};

    let headers = request.headers().clone();
    let viewer = match viewer_from(&http, headers.get(header::AUTHORIZATION)).await {
        Ok(Viewer(Some(claims))) => claims,
        Ok(Viewer(None)) | Err(_) => {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "sign in as a SELLER to upload assets",
            )
        }
    };
    if !viewer.has(Role::Seller) {
        return json_error(StatusCode::FORBIDDEN, "only SELLERs upload assets");
    }
    let assets = &http.state.assets;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ContentType::parse(v).ok());
    let Some(content_type) = content_type.filter(|t| assets.accepts(t)) else {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this Content-Type is not accepted for assets",
        );
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > assets.max_bytes()) {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("assets are at most {} bytes", assets.max_bytes()),
        );
    }
    let body = request.into_body().into_data_stream();
    let stored = match assets.upload(body).await {
        Ok(stored) => stored,
        Err(e @ crate::assets::UploadError::TooLarge(_)) => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        Err(e @ (crate::assets::UploadError::Empty | crate::assets::UploadError::Body(_))) => {
            return json_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ crate::assets::UploadError::Store(_)) => {
            tracing::error!(error = %e, "asset upload failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let command = AssetCommand::RecordUpload(RecordUpload {
        content_hash: stored.content_hash.clone(),
        size: stored.size,
        content_type: content_type.clone(),
        uploaded_by: AccountId(viewer.sub),
        at: chrono::Utc::now(),
    });
    let ctx = CommandContext::new(viewer.sub.to_string());
    let executed = match http
        .state
        .handler
        .execute::<Asset>(asset_id(&stored.content_hash), &ctx, &command)
        .await
    {
        Ok(executed) => executed,
        Err(e) => {
            tracing::error!(error = %e, "recording an asset upload failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let status = if executed.appended > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let first_type = executed
        .state
        .content_type
        .as_ref()
        .map_or(content_type.to_string(), ToString::to_string);
    (
        status,
        axum::Json(serde_json::json!({
            "contentHash": stored.content_hash.as_str(),
            "size": stored.size,
            "contentType": first_type,
            "consistencyToken": executed.position.to_string(),
        })),
    )
        .into_response()
}

/// `GET /assets/{hash}`: see [`crate::assets`]. 404 for anyone not allowed.
async fn get_asset(
    State(http): State<Http>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    use crate::assets::Integrity;
    use marketplace_commands::CommandContext;
    use marketplace_domain::asset::{asset_id, AccessReason, Asset, AssetCommand, GrantAccess};
    use marketplace_domain::values::{AccountId, ContentHash, OrderId, Role};
    use marketplace_projections::read_models::{listings, orders};

    let not_found = || json_error(StatusCode::NOT_FOUND, "no such asset");
    // Only a lower-case digest names an object: other spellings are not found.
    let Some(hash) = ContentHash::parse(&hash)
        .ok()
        .filter(|h| h.as_str() == hash)
    else {
        return not_found();
    };
    let Ok(Viewer(Some(viewer))) = viewer_from(&http, headers.get(header::AUTHORIZATION)).await
    else {
        return not_found();
    };
    let state = &http.state;
    let asset = match state.handler.load::<Asset>(asset_id(&hash)).await {
        Ok(loaded) if loaded.state.is_stored() => loaded.state,
        Ok(_) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "loading an asset failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let reason = if viewer.has(Role::Admin) {
        Some(AccessReason::Admin)
    } else if asset.uploaded_by == Some(AccountId(viewer.sub))
        || listings::sells_content(&state.pool, viewer.sub, hash.as_str())
            .await
            .unwrap_or(false)
    {
        Some(AccessReason::Seller)
    } else {
        match orders::bought_content(&state.pool, viewer.sub, hash.as_str()).await {
            Ok(order) => order.map(|id| AccessReason::Buyer {
                order_id: OrderId(id),
            }),
            Err(e) => {
                tracing::error!(error = %e, "checking an asset's buyers failed");
                return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    };
    let Some(reason) = reason else {
        return not_found();
    };
    let size = match state.assets.verify(&hash).await {
        Ok(Integrity::Intact(size)) => size,
        Ok(Integrity::Corrupted) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored file does not match its hash; it is not served",
            )
        }
        Ok(Integrity::Missing) => {
            tracing::error!(content_hash = %hash, "an uploaded asset's file is missing");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored file is missing",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "reading an asset failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    if crate::assets::Assets::unsatisfiable(headers.get(header::RANGE), size) {
        return state
            .assets
            .serve(
                &hash,
                size,
                "application/octet-stream",
                headers.get(header::RANGE),
            )
            .await;
    }
    let grant = AssetCommand::GrantAccess(GrantAccess {
        account_id: AccountId(viewer.sub),
        reason,
        at: chrono::Utc::now(),
    });
    let ctx = CommandContext::new(viewer.sub.to_string());
    if let Err(e) = state
        .handler
        .execute::<Asset>(asset_id(&hash), &ctx, &grant)
        .await
    {
        // The audit trail is part of the download: no record, no file.
        tracing::error!(error = %e, "recording an asset access failed");
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    }
    let content_type = asset
        .content_type
        .as_ref()
        .map_or("application/octet-stream".to_owned(), ToString::to_string);
    state
        .assets
        .serve(&hash, size, &content_type, headers.get(header::RANGE))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(query: &str) -> Option<Vec<&'static str>> {
        replica_readable(&mut async_graphql::Request::new(query))
    }

    #[test]
    fn only_queries_of_read_models_may_go_to_a_replica() {
        use marketplace_projections::read_models::{accounts, listings, orders};
        assert_eq!(
            readable("{ listings { edges { node { seller { id } } } } }"),
            Some(vec![listings::NAME, accounts::NAME])
        );
        assert_eq!(
            readable("query Mine { myOrders { edges { node { id } } } __typename }"),
            Some(vec![orders::NAME])
        );
        // Mutations, subscriptions, the log and the checkpoints: the primary.
        assert_eq!(
            readable("mutation { login(email: \"a\", password: \"b\") { token } }"),
            None
        );
        assert_eq!(
            readable("subscription { orderUpdated(id: \"x\") { id } }"),
            None
        );
        assert_eq!(readable("{ projections { name } }"), None);
        assert_eq!(
            readable("{ listings { totalCount } projections { name } }"),
            None
        );
        assert_eq!(
            readable("{ streamHistory(streamId: \"x\") { position } }"),
            None
        );
        assert_eq!(readable("{ paymentIntent(id: \"x\") { id } }"), None);
        assert_eq!(readable("{ not valid"), None);
    }
}

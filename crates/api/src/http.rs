//! HTTP routes: `/graphql` (POST, GET, GraphiQL), `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql::ParseRequestError;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use marketplace_store::Position;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::graphql::{MarketplaceSchema, Viewer};
use crate::ratelimit::{retry_after_seconds, ClientKey, RateLimiter, RateLimits};
use crate::state::{AppState, READ_MODELS};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header that carries a consistency token.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

#[derive(Clone)]
struct Http {
    state: AppState,
    schema: MarketplaceSchema,
    limiter: Arc<RateLimiter>,
}

/// The whole HTTP surface with the default rate limits.
pub fn app(state: AppState, schema: MarketplaceSchema) -> Router {
    app_with_limits(state, schema, RateLimits::default())
}

/// The whole HTTP surface, for the server and for tests. `/graphql` is rate
/// limited per client (see [`crate::ratelimit`]); anonymous calls are keyed
/// by the peer address, so serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` (without it,
/// anonymous calls are not limited).
pub fn app_with_limits(state: AppState, schema: MarketplaceSchema, limits: RateLimits) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(Http {
            state,
            schema,
            limiter: Arc::new(RateLimiter::new(limits)),
        })
}

fn error_response(e: ApiError) -> Response {
    let status = match e {
        ApiError::BadUserInput(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response_with(status, e)
}

fn error_response_with(status: StatusCode, e: ApiError) -> Response {
    let retry_after = match e {
        ApiError::RateLimited {
            retry_after_seconds,
        } => Some(retry_after_seconds),
        _ => None,
    };
    let resp = async_graphql::Response::from_errors(vec![e
        .into_graphql()
        .into_server_error(Default::default())]);
    let mut response = (status, GraphQLResponse::from(resp)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn too_large() -> Response {
    error_response_with(
        StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::BadUserInput(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        )),
    )
}

/// The TCP peer, when the server was built with connect info.
fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The caller of a request, from its `Authorization` header.
fn viewer_from(http: &Http, authorization: Option<&HeaderValue>) -> Result<Viewer, ApiError> {
    match authorization {
        None => Ok(Viewer(None)),
        Some(value) => {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
            match token.and_then(|t| http.state.tokens.verify(t.trim())) {
                Some(claims) => Ok(Viewer(Some(Arc::new(claims)))),
                None => Err(ApiError::Unauthenticated(
                    "the bearer token is invalid or expired; sign in again".into(),
                )),
            }
        }
    }
}

/// Authenticates and rate-limits a request: the caller, or why it is
/// refused.
fn admit(http: &Http, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Viewer, ApiError> {
    let viewer = viewer_from(http, headers.get(header::AUTHORIZATION));
    // An account is limited as itself; everyone else (anonymous, or with a
    // bad token) by address.
    let client = match &viewer {
        Ok(Viewer(Some(claims))) => Some(ClientKey::Account(claims.sub)),
        _ => peer.map(|p| ClientKey::ip(p.ip())),
    };
    if let Some(client) = client {
        if let Err(wait) = http.limiter.check(client) {
            return Err(ApiError::RateLimited {
                retry_after_seconds: retry_after_seconds(wait),
            });
        }
    }
    viewer
}

async fn execute(
    http: &Http,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    request: async_graphql::Request,
) -> Response {
    let viewer = match admit(http, headers, peer) {
        Ok(viewer) => viewer,
        Err(refused) => return error_response(refused),
    };
    let mut caught_up = None;
    if let Some(raw) = headers.get(CONSISTENCY_HEADER) {
        let Some(token) = raw.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return error_response(ApiError::BadUserInput(
                "X-Consistency-Token must be a token returned by a mutation".into(),
            ));
        };
        caught_up = Some((
            token,
            http.state.wait_for(READ_MODELS, Position(token)).await,
        ));
    }
    let mut response = http.schema.execute(request.data(viewer)).await;
    ApiError::code_request_errors(&mut response);
    if let Some((token, reached)) = caught_up {
        if !reached {
            tracing::warn!(
                token,
                "read models did not reach the consistency token in time"
            );
        }
        response.extensions.insert(
            "consistency".into(),
            async_graphql::Value::from_json(serde_json::json!({
                "token": token.to_string(),
                "reached": reached,
            }))
            .unwrap_or_default(),
        );
    }
    GraphQLResponse::from(response).into_response()
}

async fn graphql_post(State(http): State<Http>, request: Request) -> Response {
    let peer = peer(&request);
    let headers = request.headers().clone();
    // `GraphQLRequest` streams the body without a limit; buffer it under
    // `DefaultBodyLimit` first.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large()
        }
        Err(rejection) => {
            return error_response(ApiError::BadUserInput(format!(
                "could not read the request body: {}",
                rejection.body_text()
            )))
        }
    };
    let mut buffered = Request::new(Body::from(body));
    *buffered.method_mut() = Method::POST;
    *buffered.headers_mut() = headers.clone();
    match GraphQLRequest::<GraphQLRejection>::from_request(buffered, &()).await {
        Ok(request) => execute(&http, &headers, peer, request.into_inner()).await,
        Err(GraphQLRejection(ParseRequestError::PayloadTooLarge)) => too_large(),
        Err(GraphQLRejection(e)) => error_response(ApiError::BadUserInput(format!(
            "malformed GraphQL request: {e}"
        ))),
    }
}

async fn graphql_get(State(http): State<Http>, request: Request) -> Response {
    let peer = peer(&request);
    if request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return graphql_ws(http, peer, request).await;
    }
    let Some(query) = request
        .uri()
        .query()
        .filter(|q| q.split('&').any(|kv| kv.starts_with("query=")))
    else {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .title("Marketplace")
                .finish(),
        )
        .into_response();
    };
    match async_graphql::http::parse_query_string(query) {
        Ok(graphql) if is_mutation(&graphql) => {
            // GET must be safe: a link or a prefetch must never change state.
            let mut response = error_response_with(
                StatusCode::METHOD_NOT_ALLOWED,
                ApiError::BadUserInput("mutations must be sent with POST".into()),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        Ok(graphql) => execute(&http, request.headers(), peer, graphql).await,
        Err(e) => error_response(ApiError::BadUserInput(format!(
            "malformed GraphQL GET request: {e}"
        ))),
    }
}

/// The WebSocket subprotocol served (graphql-ws's `graphql-transport-ws`).
pub const WS_PROTOCOL: &str = "graphql-transport-ws";

/// Subscriptions: a WebSocket upgrade of `GET /graphql` speaking
/// `graphql-transport-ws`. The token comes from the upgrade request's
/// `Authorization` header or from `ConnectionInit`'s payload
/// (`{"Authorization": "Bearer …"}`, as browsers cannot set headers); a bad
/// token in the payload closes the socket with 4403.
async fn graphql_ws(http: Http, peer: Option<SocketAddr>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let offered = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == WS_PROTOCOL));
    if !offered {
        return error_response(ApiError::BadUserInput(format!(
            "WebSocket clients must offer the {WS_PROTOCOL} subprotocol"
        )));
    }
    let viewer = match admit(&http, &parts.headers, peer) {
        Ok(viewer) => viewer,
        Err(refused) => return error_response(refused),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return error_response(ApiError::BadUserInput(format!(
                "not a valid WebSocket upgrade: {}",
                rejection.body_text()
            )))
        }
    };
    let schema = http.schema.clone();
    upgrade
        .protocols([WS_PROTOCOL])
        .on_upgrade(move |socket| serve_ws(socket, http, schema, viewer))
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
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};

    let forbidden = Arc::new(AtomicBool::new(false));
    let refused = forbidden.clone();
    let on_init = move |payload: serde_json::Value| async move {
        let token = ["Authorization", "authorization"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
            .and_then(|v| HeaderValue::from_str(v).ok());
        let viewer = match token {
            Some(token) => viewer_from(&http, Some(&token)).map_err(|e| {
                refused.store(true, Ordering::SeqCst);
                async_graphql::Error::new(e.message())
            })?,
            None => header_viewer,
        };
        let mut data = async_graphql::Data::default();
        data.insert(viewer);
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
    while let Some(message) = output.next().await {
        if sink.send(message).await.is_err() {
            break;
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

async fn readyz(State(http): State<Http>) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&http.state.pool)
        .await
    {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

async fn metrics(State(http): State<Http>) -> Response {
    let mut out = String::from(
        "# HELP marketplace_projection_position Last log position committed by each projection.\n\
         # TYPE marketplace_projection_position gauge\n",
    );
    for name in READ_MODELS {
        out.push_str(&format!(
            "marketplace_projection_position{{projection=\"{name}\"}} {}\n",
            http.state.progress.position(name)
        ));
    }
    if let Ok(head) = http.state.handler.store().head().await {
        out.push_str(
            "# HELP marketplace_log_head Position of the last committed event.\n\
             # TYPE marketplace_log_head gauge\n",
        );
        out.push_str(&format!("marketplace_log_head {head}\n"));
    }
    match marketplace_projections::status::status(&http.state.pool, &**http.state.handler.store())
        .await
    {
        Ok(all) => {
            out.push_str(
                "# HELP marketplace_projection_lag_events Events not yet folded by each projection.\n\
                 # TYPE marketplace_projection_lag_events gauge\n",
            );
            for p in &all {
                out.push_str(&format!(
                    "marketplace_projection_lag_events{{projection=\"{}\"}} {}\n",
                    p.name, p.lag_events
                ));
            }
            out.push_str(
                "# HELP marketplace_projection_lag_seconds Age of the oldest event not yet folded.\n\
                 # TYPE marketplace_projection_lag_seconds gauge\n",
            );
            for p in &all {
                out.push_str(&format!(
                    "marketplace_projection_lag_seconds{{projection=\"{}\"}} {:.3}\n",
                    p.name, p.lag_seconds
                ));
            }
            out.push_str(
                "# HELP marketplace_projection_failed 1 when the projection is FAILED.\n\
                 # TYPE marketplace_projection_failed gauge\n",
            );
            for p in &all {
                out.push_str(&format!(
                    "marketplace_projection_failed{{projection=\"{}\"}} {}\n",
                    p.name,
                    u8::from(p.state == marketplace_projections::ProjectionState::Failed)
                ));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: projection status unavailable"),
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

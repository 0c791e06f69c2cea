//! HTTP routes: `/graphql` (POST, GET, GraphiQL), `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use marketplace_store::Position;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::graphql::{MarketplaceSchema, Viewer};
use crate::state::{AppState, READ_MODELS};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header that carries a consistency token.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

#[derive(Clone)]
struct Http {
    state: AppState,
    schema: MarketplaceSchema,
}

/// The whole HTTP surface, for the server and for tests.
pub fn app(state: AppState, schema: MarketplaceSchema) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(Http { state, schema })
}

fn error_response(e: ApiError) -> Response {
    let status = match e {
        ApiError::BadUserInput(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let resp = async_graphql::Response::from_errors(vec![e
        .into_graphql()
        .into_server_error(Default::default())]);
    (status, GraphQLResponse::from(resp)).into_response()
}

async fn execute(http: &Http, headers: &HeaderMap, request: async_graphql::Request) -> Response {
    let viewer = match headers.get(axum::http::header::AUTHORIZATION) {
        None => Viewer(None),
        Some(value) => {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
            match token.and_then(|t| http.state.tokens.verify(t.trim())) {
                Some(claims) => Viewer(Some(Arc::new(claims))),
                None => {
                    return error_response(ApiError::Unauthenticated(
                        "the bearer token is invalid or expired; sign in again".into(),
                    ))
                }
            }
        }
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

async fn graphql_post(
    State(http): State<Http>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    execute(&http, &headers, request.into_inner()).await
}

async fn graphql_get(
    State(http): State<Http>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(query) = query.filter(|q| q.split('&').any(|kv| kv.starts_with("query="))) else {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .title("Marketplace")
                .finish(),
        )
        .into_response();
    };
    match async_graphql::http::parse_query_string(&query) {
        Ok(request) => execute(&http, &headers, request).await,
        Err(e) => error_response(ApiError::BadUserInput(format!(
            "malformed GraphQL GET request: {e}"
        ))),
    }
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

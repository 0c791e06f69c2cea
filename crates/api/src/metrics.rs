//! Prometheus metrics: GraphQL request latency histograms by operation, the
//! command handler's outcome/conflict/retry counters, projection and
//! consumer positions, lag and failures, this process's Postgres pool
//! use, the read replicas (reads by target and reason, health, lag: see
//! [`crate::replicas`]), and the payment gateway's circuit breaker (state,
//! calls by outcome, openings, retries). [`render`] writes the `/metrics` page.
//!
//! Every family is described (`# HELP`, `# TYPE`) on every page while the
//! database answers, even before it has a series, so dashboards and alerts can be checked against
//! a fresh server (`deploy/observability/`, and the e2e test that reads
//! it). The `marketplace_projection_*` and `marketplace_consumer_*` lag and
//! state gauges are cluster-wide (read from the checkpoints), so every
//! process exports the same values: aggregate them with `max`, not `sum`.
//!
//! Request latency is measured by a GraphQL extension ([`RequestMetrics`])
//! around the whole execution (parse, validate, resolve) of each query and
//! mutation. The `operation` label is the operation's name, or for an
//! anonymous operation its first root field; clients choose those names, so
//! at most [`MAX_OPERATIONS`] distinct labels are kept and the rest count as
//! `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection,
};
use async_graphql::{Request, Response, ServerResult, Variables};
use marketplace_commands::stats::StatsSnapshot;
use marketplace_projections::status::{ConsumerKind, ProjectionStatus};
use marketplace_projections::ProjectionState;

use crate::state::{AppState, READ_MODELS};

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Distinct `operation` labels kept before new ones count as `other`.
pub const MAX_OPERATIONS: usize = 256;

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    errors: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64, failed: bool) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.errors += u64::from(failed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Latency histograms by (operation, type).
#[derive(Debug, Default)]
pub struct RequestRegistry {
    inner: Mutex<BTreeMap<(String, &'static str), Histogram>>,
}

impl RequestRegistry {
    /// Records one request.
    pub fn observe(&self, operation: &str, kind: &'static str, took: Duration, failed: bool) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (operation.to_owned(), kind);
        let key = if map.contains_key(&key) || map.len() < MAX_OPERATIONS {
            key
        } else {
            ("other".to_owned(), kind)
        };
        map.entry(key)
            .or_default()
            .observe(took.as_secs_f64(), failed);
    }

    /// How many requests of `operation` were recorded (for tests).
    pub fn count(&self, operation: &str) -> u64 {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((op, _), _)| op == operation)
            .map(|(_, h)| h.count())
            .sum()
    }

    fn write(&self, out: &mut String) {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP marketplace_graphql_request_duration_seconds Time to execute a GraphQL query or mutation (parse, validate, resolve).\n\
             # TYPE marketplace_graphql_request_duration_seconds histogram\n",
        );
        for ((op, kind), h) in map.iter() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "marketplace_graphql_request_duration_seconds_bucket{{operation=\"{op}\",type=\"{kind}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "marketplace_graphql_request_duration_seconds_bucket{{operation=\"{op}\",type=\"{kind}\",le=\"+Inf\"}} {}\n\
                 marketplace_graphql_request_duration_seconds_sum{{operation=\"{op}\",type=\"{kind}\"}} {:.6}\n\
                 marketplace_graphql_request_duration_seconds_count{{operation=\"{op}\",type=\"{kind}\"}} {}",
                h.count(),
                h.sum,
                h.count()
            );
        }
        out.push_str(
            "# HELP marketplace_graphql_request_errors_total GraphQL queries and mutations answered with errors.\n\
             # TYPE marketplace_graphql_request_errors_total counter\n",
        );
        for ((op, kind), h) in map.iter() {
            let _ = writeln!(
                out,
                "marketplace_graphql_request_errors_total{{operation=\"{op}\",type=\"{kind}\"}} {}",
                h.errors
            );
        }
    }
}

/// The GraphQL extension that times each query and mutation into a
/// [`RequestRegistry`].
#[derive(Debug, Clone)]
pub struct RequestMetrics(pub Arc<RequestRegistry>);

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Timing {
            registry: self.0.clone(),
            operation_name: Mutex::new(None),
            label: Mutex::new(None),
        })
    }
}

struct Timing {
    registry: Arc<RequestRegistry>,
    operation_name: Mutex<Option<String>>,
    label: Mutex<Option<(String, &'static str)>>,
}

/// The operation a document runs: its name (or first root field) and type.
fn label_of(doc: &ExecutableDocument, name: Option<&str>) -> Option<(String, &'static str)> {
    let (op_name, op) = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => (None, op),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            let (n, op) = ops.iter().find(|(n, _)| n.as_str() == name)?;
            (Some(n.to_string()), op)
        }
        (DocumentOperations::Multiple(ops), None) => {
            let (n, op) = ops.iter().next()?;
            (Some(n.to_string()), op)
        }
    };
    let kind = match op.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    let name = op_name.or_else(|| {
        op.node
            .selection_set
            .node
            .items
            .iter()
            .find_map(|s| match &s.node {
                Selection::Field(f) => Some(f.node.name.node.to_string()),
                _ => None,
            })
    })?;
    // GraphQL names are [_A-Za-z][_0-9A-Za-z]*: safe as label values.
    Some((name.chars().take(64).collect(), kind))
}

#[async_trait::async_trait]
impl Extension for Timing {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let label = self
            .label
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| ("invalid".to_owned(), "none"));
        self.registry.observe(
            &label.0,
            label.1,
            started.elapsed(),
            !response.errors.is_empty(),
        );
        response
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self
            .operation_name
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let name = self
            .operation_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label_of(&doc, name.as_deref());
        Ok(doc)
    }
}

fn write_commands(out: &mut String, stats: &StatsSnapshot) {
    out.push_str(
        "# HELP marketplace_commands_total Commands handled, by aggregate and outcome.\n\
         # TYPE marketplace_commands_total counter\n",
    );
    for ((aggregate, outcome), n) in &stats.outcomes {
        let _ = writeln!(
            out,
            "marketplace_commands_total{{aggregate=\"{aggregate}\",outcome=\"{}\"}} {n}",
            outcome.as_str()
        );
    }
    out.push_str(
        "# HELP marketplace_command_conflicts_total Appends refused by optimistic concurrency (wrong expected revision).\n\
         # TYPE marketplace_command_conflicts_total counter\n",
    );
    for (aggregate, n) in &stats.conflicts {
        let _ = writeln!(
            out,
            "marketplace_command_conflicts_total{{aggregate=\"{aggregate}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP marketplace_command_retries_total Command attempts retried after a conflict or a transient store failure.\n\
         # TYPE marketplace_command_retries_total counter\n",
    );
    for (aggregate, n) in &stats.retries {
        let _ = writeln!(
            out,
            "marketplace_command_retries_total{{aggregate=\"{aggregate}\"}} {n}"
        );
    }
}

/// The whole `/metrics` page.
pub async fn render(state: &AppState) -> String {
    let mut out = String::new();
    state.requests.write(&mut out);
    out.push_str(
        "# HELP marketplace_http_requests_in_flight HTTP requests being served now (this one included).\n\
         # TYPE marketplace_http_requests_in_flight gauge\n",
    );
    let _ = writeln!(
        out,
        "marketplace_http_requests_in_flight {}",
        state.stopping.in_flight()
    );
    write_commands(&mut out, &state.handler.stats().snapshot());
    out.push_str(
        "# HELP marketplace_projection_position Last log position committed by each projection.\n\
         # TYPE marketplace_projection_position gauge\n",
    );
    for name in READ_MODELS {
        let _ = writeln!(
            out,
            "marketplace_projection_position{{projection=\"{name}\"}} {}",
            state.progress.position(name)
        );
    }
    if let Ok(head) = state.handler.store().head().await {
        out.push_str(
            "# HELP marketplace_log_head Position of the last committed event.\n\
             # TYPE marketplace_log_head gauge\n",
        );
        let _ = writeln!(out, "marketplace_log_head {head}");
    }
    match marketplace_projections::status::status(&state.pool, &**state.handler.store()).await {
        Ok(all) => write_consumers(&mut out, &all),
        Err(e) => tracing::warn!(error = %e, "metrics: projection status unavailable"),
    }
    write_local_consumers(&mut out, &state.consumers);
    write_pool(&mut out, &state.pool);
    state.replicas.write_metrics(&mut out);
    write_payments(&mut out, state.payments.stats());
    out.push_str(
        "# HELP marketplace_assets_corrupted_total Downloads refused because the stored file no longer matched its hash.\n\
         # TYPE marketplace_assets_corrupted_total counter\n",
    );
    let _ = writeln!(
        out,
        "marketplace_assets_corrupted_total {}",
        state.assets.corrupted()
    );
    out
}

/// The payment gateway's breaker as this process sees it (each process has
/// its own breaker: aggregate with `max` for the state).
fn write_payments(out: &mut String, stats: &marketplace_commands::payments::BreakerStats) {
    use marketplace_commands::payments::BreakerState;
    out.push_str(
        "# HELP marketplace_payments_breaker_state The payment gateway's circuit breaker: 1 for its current state (closed, open, half_open).\n\
         # TYPE marketplace_payments_breaker_state gauge\n",
    );
    let now = stats.state();
    for state in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        let _ = writeln!(
            out,
            "marketplace_payments_breaker_state{{state=\"{}\"}} {}",
            state.as_str(),
            u8::from(state == now)
        );
    }
    out.push_str(
        "# HELP marketplace_payments_calls_total Calls to the payment provider by outcome (answered, failed, rejected while open).\n\
         # TYPE marketplace_payments_calls_total counter\n",
    );
    for (outcome, n) in [
        ("answered", stats.successes()),
        ("failed", stats.failures()),
        ("rejected", stats.rejected()),
    ] {
        let _ = writeln!(
            out,
            "marketplace_payments_calls_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP marketplace_payments_breaker_opened_total Times the payment gateway's circuit breaker opened.\n\
         # TYPE marketplace_payments_breaker_opened_total counter\n",
    );
    let _ = writeln!(
        out,
        "marketplace_payments_breaker_opened_total {}",
        stats.opened()
    );
    out.push_str(
        "# HELP marketplace_payments_retries_total Charge attempts after the first.\n\
         # TYPE marketplace_payments_retries_total counter\n",
    );
    let _ = writeln!(
        out,
        "marketplace_payments_retries_total {}",
        stats.retries()
    );
}

/// This process's Postgres pool: connections in use and idle, and the
/// most it opens. In use close to the maximum means requests queue for a
/// connection.
fn write_pool(out: &mut String, pool: &sqlx::PgPool) {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
    out.push_str(
        "# HELP marketplace_db_pool_connections Open connections of this process's Postgres pool, by state.\n\
         # TYPE marketplace_db_pool_connections gauge\n",
    );
    let _ = writeln!(
        out,
        "marketplace_db_pool_connections{{state=\"in_use\"}} {}\n\
         marketplace_db_pool_connections{{state=\"idle\"}} {idle}",
        size - idle
    );
    out.push_str(
        "# HELP marketplace_db_pool_max_connections Most connections this process's Postgres pool opens.\n\
         # TYPE marketplace_db_pool_max_connections gauge\n",
    );
    let _ = writeln!(
        out,
        "marketplace_db_pool_max_connections {}",
        pool.options().get_max_connections()
    );
}

/// A gauge per consumer: name suffix, help for the projection series, help
/// for the consumer series, and the value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProjectionStatus) -> String,
);

/// Cluster-wide figures of every log consumer: the projection series for
/// the read models (as before), and `marketplace_consumer_*` for every
/// consumer, process managers included, labelled by kind.
fn write_consumers(out: &mut String, all: &[ProjectionStatus]) {
    let projections: Vec<&ProjectionStatus> = all
        .iter()
        .filter(|p| p.kind == ConsumerKind::Projection)
        .collect();
    let series: [Series; 3] = [
        (
            "lag_events",
            "Events not yet folded by each projection.",
            "Events not yet handled by each consumer.",
            |p| p.lag_events.to_string(),
        ),
        (
            "lag_seconds",
            "Age of the oldest event not yet folded.",
            "Age of the oldest event not yet handled.",
            |p| format!("{:.3}", p.lag_seconds),
        ),
        (
            "failed",
            "1 when the projection is FAILED.",
            "1 when the consumer is FAILED.",
            |p| u8::from(p.state == ProjectionState::Failed).to_string(),
        ),
    ];
    for (metric, help, _, value) in &series {
        let _ = writeln!(out, "# HELP marketplace_projection_{metric} {help}");
        let _ = writeln!(out, "# TYPE marketplace_projection_{metric} gauge");
        for p in &projections {
            let _ = writeln!(
                out,
                "marketplace_projection_{metric}{{projection=\"{}\"}} {}",
                p.name,
                value(p)
            );
        }
    }
    for (metric, _, help, value) in &series {
        let _ = writeln!(out, "# HELP marketplace_consumer_{metric} {help}");
        let _ = writeln!(out, "# TYPE marketplace_consumer_{metric} gauge");
        for p in all {
            let _ = writeln!(
                out,
                "marketplace_consumer_{metric}{{consumer=\"{}\",kind=\"{}\"}} {}",
                p.name,
                p.kind.as_str(),
                value(p)
            );
        }
    }
    out.push_str(
        "# HELP marketplace_consumer_has_leader 1 when some process leads the consumer.\n\
         # TYPE marketplace_consumer_has_leader gauge\n",
    );
    for p in all {
        let _ = writeln!(
            out,
            "marketplace_consumer_has_leader{{consumer=\"{}\",kind=\"{}\"}} {}",
            p.name,
            p.kind.as_str(),
            u8::from(p.has_leader)
        );
    }
}

/// What this process's process-manager runners do: whether it leads each,
/// and how many events it has handled.
fn write_local_consumers(out: &mut String, registry: &marketplace_consumers::Registry) {
    let all = registry.all();
    out.push_str(
        "# HELP marketplace_consumer_leading 1 when this process leads the process manager.\n\
         # TYPE marketplace_consumer_leading gauge\n",
    );
    for (name, s) in &all {
        let _ = writeln!(
            out,
            "marketplace_consumer_leading{{consumer=\"{name}\"}} {}",
            u8::from(s.state == marketplace_consumers::RunnerState::Running)
        );
    }
    out.push_str(
        "# HELP marketplace_consumer_handled_events_total Events this process's runner handled.\n\
         # TYPE marketplace_consumer_handled_events_total counter\n",
    );
    for (name, s) in &all {
        let _ = writeln!(
            out,
            "marketplace_consumer_handled_events_total{{consumer=\"{name}\"}} {}",
            s.handled
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_labels_are_bounded() {
        let r = RequestRegistry::default();
        r.observe("listings", "query", Duration::from_millis(3), false);
        r.observe("listings", "query", Duration::from_millis(300), true);
        let mut out = String::new();
        r.write(&mut out);
        assert!(out.contains(
            "marketplace_graphql_request_duration_seconds_bucket{operation=\"listings\",type=\"query\",le=\"0.005\"} 1\n"
        ));
        assert!(out.contains(
            "marketplace_graphql_request_duration_seconds_bucket{operation=\"listings\",type=\"query\",le=\"0.5\"} 2\n"
        ));
        assert!(out.contains(
            "marketplace_graphql_request_duration_seconds_count{operation=\"listings\",type=\"query\"} 2\n"
        ));
        assert!(out.contains(
            "marketplace_graphql_request_errors_total{operation=\"listings\",type=\"query\"} 1\n"
        ));
        for i in 0..(2 * MAX_OPERATIONS) {
            r.observe(&format!("op{i}"), "query", Duration::from_millis(1), false);
        }
        assert_eq!(r.inner.lock().expect("lock").len(), MAX_OPERATIONS + 1);
        assert!(r.count("other") > 0);
    }

    #[test]
    fn the_label_is_the_operation_name_or_its_first_root_field() {
        let doc = async_graphql::parser::parse_query("query A { me { id } } mutation B { logout }")
            .expect("parses");
        assert_eq!(label_of(&doc, Some("B")), Some(("B".into(), "mutation")));
        let doc = async_graphql::parser::parse_query("{ listings { totalCount } me { id } }")
            .expect("parses");
        assert_eq!(label_of(&doc, None), Some(("listings".into(), "query")));
    }
}

//! An in-process OTLP/HTTP collector for the tests: `POST /v1/traces` with
//! protobuf `ExportTraceServiceRequest` bodies, decoded with
//! `opentelemetry-proto`. One per test process, on its own thread and
//! runtime (a test's runtime ends with its test), since the tracing
//! subscriber it receives from is process-wide too.
//!
//! It keeps only the spans of the traces a test [`Collector::watch`]es, so
//! the spans of every other test's requests cost nothing but their
//! decoding.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost_otlp::Message;

/// One received span, its ids in lower-case hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The trace it belongs to.
    pub trace_id: String,
    /// Its id.
    pub span_id: String,
    /// Its parent's id (empty for a root).
    pub parent_span_id: String,
    /// Its W3C `tracestate`.
    pub trace_state: String,
    /// Its name.
    pub name: String,
    /// Its attributes, as text.
    pub attributes: HashMap<String, String>,
    /// The (trace id, span id) of each span it links to.
    pub links: Vec<(String, String)>,
    /// The exporting service's `service.name`.
    pub service_name: String,
}

impl ReceivedSpan {
    /// An attribute, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    watched: HashSet<String>,
    spans: Vec<ReceivedSpan>,
    requests: u64,
}

/// The process's collector.
#[derive(Clone)]
pub struct Collector {
    /// Its base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` would say).
    pub endpoint: String,
    received: Arc<Mutex<Received>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Keeps the spans of `trace_id` (32 hex digits) from now on.
    pub fn watch(&self, trace_id: &str) {
        lock(&self.received).watched.insert(trace_id.to_owned());
    }

    /// The spans of `trace_id` received so far, in arrival order.
    pub fn spans(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        lock(&self.received)
            .spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// How many export requests arrived (of any trace).
    pub fn requests(&self) -> u64 {
        lock(&self.received).requests
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's collector, started on first use.
pub fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let received = Arc::new(Mutex::new(Received::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("the collector's address")
        );
        let state = received.clone();
        std::thread::Builder::new()
            .name("otlp-collector".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the collector's runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let app = axum::Router::new()
                        .route("/v1/traces", axum::routing::post(export))
                        .with_state(state);
                    let _ = axum::serve(listener, app).await;
                });
            })
            .expect("start the collector");
        Collector { endpoint, received }
    })
}

async fn export(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = lock(&received);
    received.requests += 1;
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let trace_id = hex::encode(&span.trace_id);
            if !received.watched.contains(&trace_id) {
                continue;
            }
            received.spans.push(ReceivedSpan {
                trace_id,
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                trace_state: span.trace_state.clone(),
                name: span.name,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.clone(),
                            text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                        )
                    })
                    .collect(),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                    .collect(),
                service_name: service_name.clone(),
            });
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

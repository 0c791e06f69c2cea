//! Trace context across the log: the W3C `traceparent` an event carries in
//! its metadata ([`marketplace_store::EventMetadata::traceparent`]), written
//! from the span that decided it and read back by whatever reacts to it, so
//! one trace follows a request through the projections, the process
//! managers and the live feeds.
//!
//! Encoding and decoding go through OpenTelemetry's
//! [`TraceContextPropagator`]; spans are `tracing` spans, which the
//! OpenTelemetry layer (installed by the server's telemetry module) turns
//! into OpenTelemetry spans. Without that layer every span here has no
//! context: nothing is written, and following a stored context does
//! nothing.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and metadata field) name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Events of one consumer's batch that get a span of their own at most: a
/// bulk catch-up is not traced event by event.
pub const SPANS_PER_BATCH: usize = 64;

/// Events older than this (by `recorded_at`) are not traced when consumed:
/// a catch-up after downtime is not part of the requests that wrote them.
pub const TRACED_AGE: chrono::Duration = chrono::Duration::minutes(5);

/// The `traceparent` of `span`, if it belongs to a (sampled or not) trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The OpenTelemetry context a `traceparent` names, if it is well formed.
pub fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The trace id (32 hex digits) a `traceparent` names, if it is well formed.
pub fn trace_id(traceparent: &str) -> Option<String> {
    context_of(traceparent).map(|cx| cx.span().span_context().trace_id().to_string())
}

/// Makes the span whose context `traceparent` names the parent of `span`
/// (before `span` is first entered). Returns whether it did: not for a
/// missing or malformed context, nor without the OpenTelemetry layer.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    traceparent
        .and_then(context_of)
        .is_some_and(|cx| span.set_parent(cx).is_ok())
}

/// Links `span` to the span whose context `traceparent` names (before
/// `span` is first entered): for work done on behalf of several traces.
pub fn link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(context_of) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Whether an event recorded at `recorded_at` is recent enough for its
/// consumption to be traced (see [`TRACED_AGE`]).
pub fn is_recent(recorded_at: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::Utc::now() - recorded_at <= TRACED_AGE
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn reads_the_trace_id_of_a_well_formed_traceparent_only() {
        assert_eq!(
            trace_id(EXAMPLE).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_the_opentelemetry_layer_spans_carry_no_context() {
        let span = tracing::info_span!("untraced");
        assert!(!follow(&span, Some(EXAMPLE)));
        assert_eq!(traceparent_of(&span), None);
    }
}

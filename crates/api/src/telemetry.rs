//! Logging and tracing setup, in one place. Logs go to stderr; tests stay
//! quiet unless `TEST_LOG=1`.
//!
//! Traces are off by default. With `OTEL_EXPORTER_OTLP_ENDPOINT` set (the
//! collector's base URL, e.g. `http://collector:4318`), the `tracing` spans
//! of the marketplace's crates are exported as OpenTelemetry spans over
//! OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, in batches, under the
//! service name `OTEL_SERVICE_NAME` (default `marketplace`). Incoming W3C
//! `traceparent`/`tracestate` headers continue the caller's trace (see
//! [`crate::http`]); events carry their writer's `traceparent` in their
//! metadata (see `marketplace_consumers::trace`), so one trace follows a
//! request through the projections, the sagas and the subscriptions.
//!
//! The subscriber is process-wide: it is installed once, by the first call
//! of [`init`] or [`init_for_tests_with`]; later calls keep it. Whatever is
//! exported but not yet sent is flushed by [`Telemetry::shutdown`] (the
//! binary calls it on exit) or on demand by [`flush`]. Tests' logs also go
//! to an in-memory sink ([`captured_logs`]), the injectable sink tests
//! read.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "marketplace";

/// The crates whose spans are exported (at INFO and above), whatever the
/// log filter (`RUST_LOG`) says.
const TRACED_CRATES: &[&str] = &[
    "marketplace_api",
    "marketplace_commands",
    "marketplace_consumers",
    "marketplace_projections",
    "marketplace_store",
    "marketplace_keys",
    "marketplace_cli",
];

/// Where and how traces are exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingSettings {
    /// The OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`); spans go to
    /// `<endpoint>/v1/traces`. `None`: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// How long finished spans wait to be exported together
    /// (`OTEL_BSP_SCHEDULE_DELAY`, in milliseconds; 5 s by default).
    pub export_delay: Duration,
    /// Whether work that arrives outside any trace starts a recorded one
    /// (sampled as `OTEL_TRACES_SAMPLER` says, all by default). `false`:
    /// only callers' sampled traces are recorded and continued (what the
    /// tests use, so that only the traces they start are exported).
    pub new_traces: bool,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            export_delay: Duration::from_secs(5),
            new_traces: true,
        }
    }
}

impl TracingSettings {
    /// From the standard OpenTelemetry environment variables.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let defaults = Self::default();
        Self {
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            service_name: var("OTEL_SERVICE_NAME").unwrap_or(defaults.service_name),
            export_delay: var("OTEL_BSP_SCHEDULE_DELAY")
                .and_then(|ms| ms.parse().ok())
                .map_or(defaults.export_delay, Duration::from_millis),
            new_traces: defaults.new_traces,
        }
    }

    /// Exporting to the collector at `endpoint` (its base URL).
    pub fn otlp(endpoint: impl Into<String>) -> Self {
        Self {
            otlp_endpoint: Some(endpoint.into()),
            ..Self::default()
        }
    }

    /// The URL spans are posted to, if tracing is on.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_deref()
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

/// The installed telemetry: the trace exporter, if tracing is on.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every finished span now (blocks until the collector answered
    /// or the export timed out: call it off the async runtime's threads).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "could not flush the trace exporter");
            }
        }
    }

    /// Flushes and stops the exporter (on exit; blocks like [`flush`](Self::flush)).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "could not shut the trace exporter down");
            }
        }
    }
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

/// Installs the global subscriber once per process: logs to stderr
/// filtered by `RUST_LOG` (else `default_filter`), and spans exported as
/// `tracing` settings say. Later calls return what the first installed.
pub fn init(default_filter: &str, tracing: &TracingSettings) -> &'static Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    install(Some(filter), None, tracing)
}

/// For tests: logs only when `TEST_LOG` is set; no traces.
pub fn init_for_tests() {
    init_for_tests_with(&TracingSettings::default());
}

/// For tests that look at traces: like [`init_for_tests`], exporting as
/// `tracing` says. The first call in a process decides for all of them.
/// Tests' logs also go, at DEBUG for the marketplace's crates, to the
/// in-memory sink [`captured_logs`] reads, so a test can check what the
/// server's logs hold (no personal data, say).
pub fn init_for_tests_with(tracing: &TracingSettings) -> &'static Telemetry {
    let logs = std::env::var_os("TEST_LOG")
        .is_some()
        .then(|| EnvFilter::new("info,sqlx=warn"));
    install(logs, Some(&CAPTURED), tracing)
}

/// An in-memory log sink: every line the process logged through it, up to
/// [`CapturedLogs::LIMIT`] bytes (what comes later is counted, not kept).
#[derive(Debug, Default)]
pub struct CapturedLogs {
    text: std::sync::Mutex<Vec<u8>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl CapturedLogs {
    /// The most it keeps.
    pub const LIMIT: usize = 256 << 20;

    /// What it holds, as text.
    pub fn text(&self) -> String {
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Bytes logged past [`Self::LIMIT`], not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::io::Write for &'static CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        if text.len() + buf.len() <= CapturedLogs::LIMIT {
            text.extend_from_slice(buf);
        } else {
            self.dropped.fetch_add(
                u64::try_from(buf.len()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: CapturedLogs = CapturedLogs {
    text: std::sync::Mutex::new(Vec::new()),
    dropped: std::sync::atomic::AtomicU64::new(0),
};

/// The test log sink, if the process installed it ([`init_for_tests_with`]
/// came first).
pub fn captured_logs() -> Option<&'static CapturedLogs> {
    CAPTURING.get().copied()
}

static CAPTURING: OnceLock<&'static CapturedLogs> = OnceLock::new();

/// Flushes the installed exporter, if any (see [`Telemetry::flush`]).
pub fn flush() {
    if let Some(telemetry) = INSTALLED.get() {
        telemetry.flush();
    }
}

fn install(
    logs: Option<EnvFilter>,
    capture: Option<&'static CapturedLogs>,
    tracing: &TracingSettings,
) -> &'static Telemetry {
    INSTALLED.get_or_init(|| {
        let provider = tracing.traces_url().and_then(|url| {
            exporter(&url, tracing)
                .map_err(|e| eprintln!("tracing is off: the OTLP exporter for {url}: {e}"))
                .ok()
        });
        let spans = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("marketplace"))
                .with_filter(traced_targets())
        });
        let log = logs.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
        });
        let captured = capture.map(|sink| {
            let _ = CAPTURING.set(sink);
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || sink)
                .with_filter(captured_targets())
        });
        // Nothing to log or export: no subscriber at all, so spans cost
        // nothing (a bare registry would still record every one).
        if spans.is_some() || log.is_some() || captured.is_some() {
            let _ = tracing_subscriber::registry()
                .with(spans)
                .with(log)
                .with(captured)
                .try_init();
        }
        Telemetry { provider }
    })
}

/// What the test sink keeps: everything at INFO, the marketplace's crates
/// at DEBUG.
fn captured_targets() -> Targets {
    TRACED_CRATES
        .iter()
        .fold(Targets::new().with_default(LevelFilter::INFO), |t, c| {
            t.with_target(*c, LevelFilter::DEBUG)
        })
}

fn traced_targets() -> Targets {
    TRACED_CRATES
        .iter()
        .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO))
}

fn exporter(
    url: &str,
    tracing: &TracingSettings,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(tracing.export_delay)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(tracing.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource);
    let provider = if tracing.new_traces {
        provider
    } else {
        provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
    };
    Ok(provider.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_the_signal_path_under_the_endpoint() {
        assert_eq!(TracingSettings::default().traces_url(), None);
        assert_eq!(
            TracingSettings::otlp("http://collector:4318/").traces_url(),
            Some("http://collector:4318/v1/traces".to_owned())
        );
        assert_eq!(
            TracingSettings::otlp("http://collector:4318").traces_url(),
            Some("http://collector:4318/v1/traces".to_owned())
        );
    }
}

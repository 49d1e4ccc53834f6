//! Logs and traces. Installed once per process by the binary (`init`), never by the library:
//! tests and embedders keep control of their own subscriber.
//!
//! Logs go to stdout as JSON or human text (journald under systemd); every line inside a
//! request carries the request's span fields (request id, route). With `telemetry.log_dir` they
//! also go, as JSON, to daily files `conclave.YYYY-MM-DD.log` there, keeping
//! `telemetry.log_retention_days` of them. When `telemetry.otlp_endpoint` is set, spans are also
//! exported over OTLP/HTTP and incoming `traceparent` headers are honoured.
//!
//! What is logged never includes secrets or message bodies: passwords, tokens, keys and bodies
//! are not fields of any event or span (the settings print secrets as `[redacted]`), and a test
//! runs the server at `debug` and searches its log files for them.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{LogFormat, TelemetrySettings};

/// Flushes buffered spans and log lines when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("conclave: could not flush traces: {e}");
        }
    }
}

pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => {
            EnvFilter::try_new(&filter).context("RUST_LOG is not a valid filter")?
        }
        _ => EnvFilter::try_new(&settings.log_filter)
            .context("telemetry.log_filter is not a valid filter")?,
    };
    // Libraries that log what passes through them (the HTML sanitiser logs message text at
    // debug, the mailer its SMTP conversation, WebSocket libraries frames at trace): never more
    // than warnings from them, whatever the filter asks, so `debug` cannot leak bodies, links
    // or credentials into the logs.
    let mut filter = filter;
    for quiet in [
        "html5ever=warn",
        "markup5ever=warn",
        "ammonia=warn",
        "lettre=warn",
        "tungstenite=warn",
        "tokio_tungstenite=warn",
        "actix_http=warn",
        "h2=warn",
    ] {
        filter = filter.add_directive(quiet.parse().context("a built-in log directive")?);
    }
    let fmt_layer = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(false).boxed(),
    };

    let (file_layer, file_guard) = match &settings.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create telemetry.log_dir {}", dir.display()))?;
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("conclave")
                .filename_suffix("log")
                .max_log_files(settings.log_retention_days.max(1))
                .build(dir)
                .with_context(|| format!("cannot write logs in {}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_ansi(false)
                .with_writer(writer)
                .boxed();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };

    let (otel_layer, provider) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .context("cannot build the OTLP exporter")?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(settings.service_name.clone())
                        .with_attribute(opentelemetry::KeyValue::new(
                            "service.version",
                            env!("CARGO_PKG_VERSION"),
                        ))
                        .build(),
                )
                .build();
            let tracer = provider.tracer("conclave");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(file_layer)
        .with(otel_layer)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard {
        provider,
        _file: file_guard,
    })
}

/// `traceparent` (and `tracestate`) for the current span, to send with an outgoing request, so
/// the LLM provider, Revolut or Vault call joins this request's trace. Empty when traces are
/// not exported (the global propagator is then a no-op).
pub fn propagation_headers() -> reqwest::header::HeaderMap {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    struct Injector<'a>(&'a mut reqwest::header::HeaderMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(key.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    let mut headers = reqwest::header::HeaderMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Injector(&mut headers));
    });
    headers
}

/// The root span of every request: the default fields (request id, route, trace id) plus the
/// caller's `user_id` and the `tenant_id` of workspace routes, recorded once known. Never
/// secrets or bodies.
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        tracing_actix_web::root_span!(
            request,
            user_id = tracing::field::Empty,
            tenant_id = tracing::field::Empty
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        if let Ok(response) = outcome
            && let Some(tenant) = response
                .request()
                .match_info()
                .get("tenant")
                .and_then(|t| t.parse::<i64>().ok())
        {
            span.record("tenant_id", tenant);
        }
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// Records the caller on the request's root span.
pub fn record_user(request: &actix_web::HttpRequest, user_id: i64) {
    use actix_web::HttpMessage as _;
    if let Some(span) = request.extensions().get::<tracing_actix_web::RootSpan>() {
        span.record("user_id", user_id);
    }
}

/// Puts the span's OpenTelemetry trace id into its `trace_id` field, so log lines inside it
/// carry it (requests get theirs from tracing-actix-web). Nothing when traces are not exported.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", trace_id.to_string());
    }
}

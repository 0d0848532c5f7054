//! How Lethe's processes log, and the W3C trace context that ties one request's lines together
//! across the CLI, the coordinator and the workers.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::otlp::{self, OtlpExport, Telemetry};
use crate::ConfigError;

/// The `log_format` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, with the fields of every enclosing span (a request's
    /// `trace_id` among them), for log pipelines.
    Json,
}

/// Logs to stderr at `RUST_LOG` (or `default_level`) in `format`, and exports Lethe's spans at
/// info and above to `export`'s collector, whatever the log level. Hold the returned guard until
/// the process ends.
pub fn init(
    format: LogFormat,
    default_level: &str,
    export: Option<&OtlpExport>,
) -> Result<Telemetry, ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match format {
        LogFormat::Text => lines.with_filter(filter).boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    }];
    let mut telemetry = Telemetry::default();
    if let Some(export) = export {
        let (spans, guard) = otlp::layer(export)?;
        layers.push(spans.with_filter(lethe_spans()).boxed());
        telemetry = guard;
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(telemetry)
}

/// What goes to a collector: Lethe's own spans and events at info and above, not those of the
/// libraries under it.
pub fn lethe_spans() -> Targets {
    Targets::new().with_target("lethe", LevelFilter::INFO)
}

/// Puts `span` in the trace of `parent` (the context a caller sent), or starts a trace when
/// there is none; records it in the span's `trace_id` field, and returns the context that calls
/// made from the span carry. When spans are exported, the context is the exported span's own.
pub fn join_trace(span: &tracing::Span, parent: Option<&TraceContext>) -> TraceContext {
    if let Some(remote) = parent.and_then(TraceContext::span_context) {
        // Fails only where nothing exports spans, and then there is nothing to parent.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let trace =
        exported(span).unwrap_or_else(|| parent.map(TraceContext::child).unwrap_or_default());
    span.record("trace_id", trace.trace_id.as_str());
    trace
}

/// The `traceparent` that calls made in `span` carry, where spans are exported: the span's own
/// context, so that the callee's spans are its children. `None` where nothing exports spans.
pub fn exported_traceparent(span: &tracing::Span) -> Option<String> {
    exported(span).map(|context| context.traceparent())
}

/// The exported span's own context, where spans are exported.
fn exported(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context().span().span_context().clone();
    context.is_valid().then(|| TraceContext {
        trace_id: context.trace_id().to_string(),
        span_id: context.span_id().to_string(),
        sampled: context.is_sampled(),
    })
}

/// A W3C trace context: which trace a call belongs to, and the span that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Whether the caller records this trace; a callee follows its choice.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn new() -> Self {
        TraceContext {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: true,
        }
    }

    /// A new span in this trace (what a callee does with a caller's context).
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            sampled: self.sampled,
        }
    }

    /// Parses a `traceparent` header (version 00); `None` for anything malformed.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        let flags = u8::from_str_radix(flags, 16).ok()?;
        valid.then(|| TraceContext {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }

    /// The span this context names, as a remote parent for OpenTelemetry.
    fn span_context(&self) -> Option<SpanContext> {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Some(SpanContext::new(
            TraceId::from_hex(&self.trace_id).ok()?,
            SpanId::from_hex(&self.span_id).ok()?,
            flags,
            true,
            TraceState::default(),
        ))
    }
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_malformed_ones_are_refused() {
        let context = TraceContext::new();
        assert_eq!(
            TraceContext::parse(&context.traceparent()),
            Some(context.clone())
        );
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
        for bad in [
            "",
            "00-abc-def-01",
            &format!("01-{}-{}-01", context.trace_id, context.span_id),
            &format!("00-{}-{}-01", "0".repeat(32), context.span_id),
            &format!(
                "00-{}-{}-01",
                context.trace_id.to_uppercase(),
                context.span_id
            ),
            &format!("00-{}-{}-01-extra", context.trace_id, context.span_id),
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_callers_choice_not_to_record_its_trace_is_kept() {
        let unsampled = format!("00-{}-{}-00", "ab".repeat(16), "cd".repeat(8));
        let context = TraceContext::parse(&unsampled).unwrap();
        assert!(!context.sampled);
        assert!(!context.child().sampled);
        assert_eq!(context.traceparent(), unsampled);
    }

    #[test]
    fn without_an_exporter_a_span_joins_its_callers_trace_or_starts_one() {
        let caller = TraceContext::new();
        let span = tracing::info_span!("call", trace_id = tracing::field::Empty);
        let joined = join_trace(&span, Some(&caller));
        assert_eq!(joined.trace_id, caller.trace_id);
        assert_ne!(joined.span_id, caller.span_id);
        let started = join_trace(&span, None);
        assert_ne!(started.trace_id, caller.trace_id);
    }
}

//! Export of spans to an OpenTelemetry collector (OTLP over HTTP, protobuf), for processes
//! whose `otlp_endpoint` is set. Every process joins the trace its caller sent
//! ([`crate::logging::join_trace`]), so one request's spans from the CLI, the coordinator and the
//! workers form one tree in the collector.

use opentelemetry::trace::{Link, SamplingDecision, SamplingResult, SpanKind, TraceId};
use opentelemetry::trace::{TraceState, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, ShouldSample};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::ConfigError;

/// Where a process sends its spans, and as whom.
#[derive(Clone, Debug)]
pub struct OtlpExport {
    /// The collector's OTLP/HTTP address (`http://otel-collector:4318`); spans are posted to
    /// `/v1/traces` under it.
    pub endpoint: String,
    /// The `service.name` of this process's spans.
    pub service: &'static str,
    /// Spans that start a trace of their own are exported unless their names start with one of
    /// these: the coordinator lists its worker API, whose polls and heartbeats (thousands a
    /// second) serve no request. Spans in a caller's trace follow the caller's choice.
    pub unsampled_roots: &'static [&'static str],
}

/// Holds a process's exporter; dropping it sends the spans still buffered, so keep it until the
/// process ends.
#[must_use = "dropping it stops the export"]
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans that have ended so far, without waiting for the next batch.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.force_flush() {
                tracing::warn!(%error, "spans did not reach the OTLP collector");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: the last spans did not reach the OTLP collector: {error}");
            }
        }
    }
}

/// A layer that exports the spans it sees to `export.endpoint`, and the guard that flushes it.
pub fn layer<S>(export: &OtlpExport) -> Result<(impl Layer<S>, Telemetry), ConfigError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let base = export.endpoint.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ConfigError::key(
            "otlp_endpoint",
            format!(
                "{:?} is not an http:// or https:// address of an OTLP/HTTP collector \
                 (its port is usually 4318)",
                export.endpoint
            ),
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/traces"))
        .build()
        .map_err(|error| ConfigError::key("otlp_endpoint", error.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(RootsExcept(
            export.unsampled_roots,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(export.service)
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lethe"))
        .with_threads(false);
    Ok((
        layer,
        Telemetry {
            provider: Some(provider),
        },
    ))
}

/// Samples every root span except those whose names start with one of its prefixes.
#[derive(Clone, Debug)]
struct RootsExcept(&'static [&'static str]);

impl ShouldSample for RootsExcept {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let excluded = self.0.iter().any(|prefix| name.starts_with(prefix));
        SamplingResult {
            decision: if excluded {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_polls_start_no_exported_trace_but_requests_do() {
        let sampler = RootsExcept(&["lethe.v1.WorkerService/"]);
        let decide = |name: &str| {
            sampler
                .should_sample(
                    None,
                    TraceId::from_bytes([1; 16]),
                    name,
                    &SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
        };
        assert_eq!(
            decide("lethe.v1.WorkerService/AcquireTask"),
            SamplingDecision::Drop
        );
        assert_eq!(
            decide("lethe.v1.Lethe/SubmitDeletion"),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn an_endpoint_that_is_not_an_http_address_is_refused_by_name() {
        let export = OtlpExport {
            endpoint: "otel-collector:4318".into(),
            service: "lethe-test",
            unsampled_roots: &[],
        };
        let error = layer::<tracing_subscriber::Registry>(&export)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("otlp_endpoint"), "{error}");
    }
}

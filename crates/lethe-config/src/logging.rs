//! How Lethe's processes log, and the W3C trace context that ties one request's lines together
//! across the CLI, the coordinator and the workers.

use rand::RngCore;
use serde::{Deserialize, Serialize};

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

/// Logs to stderr at `RUST_LOG` (or `default_level`) in `format`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// A W3C trace context: which trace a call belongs to, and the span that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
}

impl TraceContext {
    /// A new trace.
    pub fn new() -> Self {
        TraceContext {
            trace_id: random_hex(16),
            span_id: random_hex(8),
        }
    }

    /// A new span in this trace (what a callee does with a caller's context).
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
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
        valid.then(|| TraceContext {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
        })
    }

    /// The `traceparent` header value (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
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
    buffer.iter().map(|b| format!("{b:02x}")).collect()
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
}

//! One request's trace across the three processes that serve it: the `lethe` CLI sends its trace
//! context (`traceparent`) with every call, the coordinator logs the call in a span of that
//! trace and keeps the span with the operation, and the worker logs each task of it in a span
//! of the same trace. Logs are JSON lines (`log_format = "json"`), and the spans also go to an
//! OpenTelemetry collector over OTLP/HTTP (`otlp_endpoint`), where they form one tree: the
//! command, the call that created the operation under it, the tasks under that call, and each
//! task's completion under the task.
//!
//! The coordinator and the runner share this test's process, and so its exporter and its
//! `service.name`; the CLI is a process of its own.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use lethe_config::logging::lethe_spans;
use lethe_config::otlp::{OtlpExport, Telemetry};
use lethe_testkit::Stack;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where this process's JSON log lines go: the coordinator's and the runner's.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// A span as an OTLP collector received it.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for the root of a trace.
    parent_span_id: String,
}

/// An OTLP/HTTP collector that keeps what it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

impl Collector {
    async fn serve(&self) -> String {
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn spans(&self) -> Vec<Exported> {
        self.0.lock().unwrap().clone()
    }
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    for batch in request.resource_spans {
        let service = batch
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for span in batch.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            collector.0.lock().unwrap().push(Exported {
                service: service.clone(),
                name: span.name,
                trace_id: hex::encode(span.trace_id),
                span_id: hex::encode(span.span_id),
                parent_span_id: hex::encode(span.parent_span_id),
            });
        }
    }
    StatusCode::OK
}

/// Flushes the exporter until `done` holds of what the collector has, or a minute passes.
async fn exported_until(
    telemetry: &Telemetry,
    collector: &Collector,
    done: impl Fn(&[Exported]) -> bool,
) -> Vec<Exported> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        telemetry.flush();
        let spans = collector.spans();
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace id of the span an event was logged in, looking outward.
fn trace_of(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|span| span["trace_id"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_cli_the_coordinator_and_the_worker() {
    let collector = Collector::default();
    let collector_endpoint = collector.serve().await;
    let (exporter, telemetry) = lethe_config::otlp::layer(&OtlpExport {
        endpoint: collector_endpoint.clone(),
        service: "lethe-coordinator",
        unsampled_roots: &["lethe.v1.WorkerService/"],
    })
    .unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::EnvFilter::new("info")),
        )
        .with(exporter.with_filter(lethe_spans()))
        .init();

    let stack = Stack::builder()
        .database("traced")
        .workers(1)
        .worker_config(|config| {
            config.name = "traced".into();
            config.memory_bytes = 1 << 30;
            config.poll_wait = Duration::from_secs(1);
            config.drain_grace = Duration::from_millis(100);
        })
        .start()
        .await;

    let endpoint = stack.endpoint();
    let cli = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["smoke", "--tasks", "2", "--task-seconds", "0.1"])
            .env("LETHE_COORDINATOR", endpoint)
            .env("LETHE_LOG_FORMAT", "json")
            .env("LETHE_OTLP_ENDPOINT", &collector_endpoint)
            .env("RUST_LOG", "info")
            .env_remove("LETHE_TENANT")
            .env_remove("LETHE_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(cli.status.success(), "{cli:?}");

    // The CLI's trace, from its own log.
    let trace = String::from_utf8_lossy(&cli.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line["fields"]["trace_id"].as_str().map(str::to_string))
        .expect("the CLI logs its trace id");
    assert_eq!(trace.len(), 32);

    // The coordinator accepted the operation in a span of that trace, and the worker ran both
    // of its tasks in spans of it.
    let lines = captured.lines();
    let in_trace = |target: &str, message: &str| {
        lines
            .iter()
            .filter(|line| {
                line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(target))
                    && line["fields"]["message"] == message
                    && trace_of(line) == Some(trace.as_str())
            })
            .count()
    };
    assert_eq!(
        in_trace("lethe_coordinator", "noop operation accepted"),
        1,
        "{lines:#?}"
    );
    assert_eq!(in_trace("lethe_runner", "running"), 2, "{lines:#?}");
    assert_eq!(in_trace("lethe_runner", "ended"), 2);
    let task_spans: Vec<&Value> = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "ended" && trace_of(line) == Some(&trace))
        .filter_map(|line| line["span"].get("task_id"))
        .collect();
    assert_eq!(task_spans.len(), 2, "each task's span names it");

    // The collector has the same trace as one tree: the command (from the CLI's process), the
    // call that created the operation under it, and the two tasks under that call.
    let spans = exported_until(&telemetry, &collector, |spans| {
        let count = |name: &str| {
            spans
                .iter()
                .filter(|span| span.trace_id == trace && span.name == name)
                .count()
        };
        count("noop") == 2 && count("lethe.v1.WorkerService/CompleteTask") == 2
    })
    .await;
    let in_trace: Vec<&Exported> = spans.iter().filter(|span| span.trace_id == trace).collect();
    let named = |name: &str| -> Vec<&Exported> {
        in_trace
            .iter()
            .copied()
            .filter(|span| span.name == name)
            .collect()
    };
    let command = named("lethe smoke");
    assert_eq!(command.len(), 1, "{spans:#?}");
    assert_eq!(command[0].service, "lethe");
    assert_eq!(
        command[0].parent_span_id, "",
        "the command is the trace's root"
    );
    let accepted = named("lethe.v1.Lethe/CreateNoopOperation");
    assert_eq!(accepted.len(), 1, "{spans:#?}");
    assert_eq!(accepted[0].service, "lethe-coordinator");
    assert_eq!(accepted[0].parent_span_id, command[0].span_id);
    let tasks = named("noop");
    assert_eq!(tasks.len(), 2, "{spans:#?}");
    for task in &tasks {
        assert_eq!(task.parent_span_id, accepted[0].span_id, "{task:?}");
    }
    // Each task's completion, as the coordinator handled it, is a child of the task's span.
    let completions = named("lethe.v1.WorkerService/CompleteTask");
    assert_eq!(completions.len(), 2, "{spans:#?}");
    for completion in completions {
        assert!(
            tasks
                .iter()
                .any(|task| task.span_id == completion.parent_span_id),
            "{completion:?}"
        );
    }
    for span in &in_trace {
        assert!(
            span.parent_span_id.is_empty()
                || in_trace
                    .iter()
                    .any(|other| other.span_id == span.parent_span_id),
            "every span's parent is in the trace: {span:?}"
        );
    }
    // The workers' polls start no trace of their own: the collector never sees them as roots.
    assert!(
        !spans
            .iter()
            .any(|span| span.name.starts_with("lethe.v1.WorkerService/")
                && span.parent_span_id.is_empty()),
        "{spans:#?}"
    );
}

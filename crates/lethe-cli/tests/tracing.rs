//! One request's trace across the three processes that serve it: the `lethe` CLI sends its trace
//! context (`traceparent`) with every call, the coordinator logs the call in a span of that
//! trace and keeps the trace with the operation, and the worker logs each task of it in a span
//! of the same trace. Logs are JSON lines (`log_format = "json"`).

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_artifacts::ArtifactStore;
use lethe_coordinator::{Coordinator, CoordinatorConfig};
use lethe_proto::lethe::v1::Device;
use lethe_runner::{Runner, RunnerConfig};
use lethe_store::{Durability, LocalCluster, Store, StoreConfig};
use serde_json::Value;

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
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .init();

    let cluster = LocalCluster::start_temporary(Durability::Fast).unwrap();
    let url = cluster.create_database("traced").unwrap();
    let store = Store::connect(&url, StoreConfig::default()).await.unwrap();
    let coordinator = Coordinator::new(store, CoordinatorConfig::default())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(&format!("file://{}/a", dir.path().display())).unwrap();
    let runner = RunnerConfig {
        endpoint: coordinator.endpoint(),
        name: "traced".into(),
        device: Device::Cpu,
        memory_bytes: 1 << 30,
        slots: 1,
        poll_wait: Duration::from_secs(1),
        drain_grace: Duration::from_millis(100),
        token: None,
        tls: None,
    };
    tokio::spawn(Runner::new(runner, artifacts).run(std::future::pending()));

    let endpoint = coordinator.endpoint();
    let cli = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["smoke", "--tasks", "2", "--task-seconds", "0.1"])
            .env("LETHE_COORDINATOR", endpoint)
            .env("LETHE_LOG_FORMAT", "json")
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
}

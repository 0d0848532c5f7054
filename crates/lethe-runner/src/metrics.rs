//! A worker's own metrics: what it ran, for how long, for whom and on which device. The worker
//! binary serves them at `/metrics` (`metrics_listen`), beside the coordinator's view of the
//! queue.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    tenant: String,
    device: String,
}

/// The worker's registry. Outcomes: `succeeded`, `retryable`, `fatal`, `cancelled`, `fenced`.
pub struct WorkerMetrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    durations: Family<TaskLabels, Histogram>,
    busy_seconds: Family<UsageLabels, Counter<f64>>,
    running: Gauge,
    device: &'static str,
}

impl WorkerMetrics {
    pub(crate) fn new(device: &'static str, slots: u32) -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "lethe_worker_tasks",
            "Attempts this worker ran to an end, by task kind and outcome",
            tasks.clone(),
        );
        let durations = Family::<TaskLabels, Histogram>::new_with_constructor(|| {
            // 10 ms to about 3 h.
            Histogram::new(exponential_buckets(0.01, 2.0, 21))
        });
        registry.register(
            "lethe_worker_task_duration_seconds",
            "How long this worker's attempts ran, by task kind and outcome",
            durations.clone(),
        );
        let busy_seconds = Family::<UsageLabels, Counter<f64>>::default();
        registry.register(
            "lethe_worker_busy_seconds",
            "Seconds of device time this worker spent on each tenant's tasks (cpu or cuda)",
            busy_seconds.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "lethe_worker_running_tasks",
            "Tasks this worker is running now",
            running.clone(),
        );
        let slots_gauge = Gauge::<i64>::default();
        slots_gauge.set(i64::from(slots));
        registry.register(
            "lethe_worker_slots",
            "Tasks this worker runs at once",
            slots_gauge,
        );
        Self {
            registry,
            tasks,
            durations,
            busy_seconds,
            running,
            device,
        }
    }

    pub(crate) fn started(&self) {
        self.running.inc();
    }

    pub(crate) fn finished(&self, kind: &str, tenant: &str, outcome: &str, seconds: f64) {
        self.running.dec();
        let labels = TaskLabels {
            kind: kind.to_string(),
            outcome: outcome.to_string(),
        };
        self.tasks.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
        self.busy_seconds
            .get_or_create(&UsageLabels {
                tenant: tenant.to_string(),
                device: self.device.to_string(),
            })
            .inc_by(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

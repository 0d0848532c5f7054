//! The Prometheus endpoint (`metrics_listen`, path `/metrics`, OpenMetrics text).
//!
//! Two kinds of series. What this replica saw happen is counted in process: claims, failures by
//! class, retries, lease expiries, finished operations and their end-to-end latency. Prometheus
//! sums them over replicas. What the fleet is like is read from the database at each scrape,
//! so every replica reports the same values: queue depth by task kind and priority, leased
//! tasks, workers by device and state, and dead tuples of the hot tables. The pool use of this
//! replica is read at each scrape too.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lethe_store::{FleetSnapshot, JobKind, JobState, Store};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    kind: String,
    priority: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    device: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

/// What this replica counts as it happens.
pub(crate) struct Metrics {
    registry: Registry,
    claims: Family<KindLabel, Counter>,
    failures: Family<ClassLabel, Counter>,
    retries: Family<ClassLabel, Counter>,
    lease_expiries: Counter,
    completions: Counter,
    completion_batches: Histogram,
    finished: Family<OperationLabels, Histogram>,
    fleet: Mutex<FleetGauges>,
}

/// Series read from the database and the pool at each scrape.
struct FleetGauges {
    registry: Registry,
    queue_depth: Family<KindLabel, Gauge>,
    leased: Family<KindLabel, Gauge>,
    by_priority: Family<PriorityLabels, Gauge>,
    workers: Family<WorkerLabels, Gauge>,
    pool: Family<PoolLabels, Gauge>,
    dead_tuples: Family<TableLabel, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let claims = Family::<KindLabel, Counter>::default();
        registry.register(
            "lethe_task_claims",
            "Tasks leased to workers by this replica, by task kind",
            claims.clone(),
        );
        let failures = Family::<ClassLabel, Counter>::default();
        registry.register(
            "lethe_task_failures",
            "Attempts that workers reported failed, by error class",
            failures.clone(),
        );
        let retries = Family::<ClassLabel, Counter>::default();
        registry.register(
            "lethe_task_retries",
            "Failed attempts whose task was requeued for another try, by error class",
            retries.clone(),
        );
        let lease_expiries = Counter::default();
        registry.register(
            "lethe_lease_expiries",
            "Leases that expired without a heartbeat and were requeued by this replica",
            lease_expiries.clone(),
        );
        let completions = Counter::default();
        registry.register(
            "lethe_task_completions",
            "Attempts that committed their result through this replica",
            completions.clone(),
        );
        // 1, 2, 4, ..., 64: the group-commit queue's largest batch.
        let completion_batches = Histogram::new(exponential_buckets(1.0, 2.0, 7));
        registry.register(
            "lethe_completion_batch_size",
            "Completions committed together in one database statement by this replica's \
             group-commit queue",
            completion_batches.clone(),
        );
        let finished = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            // 1 s to about 4.5 h.
            Histogram::new(exponential_buckets(1.0, 2.0, 15))
        });
        registry.register(
            "lethe_operation_duration_seconds",
            "From creation to the end of operations that ended through this replica, by kind and \
             final state",
            finished.clone(),
        );
        Self {
            registry,
            claims,
            failures,
            retries,
            lease_expiries,
            completions,
            completion_batches,
            finished,
            fleet: Mutex::new(FleetGauges::new()),
        }
    }

    pub(crate) fn claimed(&self, kind: &str) {
        self.claims
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub(crate) fn failed(&self, class: &str, requeued: bool) {
        let label = ClassLabel {
            class: class.to_string(),
        };
        self.failures.get_or_create(&label).inc();
        if requeued {
            self.retries.get_or_create(&label).inc();
        }
    }

    pub(crate) fn completed(&self) {
        self.completions.inc();
    }

    /// The group-commit queue sent a statement with `size` completions.
    pub(crate) fn completion_statement(&self, size: usize) {
        self.completion_batches.observe(size as f64);
    }

    pub(crate) fn leases_expired(&self, count: u64) {
        self.lease_expiries.inc_by(count);
    }

    /// An operation ended after `seconds`.
    pub(crate) fn operation_finished(&self, kind: JobKind, state: JobState, seconds: f64) {
        self.finished
            .get_or_create(&OperationLabels {
                kind: kind.as_str().to_string(),
                state: state.as_str().to_string(),
            })
            .observe(seconds.max(0.0));
    }

    /// The whole exposition: this replica's counters, then the fleet as `snapshot` says.
    fn exposition(&self, snapshot: &FleetSnapshot, pools: &[(&str, u32, u32, u32)]) -> String {
        let fleet = self.fleet.lock().expect("metrics lock");
        fleet.set(snapshot, pools);
        let mut text = String::new();
        encode_registry(&mut text, &self.registry).expect("writing to a String");
        encode_registry(&mut text, &fleet.registry).expect("writing to a String");
        encode_eof(&mut text).expect("writing to a String");
        text
    }
}

impl FleetGauges {
    fn new() -> Self {
        let mut registry = Registry::default();
        let queue_depth = Family::<KindLabel, Gauge>::default();
        registry.register(
            "lethe_queue_depth",
            "Tasks ready to be claimed by a worker, by task kind",
            queue_depth.clone(),
        );
        let leased = Family::<KindLabel, Gauge>::default();
        registry.register(
            "lethe_tasks_leased",
            "Tasks a worker holds (running), by task kind",
            leased.clone(),
        );
        let by_priority = Family::<PriorityLabels, Gauge>::default();
        registry.register(
            "lethe_queue_depth_by_priority",
            "Tasks ready to be claimed, by task kind and priority",
            by_priority.clone(),
        );
        let workers = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "lethe_workers",
            "Workers seen within three leases, by device and state (active, draining)",
            workers.clone(),
        );
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "lethe_db_pool_connections",
            "This replica's database connections, by pool (work, reads) and state (in_use, idle, \
             max)",
            pool.clone(),
        );
        let dead_tuples = Family::<TableLabel, Gauge>::default();
        registry.register(
            "lethe_table_dead_tuples",
            "Dead tuples of the hot tables, as PostgreSQL's statistics report them",
            dead_tuples.clone(),
        );
        Self {
            registry,
            queue_depth,
            leased,
            by_priority,
            workers,
            pool,
            dead_tuples,
        }
    }

    fn set(&self, snapshot: &FleetSnapshot, pools: &[(&str, u32, u32, u32)]) {
        for family in [&self.queue_depth, &self.leased] {
            family.clear();
        }
        self.by_priority.clear();
        self.workers.clear();
        self.dead_tuples.clear();
        // Every task kind appears, at 0 when it has no task, so that no series vanishes when
        // its queue drains.
        for kind in lethe_proto::tasks::ALL {
            let label = KindLabel {
                kind: kind.to_string(),
            };
            self.queue_depth.get_or_create(&label).set(0);
            self.leased.get_or_create(&label).set(0);
        }
        for row in &snapshot.tasks {
            let label = KindLabel {
                kind: row.kind.clone(),
            };
            match row.state.as_str() {
                "available" => {
                    self.queue_depth.get_or_create(&label).inc_by(row.count);
                    self.by_priority
                        .get_or_create(&PriorityLabels {
                            kind: row.kind.clone(),
                            priority: i64::from(row.priority),
                        })
                        .set(row.count);
                }
                "leased" => {
                    self.leased.get_or_create(&label).inc_by(row.count);
                }
                _ => {}
            }
        }
        for device in ["cpu", "cuda"] {
            for state in ["active", "draining"] {
                self.workers
                    .get_or_create(&WorkerLabels {
                        device: device.into(),
                        state: state.into(),
                    })
                    .set(0);
            }
        }
        for (device, state, count) in &snapshot.workers {
            self.workers
                .get_or_create(&WorkerLabels {
                    device: device.clone(),
                    state: state.clone(),
                })
                .set(*count);
        }
        for (pool, in_use, idle, max) in pools {
            for (state, value) in [("in_use", in_use), ("idle", idle), ("max", max)] {
                self.pool
                    .get_or_create(&PoolLabels {
                        pool: pool.to_string(),
                        state: state.to_string(),
                    })
                    .set(i64::from(*value));
            }
        }
        for (table, dead) in &snapshot.dead_tuples {
            self.dead_tuples
                .get_or_create(&TableLabel {
                    table: table.clone(),
                })
                .set(*dead);
        }
    }
}

#[derive(Clone)]
struct Scrape {
    store: Store,
    metrics: Arc<Metrics>,
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { store, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    match scrape.store.fleet_snapshot().await {
        Ok(snapshot) => {
            let pools = scrape.store.pool_use();
            let text = scrape.metrics.exposition(&snapshot, &pools);
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "metrics scrape could not read the database");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_store::TaskGroup;

    #[test]
    fn every_kind_is_exposed_even_when_empty_and_counters_count() {
        let group = |kind: &str, state: &str, priority, count| TaskGroup {
            kind: kind.into(),
            state: state.into(),
            priority,
            count,
        };
        let snapshot = FleetSnapshot {
            tasks: vec![
                group("noop", "available", 0, 2),
                group("noop", "leased", 0, 1),
                group("retrain", "available", 0, 4),
                group("retrain", "available", 5, 3),
                group("retrain", "leased", 0, 3),
            ],
            workers: vec![("cuda".into(), "active".into(), 2)],
            dead_tuples: vec![("tasks".into(), 17)],
        };
        let metrics = Metrics::new();
        metrics.claimed("retrain");
        metrics.failed("retryable", true);
        metrics.operation_finished(JobKind::Deletion, JobState::Succeeded, 30.0);
        let text = metrics.exposition(&snapshot, &[("work", 3, 1, 16)]);
        assert!(text.contains("# TYPE lethe_queue_depth gauge\n"), "{text}");
        assert!(text.contains("lethe_queue_depth{kind=\"retrain\"} 7\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"match\"} 0\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"noop\"} 2\n"));
        assert!(text.contains("lethe_queue_depth_by_priority{kind=\"retrain\",priority=\"5\"} 3\n"));
        assert!(text.contains("lethe_tasks_leased{kind=\"retrain\"} 3\n"));
        assert!(text.contains("lethe_tasks_leased{kind=\"audit\"} 0\n"));
        assert!(text.contains("lethe_workers{device=\"cuda\",state=\"active\"} 2\n"));
        assert!(text.contains("lethe_workers{device=\"cpu\",state=\"active\"} 0\n"));
        assert!(text.contains("lethe_db_pool_connections{pool=\"work\",state=\"in_use\"} 3\n"));
        assert!(text.contains("lethe_table_dead_tuples{table=\"tasks\"} 17\n"));
        assert!(text.contains("lethe_task_claims_total{kind=\"retrain\"} 1\n"));
        assert!(text.contains("lethe_task_retries_total{class=\"retryable\"} 1\n"));
        assert!(text.contains(
            "lethe_operation_duration_seconds_count{kind=\"deletion\",state=\"succeeded\"} 1\n"
        ));
        assert_eq!(text.matches("lethe_tasks_leased{kind=\"noop\"}").count(), 1);
        assert!(text.ends_with("# EOF\n"));
    }
}

//! What every handler of a replica shares: the store, the gate, in-process wake-ups, metrics
//! and the completion queue. A leaf: it knows no handler.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lethe_store::{GroupCommit, GroupCommitLimits, Store};
use rand::Rng;

use crate::config::CoordinatorConfig;
use crate::gate::Gatekeeper;
use crate::metrics::Metrics;
use crate::wake::Wakeups;

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) gate: Arc<Gatekeeper>,
    pub(crate) wake: Wakeups,
    pub(crate) config: CoordinatorConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// Completions go through one queue per replica, batched under load; started on first use,
    /// inside the runtime that serves the calls.
    completions: OnceLock<GroupCommit>,
}

impl Shared {
    pub(crate) fn new(store: Store, config: CoordinatorConfig) -> Self {
        Shared {
            gate: Gatekeeper::new(store.clone(), &config),
            store,
            wake: Wakeups::new(),
            config,
            metrics: Arc::new(Metrics::new()),
            completions: OnceLock::new(),
        }
    }

    pub(crate) fn completions(&self) -> &GroupCommit {
        self.completions.get_or_init(|| {
            let metrics = self.metrics.clone();
            GroupCommit::start_observed(
                self.store.clone(),
                GroupCommitLimits::default(),
                move |size| metrics.completion_statement(size),
            )
        })
    }

    /// Records the end of job `id` (and of the requests a deletion run served) in the metrics.
    pub(crate) async fn observe_finished(&self, id: uuid::Uuid) {
        match self.store.ended_with(id).await {
            Ok(jobs) => {
                for job in jobs {
                    if let Some(finished) = job.finished_at {
                        let seconds = (finished - job.created_at).as_seconds_f64();
                        self.metrics
                            .operation_finished(job.kind, job.state, seconds);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, job = %id, "reading a finished job for metrics"),
        }
    }
}

/// `interval`, ±25 %, so that replicas and idle waiters do not act in step.
pub(crate) fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.75..1.25))
}

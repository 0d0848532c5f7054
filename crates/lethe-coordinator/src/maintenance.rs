//! The maintenance loop every replica runs: reaps expired leases, finalises finished jobs,
//! plans deletion runs and expires deadlines. The store's queries skip rows another replica
//! holds, so replicas never do the same work twice.

use std::sync::Arc;

use crate::kinds::deletion_run;
use crate::state::{jittered, Shared};

pub(crate) async fn maintain(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(jittered(shared.config.maintenance_interval)).await;
        match shared.store.reap_expired_leases(1000).await {
            Ok(0) => {}
            Ok(n) => {
                shared.metrics.leases_expired(n);
                tracing::info!(tasks = n, "requeued tasks whose lease expired");
                shared.wake.tasks_available(n as usize);
            }
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
        match shared.store.finalize_finished_jobs(1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "finalised jobs whose last completion was not"),
            Err(e) => tracing::warn!(error = %e, "finalising finished jobs failed"),
        }
        match deletion_run::plan_due_runs(&shared).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "planned deletion runs"),
            Err(e) => tracing::warn!(error = %e, "planning deletion runs failed"),
        }
        match shared.store.expire_deadlines(1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "failed jobs past their deadline"),
            Err(e) => tracing::warn!(error = %e, "expiring deadlines failed"),
        }
    }
}

//! Rows to values. The CHECK constraints guarantee the enums; a value outside them is reported
//! as corrupt instead of guessed.

use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::types::{Job, JobKind, JobState, Task, TaskCounts, TaskProgress, TaskState};
use crate::{Failure, StoreError};

pub(crate) const JOB_COLUMNS: &str = "id, tenant, kind, request_id, spec, priority, state, \
    tasks_total, error, deadline_at, created_at, updated_at, finished_at, model_id, run_id, \
    (SELECT coalesce(json_agg(json_build_array(s.state, s.n, s.fraction)), '[]'::json) \
     FROM (SELECT state, count(*) AS n, \
                  COALESCE(sum(progress_fraction), 0) AS fraction \
           FROM tasks WHERE tasks.job_id = COALESCE(jobs.run_id, jobs.id) GROUP BY state) s) AS task_counts";

pub(crate) const TASK_COLUMNS: &str = "t.id, t.job_id, t.kind, t.spec, t.state, t.attempt, \
    t.max_attempts, t.interruptions, t.lease_owner, t.lease_expires_at, t.cancel_requested, \
    t.run_at, t.unmet_deps, t.progress_fraction, t.progress_message, t.last_error, t.finished_at, \
    ARRAY(SELECT d.depends_on FROM task_deps d WHERE d.task_id = t.id ORDER BY d.depends_on) AS depends_on";

pub(crate) fn job(row: &PgRow) -> Result<Job, StoreError> {
    Ok(Job {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        kind: JobKind::parse(row.try_get("kind")?)?,
        request_id: row.try_get("request_id")?,
        spec: row.try_get("spec")?,
        priority: row.try_get("priority")?,
        state: JobState::parse(row.try_get("state")?)?,
        tasks_total: row.try_get("tasks_total")?,
        error: Failure::decode(row.try_get("error")?)?,
        deadline_at: row.try_get("deadline_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        model_id: row.try_get("model_id")?,
        run_id: row.try_get("run_id")?,
        tasks: task_counts(row.try_get("task_counts")?)?,
    })
}

/// `[[state, count, summed fraction], ...]`, as the JOB_COLUMNS subquery builds it.
fn task_counts(value: serde_json::Value) -> Result<TaskCounts, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("task counts {value}"));
    let mut counts = TaskCounts::default();
    for entry in value.as_array().ok_or_else(corrupt)? {
        let state = entry.get(0).and_then(|s| s.as_str()).ok_or_else(corrupt)?;
        let n = entry.get(1).and_then(|n| n.as_i64()).ok_or_else(corrupt)?;
        match TaskState::parse(state)? {
            TaskState::Blocked => counts.blocked = n,
            TaskState::Available => counts.available = n,
            TaskState::Leased => {
                counts.leased = n;
                counts.running_progress = entry.get(2).and_then(|f| f.as_f64()).unwrap_or(0.0);
            }
            TaskState::Succeeded => counts.succeeded = n,
            TaskState::Failed => counts.failed = n,
            TaskState::Cancelled => counts.cancelled = n,
        }
    }
    Ok(counts)
}

pub(crate) fn task(row: &PgRow) -> Result<Task, StoreError> {
    Ok(Task {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        kind: row.try_get("kind")?,
        spec: row.try_get("spec")?,
        state: TaskState::parse(row.try_get("state")?)?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        interruptions: row.try_get("interruptions")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        run_at: row.try_get("run_at")?,
        unmet_deps: row.try_get("unmet_deps")?,
        depends_on: row.try_get("depends_on")?,
        progress: row
            .try_get::<Option<f64>, _>("progress_fraction")?
            .map(|fraction| -> Result<TaskProgress, StoreError> {
                Ok(TaskProgress {
                    fraction,
                    message: row
                        .try_get::<Option<String>, _>("progress_message")?
                        .unwrap_or_default(),
                })
            })
            .transpose()?,
        last_error: Failure::decode(row.try_get("last_error")?)?,
        finished_at: row.try_get("finished_at")?,
    })
}

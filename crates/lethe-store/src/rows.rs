//! Rows to values. The CHECK constraints guarantee the enums; a value outside them is reported
//! as corrupt instead of guessed.

use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::types::{Job, JobKind, JobState, Task, TaskState};
use crate::StoreError;

pub(crate) const JOB_COLUMNS: &str = "id, tenant, kind, request_id, spec, priority, state, \
    tasks_total, tasks_remaining, error, result, deadline_at, created_at, updated_at, finished_at";

pub(crate) const TASK_COLUMNS: &str = "t.id, t.job_id, t.kind, t.spec, t.state, t.attempt, \
    t.max_attempts, t.interruptions, t.lease_owner, t.lease_expires_at, t.cancel_requested, \
    t.run_at, t.unmet_deps, t.progress, t.last_error, t.finished_at, \
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
        tasks_remaining: row.try_get("tasks_remaining")?,
        error: row.try_get("error")?,
        result: row.try_get("result")?,
        deadline_at: row.try_get("deadline_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
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
        progress: row.try_get("progress")?,
        last_error: row.try_get("last_error")?,
        finished_at: row.try_get("finished_at")?,
    })
}

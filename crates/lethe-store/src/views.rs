//! Read-only views for the dashboard: recent operations and an operation's task graph with
//! every attempt. `scope` is a tenant, or `None` for an operator who sees every tenant.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::rows::{self, JOB_COLUMNS, TASK_COLUMNS};
use crate::types::{Job, Task};
use crate::{Failure, Store, StoreError};

/// An ended attempt of a task.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRecord {
    pub task_id: Uuid,
    pub attempt: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: String,
    pub error: Option<Failure>,
}

/// An operation with the tasks that serve it (a deletion request's are its run's), the ended
/// attempts of those tasks, and the name of the worker holding each leased one.
#[derive(Clone, Debug, Serialize)]
pub struct JobGraph {
    pub job: Job,
    pub tasks: Vec<Task>,
    pub attempts: Vec<AttemptRecord>,
    pub holders: HashMap<Uuid, String>,
}

impl Store {
    /// The newest operations callers made (deletion runs are the service's own and left out),
    /// of `scope`'s tenant or of all.
    pub async fn recent_jobs(
        &self,
        scope: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE kind <> 'deletion_run' \
             AND ($1::text IS NULL OR tenant = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(scope)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(rows::job).collect()
    }

    /// Operation `id` as [`JobGraph`], if `scope` may see it.
    pub async fn job_graph(&self, scope: Option<&str>, id: Uuid) -> Result<JobGraph, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
        ))
        .bind(id)
        .bind(scope)
        .fetch_optional(&self.reads)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let job = rows::job(&row)?;
        let served_by = job.run_id.unwrap_or(job.id);
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS}, (SELECT name FROM workers w WHERE w.id = t.lease_owner) AS holder \
             FROM tasks t WHERE t.job_id = $1 ORDER BY t.id"
        ))
        .bind(served_by)
        .fetch_all(&self.reads)
        .await?;
        let mut holders = HashMap::new();
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            let task = rows::task(row)?;
            if let Some(holder) = row.try_get::<Option<String>, _>("holder")? {
                holders.insert(task.id, holder);
            }
            tasks.push(task);
        }
        let attempts = sqlx::query(
            "SELECT a.task_id, a.attempt, w.name, a.started_at, a.ended_at, a.outcome, a.error \
             FROM task_attempts a JOIN tasks t ON t.id = a.task_id \
             JOIN workers w ON w.id = a.worker_id \
             WHERE t.job_id = $1 ORDER BY a.task_id, a.attempt",
        )
        .bind(served_by)
        .fetch_all(&self.reads)
        .await?
        .iter()
        .map(|row| {
            Ok(AttemptRecord {
                task_id: row.try_get("task_id")?,
                attempt: row.try_get("attempt")?,
                worker: row.try_get("name")?,
                started_at: row.try_get("started_at")?,
                ended_at: row.try_get("ended_at")?,
                outcome: row.try_get("outcome")?,
                error: Failure::decode(row.try_get("error")?)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(JobGraph {
            job,
            tasks,
            attempts,
            holders,
        })
    }
}

//! Worker incarnations: registration, liveness and draining.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::types::{FailureClass, NewWorker};
use crate::{Store, StoreError};

impl Store {
    /// Records a new worker incarnation and returns its id. A restarted process registers
    /// again and gets a new id, so leases of its previous life are never mistaken for its own.
    pub async fn register_worker(&self, worker: &NewWorker) -> Result<Uuid, StoreError> {
        if worker.name.is_empty() || worker.name.len() > 200 {
            return Err(StoreError::InvalidArgument(
                "worker name must be 1 to 200 bytes".into(),
            ));
        }
        if worker.memory_bytes < 0 || !(1..=1024).contains(&worker.slots) {
            return Err(StoreError::InvalidArgument(
                "memory_bytes must be ≥ 0 and slots between 1 and 1024".into(),
            ));
        }
        if worker.kinds.len() > 100 || worker.kinds.iter().any(|k| k.is_empty() || k.len() > 100) {
            return Err(StoreError::InvalidArgument(
                "at most 100 task kinds of 1 to 100 bytes each".into(),
            ));
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO workers (id, name, device, memory_bytes, slots, version, kinds, \
             credential_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&worker.name)
        .bind(worker.device.as_str())
        .bind(worker.memory_bytes)
        .bind(worker.slots)
        .bind(&worker.version)
        .bind(&worker.kinds)
        .bind(worker.credential_id)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// The worker token `worker` registered with; `None` for a worker bound to none, or one
    /// that does not exist (its own call then says so).
    pub async fn worker_credential(&self, worker: Uuid) -> Result<Option<Uuid>, StoreError> {
        let credential: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT credential_id FROM workers WHERE id = $1")
                .bind(worker)
                .fetch_optional(&self.reads)
                .await?;
        Ok(credential.flatten())
    }

    /// Notes that a worker is alive. Returns whether it is still allowed to take work (it is
    /// not once it drains or was declared gone).
    pub async fn touch_worker(&self, worker: Uuid) -> Result<bool, StoreError> {
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE workers SET last_seen_at = now() WHERE id = $1 RETURNING state",
        )
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        match state {
            Some(state) => Ok(state == "active"),
            None => Err(StoreError::NotFound {
                what: "worker",
                id: worker.to_string(),
            }),
        }
    }

    /// Stops a worker from taking new work. With `hand_back`, its leased tasks are requeued
    /// at once (counted as interruptions) instead of waiting for their leases to expire.
    /// Returns how many tasks were handed back.
    pub async fn drain_worker(&self, worker: Uuid, hand_back: bool) -> Result<u64, StoreError> {
        let updated =
            sqlx::query("UPDATE workers SET state = 'draining' WHERE id = $1 AND state = 'active'")
                .bind(worker)
                .execute(&self.pool)
                .await?;
        if updated.rows_affected() == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT state FROM workers WHERE id = $1")
                    .bind(worker)
                    .fetch_optional(&self.pool)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    what: "worker",
                    id: worker.to_string(),
                });
            }
        }
        if !hand_back {
            return Ok(0);
        }
        let leases: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT id, attempt FROM tasks WHERE lease_owner = $1 AND state = 'leased'",
        )
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        let error = "the worker drained and handed its tasks back";
        let mut handed_back = 0;
        for (task, attempt) in leases {
            match self
                .fail(task, attempt, worker, FailureClass::Interrupted, error)
                .await
            {
                Ok(_) => handed_back += 1,
                // Completed or reaped meanwhile: nothing to hand back.
                Err(StoreError::Fenced { .. } | StoreError::TaskCancelled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(handed_back)
    }
}

/// A worker as operators see it, with the tasks it holds.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub name: String,
    pub device: String,
    pub memory_bytes: i64,
    pub slots: i32,
    pub state: String,
    pub version: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub tasks: Vec<HeldTask>,
}

/// A task a worker holds now.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct HeldTask {
    pub id: Uuid,
    pub job_id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub attempt: i32,
    pub leased_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    pub progress: f64,
}

impl Store {
    /// Workers that are not gone, newest first, with the tasks each holds. Without
    /// `include_silent`, only those seen within three leases.
    pub async fn list_workers(&self, include_silent: bool) -> Result<Vec<WorkerInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.id, w.name, w.device, w.memory_bytes, w.slots, w.state, w.version, \
             w.registered_at, w.last_seen_at, \
             coalesce((SELECT json_agg(json_build_object( \
                 'id', t.id, 'job_id', t.job_id, 'tenant', j.tenant, 'kind', t.kind, \
                 'attempt', t.attempt, 'leased_at', t.leased_at, \
                 'lease_expires_at', t.lease_expires_at, \
                 'progress', coalesce(t.progress_fraction, 0)) ORDER BY t.leased_at) \
               FROM tasks t JOIN jobs j ON j.id = t.job_id \
               WHERE t.state = 'leased' AND t.lease_owner = w.id), '[]'::json) AS tasks \
             FROM workers w WHERE w.state <> 'gone' \
             AND ($1 OR w.last_seen_at > now() - make_interval(secs => $2)) \
             ORDER BY w.registered_at DESC LIMIT 1000",
        )
        .bind(include_silent)
        .bind(3.0 * self.config.lease.as_secs_f64())
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|row| {
                let tasks: serde_json::Value = row.try_get("tasks")?;
                let tasks = serde_json::from_value(tasks)
                    .map_err(|e| StoreError::Corrupt(format!("held tasks: {e}")))?;
                Ok(WorkerInfo {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    device: row.try_get("device")?,
                    memory_bytes: row.try_get("memory_bytes")?,
                    slots: row.try_get("slots")?,
                    state: row.try_get("state")?,
                    version: row.try_get("version")?,
                    registered_at: row.try_get("registered_at")?,
                    last_seen_at: row.try_get("last_seen_at")?,
                    tasks,
                })
            })
            .collect()
    }

    /// Unfinished operations by (kind, state).
    pub async fn open_operations(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT kind, state, count(*) FROM jobs \
             WHERE state IN ('queued', 'running', 'cancelling') GROUP BY kind, state ORDER BY 1, 2",
        )
        .fetch_all(&self.reads)
        .await?)
    }
}

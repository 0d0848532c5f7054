//! Jobs: creation with their task graph, reads, listing, cancellation and deadlines.

use std::collections::BTreeSet;

use lethe_proto::lethe::v1::FailureReason;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::rows::{self, JOB_COLUMNS, TASK_COLUMNS};
use crate::tenancy::{append, check_tenant_quota, lock_tenant_quota};
use crate::types::{
    FleetSnapshot, Job, JobFilter, JobKind, JobState, NewJob, Page, Task, TaskCounts, TaskGroup,
};
use crate::{Failure, Store, StoreError};

const MAX_NAME: usize = 200;
/// The most tasks one job may fan out into.
pub const MAX_TASKS_PER_JOB: usize = 100_000;

impl Store {
    /// Creates a job with its tasks in one transaction. Returns the job and whether it was
    /// created now; with a `request_id` already used for the same request, returns the first
    /// job instead (AIP-155), and with one used for a different request, refuses.
    pub async fn create_job(&self, new: &NewJob) -> Result<(Job, bool), StoreError> {
        self.create_job_about(new, None).await
    }

    /// [`Store::create_job`] for a job about one model (an index build or a deletion request).
    pub async fn create_job_about(
        &self,
        new: &NewJob,
        model_id: Option<Uuid>,
    ) -> Result<(Job, bool), StoreError> {
        self.create_job_linked(new, model_id, None).await
    }

    /// [`Store::create_job_about`] for an index build of the version that the retraining run
    /// `anchor_run` made (`None`: version 0).
    pub async fn create_index_build(
        &self,
        new: &NewJob,
        model_id: Uuid,
        anchor_run: Option<Uuid>,
    ) -> Result<(Job, bool), StoreError> {
        if new.kind != JobKind::IndexBuild {
            return Err(StoreError::InvalidArgument(
                "an index build is an `index_build` job".into(),
            ));
        }
        self.create_job_linked(new, Some(model_id), anchor_run)
            .await
    }

    async fn create_job_linked(
        &self,
        new: &NewJob,
        model_id: Option<Uuid>,
        run_id: Option<Uuid>,
    ) -> Result<(Job, bool), StoreError> {
        validate(new)?;
        if new.kind == JobKind::DeletionRun {
            return Err(StoreError::InvalidArgument(
                "a deletion run is started from its requests (start_deletion_run), not created"
                    .into(),
            ));
        }
        let request_hash = request_hash(new);
        let mut tx = self.pool.begin().await?;
        if new.admission.is_some() {
            lock_tenant_quota(&mut tx, &new.tenant).await?;
        }
        let inserted = insert_job(&mut tx, new, model_id, run_id, None, &request_hash).await?;
        let Some(row) = inserted else {
            // Only a request_id can conflict. The competing insert has committed by now (ON
            // CONFLICT waits for it), so the first job is visible.
            let request_id = new.request_id.clone().unwrap_or_default();
            let row = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS}, request_hash FROM jobs WHERE tenant = $1 AND request_id = $2"
            ))
            .bind(&new.tenant)
            .bind(&request_id)
            .fetch_one(&mut *tx)
            .await?;
            let stored: Vec<u8> = row.try_get("request_hash")?;
            if stored != request_hash {
                return Err(StoreError::IdempotencyConflict { request_id });
            }
            return Ok((rows::job(&row)?, false));
        };
        let mut job = rows::job(&row)?;
        if let Some(admission) = &new.admission {
            check_tenant_quota(&mut tx, &new.tenant, admission.default_max_active_jobs).await?;
            let mut audit = admission.audit.clone();
            audit.resource = format!("operations/{}", job.id);
            append(&mut tx, &audit).await?;
        }
        tx.commit().await?;
        // RETURNING ran before the tasks existed.
        let blocked = new
            .tasks
            .iter()
            .filter(|t| !t.depends_on.is_empty())
            .count() as i64;
        job.tasks = TaskCounts {
            blocked,
            available: new.tasks.len() as i64 - blocked,
            ..TaskCounts::default()
        };
        Ok((job, true))
    }

    /// The finished job `id` and, for a deletion run, the requests it served (which end with
    /// it): what the metrics of finished operations observe.
    pub async fn ended_with(&self, id: Uuid) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, kind, request_id, spec, priority, state, tasks_total, error, \
             deadline_at, created_at, updated_at, finished_at, model_id, run_id, \
             '[]'::json AS task_counts FROM jobs \
             WHERE (id = $1 OR run_id = $1) AND finished_at IS NOT NULL",
        )
        .bind(id)
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(rows::job).collect()
    }

    /// A job of `tenant`; another tenant's job is reported as not found, never as forbidden,
    /// so IDs cannot be probed.
    pub async fn get_job(&self, tenant: &str, id: Uuid) -> Result<Job, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.reads)
        .await?
        .ok_or_else(|| job_not_found(id))?;
        rows::job(&row)
    }

    /// Jobs of `tenant`, newest first, after the id that ended the previous page.
    pub async fn list_jobs(
        &self,
        tenant: &str,
        filter: &JobFilter,
        page_size: u32,
        after: Option<Uuid>,
    ) -> Result<Page<Job>, StoreError> {
        let limit = page_size.clamp(1, 1000) as i64;
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 \
             AND ($2::uuid IS NULL OR id < $2) \
             AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR state = $4) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(after)
        .bind(filter.kind.map(|k| k.as_str()))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(limit + 1)
        .fetch_all(&self.reads)
        .await?;
        let mut items = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = if more {
            items.last().map(|j| j.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// The tasks of a job, in creation order.
    pub async fn job_tasks(&self, tenant: &str, job_id: Uuid) -> Result<Vec<Task>, StoreError> {
        self.get_job(tenant, job_id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.job_id = $1 ORDER BY t.id"
        ))
        .bind(job_id)
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(rows::task).collect()
    }

    /// What the fleet is like now, for the metrics endpoint: unfinished tasks by kind, state
    /// and priority, workers seen within three leases by device and state, and the dead tuples
    /// of the hot tables.
    pub async fn fleet_snapshot(&self) -> Result<FleetSnapshot, StoreError> {
        let tasks = sqlx::query_as::<_, (String, String, i16, i64)>(
            "SELECT kind, state, priority, count(*) FROM tasks \
             WHERE state IN ('available', 'leased') GROUP BY kind, state, priority",
        )
        .fetch_all(&self.reads)
        .await?
        .into_iter()
        .map(|(kind, state, priority, count)| TaskGroup {
            kind,
            state,
            priority,
            count,
        })
        .collect();
        let workers = sqlx::query_as(
            "SELECT device, state, count(*) FROM workers WHERE state <> 'gone' \
             AND last_seen_at > now() - make_interval(secs => $1) GROUP BY device, state",
        )
        .bind(3.0 * self.config.lease.as_secs_f64())
        .fetch_all(&self.reads)
        .await?;
        let dead_tuples = sqlx::query_as(
            "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables WHERE relname IN \
             ('jobs', 'tasks', 'task_attempts', 'task_deps', 'artifacts', 'workers') ORDER BY 1",
        )
        .fetch_all(&self.reads)
        .await?;
        Ok(FleetSnapshot {
            tasks,
            workers,
            dead_tuples,
        })
    }

    /// This process's connections per pool: (pool, in use, idle, most allowed).
    pub fn pool_use(&self) -> Vec<(&'static str, u32, u32, u32)> {
        [("work", &self.pool), ("reads", &self.reads)]
            .into_iter()
            .map(|(name, pool)| {
                let idle = pool.num_idle() as u32;
                (
                    name,
                    pool.size().saturating_sub(idle),
                    idle,
                    pool.options().get_max_connections(),
                )
            })
            .collect()
    }

    /// How far a job has got: its tasks by state, and the summed progress that running
    /// tasks last reported.
    pub async fn task_counts(&self, job_id: Uuid) -> Result<TaskCounts, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(job_id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(|| job_not_found(job_id))?;
        Ok(rows::job(&row)?.tasks)
    }

    /// Cancels a job: tasks not yet leased end now; leased ones are asked to stop (their
    /// workers learn it from the next heartbeat) and the job is `cancelling` until they have.
    /// Cancelling a finished job changes nothing and returns it.
    pub async fn cancel_job(&self, tenant: &str, id: Uuid) -> Result<Job, StoreError> {
        let mut tx = self.pool.begin().await?;
        let state = lock_job(&mut tx, id, Some(tenant)).await?;
        // A deletion request served by a run is cancelled through its run, which is locked
        // before its requests.
        let joined: Option<Uuid> = sqlx::query_scalar("SELECT run_id FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(run) = joined {
            tx.rollback().await?;
            self.cancel_request_in_run(tenant, id, run).await?;
            return self.get_job(tenant, id).await;
        }
        if !state.is_terminal() {
            stop_tasks(&mut tx, id).await?;
            // The job enters `cancelling`, and leaves it at once if nothing runs.
            settle_cancelling(&mut tx, id, Some(JobState::Cancelling)).await?;
        }
        tx.commit().await?;
        self.get_job(tenant, id).await
    }

    /// Fails every unfinished job whose deadline has passed and stops its tasks. Returns how
    /// many jobs it failed.
    pub async fn expire_deadlines(&self, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE deadline_at < now() \
             AND state IN ('queued', 'running', 'cancelling') \
             ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for &id in &expired {
            let error = Failure::new(
                FailureReason::DeadlineExceeded,
                "the operation's deadline passed",
                [],
            );
            fail_job(&mut tx, id, &error).await?;
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }
}

pub(crate) fn validate(new: &NewJob) -> Result<(), StoreError> {
    let invalid = |m: String| Err(StoreError::InvalidArgument(m));
    if new.tenant.is_empty() || new.tenant.len() > MAX_NAME {
        return invalid(format!("tenant must be 1 to {MAX_NAME} bytes"));
    }
    if let Some(id) = &new.request_id {
        if id.is_empty() || id.len() > MAX_NAME {
            return invalid(format!("request_id must be 1 to {MAX_NAME} bytes"));
        }
    }
    if !(-100..=100).contains(&new.priority) {
        return invalid(format!("priority {} is outside -100..=100", new.priority));
    }
    // A deletion request is the one job without tasks: its run does its work.
    let tasks_needed = usize::from(new.kind != JobKind::Deletion);
    if new.tasks.len() < tasks_needed || new.tasks.len() > MAX_TASKS_PER_JOB {
        return invalid(format!(
            "a job needs 1 to {MAX_TASKS_PER_JOB} tasks, got {}",
            new.tasks.len()
        ));
    }
    for (i, task) in new.tasks.iter().enumerate() {
        if task.kind.is_empty() || task.kind.len() > 100 {
            return invalid(format!("task {i}: kind must be 1 to 100 bytes"));
        }
        if task.max_attempts < 1 || task.max_interruptions < 0 || task.min_memory_bytes < 0 {
            return invalid(format!(
                "task {i}: max_attempts must be ≥ 1, max_interruptions and min_memory_bytes ≥ 0"
            ));
        }
        if let Some(&bad) = task.depends_on.iter().find(|&&d| d >= i) {
            return invalid(format!(
                "task {i} depends on task {bad}: dependencies must be earlier tasks"
            ));
        }
    }
    Ok(())
}

/// Inserts a validated job and its tasks; `None` when its `request_id` is taken.
pub(crate) async fn insert_job(
    tx: &mut Transaction<'_, Postgres>,
    new: &NewJob,
    model_id: Option<Uuid>,
    run_id: Option<Uuid>,
    writes: Option<&crate::NewVersion>,
    request_hash: &[u8; 32],
) -> Result<Option<sqlx::postgres::PgRow>, StoreError> {
    let job_id = Uuid::now_v7();
    let inserted = sqlx::query(&format!(
        "INSERT INTO jobs (id, tenant, kind, request_id, request_hash, spec, priority, \
         deadline_at, tasks_total, model_id, run_id, trace_id, traceparent, writes_version, \
         writes_forgotten) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, substr($12, 4, 32), $12, $13, $14) \
         ON CONFLICT (tenant, request_id) DO NOTHING RETURNING {JOB_COLUMNS}"
    ))
    .bind(job_id)
    .bind(&new.tenant)
    .bind(new.kind.as_str())
    .bind(&new.request_id)
    .bind(&request_hash[..])
    .bind(&new.spec)
    .bind(new.priority)
    .bind(new.deadline)
    .bind(new.tasks.len() as i32)
    .bind(model_id)
    .bind(run_id)
    .bind(
        new.admission
            .as_ref()
            .and_then(|a| a.traceparent.as_deref()),
    )
    .bind(writes.map(|w| w.version))
    .bind(writes.map(|w| w.forgotten.as_slice()))
    .fetch_optional(&mut **tx)
    .await?;
    if inserted.is_some() && !new.tasks.is_empty() {
        insert_tasks(tx, job_id, new).await?;
    }
    Ok(inserted)
}

/// What makes two creates "the same request" for idempotency.
pub(crate) fn request_hash(new: &NewJob) -> [u8; 32] {
    let canonical = json!({
        "kind": new.kind.as_str(),
        "spec": new.spec,
        "priority": new.priority,
        "deadline": new.deadline.map(|d| d.timestamp_micros()),
    });
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

async fn insert_tasks(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    new: &NewJob,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = new.tasks.iter().map(|_| Uuid::now_v7()).collect();
    let mut kinds = Vec::new();
    let mut specs: Vec<Value> = Vec::new();
    let mut devices: Vec<Option<&str>> = Vec::new();
    let mut memory = Vec::new();
    let mut attempts = Vec::new();
    let mut interruptions = Vec::new();
    let mut states = Vec::new();
    let mut unmet = Vec::new();
    let (mut children, mut parents) = (Vec::new(), Vec::new());
    for (task, &id) in new.tasks.iter().zip(&ids) {
        let deps: BTreeSet<usize> = task.depends_on.iter().copied().collect();
        for &d in &deps {
            children.push(id);
            parents.push(ids[d]);
        }
        kinds.push(task.kind.as_str());
        specs.push(task.spec.clone());
        devices.push(task.requires_device.map(|d| d.as_str()));
        memory.push(task.min_memory_bytes);
        attempts.push(task.max_attempts);
        interruptions.push(task.max_interruptions);
        states.push(if deps.is_empty() {
            "available"
        } else {
            "blocked"
        });
        unmet.push(deps.len() as i32);
    }
    sqlx::query(
        "INSERT INTO tasks (id, job_id, kind, spec, priority, requires_device, min_memory_bytes, \
         max_attempts, max_interruptions, state, unmet_deps) \
         SELECT u.id, $1, u.kind, u.spec, $2, u.device, u.memory, u.attempts, u.interruptions, \
                u.state, u.unmet \
         FROM UNNEST($3::uuid[], $4::text[], $5::jsonb[], $6::text[], $7::bigint[], $8::int[], \
                     $9::int[], $10::text[], $11::int[]) \
              AS u(id, kind, spec, device, memory, attempts, interruptions, state, unmet)",
    )
    .bind(job_id)
    .bind(new.priority)
    .bind(&ids)
    .bind(&kinds)
    .bind(&specs)
    .bind(&devices)
    .bind(&memory)
    .bind(&attempts)
    .bind(&interruptions)
    .bind(&states)
    .bind(&unmet)
    .execute(&mut **tx)
    .await?;
    if !children.is_empty() {
        sqlx::query("INSERT INTO task_deps (task_id, depends_on) SELECT * FROM UNNEST($1::uuid[], $2::uuid[])")
            .bind(&children)
            .bind(&parents)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(crate) fn job_not_found(id: Uuid) -> StoreError {
    StoreError::NotFound {
        what: "job",
        id: id.to_string(),
    }
}

/// Locks a job row for the rest of the transaction: every transition that depends on the
/// states of several of a job's tasks takes this lock first, so two of them cannot both miss
/// each other's update.
pub(crate) async fn lock_job(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    tenant: Option<&str>,
) -> Result<JobState, StoreError> {
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    JobState::parse(&state.ok_or_else(|| job_not_found(id))?)
}

/// Asks a job's leased tasks to stop and ends those that have not started. Leased rows are
/// locked first, blocked ones after: the order a completion locks its own row and then its
/// dependents', so the two never wait on each other in a cycle.
pub(crate) async fn stop_tasks(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE tasks SET cancel_requested = true WHERE job_id = $1 AND state = 'leased'")
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE tasks SET state = 'cancelled', finished_at = now() \
         WHERE job_id = $1 AND state IN ('blocked', 'available')",
    )
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// After a cancellation, or after a task of a cancelling job ended: the job is cancelled once
/// none of its tasks is leased, cancelling until then. The caller holds the job's lock.
/// `state` is the job's state if the caller just read it.
pub(crate) async fn settle_cancelling(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    state: Option<JobState>,
) -> Result<JobState, StoreError> {
    let state = match state {
        Some(state) => state,
        None => lock_job(tx, job_id, None).await?,
    };
    if state != JobState::Cancelling {
        return Ok(state);
    }
    let new_state: String = sqlx::query_scalar(
        "UPDATE jobs SET updated_at = now(), \
           state = CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND state = 'leased') \
                   THEN 'cancelling' ELSE 'cancelled' END, \
           finished_at = CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND state = 'leased') \
                   THEN NULL ELSE now() END \
         WHERE id = $1 RETURNING state",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    JobState::parse(&new_state)
}

/// Fails a job for good and stops its other tasks. The caller holds the job's lock (or the
/// job row is locked by the statement that found it).
pub(crate) async fn fail_job(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    error: &Failure,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE jobs SET state = 'failed', error = $2, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('queued', 'running', 'cancelling')",
    )
    .bind(job_id)
    .bind(error.encode())
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() > 0 {
        stop_tasks(tx, job_id).await?;
    }
    Ok(())
}

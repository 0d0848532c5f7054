//! Deletion requests, the runs that coalesce them, model versions, and the inputs a task reads
//! from the tasks it depends on.
//!
//! A request is a job without tasks. The planner (every coordinator replica runs it) turns the
//! pending requests of a model into one run once the oldest has waited out the coalescing
//! window and no other run of that model is unfinished; the run's state reaches its requests
//! through a trigger (migrations 0003 and 0008), which also records the version a succeeded run made.

use std::time::Duration;

use lethe_proto::lethe::v1::{FailureReason, IndexReport};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::jobs::{insert_job, lock_job, request_hash, settle_cancelling, stop_tasks, validate};
use crate::types::{Job, JobKind, JobState, NewJob};
use crate::{rows, seconds, Failure, Store, StoreError};

/// An object the store knows the location and hash of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredRef {
    pub uri: String,
    pub sha256: Option<[u8; 32]>,
    pub size_bytes: Option<i64>,
}

/// A version of a model: 0 is the registered model, each succeeded run adds one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelVersion {
    /// The model's id (`models/{id}`).
    pub model: String,
    pub version: i32,
    pub object: StoredRef,
    /// Everything forgotten since version 0, sorted.
    pub forgotten: Vec<i64>,
    /// The run that made it (none for version 0).
    pub run_id: Option<Uuid>,
    /// Retrained from scratch: later runs predict from it (version 0 is an anchor too).
    pub anchor: bool,
}

/// The latest succeeded index build of a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexRef {
    pub job_id: Uuid,
    pub beta: StoredRef,
    /// β's noise model (`beta_noise`), which DMM's denoising needs.
    pub noise: Option<StoredRef>,
    /// What its reduce task (`build_index`) reported.
    #[serde(skip)]
    pub report: IndexReport,
}

/// A pending request, as the planner sees it.
#[derive(Clone, Debug)]
pub struct PendingRequest {
    pub id: Uuid,
    pub spec: Value,
    pub priority: i16,
}

/// Everything a run is planned from, read under the model's lock.
#[derive(Clone, Debug)]
pub struct RunInputs {
    pub tenant: String,
    pub model_id: Uuid,
    pub dataset: StoredRef,
    /// The latest anchor (version 0, or the latest version retrained from scratch): targets
    /// are predicted from its outputs.
    pub base: ModelVersion,
    /// The version the run starts from.
    pub current: ModelVersion,
    /// The index built for `base`, if it has succeeded.
    pub index: Option<IndexRef>,
    /// Whether an index build for `base` is still running.
    pub index_pending: bool,
    /// The size of the training set, from any succeeded index build of the model.
    pub num_train: Option<i64>,
    pub requests: Vec<PendingRequest>,
}

/// What the planner makes of the pending requests.
// Made once per run and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum RunPlan {
    /// Not yet (the index for the current anchor is still being built).
    Wait,
    /// A run; with `fresh_index`, an index build for the version the run makes (a full
    /// retrain), started beside it.
    Start {
        run: NewJob,
        writes: NewVersion,
        fresh_index: Option<NewJob>,
    },
}

/// The version a run writes when it succeeds: the store records it from these columns, never
/// from the run's spec.
#[derive(Clone, Debug, PartialEq)]
pub struct NewVersion {
    /// The current version + 1.
    pub version: i32,
    /// Everything forgotten since version 0: the current version's and the run's requests'.
    pub forgotten: Vec<i64>,
}

/// An artifact of a task that the asking task depends on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskInput {
    pub task_id: Uuid,
    pub task_kind: String,
    pub task_spec: Value,
    pub name: String,
    pub uri: String,
    pub sha256: [u8; 32],
    pub size_bytes: i64,
}

/// A run writes the version after the current one and forgets everything the current one did.
fn validate_version(current: &ModelVersion, writes: &NewVersion) -> Result<(), StoreError> {
    if writes.version != current.version + 1 {
        return Err(StoreError::InvalidArgument(format!(
            "a run on version {} must write version {}, not {}",
            current.version,
            current.version + 1,
            writes.version
        )));
    }
    let kept: std::collections::BTreeSet<i64> = writes.forgotten.iter().copied().collect();
    if let Some(unforgotten) = current.forgotten.iter().find(|i| !kept.contains(i)) {
        return Err(StoreError::InvalidArgument(format!(
            "a run must keep forgetting what version {} forgot (example {unforgotten})",
            current.version
        )));
    }
    Ok(())
}

impl Store {
    /// Files a deletion request on `model_id` (a job with no tasks of its own), idempotently
    /// per `request_id` like [`Store::create_job`].
    pub async fn create_deletion_request(
        &self,
        new: &NewJob,
        model_id: Uuid,
    ) -> Result<(Job, bool), StoreError> {
        if new.kind != JobKind::Deletion || !new.tasks.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a deletion request is a `deletion` job without tasks".into(),
            ));
        }
        self.create_job_about(new, Some(model_id)).await
    }

    /// Models with a request that has waited at least `window` and no unfinished run: the
    /// ones [`Store::start_deletion_run`] should be called for.
    pub async fn models_due_for_a_run(
        &self,
        window: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT j.model_id FROM jobs j \
             WHERE j.kind = 'deletion' AND j.run_id IS NULL AND j.state = 'queued' \
               AND j.created_at <= now() - make_interval(secs => $1) \
               AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.model_id = j.model_id \
                   AND r.kind = 'deletion_run' AND r.state IN ('queued', 'running', 'cancelling')) \
             LIMIT $2",
        )
        .bind(seconds(window))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Coalesces the pending requests of a model into one run, planned by `plan` from what the
    /// store knows (the versions, the index, the requests). Nothing happens if another run of
    /// the model is unfinished or no request is pending; replicas racing here serialise on the
    /// model's row. When `plan` refuses (no index, say), the pending requests fail with its
    /// message. Returns the run, if one started.
    pub async fn start_deletion_run(
        &self,
        model_id: Uuid,
        plan: impl FnOnce(&RunInputs) -> Result<RunPlan, StoreError>,
    ) -> Result<Option<Job>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let model = sqlx::query(
            "SELECT m.tenant, m.name, m.uri, m.sha256, d.uri AS dataset_uri, \
               d.sha256 AS dataset_sha256 \
             FROM models m JOIN datasets d ON d.id = m.dataset_id WHERE m.id = $1 FOR UPDATE OF m",
        )
        .bind(model_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "model",
            id: model_id.to_string(),
        })?;
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE model_id = $1 AND kind = 'deletion_run' \
                            AND state IN ('queued', 'running', 'cancelling'))",
        )
        .bind(model_id)
        .fetch_one(&mut *tx)
        .await?;
        if busy {
            return Ok(None);
        }
        let requests: Vec<PendingRequest> = sqlx::query(
            "SELECT id, spec, priority FROM jobs WHERE model_id = $1 AND kind = 'deletion' \
               AND run_id IS NULL AND state = 'queued' ORDER BY id FOR UPDATE",
        )
        .bind(model_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            Ok(PendingRequest {
                id: row.try_get("id")?,
                spec: row.try_get("spec")?,
                priority: row.try_get("priority")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        if requests.is_empty() {
            return Ok(None);
        }
        let first = ModelVersion {
            model: model.try_get("name")?,
            version: 0,
            object: StoredRef {
                uri: model.try_get("uri")?,
                sha256: hash(model.try_get("sha256")?)?,
                size_bytes: None,
            },
            forgotten: Vec::new(),
            run_id: None,
            anchor: true,
        };
        let latest_sql = format!(
            "{VERSION_SELECT} WHERE v.model_id = $1 AND (v.anchor OR NOT $2) \
             ORDER BY v.version DESC LIMIT 1"
        );
        let latest =
            |anchors_only: bool| sqlx::query(&latest_sql).bind(model_id).bind(anchors_only);
        let current = match latest(false).fetch_optional(&mut *tx).await? {
            Some(row) => version_row(&row)?,
            None => first.clone(),
        };
        let base = match latest(true).fetch_optional(&mut *tx).await? {
            Some(row) => version_row(&row)?,
            None => first,
        };
        let index = latest_index(&mut tx, model_id, Some(base.run_id)).await?;
        let index_pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE model_id = $1 AND kind = 'index_build' \
               AND run_id IS NOT DISTINCT FROM $2 AND state IN ('queued', 'running'))",
        )
        .bind(model_id)
        .bind(base.run_id)
        .fetch_one(&mut *tx)
        .await?;
        let num_train = match &index {
            Some(index) => Some(index.report.num_train),
            None => latest_index(&mut tx, model_id, None)
                .await?
                .map(|index| index.report.num_train),
        };
        let inputs = RunInputs {
            tenant: model.try_get("tenant")?,
            model_id,
            dataset: StoredRef {
                uri: model.try_get("dataset_uri")?,
                sha256: hash(model.try_get("dataset_sha256")?)?,
                size_bytes: None,
            },
            base,
            current,
            index,
            index_pending,
            num_train,
            requests,
        };
        let request_ids: Vec<Uuid> = inputs.requests.iter().map(|r| r.id).collect();
        let checked = plan(&inputs).and_then(|plan| {
            if let RunPlan::Start {
                run,
                writes,
                fresh_index,
            } = &plan
            {
                validate(run)?;
                validate_version(&inputs.current, writes)?;
                fresh_index.as_ref().map(validate).transpose()?;
            }
            Ok(plan)
        });
        let (run, writes, fresh_index) = match checked {
            Ok(RunPlan::Wait) => return Ok(None),
            Ok(RunPlan::Start {
                run,
                writes,
                fresh_index,
            }) => (run, writes, fresh_index),
            Err(refusal) => {
                let error =
                    Failure::new(FailureReason::RunRefused, refusal.to_string(), []).encode();
                sqlx::query(
                    "UPDATE jobs SET state = 'failed', error = $2, finished_at = now(), \
                         updated_at = now() WHERE id = ANY($1)",
                )
                .bind(&request_ids)
                .bind(&error)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(None);
            }
        };
        let row = insert_job(
            &mut tx,
            &run,
            Some(model_id),
            None,
            Some(&writes),
            &request_hash(&run),
        )
        .await?
        .ok_or_else(|| StoreError::InvalidArgument("a run must not carry a request_id".into()))?;
        let run_id: Uuid = row.try_get("id")?;
        sqlx::query("UPDATE jobs SET run_id = $1, updated_at = now() WHERE id = ANY($2)")
            .bind(run_id)
            .bind(&request_ids)
            .execute(&mut *tx)
            .await?;
        if let Some(build) = fresh_index {
            insert_job(
                &mut tx,
                &build,
                Some(model_id),
                Some(run_id),
                None,
                &request_hash(&build),
            )
            .await?
            .ok_or_else(|| {
                StoreError::InvalidArgument("an index build must not carry a request_id".into())
            })?;
        }
        tx.commit().await?;
        Ok(Some(rows::job(&row)?))
    }

    /// The latest succeeded index build of a model of `tenant`.
    pub async fn latest_index(
        &self,
        tenant: &str,
        model_id: Uuid,
    ) -> Result<Option<IndexRef>, StoreError> {
        let mut tx = self.reads.begin().await?;
        let owned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM models WHERE id = $1 AND tenant = $2)",
        )
        .bind(model_id)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        if !owned {
            return Ok(None);
        }
        latest_index(&mut tx, model_id, None).await
    }

    /// The versions of a model of `tenant`, newest first (version 0 last).
    pub async fn model_versions(
        &self,
        tenant: &str,
        model_id: Uuid,
    ) -> Result<Vec<ModelVersion>, StoreError> {
        let base =
            sqlx::query("SELECT name, uri, sha256 FROM models WHERE id = $1 AND tenant = $2")
                .bind(model_id)
                .bind(tenant)
                .fetch_optional(&self.reads)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "model",
                    id: model_id.to_string(),
                })?;
        let mut versions = sqlx::query(&format!(
            "{VERSION_SELECT} WHERE v.model_id = $1 ORDER BY v.version DESC"
        ))
        .bind(model_id)
        .fetch_all(&self.reads)
        .await?
        .iter()
        .map(version_row)
        .collect::<Result<Vec<_>, _>>()?;
        versions.push(ModelVersion {
            model: base.try_get("name")?,
            version: 0,
            object: StoredRef {
                uri: base.try_get("uri")?,
                sha256: hash(base.try_get("sha256")?)?,
                size_bytes: None,
            },
            forgotten: Vec::new(),
            run_id: None,
            anchor: true,
        });
        Ok(versions)
    }

    /// The committed artifacts of the tasks `task` depends on, for the attempt that holds its
    /// lease: a worker reads its inputs only while it may still commit a result.
    pub async fn task_inputs(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
    ) -> Result<Vec<TaskInput>, StoreError> {
        let holds: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND state = 'leased' \
                            AND attempt = $2 AND lease_owner = $3)",
        )
        .bind(task)
        .bind(attempt)
        .bind(worker)
        .fetch_one(&self.pool)
        .await?;
        if !holds {
            return Err(self.fenced(task, attempt).await);
        }
        let rows = sqlx::query(
            "SELECT t.id, t.kind, t.spec, a.name, a.uri, a.sha256, a.size_bytes \
             FROM task_deps d JOIN tasks t ON t.id = d.depends_on \
             JOIN artifacts a ON a.task_id = t.id \
             WHERE d.task_id = $1 ORDER BY t.id, a.name",
        )
        .bind(task)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TaskInput {
                    task_id: row.try_get("id")?,
                    task_kind: row.try_get("kind")?,
                    task_spec: row.try_get("spec")?,
                    name: row.try_get("name")?,
                    uri: row.try_get("uri")?,
                    sha256: hash(row.try_get("sha256")?)?
                        .ok_or_else(|| StoreError::Corrupt("artifact without a hash".into()))?,
                    size_bytes: row.try_get("size_bytes")?,
                })
            })
            .collect()
    }

    /// Cancels a deletion request that a run already serves. The run is cancelled with it when
    /// no other request of the run is still live; otherwise the run's work is shared and goes
    /// on, so the request cannot be withdrawn from it.
    pub(crate) async fn cancel_request_in_run(
        &self,
        tenant: &str,
        id: Uuid,
        run: Uuid,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The run before its requests: the order its trigger locks them in.
        lock_job(&mut tx, run, Some(tenant)).await?;
        let state = lock_job(&mut tx, id, Some(tenant)).await?;
        if state.is_terminal() {
            return Ok(());
        }
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE run_id = $1 AND id <> $2 \
               AND state IN ('queued', 'running', 'cancelling')",
        )
        .bind(run)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if others > 0 {
            return Err(StoreError::FailedPrecondition(format!(
                "deletion request {id} shares run {run} with {others} other live request(s); \
                 it can no longer be withdrawn from that run"
            )));
        }
        stop_tasks(&mut tx, run).await?;
        sqlx::query("UPDATE jobs SET state = 'cancelling', updated_at = now() WHERE id = $1")
            .bind(run)
            .execute(&mut *tx)
            .await?;
        settle_cancelling(&mut tx, run, Some(JobState::Cancelling)).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The latest succeeded index build of a model; with `anchor`, only one built for that anchor
/// (the run that retrained it, or `None` for version 0).
async fn latest_index(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    model_id: Uuid,
    anchor: Option<Option<Uuid>>,
) -> Result<Option<IndexRef>, StoreError> {
    let row = sqlx::query(
        "SELECT j.id, t.report, a.uri, a.sha256, a.size_bytes, n.uri AS noise_uri, \
                n.sha256 AS noise_sha256, n.size_bytes AS noise_size_bytes FROM jobs j \
         JOIN tasks t ON t.job_id = j.id JOIN artifacts a ON a.task_id = t.id AND a.name = 'beta' \
         LEFT JOIN artifacts n ON n.task_id = t.id AND n.name = 'beta_noise' \
         WHERE j.model_id = $1 AND j.kind = 'index_build' AND j.state = 'succeeded' \
           AND (NOT $2 OR j.run_id IS NOT DISTINCT FROM $3) \
         ORDER BY j.id DESC LIMIT 1",
    )
    .bind(model_id)
    .bind(anchor.is_some())
    .bind(anchor.flatten())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| {
        Ok(IndexRef {
            job_id: row.try_get("id")?,
            report: index_report(row.try_get("report")?)?,
            beta: StoredRef {
                uri: row.try_get("uri")?,
                sha256: hash(row.try_get("sha256")?)?,
                size_bytes: row.try_get("size_bytes")?,
            },
            noise: row
                .try_get::<Option<String>, _>("noise_uri")?
                .map(|uri| -> Result<StoredRef, StoreError> {
                    Ok(StoredRef {
                        uri,
                        sha256: hash(row.try_get("noise_sha256")?)?,
                        size_bytes: row.try_get("noise_size_bytes")?,
                    })
                })
                .transpose()?,
        })
    })
    .transpose()
}

/// The columns [`version_row`] reads, from `model_versions v` joined to its model.
pub(crate) const VERSION_SELECT: &str =
    "SELECT m.name AS model, v.version, v.uri, v.sha256, v.size_bytes, v.forgotten, v.run_id, \
     v.anchor FROM model_versions v JOIN models m ON m.id = v.model_id";

pub(crate) fn version_row(row: &sqlx::postgres::PgRow) -> Result<ModelVersion, StoreError> {
    Ok(ModelVersion {
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        object: StoredRef {
            uri: row.try_get("uri")?,
            sha256: hash(row.try_get("sha256")?)?,
            size_bytes: row.try_get("size_bytes")?,
        },
        forgotten: row.try_get("forgotten")?,
        run_id: row.try_get("run_id")?,
        anchor: row.try_get("anchor")?,
    })
}

pub(crate) fn hash(bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, StoreError> {
    bytes
        .map(|b| {
            <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| StoreError::Corrupt("a sha256 that is not 32 bytes".into()))
        })
        .transpose()
}

/// The report of an index build's reduce task. A build recorded before reports were typed
/// (migration 0008) has none, and is not an index the planner can use.
fn index_report(bytes: Option<Vec<u8>>) -> Result<IndexReport, StoreError> {
    match crate::reports::decode_report(bytes)?.and_then(|r| r.report) {
        Some(lethe_proto::lethe::v1::task_report::Report::BuildIndex(report)) => Ok(report),
        _ => Err(StoreError::FailedPrecondition(
            "the model's index was built before migration 0008 recorded typed reports: build it again with CreateIndexBuild".into(),
        )),
    }
}

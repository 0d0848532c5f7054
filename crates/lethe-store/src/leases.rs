//! Claims, heartbeats and the ends of attempts. Every statement that changes a leased task
//! names the task, the attempt and the worker it expects, so a worker whose lease was taken
//! over changes nothing (fencing).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use lethe_proto::lethe::v1::{FailureReason, TaskReport};
use prost::Message;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::jobs::{fail_job, lock_job, settle_cancelling};
use crate::types::{
    ArtifactRef, Completion, FailureClass, FailureOutcome, LeaseRenewal, LeasedTask, TaskProgress,
    TaskState,
};
use crate::{seconds, Failure, Store, StoreError};

/// A completion that sees more unfinished siblings than this does not try to finalise its
/// job: for that, all of them would have to finish while its one statement runs.
pub(crate) const FINALIZE_WHEN_AT_MOST: i64 = 16;

/// The claim as CTEs (`me`, `seen`, `candidates`, `claimed`, `started`) for a statement to
/// follow: `worker`, `limit` and `lease` (seconds) name the parameters that hold them, and
/// `only_if` is a further condition on claiming anything. Written so that their generic plans
/// (the store forces them) are index lookups: `= ANY(ARRAY(..))` rather than joins whose row
/// counts a generic plan cannot know.
fn claim_ctes(worker: &str, limit: &str, lease: &str, only_if: &str) -> String {
    let runnable = runnable_by("me");
    format!(
        "me AS ( \
             SELECT device, memory_bytes, kinds FROM workers \
             WHERE id = {worker} AND state = 'active' {only_if} \
         ), seen AS ( \
             UPDATE workers SET last_seen_at = now() \
             WHERE id = {worker} AND last_seen_at < now() - interval '5 seconds' \
         ), candidates AS ( \
             SELECT t.id FROM tasks t, me \
             WHERE t.state = 'available' AND t.run_at <= now() AND {runnable} \
             ORDER BY t.priority DESC, t.run_at, t.id \
             LIMIT {limit} FOR UPDATE OF t SKIP LOCKED \
         ), claimed AS ( \
             UPDATE tasks t SET state = 'leased', attempt = t.attempt + 1, \
                 lease_owner = {worker}, lease_expires_at = now() + make_interval(secs => {lease}), \
                 leased_at = now(), progress_fraction = NULL, progress_message = NULL \
             WHERE t.id = ANY(ARRAY(SELECT id FROM candidates)) \
             RETURNING t.id, t.job_id, t.kind, t.spec, t.attempt, t.lease_expires_at \
         ), started AS ( \
             UPDATE jobs SET state = 'running', updated_at = now() \
             WHERE id = ANY(ARRAY( \
                 SELECT j.id FROM jobs j WHERE j.id = ANY(ARRAY(SELECT job_id FROM claimed)) \
                   AND j.state = 'queued' FOR UPDATE SKIP LOCKED)) \
         )"
    )
}

/// Whether task `t` can run on a worker whose device, memory and kinds are columns of
/// `worker`: the one definition the claims share.
pub(crate) fn runnable_by(worker: &str) -> String {
    format!(
        "(t.requires_device IS NULL OR t.requires_device = {worker}.device) \
         AND t.min_memory_bytes <= {worker}.memory_bytes \
         AND (cardinality({worker}.kinds) = 0 OR t.kind = ANY({worker}.kinds))"
    )
}

/// The claimed tasks with their tenant and the trace they serve (a deletion run's is that of
/// the first request it serves), as [`leased_task`] reads them.
pub(crate) const CLAIMED_TASKS: &str = "\
    SELECT c.*, j.tenant, coalesce(j.traceparent, (SELECT r.traceparent FROM jobs r \
        WHERE r.run_id = j.id AND r.traceparent IS NOT NULL ORDER BY r.id LIMIT 1)) AS traceparent \
    FROM claimed c JOIN jobs j ON j.id = c.job_id";

/// The completion as CTEs (`done`, `ended`, `stored`, `released`), with the parameters that
/// [`AttemptResult::bind`] binds: `$1` task, `$2` attempt, `$3` worker, `$4` report, `$5`–`$9`
/// the artifacts, `$10` how many unfinished siblings to count at most.
const COMPLETE_CTES: &str = "\
    done AS ( \
        UPDATE tasks SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL, \
            finished_at = now(), report = $4 \
        WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'leased' \
          AND NOT cancel_requested \
        RETURNING id, job_id, attempt, leased_at \
    ), ended AS ( \
        INSERT INTO task_attempts (task_id, attempt, worker_id, started_at, outcome) \
        SELECT id, attempt, $3, leased_at, 'succeeded' FROM done \
    ), stored AS ( \
        INSERT INTO artifacts (id, task_id, attempt, name, uri, sha256, size_bytes) \
        SELECT u.id, done.id, done.attempt, u.name, u.uri, u.sha256, u.size \
        FROM done, UNNEST($5::uuid[], $6::text[], $7::text[], $8::bytea[], $9::bigint[]) \
             AS u(id, name, uri, sha256, size) \
    ), released AS ( \
        UPDATE tasks t SET unmet_deps = t.unmet_deps - 1, \
            state = CASE WHEN t.unmet_deps = 1 THEN 'available' ELSE 'blocked' END, \
            run_at = CASE WHEN t.unmet_deps = 1 THEN now() ELSE t.run_at END \
        WHERE t.id = ANY(ARRAY(SELECT task_id FROM task_deps WHERE depends_on = $1)) \
          AND t.state = 'blocked' AND EXISTS (SELECT 1 FROM done) \
        RETURNING t.id, t.state \
    )";

/// What a completion reports: its job, the dependents it made available, and (up to `$10`)
/// how many of the job's other tasks have not succeeded.
const COMPLETION_SUMMARY: &str = "\
    done.job_id AS completed_job_id, \
    (SELECT count(*) FROM released WHERE state = 'available') AS released, \
    (SELECT count(*) FROM (SELECT 1 FROM tasks o WHERE o.job_id = done.job_id \
        AND o.state <> 'succeeded' AND o.id <> done.id LIMIT $10) AS x) AS others_unfinished";

static CLAIM: LazyLock<String> =
    LazyLock::new(|| format!("WITH {} {CLAIMED_TASKS}", claim_ctes("$1", "$2", "$3", "")));

static COMPLETE: LazyLock<String> =
    LazyLock::new(|| format!("WITH {COMPLETE_CTES} SELECT {COMPLETION_SUMMARY} FROM done"));

/// The claim waits on the completion: `me` is empty unless `done` committed a row.
static COMPLETE_AND_CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {COMPLETE_CTES}, {} SELECT {COMPLETION_SUMMARY}, next.* \
         FROM done LEFT JOIN ({CLAIMED_TASKS}) AS next ON true",
        claim_ctes("$3", "$11", "$12", "AND EXISTS (SELECT 1 FROM done)")
    )
});

/// A task a claim leased, from a row of [`CLAIMED_TASKS`].
pub(crate) fn leased_task(row: &PgRow) -> Result<LeasedTask, sqlx::Error> {
    Ok(LeasedTask {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        tenant: row.try_get("tenant")?,
        traceparent: row.try_get("traceparent")?,
        kind: row.try_get("kind")?,
        spec: row.try_get("spec")?,
        attempt: row.try_get("attempt")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
    })
}

/// Artifacts as the parallel arrays a completion statement unnests (each with a fresh id).
pub(crate) struct ArtifactColumns<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    uris: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    sizes: Vec<i64>,
}

impl<'a> ArtifactColumns<'a> {
    pub(crate) fn new(artifacts: impl IntoIterator<Item = &'a ArtifactRef>) -> Self {
        let mut columns = ArtifactColumns {
            ids: Vec::new(),
            names: Vec::new(),
            uris: Vec::new(),
            hashes: Vec::new(),
            sizes: Vec::new(),
        };
        for artifact in artifacts {
            columns.ids.push(Uuid::now_v7());
            columns.names.push(&artifact.name);
            columns.uris.push(&artifact.uri);
            columns.hashes.push(&artifact.sha256);
            columns.sizes.push(artifact.size_bytes);
        }
        columns
    }

    /// Binds the next five parameters: ids, names, URIs, hashes and sizes.
    pub(crate) fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.names)
            .bind(&self.uris)
            .bind(&self.hashes)
            .bind(&self.sizes)
    }
}

/// An attempt's result as [`COMPLETE_CTES`] takes it.
struct AttemptResult<'a> {
    report: Option<Vec<u8>>,
    artifacts: ArtifactColumns<'a>,
}

impl<'a> AttemptResult<'a> {
    fn new(artifacts: &'a [ArtifactRef], report: Option<&TaskReport>) -> Self {
        AttemptResult {
            report: report.map(Message::encode_to_vec),
            artifacts: ArtifactColumns::new(artifacts),
        }
    }

    /// Binds `$1`–`$10` of [`COMPLETE_CTES`] and [`COMPLETION_SUMMARY`].
    fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
    ) -> Query<'q, Postgres, PgArguments> {
        let query = query
            .bind(task)
            .bind(attempt)
            .bind(worker)
            .bind(&self.report);
        self.artifacts.bind(query).bind(FINALIZE_WHEN_AT_MOST + 1)
    }
}

/// How an attempt that did not succeed ended, as recorded in `task_attempts.outcome`.
#[derive(Clone, Copy, Debug)]
enum AttemptEnd {
    Reported(FailureClass),
    LeaseExpired,
}

impl Store {
    /// Leases up to `limit` available tasks that `worker` can run (its device and memory as
    /// registered), most urgent first, and notes that the worker is alive (at most every few
    /// seconds, to spare the row). A draining worker gets nothing. One statement: the CTE
    /// locks candidates with `SKIP LOCKED` (so concurrent claimers never wait on or share a
    /// row), bumps each attempt, and marks jobs running.
    pub async fn claim(&self, worker: Uuid, limit: i64) -> Result<Vec<LeasedTask>, StoreError> {
        let rows = sqlx::query(&CLAIM)
            .bind(worker)
            .bind(limit.max(1))
            .bind(seconds(self.config.lease))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(leased_task).collect::<Result<_, _>>()?)
    }

    /// Extends a lease and records progress. The answer says whether the job is being
    /// cancelled, which is how cancellation reaches a running task.
    pub async fn heartbeat(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
        progress: Option<&TaskProgress>,
    ) -> Result<LeaseRenewal, StoreError> {
        let row = sqlx::query(
            "WITH renewed AS ( \
                 UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $4), \
                     progress_fraction = COALESCE($5, progress_fraction), \
                     progress_message = COALESCE($6, progress_message) \
                 WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'leased' \
                 RETURNING lease_expires_at, cancel_requested \
             ), seen AS ( \
                 UPDATE workers SET last_seen_at = now() \
                 WHERE id = $3 AND last_seen_at < now() - interval '5 seconds' \
                   AND EXISTS (SELECT 1 FROM renewed) \
             ) \
             SELECT * FROM renewed",
        )
        .bind(task)
        .bind(attempt)
        .bind(worker)
        .bind(seconds(self.config.lease))
        .bind(progress.map(|p| p.fraction.clamp(0.0, 1.0)))
        .bind(progress.map(|p| p.message.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(LeaseRenewal {
                lease_expires_at: row.try_get("lease_expires_at")?,
                cancel_requested: row.try_get("cancel_requested")?,
            }),
            None => Err(self.fenced(task, attempt).await),
        }
    }

    /// Commits an attempt's result: the task succeeds, its artifacts are recorded (once per
    /// name), and dependents whose last dependency this was become available, in one
    /// statement. Replaying a completion that committed succeeds again and changes nothing.
    /// It touches no job row, so completions of one job's tasks never queue behind each other;
    /// the job is finalised just after (see [`Store::finalize_job`]).
    pub async fn complete(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
        artifacts: &[ArtifactRef],
        report: Option<&TaskReport>,
    ) -> Result<Completion, StoreError> {
        let attempt_result = AttemptResult::new(artifacts, report);
        let row = attempt_result
            .bind(sqlx::query(&COMPLETE), task, attempt, worker)
            .fetch_optional(&self.pool)
            .await;
        self.completed(row, task, attempt, worker, artifacts).await
    }

    /// [`Store::complete`], and in the same statement (one round trip, one commit) the claim
    /// of the next task for the same worker, as [`Store::claim`] would make it. No task is
    /// claimed unless the completion commits; a replayed completion claims none.
    pub async fn complete_and_claim(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
        artifacts: &[ArtifactRef],
        report: Option<&TaskReport>,
    ) -> Result<(Completion, Option<LeasedTask>), StoreError> {
        let attempt_result = AttemptResult::new(artifacts, report);
        let row = attempt_result
            .bind(sqlx::query(&COMPLETE_AND_CLAIM), task, attempt, worker)
            .bind(1_i64)
            .bind(seconds(self.config.lease))
            .fetch_optional(&self.pool)
            .await;
        let next = match &row {
            Ok(Some(row)) if row.try_get::<Option<Uuid>, _>("id")?.is_some() => {
                Some(leased_task(row)?)
            }
            _ => None,
        };
        let completion = self
            .completed(row, task, attempt, worker, artifacts)
            .await?;
        Ok((completion, next))
    }

    /// What a completion statement's row says, finalising the job when it may be done; with
    /// no row, whether this was a replay of a committed completion or why it was refused.
    pub(crate) async fn completed(
        &self,
        row: Result<Option<PgRow>, sqlx::Error>,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
        artifacts: &[ArtifactRef],
    ) -> Result<Completion, StoreError> {
        let row = match row {
            Ok(Some(row)) => row,
            Ok(None) => {
                if let Some(job_id) = self.committed_by(task, attempt, worker).await? {
                    return Ok(Completion {
                        job_id,
                        job_done: false,
                        tasks_released: 0,
                    });
                }
                return Err(self.refuse_completion(task, attempt, worker).await);
            }
            // Two artifacts with one name: the caller's mistake, and nothing was written.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let names: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
                return Err(StoreError::InvalidArgument(format!(
                    "artifact names must be unique within a task: {names:?}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let job_id: Uuid = row.try_get("completed_job_id")?;
        let others_unfinished: i64 = row.try_get("others_unfinished")?;
        // Most completions of a wide job see plenty of unfinished siblings and skip the extra
        // statement; near the end, every completion checks after its commit.
        let job_done =
            others_unfinished <= FINALIZE_WHEN_AT_MOST && self.finalize_job(job_id).await?;
        Ok(Completion {
            job_id,
            job_done,
            tasks_released: row.try_get("released")?,
        })
    }

    /// Marks a job succeeded if every one of its tasks has (its result is built from its
    /// tasks' reports when it is read).
    /// Called after a completion has committed, when the completion saw at most
    /// [`FINALIZE_WHEN_AT_MOST`] unfinished siblings: of the last completions racing, the one
    /// that commits last sees the others' commits, so one of them finalises. If a process
    /// dies in between, or more siblings than that finished during one completion's
    /// statement, [`Store::finalize_finished_jobs`] does it within a maintenance interval.
    pub async fn finalize_job(&self, job_id: Uuid) -> Result<bool, StoreError> {
        let finalized = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', finished_at = now(), updated_at = now() \
             WHERE id = $1 AND state IN ('queued', 'running') AND kind <> 'deletion' \
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND state <> 'succeeded')",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(finalized.rows_affected() == 1)
    }

    /// Finalises jobs whose tasks have all succeeded but whose completion's own finalisation
    /// was lost (its process died between the two statements). Returns how many.
    pub async fn finalize_finished_jobs(&self, limit: i64) -> Result<u64, StoreError> {
        let finished: Vec<Uuid> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j WHERE j.state IN ('queued', 'running') AND j.kind <> 'deletion' \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded') \
             LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut count = 0;
        for job in finished {
            count += u64::from(self.finalize_job(job).await?);
        }
        Ok(count)
    }

    /// Ends an attempt that did not succeed. Retryable failures requeue the task after a
    /// jittered backoff until `max_attempts`; interruptions requeue it at once until
    /// `max_interruptions`; a fatal failure, or one past those limits, fails the task and its
    /// job.
    pub async fn fail(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
        class: FailureClass,
        message: &str,
    ) -> Result<FailureOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(job_id) = lock_lease(
            &mut tx,
            task,
            LeaseGuard {
                holder: Some((attempt, worker)),
                ..Default::default()
            },
        )
        .await?
        else {
            drop(tx);
            return Err(self.fenced(task, attempt).await);
        };
        let outcome = self
            .end_attempt(&mut tx, task, job_id, AttemptEnd::Reported(class), message)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Takes back tasks whose lease expired (their worker died or lost its network): each is
    /// requeued with its attempt counted as an interruption, or ends if it was being cancelled
    /// or ran out of interruptions. Safe from every replica at once. Returns how many it took.
    pub async fn reap_expired_leases(&self, limit: i64) -> Result<u64, StoreError> {
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE state = 'leased' AND lease_expires_at < now() \
             ORDER BY lease_expires_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let message = "no heartbeat before the lease expired";
        let mut reaped = 0;
        for task in expired {
            // Each in its own short transaction; a lease renewed or taken meanwhile is skipped.
            let mut tx = self.pool.begin().await?;
            let guard = LeaseGuard {
                expired: true,
                ..Default::default()
            };
            if let Some(job_id) = lock_lease(&mut tx, task, guard).await? {
                self.end_attempt(&mut tx, task, job_id, AttemptEnd::LeaseExpired, message)
                    .await?;
                tx.commit().await?;
                reaped += 1;
            }
        }
        Ok(reaped)
    }

    /// The transition shared by failures and expiries. The task row is locked by the caller.
    async fn end_attempt(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        task: Uuid,
        job_id: Uuid,
        end: AttemptEnd,
        message: &str,
    ) -> Result<FailureOutcome, StoreError> {
        let row = sqlx::query(
            "SELECT kind, attempt, interruptions, max_attempts, max_interruptions, cancel_requested, \
                    lease_owner, leased_at \
             FROM tasks WHERE id = $1",
        )
        .bind(task)
        .fetch_one(&mut **tx)
        .await?;
        let kind: String = row.try_get("kind")?;
        let attempt: i32 = row.try_get("attempt")?;
        let interruptions: i32 = row.try_get("interruptions")?;
        let max_attempts: i32 = row.try_get("max_attempts")?;
        let max_interruptions: i32 = row.try_get("max_interruptions")?;
        let cancel_requested: bool = row.try_get("cancel_requested")?;
        let owner: Uuid = row.try_get("lease_owner")?;
        let leased_at: DateTime<Utc> = row.try_get("leased_at")?;

        // A "cancelled" report that nobody asked for is an interruption: the task is still
        // wanted, and cancelling its job is the caller's decision, not the worker's.
        let end = match end {
            AttemptEnd::Reported(FailureClass::Cancelled) if !cancel_requested => {
                AttemptEnd::Reported(FailureClass::Interrupted)
            }
            other => other,
        };
        let interrupted = matches!(
            end,
            AttemptEnd::LeaseExpired | AttemptEnd::Reported(FailureClass::Interrupted)
        );
        let interruptions = interruptions + i32::from(interrupted);
        let failures = attempt - interruptions;
        let (next, outcome) = match end {
            _ if cancel_requested => (TaskState::Cancelled, "cancelled"),
            AttemptEnd::Reported(FailureClass::Cancelled) => (TaskState::Cancelled, "cancelled"),
            AttemptEnd::Reported(FailureClass::Fatal) => (TaskState::Failed, "fatal"),
            AttemptEnd::Reported(FailureClass::Retryable) if failures < max_attempts => {
                (TaskState::Available, "retryable")
            }
            AttemptEnd::Reported(FailureClass::Retryable) => (TaskState::Failed, "retryable"),
            AttemptEnd::Reported(FailureClass::Interrupted) | AttemptEnd::LeaseExpired => {
                let outcome = if matches!(end, AttemptEnd::LeaseExpired) {
                    "lease_expired"
                } else {
                    "interrupted"
                };
                if interruptions <= max_interruptions {
                    (TaskState::Available, outcome)
                } else {
                    (TaskState::Failed, outcome)
                }
            }
        };
        let error = Failure::new(
            attempt_reason(end, cancel_requested),
            message,
            [
                ("worker", owner.to_string()),
                ("attempt", attempt.to_string()),
            ],
        );
        // The wait before the task may run again; the time itself is the database's, so that
        // coordinators on hosts with skewed clocks agree on it.
        let wait: Option<f64> = match (next, outcome) {
            (TaskState::Available, "retryable") => Some(
                self.config
                    .retry
                    .backoff(failures.max(1) as u32, &mut rand::rng())
                    .as_secs_f64(),
            ),
            (TaskState::Available, _) => Some(0.0),
            _ => None,
        };
        let run_at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE tasks SET state = $2, interruptions = $3, lease_owner = NULL, \
                 lease_expires_at = NULL, last_error = $4, \
                 run_at = CASE WHEN $5::float8 IS NULL THEN run_at \
                               ELSE now() + make_interval(secs => $5::float8) END, \
                 finished_at = CASE WHEN $2 IN ('failed', 'cancelled') THEN now() END \
             WHERE id = $1 RETURNING run_at",
        )
        .bind(task)
        .bind(next.as_str())
        .bind(interruptions)
        .bind(error.encode())
        .bind(wait)
        .fetch_one(&mut **tx)
        .await?;
        let retry_at = wait.map(|_| run_at);
        sqlx::query(
            "INSERT INTO task_attempts (task_id, attempt, worker_id, started_at, outcome, error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(task)
        .bind(attempt)
        .bind(owner)
        .bind(leased_at)
        .bind(outcome)
        .bind(error.encode())
        .execute(&mut **tx)
        .await?;

        let job_state = lock_job(tx, job_id, None).await?;
        let job_state = match next {
            TaskState::Failed => {
                let why = Failure::task_failed(task, &kind, attempt, &error);
                fail_job(tx, job_id, &why).await?;
                lock_job(tx, job_id, None).await?
            }
            TaskState::Cancelled => settle_cancelling(tx, job_id, Some(job_state)).await?,
            _ => job_state,
        };
        Ok(FailureOutcome {
            job_id,
            task_state: next,
            job_state,
            retry_at,
        })
    }

    /// A completion that matched no leased attempt. If the attempt is still the current lease
    /// but its job is being cancelled, the attempt ends as cancelled; otherwise the caller was
    /// fenced out.
    /// The job of a task whose `attempt` by `worker` has already committed: a completion
    /// replayed after its answer was lost in transit. Answering it as a success makes
    /// completions idempotent, so a worker may retry one without risking that it deletes the
    /// objects of a result that did commit.
    async fn committed_by(
        &self,
        task: Uuid,
        attempt: i32,
        worker: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT t.job_id FROM task_attempts a JOIN tasks t ON t.id = a.task_id \
             WHERE a.task_id = $1 AND a.attempt = $2 AND a.worker_id = $3 \
               AND a.outcome = 'succeeded'",
        )
        .bind(task)
        .bind(attempt)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn refuse_completion(&self, task: Uuid, attempt: i32, worker: Uuid) -> StoreError {
        let cancelled = async {
            let mut tx = self.pool.begin().await?;
            let guard = LeaseGuard {
                holder: Some((attempt, worker)),
                cancel_requested: true,
                expired: false,
            };
            let job_id = lock_lease(&mut tx, task, guard).await?;
            let Some(job_id) = job_id else {
                return Ok::<bool, StoreError>(false);
            };
            self.end_attempt(
                &mut tx,
                task,
                job_id,
                AttemptEnd::Reported(FailureClass::Cancelled),
                "completed after cancellation was requested",
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        };
        match cancelled.await {
            Ok(true) => StoreError::TaskCancelled { task },
            Ok(false) => self.fenced(task, attempt).await,
            Err(e) => e,
        }
    }

    /// Why a call quoting `(task, attempt)` matched nothing.
    pub(crate) async fn fenced(&self, task: Uuid, attempt: i32) -> StoreError {
        let row = sqlx::query("SELECT state, attempt FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_optional(&self.pool)
            .await;
        match row {
            Ok(None) => StoreError::NotFound {
                what: "task",
                id: task.to_string(),
            },
            Ok(Some(row)) => {
                let state = row.try_get::<String, _>("state").map_err(StoreError::from);
                let current: Result<i32, StoreError> =
                    row.try_get("attempt").map_err(StoreError::from);
                match (state.and_then(|s| TaskState::parse(&s)), current) {
                    (Ok(TaskState::Cancelled), _) => StoreError::TaskCancelled { task },
                    (Ok(state), Ok(current_attempt)) => StoreError::Fenced {
                        task,
                        attempt,
                        state,
                        current_attempt,
                    },
                    (Err(e), _) | (_, Err(e)) => e,
                }
            }
            Err(e) => e.into(),
        }
    }
}

/// Which leased task a transition may act on.
#[derive(Clone, Copy, Debug, Default)]
struct LeaseGuard {
    /// The fencing token and holder the caller quotes (`None` for the reaper, which acts on
    /// any holder).
    holder: Option<(i32, Uuid)>,
    /// Only if its job asked it to stop.
    cancel_requested: bool,
    /// Only if its lease has run out.
    expired: bool,
}

/// Locks a leased task for a transition, its job first (the order every multi-row transition
/// uses). Returns the task's job, or `None` when the task no longer matches the guard.
async fn lock_lease(
    tx: &mut Transaction<'_, Postgres>,
    task: Uuid,
    guard: LeaseGuard,
) -> Result<Option<Uuid>, StoreError> {
    let job_id: Option<Uuid> = sqlx::query_scalar("SELECT job_id FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    lock_job(tx, job_id, None).await?;
    let locked: Option<Uuid> = sqlx::query_scalar(
        "SELECT job_id FROM tasks WHERE id = $1 AND state = 'leased' \
           AND ($2::int IS NULL OR attempt = $2) AND ($3::uuid IS NULL OR lease_owner = $3) \
           AND (NOT $4 OR cancel_requested) AND (NOT $5 OR lease_expires_at < now()) \
         FOR UPDATE",
    )
    .bind(task)
    .bind(guard.holder.map(|h| h.0))
    .bind(guard.holder.map(|h| h.1))
    .bind(guard.cancel_requested)
    .bind(guard.expired)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(locked)
}

/// The reason an attempt that did not succeed is recorded with.
fn attempt_reason(end: AttemptEnd, cancel_requested: bool) -> FailureReason {
    match end {
        _ if cancel_requested => FailureReason::Cancelled,
        AttemptEnd::Reported(FailureClass::Cancelled) => FailureReason::Cancelled,
        AttemptEnd::Reported(FailureClass::Fatal) => FailureReason::TaskFatal,
        AttemptEnd::Reported(FailureClass::Retryable) => FailureReason::TaskRetryable,
        AttemptEnd::Reported(FailureClass::Interrupted) => FailureReason::TaskInterrupted,
        AttemptEnd::LeaseExpired => FailureReason::LeaseExpired,
    }
}

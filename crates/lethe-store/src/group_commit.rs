//! Group commit: the completions of many workers (and the claims of their next tasks) in one
//! statement and one commit.
//!
//! Under load, a statement and a commit per completion is most of what the database does:
//! parsing, planning, locking and a WAL flush each time. [`GroupCommit`] queues completions
//! while earlier ones are in flight and sends each queue as one statement, so the batch grows
//! with the load and a lone completion waits for nobody. Every row keeps the guards of
//! [`Store::complete`]: task, attempt and lease holder (fencing), and a completion that does not
//! commit claims nothing.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use lethe_proto::lethe::v1::TaskReport;
use prost::Message;
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::leases::{
    leased_task, runnable_by, ArtifactColumns, CLAIMED_TASKS, FINALIZE_WHEN_AT_MOST,
};
use crate::types::{ArtifactRef, Completion, LeasedTask};
use crate::{seconds, Store, StoreError};

/// One worker's report that an attempt succeeded, as `CompleteTask` carries it.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub task: Uuid,
    pub attempt: i32,
    pub worker: Uuid,
    pub artifacts: Vec<ArtifactRef>,
    pub report: Option<TaskReport>,
    /// Also lease the worker its next task, as [`Store::complete_and_claim`] does.
    pub acquire_next: bool,
}

/// What a completion did: the commit, and the next task when one was asked for and claimed.
pub type CompletionOutcome = Result<(Completion, Option<LeasedTask>), StoreError>;

/// The completions as one statement. `$1`–`$5` are the requests' columns, `$6`–`$11` their
/// artifacts (each row naming its request's ordinal), `$12` how many unfinished siblings to
/// count at most, `$13` the lease in seconds.
///
/// The claims: requests whose completion committed and that asked for a next task are grouped
/// by what their workers can run (device, memory, kinds); each group takes as many available
/// tasks as it has members, in priority order with `SKIP LOCKED`, and hands them out in order.
/// A task that two groups both took (a task both kinds of worker can run) is leased once, to
/// one of them; the other worker gets no task this time and asks again.
static COMPLETE_MANY: LazyLock<String> = LazyLock::new(|| {
    let runnable = runnable_by("s");
    format!(
        "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::bytea[], $5::bool[]) \
                 WITH ORDINALITY AS i(task, attempt, worker, report, acquire, n) \
         ), done AS ( \
             UPDATE tasks t SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL, \
                 finished_at = now(), report = i.report \
             FROM input i \
             WHERE t.id = i.task AND t.attempt = i.attempt AND t.lease_owner = i.worker \
               AND t.state = 'leased' AND NOT t.cancel_requested \
             RETURNING t.id, t.job_id, t.attempt, t.leased_at, i.worker, i.acquire, i.n \
         ), ended AS ( \
             INSERT INTO task_attempts (task_id, attempt, worker_id, started_at, outcome) \
             SELECT id, attempt, worker, leased_at, 'succeeded' FROM done \
         ), stored AS ( \
             INSERT INTO artifacts (id, task_id, attempt, name, uri, sha256, size_bytes) \
             SELECT u.id, done.id, done.attempt, u.name, u.uri, u.sha256, u.size \
             FROM done JOIN UNNEST($6::bigint[], $7::uuid[], $8::text[], $9::text[], \
                                   $10::bytea[], $11::bigint[]) \
                  AS u(n, id, name, uri, sha256, size) ON u.n = done.n \
         ), releases AS ( \
             SELECT d.task_id, count(*) AS finished, min(done.n) AS n \
             FROM task_deps d JOIN done ON done.id = d.depends_on GROUP BY d.task_id \
         ), released AS ( \
             UPDATE tasks t SET unmet_deps = t.unmet_deps - r.finished, \
                 state = CASE WHEN t.unmet_deps = r.finished THEN 'available' ELSE 'blocked' END, \
                 run_at = CASE WHEN t.unmet_deps = r.finished THEN now() ELSE t.run_at END \
             FROM releases r WHERE t.id = r.task_id AND t.state = 'blocked' \
             RETURNING t.state, r.n \
         ), claimers AS ( \
             SELECT done.worker, done.n, w.device, w.memory_bytes, w.kinds, \
                 row_number() OVER (PARTITION BY w.device, w.memory_bytes, w.kinds \
                                    ORDER BY done.n) AS k \
             FROM done JOIN workers w ON w.id = done.worker \
             WHERE done.acquire AND w.state = 'active' \
         ), seen AS ( \
             UPDATE workers SET last_seen_at = now() \
             WHERE id = ANY(ARRAY( \
                 SELECT id FROM workers WHERE id = ANY(ARRAY(SELECT worker FROM claimers)) \
                   AND last_seen_at < now() - interval '5 seconds' FOR UPDATE SKIP LOCKED)) \
         ), signatures AS ( \
             SELECT device, memory_bytes, kinds, count(*) AS wanted FROM claimers \
             GROUP BY device, memory_bytes, kinds \
         ), candidates AS ( \
             SELECT s.device, s.memory_bytes, s.kinds, c.id, \
                 row_number() OVER (PARTITION BY s.device, s.memory_bytes, s.kinds \
                                    ORDER BY c.priority DESC, c.run_at, c.id) AS k \
             FROM signatures s, LATERAL ( \
                 SELECT t.id, t.priority, t.run_at FROM tasks t \
                 WHERE t.state = 'available' AND t.run_at <= now() AND {runnable} \
                 ORDER BY t.priority DESC, t.run_at, t.id \
                 LIMIT s.wanted FOR UPDATE OF t SKIP LOCKED \
             ) c \
         ), claimed AS ( \
             UPDATE tasks t SET state = 'leased', attempt = t.attempt + 1, \
                 lease_owner = cl.worker, lease_expires_at = now() + make_interval(secs => $13), \
                 leased_at = now(), progress_fraction = NULL, progress_message = NULL \
             FROM candidates c JOIN claimers cl USING (device, memory_bytes, kinds, k) \
             WHERE t.id = c.id \
             RETURNING t.id, t.job_id, t.kind, t.spec, t.attempt, t.lease_expires_at, cl.n \
         ), started AS ( \
             UPDATE jobs SET state = 'running', updated_at = now() \
             WHERE id = ANY(ARRAY( \
                 SELECT j.id FROM jobs j WHERE j.id = ANY(ARRAY(SELECT job_id FROM claimed)) \
                   AND j.state = 'queued' FOR UPDATE SKIP LOCKED)) \
         ) \
         SELECT i.n AS item, done.job_id AS completed_job_id, \
             (SELECT count(*) FROM released r WHERE r.n = i.n AND r.state = 'available') \
                 AS released, \
             (SELECT count(*) FROM (SELECT 1 FROM tasks o WHERE o.job_id = done.job_id \
                 AND o.state <> 'succeeded' AND o.id <> ALL(ARRAY(SELECT id FROM done)) \
                 LIMIT $12) AS x) AS others_unfinished, \
             next.* \
         FROM input i LEFT JOIN done ON done.n = i.n \
             LEFT JOIN ({CLAIMED_TASKS}) AS next ON next.n = i.n \
         ORDER BY i.n"
    )
});

impl Store {
    /// Commits every completion in `requests` in one statement, with the claims of those that
    /// ask for a next task; the answers come in the order of the requests. Each answer is what
    /// [`Store::complete_and_claim`] (or [`Store::complete`], without `acquire_next`) would have
    /// given: a completion that does not commit is checked on its own (a replay succeeds, a
    /// fenced one is refused), and if the statement as a whole fails (two artifacts of one
    /// request share a name, or it deadlocked with another batch) every request is tried alone.
    pub async fn complete_many(&self, requests: &[CompletionRequest]) -> Vec<CompletionOutcome> {
        let rows = match requests.len() {
            0 | 1 => None,
            _ => self
                .complete_many_statement(requests)
                .await
                .ok()
                .filter(|rows| rows.len() == requests.len()),
        };
        let Some(rows) = rows else {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(self.complete_one(request).await);
            }
            return outcomes;
        };
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut committed = Vec::with_capacity(requests.len());
        for (request, row) in requests.iter().zip(&rows) {
            let (outcome, job) = self.batched_outcome(request, row).await;
            outcomes.push(outcome);
            committed.push(job);
        }
        // A job is finalised once, by its first completion in the batch, which reports it; as
        // with one completion, a failure here is that completion's error (the tasks committed,
        // a retry replays, and maintenance finalises the job meanwhile).
        let mut seen = HashSet::new();
        for (outcome, job) in outcomes.iter_mut().zip(committed) {
            let Some((job_id, may_be_done)) = job else {
                continue;
            };
            if !seen.insert(job_id) || !may_be_done {
                continue;
            }
            match self.finalize_job(job_id).await {
                Ok(done) => {
                    if let Ok((completion, _)) = outcome {
                        completion.job_done = done;
                    }
                }
                Err(error) => *outcome = Err(error),
            }
        }
        outcomes
    }

    async fn complete_one(&self, request: &CompletionRequest) -> CompletionOutcome {
        let (task, attempt, worker) = (request.task, request.attempt, request.worker);
        let (artifacts, report) = (&request.artifacts, request.report.as_ref());
        if request.acquire_next {
            self.complete_and_claim(task, attempt, worker, artifacts, report)
                .await
        } else {
            let completion = self
                .complete(task, attempt, worker, artifacts, report)
                .await?;
            Ok((completion, None))
        }
    }

    async fn complete_many_statement(
        &self,
        requests: &[CompletionRequest],
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let tasks: Vec<Uuid> = requests.iter().map(|r| r.task).collect();
        let attempts: Vec<i32> = requests.iter().map(|r| r.attempt).collect();
        let workers: Vec<Uuid> = requests.iter().map(|r| r.worker).collect();
        let reports: Vec<Option<Vec<u8>>> = requests
            .iter()
            .map(|r| r.report.as_ref().map(Message::encode_to_vec))
            .collect();
        let acquire: Vec<bool> = requests.iter().map(|r| r.acquire_next).collect();
        let ordinals: Vec<i64> = requests
            .iter()
            .enumerate()
            .flat_map(|(index, r)| r.artifacts.iter().map(move |_| index as i64 + 1))
            .collect();
        let artifacts = ArtifactColumns::new(requests.iter().flat_map(|r| &r.artifacts));
        let query = sqlx::query(&COMPLETE_MANY)
            .bind(&tasks)
            .bind(&attempts)
            .bind(&workers)
            .bind(&reports)
            .bind(&acquire)
            .bind(&ordinals);
        artifacts
            .bind(query)
            .bind(FINALIZE_WHEN_AT_MOST + 1)
            .bind(seconds(self.config.lease))
            .fetch_all(&self.pool)
            .await
    }

    /// One request's answer from its row of [`COMPLETE_MANY`] (before job finalisation), and,
    /// if it committed there, its job and whether that job may now be done.
    async fn batched_outcome(
        &self,
        request: &CompletionRequest,
        row: &PgRow,
    ) -> (CompletionOutcome, Option<(Uuid, bool)>) {
        let job_id = match row.try_get::<Option<Uuid>, _>("completed_job_id") {
            Ok(Some(job_id)) => job_id,
            Ok(None) => {
                // Not committed here: a replay of a committed completion, or refused.
                let (task, attempt, worker) = (request.task, request.attempt, request.worker);
                let completion = self
                    .completed(Ok(None), task, attempt, worker, &request.artifacts)
                    .await;
                return (completion.map(|completion| (completion, None)), None);
            }
            Err(error) => return (Err(error.into()), None),
        };
        let parsed = || -> Result<_, sqlx::Error> {
            let next = match row.try_get::<Option<Uuid>, _>("id")? {
                Some(_) => Some(leased_task(row)?),
                None => None,
            };
            let completion = Completion {
                job_id,
                job_done: false,
                tasks_released: row.try_get("released")?,
            };
            let others: i64 = row.try_get("others_unfinished")?;
            Ok(((completion, next), others <= FINALIZE_WHEN_AT_MOST))
        };
        match parsed() {
            Ok((outcome, may_be_done)) => (Ok(outcome), Some((job_id, may_be_done))),
            // The completion committed: the job still needs its finalisation check.
            Err(error) => (Err(error.into()), Some((job_id, true))),
        }
    }
}

/// How far [`GroupCommit`] batches.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitLimits {
    /// The most completions in one statement.
    pub max_batch: usize,
    /// The most statements in flight at once; completions that arrive meanwhile wait and go
    /// together in the next one.
    pub in_flight: usize,
}

impl Default for GroupCommitLimits {
    fn default() -> Self {
        GroupCommitLimits {
            max_batch: 64,
            in_flight: 4,
        }
    }
}

struct Pending {
    request: CompletionRequest,
    reply: oneshot::Sender<CompletionOutcome>,
}

/// A queue in front of [`Store::complete_many`] that many tasks can complete through at once.
/// Cloning it shares the queue. The batching task ends when the last clone is dropped, after
/// the statements in flight.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the batching task on the current Tokio runtime.
    pub fn start(store: Store, limits: GroupCommitLimits) -> Self {
        Self::start_observed(store, limits, |_| {})
    }

    /// As [`GroupCommit::start`], and calls `on_statement` with the number of completions in
    /// each statement as it is sent: how well the queue batches is what operators tune its
    /// limits by.
    pub fn start_observed(
        store: Store,
        limits: GroupCommitLimits,
        on_statement: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        let max_batch = limits.max_batch.max(1);
        let (queue, mut receiver) = mpsc::channel::<Pending>(max_batch * limits.in_flight.max(1));
        let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                // Whatever queued while the slot was busy goes in this statement.
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                on_statement(batch.len());
                let store = store.clone();
                tokio::spawn(async move {
                    let (requests, replies): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .map(|pending| (pending.request, pending.reply))
                        .unzip();
                    let outcomes = store.complete_many(&requests).await;
                    drop(slot);
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        // A caller that went away learns nothing; a retry of it replays.
                        let _ = reply.send(outcome);
                    }
                });
            }
        });
        GroupCommit { queue }
    }

    /// Completes one attempt (and claims the worker's next task if asked), in the next batch.
    pub async fn complete(&self, request: CompletionRequest) -> CompletionOutcome {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Database(sqlx::Error::PoolClosed);
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

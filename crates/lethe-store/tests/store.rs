//! The store against a real PostgreSQL cluster that the test starts (initdb + pg_ctl): claims,
//! leases, fencing, retries, cancellation, idempotency, pagination and the task graph.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_proto::lethe::v1::{FailureReason, NoopReport, TaskReport};
use lethe_store::sqlx;
use lethe_store::{
    ArtifactRef, CompletionRequest, Device, FailureClass, GroupCommit, GroupCommitLimits,
    JobFilter, JobKind, JobState, LocalCluster, NewJob, NewTask, NewWorker, RetryPolicy, Store,
    StoreConfig, StoreError, TaskProgress, TaskState,
};
use serde_json::json;
use uuid::Uuid;

fn cluster() -> &'static LocalCluster {
    LocalCluster::shared().expect("start PostgreSQL")
}

/// A store on a fresh database of the shared cluster.
async fn store_with(config: StoreConfig) -> Store {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let url = tokio::task::spawn_blocking(move || cluster().create_database(&name))
        .await
        .unwrap()
        .expect("create database");
    Store::connect(&url, config).await.expect("connect")
}

async fn store() -> Store {
    store_with(StoreConfig::default()).await
}

async fn worker(store: &Store, name: &str) -> Uuid {
    worker_with(store, name, Device::Cpu, 1 << 34).await
}

async fn worker_with(store: &Store, name: &str, device: Device, memory_bytes: i64) -> Uuid {
    let new = NewWorker {
        name: name.into(),
        device,
        memory_bytes,
        slots: 1,
        version: "test".into(),
        kinds: Vec::new(),
        credential_id: None,
    };
    store.register_worker(&new).await.unwrap()
}

fn job(tenant: &str, tasks: Vec<NewTask>) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        kind: JobKind::Noop,
        request_id: None,
        spec: json!({"tasks": tasks.len()}),
        priority: 0,
        deadline: None,
        tasks,
        admission: None,
    }
}

fn noop_tasks(n: usize) -> Vec<NewTask> {
    (0..n)
        .map(|i| NewTask::new("noop", json!({ "i": i })))
        .collect()
}

fn artifact(name: &str) -> ArtifactRef {
    ArtifactRef {
        name: name.into(),
        uri: format!("file:///tmp/{name}"),
        sha256: [7; 32],
        size_bytes: 3,
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_task() {
    let store = store().await;
    for _ in 0..4 {
        store
            .create_job(&job("acme", noop_tasks(100)))
            .await
            .unwrap();
    }
    let mut claimers = Vec::new();
    for c in 0..8 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let me = worker(&store, &format!("w{c}")).await;
            let mut mine = Vec::new();
            loop {
                let batch = store.claim(me, 1 + (c % 3) as i64).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                for task in batch {
                    assert_eq!(task.attempt, 1);
                    store
                        .complete(task.id, task.attempt, me, &[], None)
                        .await
                        .unwrap();
                    mine.push(task.id);
                }
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "task {id} was claimed twice");
        }
    }
    assert_eq!(total, 400);
    let page = store
        .list_jobs("acme", &JobFilter::default(), 10, None)
        .await
        .unwrap();
    assert!(page.items.iter().all(|j| j.state == JobState::Succeeded));
}

#[tokio::test]
async fn an_expired_lease_is_leased_again_and_the_stale_worker_is_fenced_out() {
    let config = StoreConfig {
        lease: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    let store = store_with(config).await;
    let (job, _) = store.create_job(&job("acme", noop_tasks(1))).await.unwrap();
    let (stale, fresh) = (worker(&store, "stale").await, worker(&store, "fresh").await);
    let first = store.claim(stale, 1).await.unwrap().remove(0);
    assert_eq!(first.attempt, 1);
    // A heartbeat renews the lease; without one it runs out and the reaper takes it back.
    store
        .heartbeat(
            first.id,
            1,
            stale,
            Some(&TaskProgress {
                fraction: 0.5,
                message: "half".into(),
            }),
        )
        .await
        .unwrap();
    let graph = store.job_graph(Some("acme"), job.id).await.unwrap();
    assert_eq!(
        graph.tasks[0].progress,
        Some(TaskProgress {
            fraction: 0.5,
            message: "half".into(),
        }),
        "the heartbeat's progress is read back as it was sent"
    );
    assert_eq!(store.reap_expired_leases(100).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.reap_expired_leases(100).await.unwrap(), 1);

    let second = store.claim(fresh, 1).await.unwrap().remove(0);
    assert_eq!((second.id, second.attempt), (first.id, 2));

    let refused = store
        .complete(first.id, 1, stale, &[artifact("model")], None)
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Fenced {
                attempt: 1,
                current_attempt: 2,
                state: TaskState::Leased,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(matches!(
        store.heartbeat(first.id, 1, stale, None).await,
        Err(StoreError::Fenced { .. })
    ));
    let fail = store
        .fail(first.id, 1, stale, FailureClass::Fatal, "stopped")
        .await;
    assert!(matches!(fail, Err(StoreError::Fenced { .. })), "{fail:?}");
    // The same attempt number from another worker is fenced out too.
    assert!(matches!(
        store.complete(first.id, 2, stale, &[], None).await,
        Err(StoreError::Fenced { .. })
    ));

    let done = store
        .complete(
            second.id,
            2,
            fresh,
            &[artifact("model")],
            Some(&noop_report(1.0)),
        )
        .await
        .unwrap();
    assert!(done.job_done);
    let tasks = store.job_tasks("acme", job.id).await.unwrap();
    assert_eq!(tasks[0].state, TaskState::Succeeded);
    assert_eq!(
        tasks[0].interruptions, 1,
        "an expired lease is an interruption, not a failure"
    );
    // A completion replayed by the worker whose attempt committed (its answer was lost)
    // succeeds again and commits nothing twice; anyone else's is fenced.
    let replay = store
        .complete(second.id, 2, fresh, &[artifact("model")], None)
        .await
        .unwrap();
    assert_eq!((replay.job_id, replay.job_done), (job.id, false));
    assert!(matches!(
        store.complete(second.id, 2, stale, &[], None).await,
        Err(StoreError::Fenced { .. })
    ));
    let artifacts: i64 = sqlx::query_scalar("SELECT count(*) FROM artifacts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(artifacts, 1);
    let outcomes: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT attempt, outcome FROM task_attempts WHERE task_id = $1 ORDER BY attempt",
    )
    .bind(first.id)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec![
            (1, Some("lease_expired".into())),
            (2, Some("succeeded".into()))
        ]
    );
    assert_eq!(
        reported(&store, job.id).await,
        vec![Some(noop_report(1.0))],
        "the attempt that committed is the one whose report is kept"
    );
}

#[tokio::test]
async fn retryable_failures_back_off_then_fail_the_job() {
    let retry = RetryPolicy {
        initial: Duration::from_millis(200),
        multiplier: 2.0,
        max: Duration::from_secs(5),
    };
    let store = store_with(StoreConfig {
        retry,
        ..StoreConfig::default()
    })
    .await;
    let mut task = NewTask::new("flaky", json!({}));
    task.max_attempts = 2;
    let (job, _) = store
        .create_job(&job("acme", vec![task, NewTask::new("noop", json!({}))]))
        .await
        .unwrap();
    let me = worker(&store, "w").await;
    // Claim the flaky task (the other is claimed and left leased).
    let claimed = store.claim(me, 2).await.unwrap();
    let flaky = claimed.iter().find(|t| t.kind == "flaky").unwrap().clone();
    let other = claimed.iter().find(|t| t.kind == "noop").unwrap().clone();

    let outcome = store
        .fail(flaky.id, 1, me, FailureClass::Retryable, "disk full")
        .await
        .unwrap();
    assert_eq!(outcome.task_state, TaskState::Available);
    assert_eq!(outcome.job_state, JobState::Running);
    // The attempt ended at the transaction's now(), the retry is due that plus the backoff:
    // within [nominal / 2, nominal] of 200 ms.
    let ended: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT ended_at FROM task_attempts WHERE task_id = $1 AND attempt = 1")
            .bind(flaky.id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    let wait = (outcome.retry_at.unwrap() - ended).to_std().unwrap();
    assert!(
        wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200),
        "{wait:?}"
    );
    // Not claimable during the backoff, claimable after it, with the next attempt.
    assert!(store.claim(me, 1).await.unwrap().is_empty());
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let again = store.claim(me, 1).await.unwrap().remove(0);
    assert_eq!((again.id, again.attempt), (flaky.id, 2));

    // The second failure spends the last attempt: the task and its job fail, and the job's
    // other running task is asked to stop.
    let outcome = store
        .fail(flaky.id, 2, me, FailureClass::Retryable, "disk full")
        .await
        .unwrap();
    assert_eq!(
        (outcome.task_state, outcome.job_state),
        (TaskState::Failed, JobState::Failed)
    );
    let failed = store.get_job("acme", job.id).await.unwrap();
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error.reason(), FailureReason::TaskFailed);
    assert!(error.message().contains("disk full"), "{}", error.message());
    assert!(
        store
            .heartbeat(other.id, 1, me, None)
            .await
            .unwrap()
            .cancel_requested
    );
}

#[tokio::test]
async fn interruptions_do_not_spend_attempts_but_are_capped() {
    let store = store().await;
    let mut task = NewTask::new("noop", json!({}));
    task.max_attempts = 1;
    task.max_interruptions = 2;
    let (job, _) = store.create_job(&job("acme", vec![task])).await.unwrap();
    let me = worker(&store, "w").await;
    for attempt in 1..=3 {
        let leased = store.claim(me, 1).await.unwrap().remove(0);
        assert_eq!(leased.attempt, attempt);
        let outcome = store
            .fail(leased.id, attempt, me, FailureClass::Interrupted, "stopped")
            .await
            .unwrap();
        let expected = if attempt <= 2 {
            TaskState::Available
        } else {
            TaskState::Failed
        };
        assert_eq!(outcome.task_state, expected, "attempt {attempt}");
    }
    assert_eq!(
        store.get_job("acme", job.id).await.unwrap().state,
        JobState::Failed
    );
}

#[tokio::test]
async fn cancellation_ends_queued_tasks_now_and_running_ones_through_the_heartbeat() {
    let store = store().await;
    // A job nobody claimed yet is cancelled at once.
    let (queued, _) = store.create_job(&job("acme", noop_tasks(3))).await.unwrap();
    let me = worker(&store, "w").await;
    let cancelled = store.cancel_job("acme", queued.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert!(
        store.claim(me, 10).await.unwrap().is_empty(),
        "cancelled tasks are not claimable"
    );

    // A running job waits for its leased tasks to stop.
    let (running, _) = store.create_job(&job("acme", noop_tasks(3))).await.unwrap();
    let leased = store.claim(me, 2).await.unwrap();
    assert_eq!(leased.len(), 2);
    let cancelling = store.cancel_job("acme", running.id).await.unwrap();
    assert_eq!(cancelling.state, JobState::Cancelling);
    let counts = store.task_counts(running.id).await.unwrap();
    assert_eq!((counts.cancelled, counts.leased), (1, 2));
    let renewal = store.heartbeat(leased[0].id, 1, me, None).await.unwrap();
    assert!(renewal.cancel_requested);
    // One worker acknowledges; the other tries to complete anyway and is told it was cancelled.
    let first = store
        .fail(leased[0].id, 1, me, FailureClass::Cancelled, "stopped")
        .await
        .unwrap();
    assert_eq!(
        (first.task_state, first.job_state),
        (TaskState::Cancelled, JobState::Cancelling)
    );
    let refused = store
        .complete(leased[1].id, 1, me, &[artifact("x")], None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::TaskCancelled { .. })),
        "{refused:?}"
    );
    let job = store.get_job("acme", running.id).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    // Cancelling again is a no-op, and another tenant cannot cancel or see the job.
    assert_eq!(
        store.cancel_job("acme", running.id).await.unwrap().state,
        JobState::Cancelled
    );
    assert!(matches!(
        store.cancel_job("other", running.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_job("other", running.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn create_is_idempotent_per_tenant_request_id() {
    let store = store().await;
    let mut request = job("acme", noop_tasks(2));
    request.request_id = Some("delete-42".into());
    let (first, created) = store.create_job(&request).await.unwrap();
    assert!(created);
    let (again, created) = store.create_job(&request).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    assert_eq!(
        store.task_counts(first.id).await.unwrap().available,
        2,
        "no second set of tasks"
    );

    let mut different = request.clone();
    different.spec = json!({"forget": [1, 2, 3]});
    assert!(matches!(
        store.create_job(&different).await,
        Err(StoreError::IdempotencyConflict { .. })
    ));

    let mut other_tenant = request.clone();
    other_tenant.tenant = "globex".into();
    let (theirs, created) = store.create_job(&other_tenant).await.unwrap();
    assert!(created && theirs.id != first.id);

    // Racing creates with one key make one job.
    request.request_id = Some("race".into());
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, request) = (store.clone(), request.clone());
            tokio::spawn(async move { store.create_job(&request).await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut creations = 0;
    for racer in racers {
        let (job, created) = racer.await.unwrap();
        ids.insert(job.id);
        creations += usize::from(created);
    }
    assert_eq!((ids.len(), creations), (1, 1));
}

#[tokio::test]
async fn listing_pages_through_every_job_once_newest_first() {
    let store = store().await;
    let mut created = Vec::new();
    for _ in 0..25 {
        created.push(
            store
                .create_job(&job("acme", noop_tasks(1)))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    store
        .create_job(&job("globex", noop_tasks(1)))
        .await
        .unwrap();
    store.cancel_job("acme", created[3]).await.unwrap();

    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_jobs("acme", &JobFilter::default(), 10, after)
            .await
            .unwrap();
        pages += 1;
        listed.extend(page.items.iter().map(|j| j.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(
        listed, created,
        "every job once, newest first, none of another tenant's"
    );

    let filter = JobFilter {
        state: Some(JobState::Cancelled),
        ..JobFilter::default()
    };
    let cancelled = store.list_jobs("acme", &filter, 10, None).await.unwrap();
    assert_eq!(cancelled.items.len(), 1);
    assert!(cancelled.next.is_none());
}

#[tokio::test]
async fn a_task_graph_runs_in_dependency_order_and_each_task_keeps_its_report() {
    let store = store().await;
    // Two shards fan in to a reduce, then a final step.
    let tasks = vec![
        NewTask::new("shard", json!({})),
        NewTask::new("shard", json!({})),
        NewTask::new("reduce", json!({})).after([0, 1]),
        NewTask::new("final", json!({})).after([2]),
    ];
    let (job, _) = store.create_job(&job("acme", tasks)).await.unwrap();
    let me = worker(&store, "w").await;
    let shards = store.claim(me, 10).await.unwrap();
    assert_eq!(
        shards.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(),
        ["shard", "shard"]
    );
    let first = store
        .complete(shards[0].id, 1, me, &[artifact("part")], None)
        .await
        .unwrap();
    assert_eq!((first.tasks_released, first.job_done), (0, false));
    assert!(
        store.claim(me, 10).await.unwrap().is_empty(),
        "reduce waits for both shards"
    );
    let second = store
        .complete(shards[1].id, 1, me, &[artifact("part")], None)
        .await
        .unwrap();
    assert_eq!(second.tasks_released, 1);
    let reduce = store.claim(me, 10).await.unwrap().remove(0);
    assert_eq!(reduce.kind, "reduce");
    store.complete(reduce.id, 1, me, &[], None).await.unwrap();
    let last = store.claim(me, 10).await.unwrap().remove(0);
    let done = store
        .complete(
            last.id,
            1,
            me,
            &[artifact("model")],
            Some(&noop_report(2.0)),
        )
        .await
        .unwrap();
    assert!(done.job_done);
    let job = store.get_job("acme", job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        reported(&store, job.id).await,
        vec![None, None, None, Some(noop_report(2.0))],
        "each task keeps the report it sent, and only that"
    );
    let tasks = store.job_tasks("acme", job.id).await.unwrap();
    assert_eq!(tasks[2].depends_on.len(), 2);
}

#[tokio::test]
async fn claims_respect_capabilities_and_priority() {
    let store = store().await;
    let mut gpu = NewTask::new("gpu", json!({}));
    gpu.requires_device = Some(Device::Cuda);
    let mut big = NewTask::new("big", json!({}));
    big.min_memory_bytes = 1 << 40;
    store
        .create_job(&job("acme", vec![gpu, big]))
        .await
        .unwrap();
    let mut low = job("acme", noop_tasks(1));
    low.priority = -5;
    let mut high = job("acme", noop_tasks(1));
    high.priority = 50;
    let (low, _) = store.create_job(&low).await.unwrap();
    let (high, _) = store.create_job(&high).await.unwrap();
    let me = worker(&store, "w").await;
    let first = store.claim(me, 1).await.unwrap().remove(0);
    assert_eq!(first.job_id, high.id, "the most urgent job first");
    let second = store.claim(me, 10).await.unwrap();
    assert_eq!(
        second.iter().map(|t| t.job_id).collect::<Vec<_>>(),
        vec![low.id],
        "no GPU or 1 TiB task on this CPU worker"
    );
    let gpu_worker = worker_with(&store, "gpu", Device::Cuda, 1 << 41).await;
    let rest = store.claim(gpu_worker, 10).await.unwrap();
    assert_eq!(rest.len(), 2);
}

#[tokio::test]
async fn a_fatal_failure_fails_the_job_and_stops_its_other_tasks() {
    let store = store().await;
    let tasks = vec![
        NewTask::new("a", json!({})),
        NewTask::new("b", json!({})),
        NewTask::new("c", json!({})).after([0, 1]),
    ];
    let (job, _) = store.create_job(&job("acme", tasks)).await.unwrap();
    let me = worker(&store, "w").await;
    let leased = store.claim(me, 2).await.unwrap();
    let outcome = store
        .fail(leased[0].id, 1, me, FailureClass::Fatal, "bad checkpoint")
        .await
        .unwrap();
    assert_eq!(
        (outcome.task_state, outcome.job_state),
        (TaskState::Failed, JobState::Failed)
    );
    let counts = store.task_counts(job.id).await.unwrap();
    assert_eq!((counts.failed, counts.leased, counts.cancelled), (1, 1, 1));
    assert!(
        store
            .heartbeat(leased[1].id, 1, me, None)
            .await
            .unwrap()
            .cancel_requested
    );
    // The straggler's late completion does not revive the job.
    assert!(store
        .complete(leased[1].id, 1, me, &[], None)
        .await
        .is_err());
    assert_eq!(
        store.get_job("acme", job.id).await.unwrap().state,
        JobState::Failed
    );
}

#[tokio::test]
async fn deadlines_fail_unfinished_jobs() {
    let store = store().await;
    let mut late = job("acme", noop_tasks(2));
    late.deadline = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    let (late, _) = store.create_job(&late).await.unwrap();
    let mut on_time = job("acme", noop_tasks(1));
    on_time.deadline = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    let (on_time, _) = store.create_job(&on_time).await.unwrap();
    assert_eq!(store.expire_deadlines(100).await.unwrap(), 1);
    let late = store.get_job("acme", late.id).await.unwrap();
    assert_eq!(late.state, JobState::Failed);
    assert_eq!(
        late.error.unwrap().reason(),
        FailureReason::DeadlineExceeded
    );
    assert_eq!(
        store.get_job("acme", on_time.id).await.unwrap().state,
        JobState::Queued
    );
}

#[tokio::test]
async fn a_draining_worker_hands_its_tasks_back() {
    let store = store().await;
    store.create_job(&job("acme", noop_tasks(2))).await.unwrap();
    let (leaving, staying) = (
        worker(&store, "leaving").await,
        worker(&store, "staying").await,
    );
    assert_eq!(store.claim(leaving, 2).await.unwrap().len(), 2);
    assert_eq!(store.drain_worker(leaving, true).await.unwrap(), 2);
    assert!(
        !store.touch_worker(leaving).await.unwrap(),
        "a draining worker takes no new work"
    );
    let retaken = store.claim(staying, 2).await.unwrap();
    assert!(retaken.iter().all(|t| t.attempt == 2));
}

#[tokio::test]
async fn invalid_jobs_are_refused_without_writing_anything() {
    let store = store().await;
    let bad = [
        job("acme", vec![]),
        job("", noop_tasks(1)),
        job("acme", vec![NewTask::new("a", json!({})).after([0])]),
        job(
            "acme",
            vec![
                NewTask::new("a", json!({})),
                NewTask::new("b", json!({})).after([5]),
            ],
        ),
        NewJob {
            priority: 1000,
            ..job("acme", noop_tasks(1))
        },
    ];
    for request in &bad {
        assert!(matches!(
            store.create_job(request).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    let me = worker(&store, "w").await;
    store.create_job(&job("acme", noop_tasks(1))).await.unwrap();
    let task = store.claim(me, 1).await.unwrap().remove(0);
    let duplicate_names = store
        .complete(task.id, 1, me, &[artifact("x"), artifact("x")], None)
        .await;
    assert!(
        matches!(duplicate_names, Err(StoreError::InvalidArgument(_))),
        "{duplicate_names:?}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    // The refused completion left the lease in place, and a correct one still commits.
    store
        .complete(task.id, 1, me, &[artifact("x")], None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_job_whose_finalisation_was_lost_is_finalised_by_the_sweep() {
    let store = store().await;
    let (job, _) = store.create_job(&job("acme", noop_tasks(2))).await.unwrap();
    let me = worker(&store, "w").await;
    for task in store.claim(me, 2).await.unwrap() {
        store
            .complete(task.id, 1, me, &[], Some(&noop_report(3.0)))
            .await
            .unwrap();
    }
    // Simulate a coordinator that died between a completion and its finalisation.
    sqlx::query("UPDATE jobs SET state = 'running', finished_at = NULL WHERE id = $1")
        .bind(job.id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.finalize_finished_jobs(100).await.unwrap(), 1);
    let job = store.get_job("acme", job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        reported(&store, job.id).await,
        vec![Some(noop_report(3.0)), Some(noop_report(3.0))]
    );
    assert_eq!(
        store.finalize_finished_jobs(100).await.unwrap(),
        0,
        "only once"
    );
}

#[tokio::test]
async fn a_cancellation_nobody_asked_for_is_an_interruption() {
    let store = store().await;
    let (job, _) = store.create_job(&job("acme", noop_tasks(2))).await.unwrap();
    let me = worker(&store, "w").await;
    let task = store.claim(me, 1).await.unwrap().remove(0);
    let outcome = store
        .fail(task.id, 1, me, FailureClass::Cancelled, "stopped")
        .await
        .unwrap();
    assert_eq!(
        (outcome.task_state, outcome.job_state),
        (TaskState::Available, JobState::Running)
    );
    let counts = store.task_counts(job.id).await.unwrap();
    assert_eq!(
        (counts.available, counts.cancelled),
        (2, 0),
        "the job and its other task go on"
    );
}

#[tokio::test]
async fn a_worker_only_leases_the_kinds_it_runs() {
    let store = store().await;
    let tasks = vec![
        NewTask::new("retrain", json!({})),
        NewTask::new("noop", json!({})),
    ];
    store.create_job(&job("acme", tasks)).await.unwrap();
    let noop_only = store
        .register_worker(&NewWorker {
            name: "noop-only".into(),
            device: Device::Cpu,
            memory_bytes: 1 << 34,
            slots: 1,
            version: "test".into(),
            kinds: vec!["noop".into()],
            credential_id: None,
        })
        .await
        .unwrap();
    let claimed = store.claim(noop_only, 10).await.unwrap();
    let kinds: Vec<&str> = claimed.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(kinds, ["noop"]);
    let any = worker(&store, "any").await;
    let claimed = store.claim(any, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].kind, "retrain");
}

#[tokio::test]
async fn a_completion_claims_the_next_task_only_when_it_commits() {
    let store = store().await;
    let (job, _) = store.create_job(&job("acme", noop_tasks(3))).await.unwrap();
    let (mine, theirs) = (worker(&store, "mine").await, worker(&store, "theirs").await);
    let first = store.claim(mine, 1).await.unwrap().remove(0);

    let (completion, next) = store
        .complete_and_claim(first.id, 1, mine, &[artifact("model")], None)
        .await
        .unwrap();
    assert_eq!((completion.job_id, completion.job_done), (job.id, false));
    let next = next.expect("a task was available");
    assert_ne!(next.id, first.id);
    assert_eq!((next.attempt, next.tenant.as_str()), (1, "acme"));
    let tasks = store.job_tasks("acme", job.id).await.unwrap();
    let state = |id: Uuid| tasks.iter().find(|t| t.id == id).unwrap().state;
    assert_eq!(state(first.id), TaskState::Succeeded);
    assert_eq!(state(next.id), TaskState::Leased);

    // A replay commits nothing and claims nothing; a fenced completion claims nothing either.
    let (replay, claimed) = store
        .complete_and_claim(first.id, 1, mine, &[artifact("model")], None)
        .await
        .unwrap();
    assert_eq!((replay.job_id, claimed.map(|t| t.id)), (job.id, None));
    let fenced = store
        .complete_and_claim(next.id, 1, theirs, &[], None)
        .await;
    assert!(
        matches!(fenced, Err(StoreError::Fenced { .. })),
        "{fenced:?}"
    );
    assert_eq!(
        store.claim(theirs, 1).await.unwrap().len(),
        1,
        "the last task was left"
    );

    // With nothing left to claim, the completion still commits and finishes the job.
    let (completion, none) = store
        .complete_and_claim(next.id, 1, mine, &[], None)
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(!completion.job_done, "theirs is still running");
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'leased'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(leased, 1);
}

fn request(task: Uuid, worker: Uuid, acquire_next: bool) -> CompletionRequest {
    CompletionRequest {
        task,
        attempt: 1,
        worker,
        artifacts: Vec::new(),
        report: None,
        acquire_next,
    }
}

#[tokio::test]
async fn a_batch_of_completions_keeps_every_guard_of_one_completion() {
    let store = store().await;
    let mut graph = job(
        "acme",
        vec![
            NewTask::new("shard", json!({})),
            NewTask::new("shard", json!({})),
            NewTask::new("reduce", json!({})).after([0, 1]),
        ],
    );
    graph.priority = 10;
    let (graph, _) = store.create_job(&graph).await.unwrap();
    let (noop, _) = store.create_job(&job("acme", noop_tasks(4))).await.unwrap();
    let (cpu1, cpu2) = (worker(&store, "cpu1").await, worker(&store, "cpu2").await);
    let gpu = worker_with(&store, "gpu", Device::Cuda, 1 << 40).await;

    let shards = store.claim(cpu1, 2).await.unwrap();
    assert!(shards.iter().all(|t| t.kind == "shard"));
    let replayed = store.claim(cpu2, 1).await.unwrap().remove(0);
    store
        .complete(replayed.id, 1, cpu2, &[], None)
        .await
        .unwrap();
    let mine = store.claim(cpu2, 1).await.unwrap().remove(0);
    let theirs = store.claim(gpu, 1).await.unwrap().remove(0);
    assert_eq!((mine.job_id, theirs.job_id), (noop.id, noop.id));
    // Only the GPU worker can run this one, and it comes first in its order.
    let mut gpu_task = NewTask::new("gpu", json!({}));
    gpu_task.requires_device = Some(Device::Cuda);
    let mut gpu_job = job("acme", vec![gpu_task]);
    gpu_job.priority = 5;
    let (gpu_job, _) = store.create_job(&gpu_job).await.unwrap();

    let mut first = request(shards[0].id, cpu1, false);
    first.artifacts = vec![artifact("part")];
    let mut second = request(shards[1].id, cpu1, true);
    second.artifacts = vec![artifact("part"), artifact("log")];
    let outcomes = store
        .complete_many(&[
            first,
            second,
            request(mine.id, cpu2, true),
            request(theirs.id, gpu, true),
            request(theirs.id, cpu2, true),
            request(replayed.id, cpu2, true),
        ])
        .await;

    let next = |i: usize| match &outcomes[i] {
        Ok((_, next)) => next.as_ref().map(|t| (t.job_id, t.kind.clone())),
        Err(e) => panic!("request {i} failed: {e}"),
    };
    // The two CPU workers asking share one noop task: the first in the batch gets it.
    assert_eq!(next(0), None, "no next task was asked for");
    assert_eq!(next(1), Some((noop.id, "noop".to_owned())));
    assert_eq!(
        next(2),
        None,
        "the only CPU task left went to the request before"
    );
    assert_eq!(next(3), Some((gpu_job.id, "gpu".to_owned())));
    assert!(
        matches!(outcomes[4], Err(StoreError::Fenced { .. })),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(next(5), None, "a replay commits and claims nothing");
    let released: i64 = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .map(|(c, _)| c.tasks_released)
        .sum();
    assert_eq!(released, 1, "the reduce, released once by its two shards");
    let reduce = store.claim(cpu1, 5).await.unwrap();
    assert_eq!(
        reduce.iter().map(|t| t.job_id).collect::<Vec<_>>(),
        vec![graph.id]
    );
    let count = |sql: &'static str, tasks: Vec<Uuid>| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(tasks)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let shard_ids = vec![shards[0].id, shards[1].id];
    assert_eq!(
        count(
            "SELECT count(*) FROM artifacts WHERE task_id = ANY($1)",
            shard_ids.clone()
        )
        .await,
        3
    );
    let committed = vec![shards[0].id, shards[1].id, mine.id, theirs.id, replayed.id];
    assert_eq!(
        count(
            "SELECT count(*) FROM task_attempts WHERE task_id = ANY($1) AND outcome = 'succeeded'",
            committed
        )
        .await,
        5,
        "one attempt record per committed completion, none for the replay or the fenced one"
    );
}

#[tokio::test]
async fn a_batch_that_ends_a_job_finalises_it_once_and_isolates_a_bad_request() {
    let store = store().await;
    let (finishing, _) = store.create_job(&job("acme", noop_tasks(2))).await.unwrap();
    let (other, _) = store.create_job(&job("acme", noop_tasks(2))).await.unwrap();
    let (a, b) = (worker(&store, "a").await, worker(&store, "b").await);
    let tasks = [
        store.claim(a, 1).await.unwrap().remove(0),
        store.claim(b, 1).await.unwrap().remove(0),
    ];
    assert!(tasks.iter().all(|t| t.job_id == finishing.id));
    let outcomes = store
        .complete_many(&[
            request(tasks[0].id, a, false),
            request(tasks[1].id, b, false),
        ])
        .await;
    let done: Vec<bool> = outcomes
        .iter()
        .map(|o| o.as_ref().unwrap().0.job_done)
        .collect();
    assert_eq!(done, [true, false], "the job's first completion reports it");
    let finishing = store.get_job("acme", finishing.id).await.unwrap();
    assert_eq!(finishing.state, JobState::Succeeded);

    // Two artifacts of one request share a name: that request is refused, the other commits.
    let tasks = [
        store.claim(a, 1).await.unwrap().remove(0),
        store.claim(b, 1).await.unwrap().remove(0),
    ];
    assert!(tasks.iter().all(|t| t.job_id == other.id));
    let mut bad = request(tasks[0].id, a, false);
    bad.artifacts = vec![artifact("model"), artifact("model")];
    let outcomes = store
        .complete_many(&[bad, request(tasks[1].id, b, false)])
        .await;
    assert!(
        matches!(outcomes[0], Err(StoreError::InvalidArgument(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
}

#[tokio::test]
async fn workers_completing_through_group_commit_run_every_task_once() {
    let store = store().await;
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(
            store
                .create_job(&job("acme", noop_tasks(50)))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let statements = Arc::new(Mutex::new(Vec::new()));
    let commit = {
        let statements = statements.clone();
        GroupCommit::start_observed(store.clone(), GroupCommitLimits::default(), move |size| {
            statements.lock().unwrap().push(size)
        })
    };
    let mut loops = Vec::new();
    for i in 0..16 {
        let (store, commit) = (store.clone(), commit.clone());
        let me = worker(&store, &format!("w{i}")).await;
        loops.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut next = store.claim(me, 1).await.unwrap().pop();
            while let Some(task) = next {
                assert_eq!(task.attempt, 1, "no task is leased twice");
                let (_, claimed) = commit.complete(request(task.id, me, true)).await.unwrap();
                done.push(task.id);
                next = claimed;
            }
            done
        }));
    }
    let mut completed = Vec::new();
    for handle in loops {
        completed.extend(handle.await.unwrap());
    }
    let distinct: HashSet<Uuid> = completed.iter().copied().collect();
    assert_eq!((completed.len(), distinct.len()), (300, 300));
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM task_attempts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 300);
    let statements = statements.lock().unwrap().clone();
    assert_eq!(
        statements.iter().sum::<usize>(),
        300,
        "each completion sent once"
    );
    // 16 callers and 4 statements in flight: callers wait, and waiting callers share.
    assert!(statements.len() < 300, "no completions shared a statement");
    // The last completions of a job may race its finalisation; the sweep settles any left.
    store.finalize_finished_jobs(10).await.unwrap();
    for id in jobs {
        assert_eq!(
            store.get_job("acme", id).await.unwrap().state,
            JobState::Succeeded
        );
    }
}

fn noop_report(seconds: f64) -> TaskReport {
    TaskReport::of(NoopReport { seconds })
}

/// The reports of a job's succeeded tasks, in creation order.
async fn reported(store: &Store, job: Uuid) -> Vec<Option<TaskReport>> {
    let kinds: Vec<String> = store
        .job_tasks("acme", job)
        .await
        .unwrap()
        .into_iter()
        .map(|task| task.kind)
        .collect();
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    store
        .reported_tasks(job, &kinds)
        .await
        .unwrap()
        .into_iter()
        .map(|task| task.report)
        .collect()
}

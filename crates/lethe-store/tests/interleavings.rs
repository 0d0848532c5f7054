//! Random interleavings of every transition (claim, heartbeat, complete, fail, cancel, reap,
//! drain), from concurrent simulated workers that also replay stale attempts, against the real
//! SQL; then quiescence and the invariants: no task committed twice, no stale call accepted,
//! every job and task terminal, dependencies respected, attempts recorded once each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_store::sqlx;
use lethe_store::{
    ArtifactRef, Device, Durability, FailureClass, JobKind, LocalCluster, NewJob, NewTask,
    NewWorker, Store, StoreConfig, StoreError, TaskProgress,
};
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

#[derive(Default)]
struct Log {
    /// Tasks whose completion the store accepted.
    committed: Vec<Uuid>,
    /// Calls that quoted an attempt known to be superseded and were accepted anyway.
    stale_accepted: Vec<(Uuid, i32)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_every_invariant() {
    let cluster = LocalCluster::start_temporary(Durability::Fast).unwrap();
    let url = cluster.create_database("interleavings").unwrap();
    let retry = lethe_store::RetryPolicy {
        initial: Duration::from_millis(5),
        multiplier: 2.0,
        max: Duration::from_millis(50),
    };
    let config = StoreConfig {
        lease: Duration::from_millis(150),
        retry,
        ..StoreConfig::default()
    };
    let store = Store::connect(&url, config).await.unwrap();

    let seed: u64 = std::env::var("LETHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("seed {seed} (set LETHE_SEED to replay)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for j in 0..12 {
        let n = rng.random_range(1..8);
        let tasks = (0..n)
            .map(|i| {
                let parents: Vec<usize> = (0..i).filter(|_| rng.random_bool(0.3)).collect();
                let mut task = NewTask::new("t", json!({ "job": j, "i": i })).after(parents);
                task.max_attempts = rng.random_range(1..4);
                task.max_interruptions = rng.random_range(0..4);
                task
            })
            .collect();
        let job = NewJob {
            tenant: "acme".into(),
            kind: JobKind::Noop,
            request_id: None,
            spec: json!({ "j": j }),
            priority: rng.random_range(-2..3),
            deadline: None,
            tasks,
            admission: None,
        };
        store.create_job(&job).await.unwrap();
    }
    let jobs: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(store.pool())
        .await
        .unwrap();

    let log = Arc::new(Mutex::new(Log::default()));
    let mut actors = Vec::new();
    for a in 0..6u64 {
        let (store, log, jobs) = (store.clone(), log.clone(), jobs.clone());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(a));
        actors.push(tokio::spawn(async move {
            let worker = register(&store, &format!("w{a}")).await;
            let mut held: Vec<(Uuid, i32)> = Vec::new();
            let mut superseded: HashSet<(Uuid, i32)> = HashSet::new();
            // Attempts of this worker that committed: replaying one is answered as the success
            // it was (its answer could have been lost) and must change nothing.
            let mut committed_here: HashSet<(Uuid, i32)> = HashSet::new();
            for _ in 0..150 {
                match rng.random_range(0..100) {
                    0..=29 => {
                        for task in store.claim(worker, rng.random_range(1..3)).await.unwrap() {
                            held.push((task.id, task.attempt));
                        }
                    }
                    30..=49 if !held.is_empty() => {
                        let (task, attempt) = held.swap_remove(rng.random_range(0..held.len()));
                        let artifact = ArtifactRef {
                            name: "out".into(),
                            uri: format!("mem://{task}/{attempt}"),
                            sha256: [1; 32],
                            size_bytes: 1,
                        };
                        match store
                            .complete(task, attempt, worker, &[artifact], None)
                            .await
                        {
                            Ok(_) => {
                                committed_here.insert((task, attempt));
                                let mut log = log.lock().unwrap();
                                log.committed.push(task);
                                if superseded.contains(&(task, attempt)) {
                                    log.stale_accepted.push((task, attempt));
                                }
                            }
                            Err(StoreError::Fenced { .. } | StoreError::TaskCancelled { .. }) => {}
                            Err(e) => panic!("complete: {e}"),
                        }
                        superseded.insert((task, attempt));
                    }
                    50..=59 if !held.is_empty() => {
                        let (task, attempt) = held.swap_remove(rng.random_range(0..held.len()));
                        let class = [
                            FailureClass::Retryable,
                            FailureClass::Fatal,
                            FailureClass::Interrupted,
                            FailureClass::Cancelled,
                        ][rng.random_range(0..4)];
                        match store.fail(task, attempt, worker, class, "stopped").await {
                            Ok(_) if superseded.contains(&(task, attempt)) => {
                                log.lock().unwrap().stale_accepted.push((task, attempt))
                            }
                            Ok(_)
                            | Err(StoreError::Fenced { .. } | StoreError::TaskCancelled { .. }) => {
                            }
                            Err(e) => panic!("fail: {e}"),
                        }
                        superseded.insert((task, attempt));
                    }
                    60..=74 if !held.is_empty() => {
                        let (task, attempt) = held[rng.random_range(0..held.len())];
                        match store
                            .heartbeat(
                                task,
                                attempt,
                                worker,
                                Some(&TaskProgress {
                                    fraction: 0.5,
                                    message: String::new(),
                                }),
                            )
                            .await
                        {
                            Ok(_) if superseded.contains(&(task, attempt)) => {
                                log.lock().unwrap().stale_accepted.push((task, attempt))
                            }
                            Ok(_)
                            | Err(StoreError::Fenced { .. } | StoreError::TaskCancelled { .. }) => {
                            }
                            Err(e) => panic!("heartbeat: {e}"),
                        }
                    }
                    75..=79 if !superseded.is_empty() => {
                        // Replay an attempt that already ended: it must change nothing, and
                        // only one that committed may be answered with success.
                        let &(task, attempt) = superseded.iter().next().unwrap();
                        if store
                            .complete(task, attempt, worker, &[], None)
                            .await
                            .is_ok()
                            && !committed_here.contains(&(task, attempt))
                        {
                            log.lock().unwrap().stale_accepted.push((task, attempt));
                        }
                    }
                    80..=82 => {
                        store
                            .cancel_job("acme", jobs[rng.random_range(0..jobs.len())])
                            .await
                            .unwrap();
                    }
                    83..=89 => {
                        store.reap_expired_leases(100).await.unwrap();
                        store.finalize_finished_jobs(100).await.unwrap();
                    }
                    _ => tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await,
                }
            }
            // This worker goes away holding whatever it holds; the reaper will take it back.
        }));
    }
    for actor in actors {
        actor.await.unwrap();
    }

    // Quiescence: one well-behaved worker finishes everything that is left.
    let finisher = register(&store, "finisher").await;
    for _ in 0..10_000 {
        let claimed = store.claim(finisher, 10).await.unwrap();
        for task in &claimed {
            let artifact = ArtifactRef {
                name: "out".into(),
                uri: "mem://final".into(),
                sha256: [2; 32],
                size_bytes: 1,
            };
            if store
                .complete(task.id, task.attempt, finisher, &[artifact], None)
                .await
                .is_ok()
            {
                log.lock().unwrap().committed.push(task.id);
            }
        }
        let reaped = store.reap_expired_leases(100).await.unwrap();
        store.finalize_finished_jobs(100).await.unwrap();
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'cancelling')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        if claimed.is_empty() && reaped == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        log.stale_accepted.is_empty(),
        "stale attempts were accepted: {:?}",
        log.stale_accepted
    );
    let mut commits: HashMap<Uuid, usize> = HashMap::new();
    for task in &log.committed {
        *commits.entry(*task).or_default() += 1;
    }
    assert!(
        commits.values().all(|&n| n == 1),
        "a task was committed twice"
    );

    let pool = store.pool();
    let scalar = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(
        scalar("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')")
            .await,
        0
    );
    assert_eq!(
        scalar(
            "SELECT count(*) FROM tasks WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"
        )
        .await,
        0
    );
    assert_eq!(
        scalar("SELECT count(*) FROM tasks WHERE state = 'succeeded'").await as usize,
        commits.len(),
        "every succeeded task is one accepted completion"
    );
    assert_eq!(
        scalar("SELECT count(*) FROM (SELECT task_id FROM task_attempts WHERE outcome = 'succeeded' GROUP BY task_id HAVING count(*) > 1) x").await,
        0
    );
    assert_eq!(
        scalar("SELECT count(*) FROM artifacts a JOIN task_attempts t ON t.task_id = a.task_id AND t.attempt = a.attempt WHERE t.outcome <> 'succeeded'").await,
        0,
        "only the committed attempt's artifacts are recorded"
    );
    assert_eq!(
        scalar("SELECT count(*) FROM tasks c JOIN task_deps d ON d.task_id = c.id JOIN tasks p ON p.id = d.depends_on WHERE c.state = 'succeeded' AND p.state <> 'succeeded'").await,
        0,
        "no task succeeded before its dependencies"
    );
    assert_eq!(
        scalar("SELECT count(*) FROM jobs j WHERE j.state = 'succeeded' AND EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded')").await,
        0
    );
    assert_eq!(
        scalar("SELECT count(*) FROM tasks t WHERE t.attempt <> (SELECT count(*) FROM task_attempts a WHERE a.task_id = t.id)").await,
        0,
        "every claim ended in exactly one attempt record"
    );
    println!(
        "{} completions committed; jobs by state: {:?}",
        commits.len(),
        sqlx::query_as::<_, (String, i64)>(
            "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state"
        )
        .fetch_all(pool)
        .await
        .unwrap()
    );
}

async fn register(store: &Store, name: &str) -> Uuid {
    let worker = NewWorker {
        name: name.into(),
        device: Device::Cpu,
        memory_bytes: 1 << 30,
        slots: 4,
        version: String::new(),
        kinds: Vec::new(),
        credential_id: None,
    };
    store.register_worker(&worker).await.unwrap()
}

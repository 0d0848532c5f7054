//! Runners against a real coordinator and PostgreSQL on loopback: work is done once and its
//! artifacts are committed with their hashes; a runner that dies mid-task loses nothing;
//! cancellation stops a running task; a draining runner hands its work back.

use std::time::{Duration, Instant};

use lethe_artifacts::StoredObject;
use lethe_coordinator::{Coordinator, CoordinatorConfig};
use lethe_runner::RunnerConfig;
use lethe_store::sqlx;
use lethe_store::JobState;
use lethe_testkit::{spawn_runner, Stack};
use serde_json::json;

/// A stack whose leases are short and whose coordinator reaps them often, so that a dead
/// runner's task comes back quickly; runners are started by each test.
async fn stack() -> Stack {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    Stack::builder()
        .database("r")
        .lease(Duration::from_secs(2))
        .coordinator(config)
        .start()
        .await
}

/// The specs of `count` noop tasks, all `spec`.
fn tasks(count: usize, spec: serde_json::Value) -> impl Iterator<Item = serde_json::Value> {
    std::iter::repeat_n(spec, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_do_each_task_once_and_commit_hashed_artifacts() {
    let stack = stack().await;
    let job = stack
        .noop_job(
            "acme",
            tasks(6, json!({"seconds": 0.1, "artifact_bytes": 4096})),
        )
        .await;
    let (stop_a, a) = spawn_runner(stack.runner("a"));
    let (stop_b, b) = spawn_runner(stack.runner("b"));
    assert_eq!(
        stack
            .wait_terminal("acme", job, Duration::from_secs(30))
            .await,
        JobState::Succeeded
    );
    let _ = (stop_a.send(()), stop_b.send(()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.completed + b.completed, 6);
    assert_eq!(a.failed + b.failed + a.fenced + b.fenced, 0);

    let rows: Vec<(String, Vec<u8>, i64)> =
        sqlx::query_as("SELECT uri, sha256, size_bytes FROM artifacts")
            .fetch_all(stack.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 6);
    for (uri, sha256, size) in rows {
        assert!(uri.contains("/attempts/1/noop.bin"), "{uri}");
        let object = StoredObject {
            uri,
            sha256: sha256.try_into().unwrap(),
            size: size as u64,
        };
        assert_eq!(
            stack.artifacts.get_verified(&object).await.unwrap().len(),
            4096
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_dies_mid_task_loses_nothing() {
    let stack = stack().await;
    let job = stack
        .noop_job("acme", tasks(2, json!({"seconds": 1.5})))
        .await;
    // The doomed runner gets its own runtime, so that shutting the runtime down takes all of
    // it at once, mid-task: no more heartbeats, no report, as after a SIGKILL.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let runner = stack.runner("doomed");
    doomed.spawn(async move { runner.run(std::future::pending()).await });
    let started = Instant::now();
    while stack.store.task_counts(job).await.unwrap().leased == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the doomed runner never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.shutdown_background();

    let (stop, survivor) = spawn_runner(stack.runner("survivor"));
    assert_eq!(
        stack
            .wait_terminal("acme", job, Duration::from_secs(30))
            .await,
        JobState::Succeeded
    );
    let _ = stop.send(());
    assert_eq!(
        survivor.await.unwrap().completed,
        2,
        "the survivor ran both, one after the reaper"
    );
    let expired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_attempts WHERE outcome = 'lease_expired'")
            .fetch_one(stack.store.pool())
            .await
            .unwrap();
    assert_eq!(expired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_operation_stops_the_running_task() {
    let stack = stack().await;
    let job = stack
        .noop_job("acme", tasks(1, json!({"seconds": 30})))
        .await;
    let (stop, runner) = spawn_runner(stack.runner("w"));
    while stack.store.task_counts(job).await.unwrap().leased == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.store.cancel_job("acme", job).await.unwrap();
    assert_eq!(
        stack
            .wait_terminal("acme", job, Duration::from_secs(60))
            .await,
        JobState::Cancelled
    );
    let _ = stop.send(());
    // The handler stopped on the flag (a cancelled report), it did not run its 30 s out.
    assert_eq!(runner.await.unwrap().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_runner_hands_back_what_it_cannot_finish() {
    let stack = stack().await;
    let job = stack
        .noop_job("acme", tasks(1, json!({"seconds": 2})))
        .await;
    let (stop, leaving) = spawn_runner(stack.runner("leaving"));
    while stack.store.task_counts(job).await.unwrap().leased == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    let summary = leaving.await.unwrap();
    assert_eq!(summary.handed_back, 1, "{summary:?}");
    let (stop, staying) = spawn_runner(stack.runner("staying"));
    assert_eq!(
        stack
            .wait_terminal("acme", job, Duration::from_secs(30))
            .await,
        JobState::Succeeded
    );
    let _ = stop.send(());
    assert_eq!(staying.await.unwrap().completed, 1);
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM task_attempts ORDER BY attempt")
            .fetch_all(stack.store.pool())
            .await
            .unwrap();
    assert_eq!(outcomes, ["interrupted", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_started_before_its_coordinator_waits_for_it() {
    let stack = stack().await;
    let job = stack
        .noop_job("acme", tasks(1, json!({"seconds": 0.1})))
        .await;
    // A port nobody serves yet; the second coordinator comes up on it a second later.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = RunnerConfig {
        endpoint: format!("http://{address}"),
        ..stack.runner_config("early")
    };
    let (stop, runner) = spawn_runner(stack.runner_with(config));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !runner.is_finished(),
        "the runner gave up on a coordinator that is not up yet"
    );
    let late = Coordinator::new(stack.store.clone(), CoordinatorConfig::default())
        .spawn(address)
        .await
        .unwrap();
    assert_eq!(
        stack
            .wait_terminal("acme", job, Duration::from_secs(30))
            .await,
        JobState::Succeeded
    );
    let _ = stop.send(());
    assert_eq!(runner.await.unwrap().completed, 1);
    drop(late);
}

//! `lethe-worker serve` as real processes against a coordinator and PostgreSQL on loopback:
//! a worker killed with SIGKILL in the middle of a task costs its operation nothing, and a
//! worker sent SIGTERM drains and exits cleanly.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::WORKER;
use lethe_coordinator::CoordinatorConfig;
use lethe_store::JobState;
use lethe_testkit::Stack;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_costs_nothing_and_a_terminated_one_drains() {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(250),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("serve")
        .lease(Duration::from_secs(2))
        .coordinator(config)
        .tokens()
        .start()
        .await;
    let store = &stack.store;

    let job = stack
        .noop_job(
            "acme",
            std::iter::repeat_n(json!({"seconds": 1.5, "artifact_bytes": 256}), 4),
        )
        .await;
    let mut victim = stack.serve(WORKER, "victim", Stdio::piped());
    let mut survivor = stack.serve(WORKER, "survivor", Stdio::piped());

    // Kill the victim once it holds a lease.
    let victim_id: uuid::Uuid = loop {
        let owner: Option<uuid::Uuid> = lethe_store::sqlx::query_scalar(
            "SELECT t.lease_owner FROM tasks t JOIN workers w ON w.id = t.lease_owner \
             WHERE t.state = 'leased' AND w.name = 'victim' LIMIT 1",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(owner) = owner {
            break owner;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    victim.kill().unwrap();
    victim.wait().unwrap();

    let finished = stack
        .wait_terminal("acme", job, Duration::from_secs(60))
        .await;
    assert_eq!(finished, JobState::Succeeded);
    let expired: i64 = lethe_store::sqlx::query_scalar(
        "SELECT count(*) FROM task_attempts WHERE outcome = 'lease_expired' AND worker_id = $1",
    )
    .bind(victim_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        expired, 1,
        "the victim's task was taken back by the reaper, not lost"
    );
    let committed: i64 = lethe_store::sqlx::query_scalar("SELECT count(*) FROM artifacts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(committed, 4, "one committed artifact per task");

    // SIGTERM: the survivor drains and exits 0.
    Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .unwrap();
    let status = survivor.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(survivor.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("stopped;"), "{log}");
}

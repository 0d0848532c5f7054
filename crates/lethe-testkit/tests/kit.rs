//! The kit's own check: a stack with tokens, metrics and two in-process workers runs a noop
//! operation created through the public API, and a worker process helper is killed on drop.

use std::time::Duration;

use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{CreateNoopOperationRequest, NoopResult};
use lethe_testkit::{response, scrape, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_with_workers_runs_an_operation_to_its_typed_result() {
    let stack = Stack::builder()
        .database("kit")
        .tokens()
        .metrics()
        .workers(2)
        .start()
        .await;
    let name = LetheClient::new(stack.channel.clone())
        .create_noop_operation(stack.call(CreateNoopOperationRequest {
            tasks: 3,
            task_seconds: 0.1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .name;
    let done = stack.watch(&name, Duration::from_secs(60)).await;
    assert_eq!(response::<NoopResult>(&done).tasks, 3);
    let samples = scrape(stack.metrics()).await;
    assert!(
        samples.keys().any(|series| series.starts_with("lethe_")),
        "{samples:?}"
    );
    let summaries = stack.shutdown().await;
    assert_eq!(
        summaries.iter().map(|s| s.completed).sum::<u64>(),
        3,
        "{summaries:?}"
    );
}

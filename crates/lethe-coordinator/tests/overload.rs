//! Backpressure: when the database is slow the coordinator sheds calls with RESOURCE_EXHAUSTED
//! (and a retry hint) instead of queueing them without bound; long-polls are bounded on their
//! own, and a watch whose client left gives its permit back at once; a tenant's quota of
//! unfinished operations holds over gRPC. Nothing else fails, and the
//! coordinator serves normally once the pressure is gone.
//!
//! `LETHE_RELIABILITY_OUT=FILE` merges the figures into that JSON (`make chaos` does).

use std::path::Path;
use std::time::Duration;

use lethe_coordinator::CoordinatorConfig;
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, WaitOperationRequest,
};
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{CreateNoopOperationRequest, WatchOperationRequest};
use lethe_store::sqlx::{self, Connection, PgConnection};
use lethe_testkit::{as_tenant, reliability, Stack};
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

/// A coordinator with `config` on a database of its own, and its database URL and a channel
/// to it.
async fn start(database: &str, config: CoordinatorConfig) -> (String, Stack, Channel) {
    let stack = Stack::builder()
        .database(database)
        .coordinator(config)
        .start()
        .await;
    let (url, channel) = (stack.url.clone(), stack.channel.clone());
    (url, stack, channel)
}

/// A noop operation whose single task nobody runs: it stays unfinished.
async fn unfinished(channel: &Channel, tenant: &str) -> Result<String, tonic::Status> {
    LetheClient::new(channel.clone())
        .create_noop_operation(as_tenant(
            tenant,
            CreateNoopOperationRequest {
                tasks: 1,
                task_seconds: 60.0,
                ..Default::default()
            },
        ))
        .await
        .map(|answer| answer.into_inner().name)
}

/// acme's WaitOperation on `name`, up to `timeout`.
fn wait_operation(
    channel: &Channel,
    name: &str,
    timeout: Duration,
) -> impl std::future::Future<
    Output = Result<tonic::Response<lethe_proto::google::longrunning::Operation>, tonic::Status>,
> {
    let (channel, name) = (channel.clone(), name.to_string());
    async move {
        OperationsClient::new(channel)
            .wait_operation(as_tenant(
                "acme",
                WaitOperationRequest {
                    name,
                    timeout: Some(timeout.try_into().unwrap()),
                },
            ))
            .await
    }
}

fn assert_shed(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(what), "{status:?}");
    assert!(
        status.get_details_retry_info().is_some(),
        "a shed call says when to retry: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_sheds_calls_instead_of_queueing_them() {
    const LIMIT: usize = 4;
    const STORM: usize = 200;
    let config = CoordinatorConfig {
        max_concurrent_calls: LIMIT,
        ..CoordinatorConfig::default()
    };
    let (url, _stack, channel) = start("overload_calls", config).await;
    let name = unfinished(&channel, "acme").await.unwrap();

    // The jobs table is locked: every call that reads it waits, holding its permit.
    let mut locker = lock_jobs(&url).await;
    let get = |channel: Channel, name: String| async move {
        OperationsClient::new(channel)
            .get_operation(as_tenant("acme", GetOperationRequest { name }))
            .await
    };
    let stuck: Vec<_> = (0..LIMIT)
        .map(|_| tokio::spawn(get(channel.clone(), name.clone())))
        .collect();
    blocked_on_jobs(&url, LIMIT).await;

    // Every further call is refused at once, whatever it is.
    let storm: Vec<_> = (0..STORM)
        .map(|n| {
            let channel = channel.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if n % 2 == 0 {
                    get(channel, name).await.map(|_| ())
                } else {
                    unfinished(&channel, "acme").await.map(|_| ())
                }
            })
        })
        .collect();
    let mut shed = 0;
    let mut other = Vec::new();
    for call in storm {
        match call.await.unwrap() {
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_shed(&status, "concurrent calls");
                shed += 1;
            }
            answer => other.push(format!("{answer:?}")),
        }
    }
    // Health checks are not shed: a busy coordinator is not a dead one.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    // Once the database answers, the waiting calls finish and new ones are served.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    for call in stuck {
        call.await.unwrap().expect("a call that waited is answered");
    }
    get(channel.clone(), name.clone()).await.unwrap();

    let report = serde_json::json!({
        "overload_calls": STORM,
        "overload_shed": shed,
        "overload_other_answers": other.len(),
    });
    eprintln!("overload: {report}");
    if let Ok(path) = std::env::var("LETHE_RELIABILITY_OUT") {
        reliability::merge_into(Path::new(&path), &report);
    }
    assert_eq!(
        shed, STORM,
        "calls past the limit answered otherwise: {other:?}"
    );
}

/// A connection holding the jobs table locked until it rolls back.
async fn lock_jobs(url: &str) -> PgConnection {
    let mut locker = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}

/// Waits until `count` queries on the jobs table are blocked behind the lock.
async fn blocked_on_jobs(url: &str, count: usize) {
    let mut observer = PgConnection::connect(url).await.unwrap();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%FROM jobs%'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting as usize >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_every_call_permit() {
    let config = CoordinatorConfig {
        max_concurrent_calls: 8,
        max_concurrent_calls_per_tenant: 2,
        ..CoordinatorConfig::default()
    };
    let (url, _stack, channel) = start("overload_tenant", config).await;
    let acme = unfinished(&channel, "acme").await.unwrap();
    let globex = unfinished(&channel, "globex").await.unwrap();
    let mut locker = lock_jobs(&url).await;
    let get = |tenant: &'static str, name: String| {
        let channel = channel.clone();
        async move {
            OperationsClient::new(channel)
                .get_operation(as_tenant(tenant, GetOperationRequest { name }))
                .await
        }
    };
    let stuck: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get("acme", acme.clone())))
        .collect();
    blocked_on_jobs(&url, 2).await;

    // acme is at its share: its next call is shed, naming the tenant's limit.
    // (Were it not shed, it would wait behind the lock: the timeout turns that into a failure.)
    let shed = tokio::time::timeout(Duration::from_secs(30), get("acme", acme.clone()))
        .await
        .expect("the call past the tenant's share waited instead of being shed")
        .unwrap_err();
    assert_shed(&shed, "calls in flight on this replica");
    let violation = &shed
        .get_details_quota_failure()
        .expect("QuotaFailure")
        .violations[0];
    assert_eq!(violation.subject, "tenants/acme");
    // globex still gets through to the database (and waits there, like acme's calls).
    let served = tokio::spawn(get("globex", globex.clone()));
    blocked_on_jobs(&url, 3).await;

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    for call in stuck {
        call.await.unwrap().expect("a call that waited is answered");
    }
    served.await.unwrap().expect("the other tenant was served");
    get("acme", acme)
        .await
        .expect("finished calls give their places back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_on_their_own() {
    let config = CoordinatorConfig {
        max_long_polls: 2,
        max_concurrent_calls: 2,
        ..CoordinatorConfig::default()
    };
    let (_url, _stack, channel) = start("overload_polls", config).await;
    let name = unfinished(&channel, "acme").await.unwrap();
    let wait = |seconds: u64| wait_operation(&channel, &name, Duration::from_secs(seconds));
    let open = [tokio::spawn(wait(3)), tokio::spawn(wait(3))];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = wait(3).await.unwrap_err();
    assert_shed(&refused, "long-polls");
    // Long-polls do not take the permits of ordinary calls, which the limit of 2 would
    // otherwise leave none of.
    OperationsClient::new(channel.clone())
        .get_operation(as_tenant(
            "acme",
            GetOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap();
    for poll in open {
        let operation = poll.await.unwrap().unwrap().into_inner();
        assert!(!operation.done);
    }
    wait(0).await.expect("the permits came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_watch_gives_its_long_poll_permit_back() {
    let config = CoordinatorConfig {
        max_long_polls: 1,
        ..CoordinatorConfig::default()
    };
    let (_url, _stack, channel) = start("overload_watch", config).await;
    // Nobody runs its task: the operation never changes, so a watch that only noticed its
    // client at the next send would hold the permit for good.
    let name = unfinished(&channel, "acme").await.unwrap();
    let wait_now = || wait_operation(&channel, &name, Duration::ZERO);
    let mut watch = LetheClient::new(channel.clone())
        .watch_operation(as_tenant(
            "acme",
            WatchOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "the first state");
    assert_shed(&wait_now().await.unwrap_err(), "long-polls");
    drop(watch);
    // The server learns of the reset asynchronously: ask until the permit is back. The old
    // behaviour never gave it back while the operation stood still.
    let mut answered = None;
    for _ in 0..600 {
        match wait_now().await {
            Ok(operation) => {
                answered = Some(operation);
                break;
            }
            Err(status) => {
                assert_shed(&status, "long-polls");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(answered.is_some(), "the abandoned watch kept its permit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quota_is_refused_until_work_finishes() {
    let config = CoordinatorConfig {
        max_active_jobs_per_tenant: 3,
        ..CoordinatorConfig::default()
    };
    let (_url, _stack, channel) = start("overload_quota", config).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(unfinished(&channel, "acme").await.unwrap());
    }
    let refused = unfinished(&channel, "acme").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("quota of 3"), "{refused:?}");
    assert!(refused.get_details_quota_failure().is_some());
    unfinished(&channel, "globex")
        .await
        .expect("another tenant has its own quota");

    OperationsClient::new(channel.clone())
        .cancel_operation(as_tenant(
            "acme",
            CancelOperationRequest {
                name: names[0].clone(),
            },
        ))
        .await
        .unwrap();
    unfinished(&channel, "acme")
        .await
        .expect("a finished operation frees its place");
}

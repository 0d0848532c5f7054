//! What operators watch, during a real run: an index build and an audited deletion request on
//! fmnist-tiny, served by two `lethe-worker serve` processes. The coordinator's and the
//! workers' Prometheus series must move as the work does; the dashboard, driven in headless
//! Chromium, must show the request, its progress advancing, its task graph and, at the end,
//! its audit plots (a screenshot goes to `bench/results/dashboard.png`), and nothing of it to
//! another tenant; the admin API must show the fleet and drain a worker.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::browser::Browser;
use common::WORKER;
use lethe_coordinator::CoordinatorConfig;
use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::admin_client::AdminClient;
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    AdminDrainWorkerRequest, CreateDeletionRequestRequest, CreateIndexBuildRequest,
    GetQueueStatsRequest, ListWorkersRequest, RegisterDatasetRequest, RegisterModelRequest,
    WatchOperationRequest,
};
use lethe_store::CredentialKind;
use lethe_testkit::{free_port, scrape, watch_to_end, with_token, Stack};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// The sum of every sample whose series starts with `prefix`.
fn sum(samples: &HashMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.starts_with(prefix))
        .map(|(_, value)| value)
        .sum()
}

/// Follows `name` to its end, scraping the coordinator at every change.
async fn follow(
    lethe: &mut LetheClient<Channel>,
    token: &str,
    name: String,
    metrics: SocketAddr,
    scrapes: &mut Vec<HashMap<String, f64>>,
) -> Operation {
    let stream = lethe
        .watch_operation(with_token(token, WatchOperationRequest { name }))
        .await
        .unwrap()
        .into_inner();
    let operation = watch_to_end(stream, Duration::from_secs(600), async |_| {
        scrapes.push(scrape(metrics).await);
    })
    .await;
    assert!(
        matches!(operation.result, Some(operation::Result::Response(_))),
        "{operation:?}"
    );
    operation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_work_and_the_admin_api_sees_the_fleet() {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        coalescing_window: Duration::from_millis(500),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("observed")
        .lease(Duration::from_secs(5))
        .coordinator(config)
        .tokens()
        .metrics()
        .dashboard()
        .start()
        .await;
    let tenant_token = stack.tenant_token().to_string();
    let admin_token = stack.admin_token().to_string();
    let (metrics, dashboard, store) = (stack.metrics(), stack.dashboard(), &stack.store);
    let root = stack.artifacts_root().to_path_buf();
    let artifacts = stack.artifacts_url();
    let base = root.join("models/base.safetensors");
    common::train_on_fmnist_tiny(&base, &["--epochs", "2"]);

    let before = scrape(metrics).await;
    let worker_ports = [free_port(), free_port()];
    let _workers: Vec<_> = worker_ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            let listen = format!("127.0.0.1:{port}");
            stack.serve_with(
                WORKER,
                &format!("observed-{n}"),
                Stdio::null(),
                &["--metrics-listen", &listen],
            )
        })
        .collect();
    let worker_metrics: Vec<SocketAddr> = worker_ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}").parse().unwrap())
        .collect();

    let mut lethe = LetheClient::connect(stack.endpoint()).await.unwrap();
    let token = tenant_token.as_str();
    lethe
        .register_dataset(with_token(
            token,
            RegisterDatasetRequest {
                dataset_id: "fmnist-tiny".into(),
                uri: "builtin:fmnist-tiny".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap();
    lethe
        .register_model(with_token(
            token,
            RegisterModelRequest {
                model_id: "shoes".into(),
                dataset: "datasets/fmnist-tiny".into(),
                uri: format!("{artifacts}/models/base.safetensors"),
                sha256: Sha256::digest(std::fs::read(&base).unwrap()).to_vec(),
            },
        ))
        .await
        .unwrap();

    let browser = Browser::start(1400, 1300).await;
    browser
        .open(&format!("http://{dashboard}/#token={tenant_token}"))
        .await;
    browser
        .wait_for(
            "return document.body.dataset.loaded === 'operations'",
            Duration::from_secs(30),
        )
        .await;

    let mut scrapes = Vec::new();
    let index = lethe
        .create_index_build(with_token(
            token,
            CreateIndexBuildRequest {
                model: "models/shoes".into(),
                // Tasks long enough (a second or so each) that the page, refreshing every
                // second, sees the build's progress between its start and its end even on a
                // fast, idle machine.
                members: 256,
                members_per_task: 32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // The page lists the build and its progress advances while the build runs.
    let row = format!(
        "const row = document.querySelector('#operations tr[data-name=\"{}\"]'); \
         return row && [row.querySelector('.progress').dataset.progress, \
                        row.querySelector('.state').textContent];",
        index.name
    );
    let watching = async {
        let mut seen: Vec<f64> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let value = browser.run(&row).await;
            if tokio::time::Instant::now() > deadline {
                let page = browser.run("return document.body.innerText").await;
                panic!("the build's row never showed it succeeded: {value} {page}");
            }
            if let Some(progress) = value[0].as_str().and_then(|p| p.parse().ok()) {
                if seen.last() != Some(&progress) {
                    seen.push(progress);
                }
            }
            if value[1] == "succeeded" {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (_, progress_seen) = tokio::join!(
        follow(&mut lethe, token, index.name.clone(), metrics, &mut scrapes),
        watching
    );
    assert!(
        progress_seen.len() >= 3 && progress_seen.windows(2).all(|w| w[0] < w[1]),
        "the page showed progress advancing: {progress_seen:?}"
    );
    assert_eq!(progress_seen.last(), Some(&1.0));
    browser
        .open(&format!("http://{dashboard}/#/{}", index.name))
        .await;
    let nodes = browser
        .wait_for(
            "return document.querySelectorAll('#task-graph .node').length",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(nodes, 9, "8 retrain tasks and the reduce");
    let deletion = lethe
        .create_deletion_request(with_token(
            token,
            CreateDeletionRequestRequest {
                model: "models/shoes".into(),
                forget: vec![3, 14, 15],
                audit_oracles: 4,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    follow(
        &mut lethe,
        token,
        deletion.name.clone(),
        metrics,
        &mut scrapes,
    )
    .await;
    let after = scrape(metrics).await;

    // The finished request's page: its task graph and its audit plots.
    browser
        .open(&format!("http://{dashboard}/#/{}", deletion.name))
        .await;
    browser
        .wait_for(
            "return document.querySelectorAll('#audit svg.plot').length === 2 \
             && document.querySelectorAll('#task-graph .node[data-state=\"succeeded\"]').length >= 3",
            Duration::from_secs(10),
        )
        .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("dashboard.png"), png).unwrap();
    browser.open(&format!("http://{dashboard}/#/workers")).await;
    let rows = browser
        .wait_for(
            "return document.querySelectorAll('#workers tr[data-worker]').length",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(rows, 2);

    // Another tenant sees none of it.
    let other = store
        .create_credential(CredentialKind::Tenant, Some("globex"), "globex-ops", "test")
        .await
        .unwrap()
        .token;
    browser
        .run(&format!(
            "sessionStorage.setItem('lethe-token', '{other}'); location.hash = '#/'; location.reload();"
        ))
        .await;
    let listed = browser
        .wait_for(
            "return document.body.dataset.loaded === 'operations' \
             && [document.querySelectorAll('#operations tr[data-name]').length]",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        listed,
        serde_json::json!([0]),
        "globex sees no operation of acme's"
    );
    browser
        .open(&format!("http://{dashboard}/#/{}", deletion.name))
        .await;
    browser
        .wait_for(
            "return document.querySelector('.error')?.textContent.includes('no such operation')",
            Duration::from_secs(10),
        )
        .await;

    // The coordinator's series moved with the work.
    let claims = |samples: &HashMap<String, f64>| sum(samples, "lethe_task_claims_total");
    assert_eq!(claims(&before), 0.0);
    assert!(
        value(&after, "lethe_task_claims_total{kind=\"retrain\"}") >= 4.0,
        "{after:?}"
    );
    assert!(value(&after, "lethe_task_claims_total{kind=\"match\"}") >= 1.0);
    let mut claims_seen: Vec<f64> = scrapes.iter().map(claims).collect();
    claims_seen.dedup();
    assert!(
        claims_seen.len() >= 3,
        "claims rose step by step as the runs went: {claims_seen:?}"
    );
    assert!(
        scrapes
            .iter()
            .any(|s| value(s, "lethe_queue_depth{kind=\"retrain\"}") > 0.0
                || value(s, "lethe_tasks_leased{kind=\"retrain\"}") > 0.0),
        "retrain tasks were seen queued or leased"
    );
    assert!(sum(&after, "lethe_task_completions_total") >= 6.0);
    // Every completion went through the group-commit queue, in some statement.
    let statements = value(&after, "lethe_completion_batch_size_count");
    assert!(statements >= 1.0, "{after:?}");
    assert!(
        value(&after, "lethe_completion_batch_size_sum")
            >= sum(&after, "lethe_task_completions_total"),
        "{after:?}"
    );
    assert_eq!(
        value(
            &after,
            "lethe_operation_duration_seconds_count{kind=\"index_build\",state=\"succeeded\"}"
        ),
        1.0,
        "{after:?}"
    );
    assert_eq!(
        value(
            &after,
            "lethe_operation_duration_seconds_count{kind=\"deletion\",state=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "lethe_workers{device=\"cpu\",state=\"active\"}"),
        2.0
    );
    assert!(
        sum(
            &after,
            "lethe_db_pool_connections{pool=\"work\",state=\"max\"}"
        ) >= 1.0
    );
    assert!(after
        .keys()
        .any(|k| k.starts_with("lethe_table_dead_tuples{table=\"tasks\"}")));

    // The workers counted what they ran, for whom and how long.
    let mut succeeded = 0.0;
    let mut busy = 0.0;
    for address in &worker_metrics {
        let samples = scrape(*address).await;
        succeeded += samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with("lethe_worker_tasks_total") && k.contains("outcome=\"succeeded\"")
            })
            .map(|(_, v)| v)
            .sum::<f64>();
        busy += value(
            &samples,
            "lethe_worker_busy_seconds_total{tenant=\"acme\",device=\"cpu\"}",
        );
    }
    assert!(
        succeeded >= sum(&after, "lethe_task_completions_total"),
        "{succeeded}"
    );
    assert!(busy > 0.0);

    // The admin API: the fleet, the queue, and a drain; tenants' tokens are kept out.
    let channel = Channel::from_shared(stack.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(channel);
    let fleet = admin
        .list_workers(with_token(&admin_token, ListWorkersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(fleet.len(), 2, "{fleet:?}");
    assert!(fleet
        .iter()
        .all(|w| w.state == "active" && w.tasks.is_empty()));
    let stats = admin
        .get_queue_stats(with_token(&admin_token, GetQueueStatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.operations.is_empty(), "{stats:?}");
    assert_eq!(stats.workers.iter().map(|w| w.count).sum::<i64>(), 2);
    let refused = admin
        .list_workers(with_token(&tenant_token, ListWorkersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    admin
        .drain_worker(with_token(
            &admin_token,
            AdminDrainWorkerRequest {
                worker_id: fleet[0].worker_id.clone(),
                hand_back: false,
            },
        ))
        .await
        .unwrap();
    let fleet = admin
        .list_workers(with_token(&admin_token, ListWorkersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(fleet.iter().any(|w| w.state == "draining"), "{fleet:?}");
}

//! A convolutional model through the whole service: the zoo's small CNN trained on
//! fmnist-tiny is registered, indexed with TRAK (checkpoints, featurisation shards through
//! autograd, the reduce with its noise model), and a deletion request runs DMM on it (with the
//! head refit that the CNN's final layer allows) and its audit. The test fails if any of
//! those steps is skipped: each one's result says it ran.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::WORKER;
use lethe_coordinator::CoordinatorConfig;
use lethe_proto::google::longrunning::Operation;
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    CreateDeletionRequestRequest, CreateIndexBuildRequest, DeletionMethod, DeletionResult,
    IndexBuildResult, IndexEstimator, RegisterDatasetRequest, RegisterModelRequest,
    WatchOperationRequest,
};
use lethe_testkit::{response, watch_to_end, with_token, Stack};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

async fn finished(client: &mut LetheClient<Channel>, token: &str, name: &str) -> Operation {
    let stream = client
        .watch_operation(with_token(
            token,
            WatchOperationRequest { name: name.into() },
        ))
        .await
        .unwrap()
        .into_inner();
    watch_to_end(stream, Duration::from_secs(900), async |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cnn_is_indexed_with_trak_and_unlearned_with_dmm_through_the_service() {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        coalescing_window: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("cnn")
        .lease(Duration::from_secs(30))
        .coordinator(config)
        .tokens()
        .start()
        .await;
    let tenant_token = stack.tenant_token().to_string();
    let root = stack.artifacts_root().to_path_buf();
    let artifacts = stack.artifacts_url();

    // Version 0: the small CNN, 3 epochs on fmnist-tiny (the recipe every retrain repeats).
    let base = root.join("models/cnn.safetensors");
    common::train_on_fmnist_tiny(&base, &["--model", "cnn", "--epochs", "3"]);
    let sha256 = Sha256::digest(std::fs::read(&base).unwrap()).to_vec();

    let mut client = LetheClient::connect(stack.endpoint()).await.unwrap();
    client
        .register_dataset(with_token(
            &tenant_token,
            RegisterDatasetRequest {
                dataset_id: "fmnist-tiny".into(),
                uri: "builtin:fmnist-tiny".into(),
                sha256: vec![],
            },
        ))
        .await
        .unwrap();
    client
        .register_model(with_token(
            &tenant_token,
            RegisterModelRequest {
                model_id: "cnn".into(),
                dataset: "datasets/fmnist-tiny".into(),
                uri: format!("{artifacts}/models/cnn.safetensors"),
                sha256,
            },
        ))
        .await
        .unwrap();
    let _worker = stack.serve(WORKER, "w", Stdio::null());

    let index = client
        .create_index_build(with_token(
            &tenant_token,
            CreateIndexBuildRequest {
                model: "models/cnn".into(),
                members: 8,
                members_per_task: 8,
                estimator: IndexEstimator::Trak as i32,
                trak_checkpoints: 2,
                trak_projection_dim: 128,
                trak_shards: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let built: IndexBuildResult =
        response(&finished(&mut client, &tenant_token, &index.name).await);
    let report = built.report.clone().unwrap();
    assert_eq!(report.estimator(), IndexEstimator::Trak, "{built:?}");
    assert!(report.trak_scale.is_some_and(f64::is_finite), "{built:?}");
    assert!(
        report.noise_model && built.noise_model.is_some(),
        "two checkpoints measure the noise: {built:?}"
    );

    let deletion = client
        .create_deletion_request(with_token(
            &tenant_token,
            CreateDeletionRequestRequest {
                model: "models/cnn".into(),
                forget: (0..6).map(|i| i * 31).collect(),
                audit_oracles: 4,
                min_confidence: Some(1e-6),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let result: DeletionResult =
        response(&finished(&mut client, &tenant_token, &deletion.name).await);
    assert_eq!(result.version.as_ref().unwrap().version, 1, "{result:?}");
    assert_eq!(
        result.method(),
        DeletionMethod::Dmm,
        "DMM wrote the version: {result:?}"
    );
    let report = result.audit.expect("the request asked for an audit");
    assert_eq!(report.method(), DeletionMethod::Dmm, "{report:?}");
    assert!(report.confidence.is_some(), "{report:?}");
    let audited = report.result.unwrap();
    for (split, figures) in [
        ("forget", &audited.forget),
        ("retain", &audited.retain),
        ("val", &audited.val),
    ] {
        assert!(
            figures
                .as_ref()
                .and_then(|f| f.klom.as_ref())
                .is_some_and(|klom| klom.p95.is_finite()),
            "the audit measured {split}: {report:?}"
        );
    }
    let matched = result.matching.clone().expect("DMM's fine-tune reports");
    assert_eq!(matched.architecture, "cnn", "{matched:?}");
    assert!(
        matched.head_refitted,
        "the CNN's head is refitted: {matched:?}"
    );
    assert!(matched.examples > 0, "the fine-tune ran: {matched:?}");
    stack.coordinator.shutdown().await.unwrap();
}

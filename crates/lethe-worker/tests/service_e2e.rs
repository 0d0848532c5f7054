//! The whole service on loopback: PostgreSQL, a coordinator, two `lethe-worker serve`
//! processes and a `file://` artifact store. A tenant registers fmnist-tiny and a model,
//! builds the index, files two deletion requests that are coalesced into one run, watches
//! them, downloads the new version and checks that its forget-set margins moved towards the
//! oracles'. Then a second run (on top of the first version) loses a worker to SIGKILL in the
//! middle of a task and still completes; a third passes the retrain threshold and retrains
//! from scratch (indexing the new anchor beside it); a fourth fine-tunes from that anchor, and
//! a fifth and a sixth (with a minimum confidence) use a TRAK index built in shards.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::WORKER;
use lethe_artifacts::{ArtifactStore, StoredObject};
use lethe_coordinator::{operation_name, CoordinatorConfig};
use lethe_ml::checkpoint;
use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::tensorio;
use lethe_proto::google::longrunning::Operation;
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    AuditFigures, CreateDeletionRequestRequest, CreateIndexBuildRequest, DeletionMethod,
    DeletionResult, IndexBuildResult, IndexEstimator, ListModelVersionsRequest,
    RegisterDatasetRequest, RegisterModelRequest, WatchOperationRequest,
};
use lethe_testkit::{metadata, response, run_id, version_object, watch_to_end, with_token, Stack};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};
use tonic::transport::Channel;

/// Tenant acme's token, which the stack issued.
static TENANT_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn call<T>(message: T) -> tonic::Request<T> {
    with_token(TENANT_TOKEN.get().expect("the stack is up"), message)
}

/// Follows an operation with WatchOperation to its end.
async fn watch(client: &mut LetheClient<Channel>, name: &str) -> Operation {
    let stream = client
        .watch_operation(call(WatchOperationRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner();
    let operation = watch_to_end(stream, Duration::from_secs(600), async |_| {}).await;
    assert!(operation.done, "{operation:?}");
    operation
}

fn forget_margins(model: &std::path::Path, data: &Dataset, forget: &[i64]) -> Tensor {
    let (mut model, _) = checkpoint::load(model, tch::Device::Cpu).unwrap();
    Outputs::compute(&mut model, data, forget)
        .unwrap()
        .margins()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_request_runs_end_to_end_and_survives_a_killed_worker() {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        coalescing_window: Duration::from_secs(1),
        retrain_threshold: 0.05,
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("e2e")
        .lease(Duration::from_secs(3))
        .coordinator(config)
        .tokens()
        .start()
        .await;
    let store = stack.store.clone();
    TENANT_TOKEN.set(stack.tenant_token().to_string()).unwrap();
    // Downloads go here; the artifact store is the stack's.
    let dir = tempfile::tempdir().unwrap();
    let root = stack.artifacts_root().to_path_buf();
    let artifacts = stack.artifacts_url();
    let artifact_store = ArtifactStore::open(&artifacts).unwrap();

    // The deployed model, version 0: an MLP trained on fmnist-tiny, in the artifact store.
    let base = root.join("models/base.safetensors");
    common::train_on_fmnist_tiny(&base, &[]);
    let base_sha = Sha256::digest(std::fs::read(&base).unwrap()).to_vec();

    let mut client = LetheClient::connect(stack.endpoint()).await.unwrap();
    client
        .register_dataset(call(RegisterDatasetRequest {
            dataset_id: "fmnist-tiny".into(),
            uri: "builtin:fmnist-tiny".into(),
            sha256: vec![],
        }))
        .await
        .unwrap();
    client
        .register_model(call(RegisterModelRequest {
            model_id: "shoes".into(),
            dataset: "datasets/fmnist-tiny".into(),
            uri: format!("{artifacts}/models/base.safetensors"),
            sha256: base_sha.clone(),
        }))
        .await
        .unwrap();

    // Without an index a deletion request is refused up front.
    let early = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: vec![1],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");

    let mut first = stack.serve(WORKER, "first", Stdio::null());
    let mut second = stack.serve(WORKER, "second", Stdio::null());

    let index = client
        .create_index_build(call(CreateIndexBuildRequest {
            model: "models/shoes".into(),
            members: 128,
            members_per_task: 32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let index = watch(&mut client, &index.name).await;
    let built: IndexBuildResult = response(&index);
    assert_eq!(built.report.as_ref().unwrap().num_train, 512, "{built:?}");
    assert_eq!(
        metadata(&index).tasks.unwrap().succeeded,
        5,
        "4 retrains and a reduce"
    );

    // Two requests within the coalescing window share one run, each with its own operation.
    let forget_a: Vec<i64> = (0..8).map(|i| i * 17).collect();
    let forget_b: Vec<i64> = (8..16).map(|i| i * 17).collect();
    let mut requests = Vec::new();
    for forget in [&forget_a, &forget_b] {
        let operation = client
            .create_deletion_request(call(CreateDeletionRequestRequest {
                model: "models/shoes".into(),
                forget: forget.clone(),
                audit_oracles: 16,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        requests.push(operation.name);
    }
    let done_a = watch(&mut client, &requests[0]).await;
    let done_b = watch(&mut client, &requests[1]).await;
    let (result_a, result_b): (DeletionResult, DeletionResult) =
        (response(&done_a), response(&done_b));
    assert_eq!(result_a.run, result_b.run, "one run served both");
    assert_eq!(metadata(&done_a).run, metadata(&done_b).run);
    assert_eq!(result_a.version, result_b.version);
    assert_eq!(result_a.version.as_ref().unwrap().version, 1);
    assert_eq!(result_a.version.as_ref().unwrap().forgotten_count, 16);
    assert_eq!(
        (result_a.requested, result_a.forgotten_in_run),
        (8, 16),
        "each request names its own indices; the run forgot both"
    );

    // Download version 1 as a client would and check it is a checkpoint of the same model.
    let object = version_object(&result_a);
    let v1 = dir.path().join("v1.safetensors");
    artifact_store
        .download_verified(&object, &v1)
        .await
        .unwrap();
    let (_, info) = checkpoint::load(&v1, tch::Device::Cpu).unwrap();
    let lineage = info.lineage.expect("a new version records its lineage");
    assert_eq!(lineage.version, 1);
    assert_eq!(lineage.base_sha256, hex::encode(&base_sha));

    // The forget set's margins moved towards the oracles' (read from the run's own oracle
    // retrains, which were trained without the forgotten examples).
    let data = Dataset::load(&DatasetSpec::fmnist_tiny()).unwrap();
    let mut forgotten: Vec<i64> = forget_a.iter().chain(&forget_b).copied().collect();
    forgotten.sort_unstable();
    let run = run_id(&result_a);
    let oracle_files: Vec<(String, Vec<u8>, i64)> = lethe_store::sqlx::query_as(
        "SELECT a.uri, a.sha256, a.size_bytes FROM artifacts a JOIN tasks t ON t.id = a.task_id \
         WHERE t.job_id = $1 AND t.kind = 'retrain' AND a.name = 'members' \
           AND NOT coalesce((t.spec->>'keep_weights')::boolean, false)",
    )
    .bind(run)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(oracle_files.len(), 2, "24 oracles in ranges of 16");
    let mut oracle_margins = Vec::new();
    for (i, (uri, sha256, size)) in oracle_files.into_iter().enumerate() {
        let path = dir.path().join(format!("oracles-{i}.safetensors"));
        let object = StoredObject {
            uri,
            sha256: sha256.try_into().unwrap(),
            size: size as u64,
        };
        artifact_store
            .download_verified(&object, &path)
            .await
            .unwrap();
        let file = tensorio::read_safetensors(&path).unwrap();
        let logits = file.get("logits").unwrap().to_kind(Kind::Float);
        let labels = file.get("labels").unwrap().shallow_clone();
        oracle_margins.push(margins(&logits, &labels));
    }
    let rows = Tensor::from_slice(&forgotten);
    let oracle = Tensor::cat(&oracle_margins, 0)
        .index_select(1, &rows)
        .mean_dim([0].as_slice(), false, Kind::Float);
    let gap = |m: &Tensor| (m - &oracle).abs().mean(Kind::Float).double_value(&[]);
    let (before, after) = (
        gap(&forget_margins(&base, &data, &forgotten)),
        gap(&forget_margins(&v1, &data, &forgotten)),
    );
    eprintln!(
        "forget-set margin gap to the oracles: {before:.3} at version 0, {after:.3} at version 1"
    );
    assert!(
        after < 0.8 * before,
        "forget margins should move towards the oracles': gap {before:.3} before, {after:.3} after"
    );
    let report = result_a.audit.expect("the requests asked for an audit");
    let version = report.version.unwrap().forget.unwrap();
    assert!(
        version.margin_gap_after < version.margin_gap_before,
        "{version:?}"
    );
    // The audit: DMM applied to 16 originals, against 16 oracles (8 more held out).
    assert_eq!(report.method(), DeletionMethod::Dmm);
    assert_eq!(report.result.as_ref().unwrap().models, 16);
    assert_eq!(report.oracles, 16);
    assert_eq!(report.held_out_oracles, 8);
    let forget_klom = |of: &Option<AuditFigures>| {
        of.as_ref()
            .unwrap()
            .forget
            .as_ref()
            .unwrap()
            .klom
            .as_ref()
            .unwrap()
            .p95
    };
    eprintln!(
        "forget KLoM P95: do-nothing {:.3}, DMM {:.3}, noise floor {:.3}",
        forget_klom(&report.do_nothing),
        forget_klom(&report.result),
        forget_klom(&report.noise_floor)
    );
    assert!(
        forget_klom(&report.result) < forget_klom(&report.do_nothing),
        "DMM should bring the forget set's margins closer to the oracles' than doing nothing: {report:?}"
    );

    // A second request makes version 2 from version 1; a worker dies holding one of its tasks.
    let forget_c: Vec<i64> = (16..24).map(|i| i * 17).collect();
    let request_c = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget_c,
            audit_oracles: 16,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let victim_id: uuid::Uuid = loop {
        let owner: Option<uuid::Uuid> = lethe_store::sqlx::query_scalar(
            "SELECT t.lease_owner FROM tasks t JOIN jobs j ON j.id = t.job_id \
             JOIN workers w ON w.id = t.lease_owner \
             WHERE j.kind = 'deletion_run' AND j.id <> $1 AND t.state = 'leased' \
               AND w.name = 'first' LIMIT 1",
        )
        .bind(run)
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(owner) = owner {
            break owner;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill().unwrap();
    first.wait().unwrap();
    let mut third = stack.serve(WORKER, "third", Stdio::null());
    let done_c = watch(&mut client, &request_c.name).await;
    let result_c: DeletionResult = response(&done_c);
    let version_c = result_c.version.as_ref().unwrap();
    assert_eq!((version_c.version, version_c.forgotten_count), (2, 24));
    assert_eq!(result_c.from_version, 1);
    let expired: i64 = lethe_store::sqlx::query_scalar(
        "SELECT count(*) FROM task_attempts WHERE outcome = 'lease_expired' AND worker_id = $1",
    )
    .bind(victim_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(expired >= 1, "the killed worker's task was taken back");

    let versions = client
        .list_model_versions(call(ListModelVersionsRequest {
            model: "models/shoes".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .versions;
    let listed: Vec<(i32, i64)> = versions
        .iter()
        .map(|v| (v.version, v.forgotten_count))
        .collect();
    assert_eq!(listed, [(2, 24), (1, 16), (0, 0)]);

    // Past 5 % of the training set forgotten since version 0, the next run retrains from
    // scratch and indexes the new version; the request after it waits for that index, then
    // fine-tunes from the retrained anchor.
    // Indices 2 + 17i: none of them forgotten yet.
    let forget = |range: std::ops::Range<i64>| range.map(|i| 2 + i * 17).collect::<Vec<i64>>();
    let retrain = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget(0..8),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let retrained: DeletionResult = response(&watch(&mut client, &retrain.name).await);
    assert_eq!(retrained.version.as_ref().unwrap().version, 3);
    assert_eq!(retrained.method(), DeletionMethod::Retrain, "{retrained:?}");
    let after = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget(8..10),
            min_confidence: Some(1e-6),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let after: DeletionResult = response(&watch(&mut client, &after.name).await);
    assert_eq!(after.version.as_ref().unwrap().version, 4);
    assert_eq!(
        after.method(),
        DeletionMethod::Dmm,
        "a minimum its targets reach: DMM"
    );
    let confidence = after.matching.as_ref().and_then(|m| m.confidence.as_ref());
    assert!(
        confidence.is_some_and(|c| c.confidence > 0.0 && c.confidence <= 1.0),
        "{after:?}"
    );
    let fresh_index: i64 = lethe_store::sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'index_build' AND state = 'succeeded' \
           AND run_id = $1",
    )
    .bind(run_id(&retrained))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(fresh_index, 1, "the retrained version was indexed");
    let v4 = dir.path().join("v4.safetensors");
    let object = version_object(&after);
    artifact_store
        .download_verified(&object, &v4)
        .await
        .unwrap();
    let lineage = checkpoint::load(&v4, tch::Device::Cpu)
        .unwrap()
        .1
        .lineage
        .unwrap();
    assert_eq!(
        lineage.base_sha256,
        hex::encode(&retrained.version.as_ref().unwrap().sha256),
        "version 4 is anchored at the retrained version 3"
    );
    assert_eq!(lineage.forgotten, forget(8..10));

    // A minimum no prediction reaches: the run retrains from scratch instead, and says so.
    let strict = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget(10..11),
            min_confidence: Some(1.0),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let strict: DeletionResult = response(&watch(&mut client, &strict.name).await);
    let version = strict.version.as_ref().unwrap();
    assert_eq!((version.version, version.forgotten_count), (5, 35));
    assert_eq!(strict.method(), DeletionMethod::Retrain, "{strict:?}");
    let retrain = strict
        .retrain
        .as_ref()
        .expect("the retrain that stood in reports");
    assert!(
        retrain.min_confidence == Some(1.0) && retrain.confidence.is_some(),
        "the retrain says which confidence fell short of which minimum: {strict:?}"
    );
    assert!(strict.matching.is_none(), "{strict:?}");

    // A TRAK index of the retrained anchor (checkpoints, then featurisation shards, then the
    // reduce) serves the next request.
    let trak = client
        .create_index_build(call(CreateIndexBuildRequest {
            model: "models/shoes".into(),
            members: 64,
            estimator: IndexEstimator::Trak as i32,
            trak_checkpoints: 2,
            trak_projection_dim: 256,
            trak_shards: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let trak = watch(&mut client, &trak.name).await;
    let built: IndexBuildResult = response(&trak);
    let report = built.report.as_ref().unwrap();
    assert_eq!(report.estimator(), IndexEstimator::Trak, "{built:?}");
    assert!(report.trak_scale.unwrap() > 0.0, "{built:?}");
    assert_eq!((report.estimation_models, report.held_out_models), (2, 64));
    let with_trak = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget(11..12),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let with_trak: DeletionResult = response(&watch(&mut client, &with_trak.name).await);
    assert_eq!(with_trak.version.as_ref().unwrap().version, 6);
    let run = run_id(&with_trak);
    let index_used: uuid::Uuid =
        lethe_store::sqlx::query_scalar("SELECT (spec->>'index')::uuid FROM jobs WHERE id = $1")
            .bind(run)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(operation_name(index_used), trak.name);
    // Two checkpoints measure the TRAK index's noise: a minimum confidence is served.
    let assured = client
        .create_deletion_request(call(CreateDeletionRequestRequest {
            model: "models/shoes".into(),
            forget: forget(12..13),
            min_confidence: Some(1e-6),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let assured: DeletionResult = response(&watch(&mut client, &assured.name).await);
    assert_eq!(assured.version.as_ref().unwrap().version, 7, "{assured:?}");
    let confidence = assured
        .matching
        .as_ref()
        .and_then(|m| m.confidence.as_ref());
    assert!(
        confidence.is_some_and(|c| c.confidence > 0.0 && c.confidence <= 1.0),
        "{assured:?}"
    );

    third.kill().unwrap();
    third.wait().unwrap();
    second.kill().unwrap();
    second.wait().unwrap();
    stack.coordinator.shutdown().await.unwrap();
}

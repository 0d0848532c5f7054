//! Malformed objects behind registered names, through the service: a tenant registers
//! checkpoints and datasets that are garbage, truncated, not Lethe's, of the wrong hash, missing
//! or with the wrong tensors, and asks for index builds on them. Each operation must fail with a
//! reason that names the problem, no worker may die, and the service must go on serving a good
//! request afterwards.
//!
//! `LETHE_RELIABILITY_OUT=FILE` merges the figures into that JSON (`make chaos` does).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::WORKER;
use lethe_coordinator::CoordinatorConfig;
use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    CreateIndexBuildRequest, RegisterDatasetRequest, RegisterModelRequest, WatchOperationRequest,
};
use lethe_store::{RetryPolicy, StoreConfig};
use lethe_testkit::{reliability, watch_to_end, with_token, Stack};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tonic::transport::Channel;

struct Client {
    lethe: LetheClient<Channel>,
    token: String,
}

impl Client {
    fn call<T>(&self, message: T) -> tonic::Request<T> {
        with_token(&self.token, message)
    }

    async fn dataset(&mut self, id: &str, uri: String) {
        let request = self.call(RegisterDatasetRequest {
            dataset_id: id.into(),
            uri,
            sha256: vec![],
        });
        self.lethe.register_dataset(request).await.unwrap();
    }

    async fn model(&mut self, id: &str, dataset: &str, uri: String, sha256: Vec<u8>) {
        let request = self.call(RegisterModelRequest {
            model_id: id.into(),
            dataset: format!("datasets/{dataset}"),
            uri,
            sha256,
        });
        self.lethe.register_model(request).await.unwrap();
    }

    /// Builds a two-member index of `model` and follows it to its end.
    async fn index(&mut self, model: &str) -> Operation {
        let request = self.call(CreateIndexBuildRequest {
            model: format!("models/{model}"),
            members: 2,
            members_per_task: 2,
            ..Default::default()
        });
        let name = self
            .lethe
            .create_index_build(request)
            .await
            .unwrap()
            .into_inner()
            .name;
        let request = self.call(WatchOperationRequest { name });
        let stream = self
            .lethe
            .watch_operation(request)
            .await
            .unwrap()
            .into_inner();
        watch_to_end(stream, Duration::from_secs(300), async |_| {}).await
    }
}

/// A dataset split in the safetensors layout workers read: `x` images, `y` labels.
fn split(path: &Path, labels: Kind) {
    let x = Tensor::randint(256, [64, 1, 28, 28], (Kind::Uint8, Device::Cpu));
    let y = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu)).to_kind(labels);
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_fail_their_operation_with_a_reason() {
    // Quick retries: a missing object is retried like any read that may succeed later.
    let store = StoreConfig {
        lease: Duration::from_secs(5),
        retry: RetryPolicy {
            initial: Duration::from_millis(100),
            multiplier: 1.0,
            max: Duration::from_millis(100),
        },
        ..StoreConfig::default()
    };
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("malformed")
        .store(store)
        .coordinator(config)
        .tokens()
        .start()
        .await;
    let root = stack.artifacts_root().to_path_buf();
    let objects = root.join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let artifacts = stack.artifacts_url();
    let url = |name: &str| format!("{artifacts}/objects/{name}");

    // One good checkpoint; the rest are made from it or from nothing.
    let good = objects.join("good.safetensors");
    common::train_on_fmnist_tiny(&good, &["--epochs", "1"]);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(
        objects.join("garbage.safetensors"),
        b"\x00\x01 not a checkpoint at all",
    )
    .unwrap();
    std::fs::write(
        objects.join("truncated.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    split(&objects.join("foreign.safetensors"), Kind::Int64);
    for (prefix, train, val) in [
        ("bad-train", None, Some(Kind::Int64)),
        ("no-val", Some(Kind::Int64), None),
        ("float-labels", Some(Kind::Float), Some(Kind::Float)),
    ] {
        let dir = objects.join(prefix);
        std::fs::create_dir_all(&dir).unwrap();
        match train {
            Some(kind) => split(&dir.join("train.safetensors"), kind),
            None => std::fs::write(dir.join("train.safetensors"), b"garbage").unwrap(),
        }
        if let Some(kind) = val {
            split(&dir.join("val.safetensors"), kind);
        }
    }

    let mut client = Client {
        lethe: LetheClient::connect(stack.endpoint()).await.unwrap(),
        token: stack.tenant_token().to_string(),
    };
    client.dataset("tiny", "builtin:fmnist-tiny".into()).await;
    let other_hash = Sha256::digest(b"other bytes").to_vec();
    let mut cases: Vec<(&str, &str)> = Vec::new();
    for (model, uri, sha256, hint) in [
        ("garbage", url("garbage.safetensors"), vec![], "safetensors"),
        (
            "truncated",
            url("truncated.safetensors"),
            vec![],
            "safetensors",
        ),
        (
            "foreign",
            url("foreign.safetensors"),
            vec![],
            "not a lethe checkpoint",
        ),
        ("wrong-hash", url("good.safetensors"), other_hash, "sha-256"),
        ("missing", url("missing.safetensors"), vec![], "not found"),
    ] {
        client.model(model, "tiny", uri, sha256).await;
        cases.push((model, hint));
    }
    for (dataset, hint) in [
        ("bad-train", "safetensors"),
        ("no-val", "not found"),
        ("float-labels", "int64"),
    ] {
        client.dataset(dataset, url(dataset)).await;
        let model = format!("on-{dataset}");
        client
            .model(&model, dataset, url("good.safetensors"), vec![])
            .await;
        cases.push((model.leak(), hint));
    }

    let mut workers = [
        stack.serve(WORKER, "one", Stdio::null()),
        stack.serve(WORKER, "two", Stdio::null()),
    ];
    let mut wrong = Vec::new();
    for (model, hint) in &cases {
        let operation = client.index(model).await;
        if let Some(operation::Result::Error(status)) = &operation.result {
            eprintln!("{model}: {}", status.message);
        }
        match &operation.result {
            Some(operation::Result::Error(status))
                if status.message.to_lowercase().contains(hint) => {}
            other => wrong.push(format!(
                "{model}: {other:?} (expected a failure naming {hint:?})"
            )),
        }
    }
    let mut crashed = 0;
    for worker in &mut workers {
        if worker.try_wait().unwrap().is_some() {
            crashed += 1;
        }
    }

    // The service still serves a good request.
    client
        .model("good", "tiny", url("good.safetensors"), vec![])
        .await;
    let good = client.index("good").await;
    assert!(
        matches!(good.result, Some(operation::Result::Response(_))),
        "{good:?}"
    );

    let report = serde_json::json!({
        "malformed_objects": cases.len(),
        "malformed_objects_wrong": wrong.len(),
        "malformed_objects_worker_crashes": crashed,
    });
    eprintln!("malformed objects: {report}");
    if let Ok(path) = std::env::var("LETHE_RELIABILITY_OUT") {
        reliability::merge_into(Path::new(&path), &report);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(crashed, 0, "a worker died");
}

//! The public API through a second gRPC stack: `clients/conformance`, pytest over Python stubs
//! that grpcio-tools generates from `proto/`, against a real coordinator, PostgreSQL and one
//! `lethe-worker serve` process. The Python side checks names, limits, errors, progress,
//! typed results and downloads (docs/service.md); this side only starts what it needs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::WORKER;
use lethe_coordinator::CoordinatorConfig;
use lethe_store::CredentialKind;
use lethe_testkit::{output_text, Stack};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's virtualenv Python (`make setup` installs grpcio-tools and pytest there).
fn python() -> PathBuf {
    let python = repository().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (it installs grpcio, grpcio-tools and pytest)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_meets_the_api_as_documented() {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        coalescing_window: Duration::from_secs(1),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database("conformance")
        .lease(Duration::from_secs(5))
        .coordinator(config)
        .tokens()
        .start()
        .await;
    let other_token = stack
        .store
        .create_credential(
            CredentialKind::Tenant,
            Some("globex"),
            "globex-conformance",
            "conformance test",
        )
        .await
        .unwrap()
        .token;

    // The deployed model: an MLP trained on fmnist-tiny, in the artifact store.
    std::fs::create_dir_all(stack.artifacts_root().join("models")).unwrap();
    let model = stack.artifacts_root().join("models/base.safetensors");
    let trained = Command::new(WORKER)
        .args([
            "train",
            "--dataset",
            "fmnist-tiny",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(trained.status.success(), "{}", output_text(&trained));
    let _worker = stack.serve(WORKER, "conformance", Stdio::null());

    let endpoint = stack.endpoint();
    let address = endpoint.trim_start_matches("http://").to_string();
    let pytest = tokio::process::Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .arg(repository().join("clients/conformance"))
        .env("LETHE_COORDINATOR", address)
        .env("LETHE_TOKEN", stack.tenant_token())
        .env("LETHE_OTHER_TOKEN", other_token)
        .env("LETHE_ARTIFACTS", stack.artifacts_url())
        .env("LETHE_MODEL", format!("file://{}", model.display()))
        .output()
        .await
        .unwrap();
    assert!(
        pytest.status.success(),
        "the conformance suite failed:\n{}",
        output_text(&pytest)
    );
}

//! Python suites against a real stack: a coordinator with API tokens (tenants acme and
//! globex), PostgreSQL, an MLP trained on fmnist-tiny in the artifact store, and one
//! `lethe-worker serve` process. The suite gets where they are in `LETHE_*` variables.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lethe_coordinator::CoordinatorConfig;
use lethe_store::CredentialKind;
use lethe_testkit::{output_text, Stack};

use super::WORKER;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's virtualenv Python (`make setup` installs grpcio, pytest and lethe_client).
fn python() -> PathBuf {
    let python = repository().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup`",
        python.display()
    );
    python
}

/// Runs pytest over `suite` (a directory of the repository) against a fresh stack, and
/// fails with pytest's output unless every test passed.
pub(crate) async fn pytest_against_a_stack(database: &str, suite: &str) {
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(200),
        coalescing_window: Duration::from_secs(1),
        ..CoordinatorConfig::default()
    };
    let stack = Stack::builder()
        .database(database)
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
            "globex-python",
            "python suites",
        )
        .await
        .unwrap()
        .token;

    let model = stack.artifacts_root().join("models/base.safetensors");
    super::train_on_fmnist_tiny(&model, &[]);
    let _worker = stack.serve(WORKER, database, Stdio::null());

    let address = stack.endpoint().trim_start_matches("http://").to_string();
    let pytest = tokio::process::Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repository().join(suite))
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
        "{suite} failed:\n{}",
        output_text(&pytest)
    );
    let stdout = String::from_utf8_lossy(&pytest.stdout);
    eprintln!("{suite}: {}", stdout.trim().lines().last().unwrap_or(""));
}

//! What the service tests of this crate share: PostgreSQL, a coordinator and worker processes
//! on loopback.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub(crate) mod browser;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lethe_artifacts::StoredObject;
use lethe_coordinator::{AuthMode, Coordinator, CoordinatorConfig, RunningCoordinator};
use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::DeletionResult;
use lethe_store::{CredentialKind, Durability, LocalCluster, Store, StoreConfig};

/// `message` as a call with `token` as its bearer token.
pub(crate) fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The response of an operation that succeeded, as its kind's result message; panics if it
/// did not succeed or responded with another type.
pub(crate) fn response<M: prost::Name + Default>(operation: &Operation) -> M {
    match &operation.result {
        Some(operation::Result::Response(any)) => any
            .to_msg()
            .unwrap_or_else(|e| panic!("{} responded with {}: {e}", operation.name, any.type_url)),
        other => panic!("{} did not succeed: {other:?}", operation.name),
    }
}

/// The checkpoint of the version a deletion made, as a client downloads it.
pub(crate) fn version_object(result: &DeletionResult) -> StoredObject {
    let version = result
        .version
        .as_ref()
        .expect("a deletion names its version");
    StoredObject {
        uri: version.uri.clone(),
        sha256: version.sha256.as_slice().try_into().unwrap(),
        size: version.size_bytes,
    }
}

/// The uuid of a deletion's run.
pub(crate) fn run_id(result: &DeletionResult) -> uuid::Uuid {
    result
        .run
        .strip_prefix("operations/")
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads a `WatchOperation` stream to its end, handing each operation to `each`; returns the
/// last one. Panics if the stream fails or does not end within `limit`.
pub(crate) async fn watch_to_end(
    mut stream: tonic::Streaming<Operation>,
    limit: Duration,
    mut each: impl AsyncFnMut(&Operation),
) -> Operation {
    let mut last = None;
    let following = async {
        while let Some(operation) = stream.message().await.unwrap() {
            each(&operation).await;
            last = Some(operation);
        }
    };
    tokio::time::timeout(limit, following)
        .await
        .unwrap_or_else(|_| panic!("the operation ends within {limit:?}"));
    last.expect("the watch sent the operation at least once")
}

/// A private PostgreSQL cluster (stopped when dropped), a store on it and a coordinator that
/// wants API tokens, with one for tenant `acme` and one for workers.
pub(crate) struct Stack {
    pub(crate) cluster: LocalCluster,
    pub(crate) store: Store,
    pub(crate) coordinator: RunningCoordinator,
    pub(crate) tenant_token: String,
    pub(crate) worker_token: String,
    pub(crate) admin_token: String,
    /// The coordinator's Prometheus endpoint.
    pub(crate) metrics: std::net::SocketAddr,
    /// The coordinator's dashboard.
    pub(crate) dashboard: std::net::SocketAddr,
}

/// A stack whose leases last `lease`.
pub(crate) async fn stack(database: &str, lease: Duration, config: CoordinatorConfig) -> Stack {
    let store = StoreConfig {
        lease,
        ..StoreConfig::default()
    };
    stack_with(database, store, config).await
}

/// A stack with these store settings.
pub(crate) async fn stack_with(
    database: &str,
    store: StoreConfig,
    config: CoordinatorConfig,
) -> Stack {
    let cluster = LocalCluster::start_temporary(Durability::Fast).unwrap();
    let url = cluster.create_database(database).unwrap();
    let store = Store::connect(&url, store).await.unwrap();
    let tenant_token = store
        .create_credential(CredentialKind::Tenant, Some("acme"), "acme-tests", "tests")
        .await
        .unwrap()
        .token;
    let worker_token = store
        .create_credential(CredentialKind::Worker, None, "test-workers", "tests")
        .await
        .unwrap()
        .token;
    let admin_token = store
        .create_credential(CredentialKind::Admin, None, "test-operators", "tests")
        .await
        .unwrap()
        .token;
    let config = CoordinatorConfig {
        auth: AuthMode::Tokens,
        ..config
    };
    let replica = Coordinator::new(store.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    tokio::spawn(replica.serve_metrics(listener, std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = listener.local_addr().unwrap();
    tokio::spawn(replica.serve_dashboard(listener, std::future::pending()));
    let coordinator = replica.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Stack {
        cluster,
        store,
        coordinator,
        tenant_token,
        worker_token,
        admin_token,
        metrics,
        dashboard,
    }
}

/// A worker process, killed when dropped: a failing test must not leave workers polling a
/// coordinator that is gone.
pub(crate) struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lethe-worker serve` on the CPU against `endpoint` with the worker `token`, writing to
/// `artifacts`.
pub(crate) fn serve(
    endpoint: &str,
    token: &str,
    artifacts: &str,
    name: &str,
    stderr: Stdio,
) -> Worker {
    serve_with(endpoint, token, artifacts, name, stderr, &[])
}

/// [`serve`] with more flags.
pub(crate) fn serve_with(
    endpoint: &str,
    token: &str,
    artifacts: &str,
    name: &str,
    stderr: Stdio,
    flags: &[&str],
) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_lethe-worker"))
        .args(["serve", "--coordinator", endpoint, "--artifacts", artifacts])
        .args(["--name", name, "--cpu", "--drain-grace-seconds", "5"])
        .args(flags)
        .env("LETHE_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start lethe-worker serve");
    Worker(child)
}

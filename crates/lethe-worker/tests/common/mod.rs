//! What the service tests of this crate share: PostgreSQL, a coordinator and worker processes
//! on loopback.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lethe_coordinator::{Coordinator, CoordinatorConfig, RunningCoordinator};
use lethe_store::{Durability, LocalCluster, Store, StoreConfig};

/// A private PostgreSQL cluster (stopped when dropped), a store on it and a coordinator.
pub(crate) struct Stack {
    pub(crate) cluster: LocalCluster,
    pub(crate) store: Store,
    pub(crate) coordinator: RunningCoordinator,
}

/// A stack whose leases last `lease`.
pub(crate) async fn stack(database: &str, lease: Duration, config: CoordinatorConfig) -> Stack {
    let cluster = LocalCluster::start_temporary(Durability::Fast).unwrap();
    let url = cluster.create_database(database).unwrap();
    let store = Store::connect(
        &url,
        StoreConfig {
            lease,
            ..StoreConfig::default()
        },
    )
    .await
    .unwrap();
    let coordinator = Coordinator::new(store.clone(), config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Stack {
        cluster,
        store,
        coordinator,
    }
}

/// `lethe-worker serve` on the CPU against `endpoint`, writing to `artifacts`.
pub(crate) fn serve(endpoint: &str, artifacts: &str, name: &str, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lethe-worker"))
        .args(["serve", "--coordinator", endpoint, "--artifacts", artifacts])
        .args(["--name", name, "--cpu", "--drain-grace-seconds", "5"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start lethe-worker serve")
}

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

/// `lethe-worker serve` on the CPU against `endpoint`, writing to `artifacts`.
pub(crate) fn serve(endpoint: &str, artifacts: &str, name: &str, stderr: Stdio) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_lethe-worker"))
        .args(["serve", "--coordinator", endpoint, "--artifacts", artifacts])
        .args(["--name", name, "--cpu", "--drain-grace-seconds", "5"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start lethe-worker serve");
    Worker(child)
}

//! [`Stack`]: PostgreSQL, a store, a coordinator on loopback, an artifact store and workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lethe_artifacts::ArtifactStore;
use lethe_coordinator::{
    AuthMode, Coordinator, CoordinatorConfig, RunningCoordinator, TlsSettings,
};
use lethe_proto::google::longrunning::Operation;
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{Device, WatchOperationRequest};
use lethe_runner::{RunSummary, Runner, RunnerConfig, TaskHandler};
use lethe_store::{
    CredentialKind, Durability, JobKind, JobState, LocalCluster, NewJob, NewTask, Store,
    StoreConfig,
};
use tonic::transport::{Channel, ClientTlsConfig};
use uuid::Uuid;

use crate::calls::{as_tenant, watch_to_end, with_token};
use crate::process::{worker_command, Process};

/// The tenant a stack's tenant credential belongs to, and the one tests act as.
pub const TENANT: &str = "acme";
/// The name of the tenant credential [`StackBuilder::tokens`] issues (the audit log's actor).
pub const TENANT_CREDENTIAL: &str = "acme-tests";
/// The name of the admin credential [`StackBuilder::tokens`] issues.
pub const ADMIN_CREDENTIAL: &str = "test-operators";
/// The name of the worker credential [`StackBuilder::tokens`] issues.
pub const WORKER_CREDENTIAL: &str = "test-workers";

type RunnerSetup = Arc<dyn Fn(&mut Runner) + Send + Sync>;
type ConfigSetup = Arc<dyn Fn(&mut RunnerConfig) + Send + Sync>;

/// What [`Stack::builder`] starts; every setting has the default a plain test wants.
pub struct StackBuilder {
    database: String,
    store: StoreConfig,
    coordinator: CoordinatorConfig,
    tokens: bool,
    metrics: bool,
    dashboard: bool,
    workers: usize,
    private_cluster: bool,
    tls: Option<(TlsSettings, ClientTlsConfig)>,
    worker_config: Vec<ConfigSetup>,
    handlers: Vec<RunnerSetup>,
}

impl StackBuilder {
    /// The database's name (made unique with a suffix, since a test binary's stacks share a
    /// cluster); it shows in PostgreSQL's logs, nowhere else.
    pub fn database(mut self, name: &str) -> Self {
        self.database = name.into();
        self
    }

    /// The store's settings (leases, retries, pool).
    pub fn store(mut self, config: StoreConfig) -> Self {
        self.store = config;
        self
    }

    /// How long a claim or heartbeat keeps a task leased.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.store.lease = lease;
        self
    }

    /// The coordinator's settings. Its `auth` and `tls` are overridden by [`Self::tokens`] and
    /// [`Self::tls`] whichever order they are called in.
    pub fn coordinator(mut self, config: CoordinatorConfig) -> Self {
        self.coordinator = config;
        self
    }

    /// API tokens: the coordinator wants them (`AuthMode::Tokens`), and the stack issues one
    /// for tenant [`TENANT`], one for workers and one for operators. Without it the
    /// coordinator trusts the `x-lethe-tenant` header, as embedded coordinators do.
    pub fn tokens(mut self) -> Self {
        self.tokens = true;
        self
    }

    /// Serves the coordinator's Prometheus endpoint ([`Stack::metrics`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Serves the coordinator's dashboard ([`Stack::dashboard`]).
    pub fn dashboard(mut self) -> Self {
        self.dashboard = true;
        self
    }

    /// Starts `count` in-process workers (runners with the built-in noop kind and any
    /// [`Self::handle`]d ones) that work until the stack is shut down or dropped.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Adjusts the configuration of the workers [`Self::workers`] starts (slots, poll wait,
    /// drain grace), after the kit's defaults ([`Stack::runner_config`]).
    pub fn worker_config(
        mut self,
        setup: impl Fn(&mut RunnerConfig) + Send + Sync + 'static,
    ) -> Self {
        self.worker_config.push(Arc::new(setup));
        self
    }

    /// Gives the stack's in-process workers (and [`Stack::runner`]s) a handler for `kind`.
    pub fn handle<H>(mut self, kind: &str, handler: H) -> Self
    where
        H: TaskHandler + Clone + Send + Sync + 'static,
    {
        let kind = kind.to_string();
        self.handlers.push(Arc::new(move |runner: &mut Runner| {
            runner.handle(&kind, handler.clone())
        }));
        self
    }

    /// A PostgreSQL cluster of the stack's own, stopped when the stack is dropped: for a test
    /// that stops or restarts it ([`Stack::cluster`]). By default a stack takes a fresh
    /// database on the test binary's shared cluster, which is quicker.
    pub fn private_cluster(mut self) -> Self {
        self.private_cluster = true;
        self
    }

    /// TLS: the coordinator serves with `settings` (mutual TLS for workers if it names a
    /// worker CA), and the stack's channel and workers connect with `client`.
    pub fn tls(mut self, settings: TlsSettings, client: ClientTlsConfig) -> Self {
        self.tls = Some((settings, client));
        self
    }

    /// Only the database and a store on it: for a test that runs the coordinator binary
    /// itself. Tokens, workers and the coordinator's settings do not apply.
    pub async fn database_only(self) -> Database {
        open_database(&self.database, self.private_cluster, self.store).await
    }

    /// Starts it all; panics (saying what) if any part does not start.
    pub async fn start(self) -> Stack {
        let Database {
            store,
            url,
            name: database,
            cluster,
        } = open_database(&self.database, self.private_cluster, self.store).await;

        let tokens = if self.tokens {
            let issue = |kind, tenant, name: &'static str| {
                let store = store.clone();
                async move {
                    store
                        .create_credential(kind, tenant, name, "lethe-testkit")
                        .await
                        .unwrap_or_else(|e| panic!("issue the {name} credential: {e}"))
                        .token
                }
            };
            Some(Tokens {
                tenant: issue(CredentialKind::Tenant, Some(TENANT), TENANT_CREDENTIAL).await,
                worker: issue(CredentialKind::Worker, None, WORKER_CREDENTIAL).await,
                admin: issue(CredentialKind::Admin, None, ADMIN_CREDENTIAL).await,
            })
        } else {
            None
        };

        let mut config = self.coordinator;
        if tokens.is_some() {
            config.auth = AuthMode::Tokens;
        }
        let client_tls = self.tls.map(|(settings, client)| {
            config.tls = Some(settings);
            client
        });
        let artifacts_dir = tempfile::tempdir().expect("a temporary directory for artifacts");
        let artifacts_root = artifacts_dir.path().join("artifacts");
        let artifacts = ArtifactStore::open(&format!("file://{}", artifacts_root.display()))
            .unwrap_or_else(|e| panic!("open the artifact store: {e}"));
        // The coordinator serves downloads from the store its workers write to.
        if config.artifacts.is_none() {
            config.artifacts = Some(artifacts.clone());
        }
        let replica = Coordinator::new(store.clone(), config);
        let metrics = match self.metrics {
            true => {
                let listener = loopback().await;
                let address = listener.local_addr().expect("a bound address");
                tokio::spawn(replica.serve_metrics(listener, std::future::pending()));
                Some(address)
            }
            false => None,
        };
        let dashboard = match self.dashboard {
            true => {
                let listener = loopback().await;
                let address = listener.local_addr().expect("a bound address");
                tokio::spawn(replica.serve_dashboard(listener, std::future::pending()));
                Some(address)
            }
            false => None,
        };
        let coordinator = replica
            .clone()
            .spawn("127.0.0.1:0".parse().expect("a loopback address"))
            .await
            .unwrap_or_else(|e| panic!("start the coordinator: {e}"));
        let endpoint = match client_tls {
            Some(_) => format!("https://127.0.0.1:{}", coordinator.address.port()),
            None => coordinator.endpoint(),
        };
        let mut channel = Channel::from_shared(endpoint.clone()).expect("a valid endpoint");
        if let Some(tls) = &client_tls {
            channel = channel
                .tls_config(tls.clone())
                .unwrap_or_else(|e| panic!("the client's TLS settings: {e}"));
        }
        let channel = channel
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the coordinator at {endpoint}: {e}"));

        let mut stack = Stack {
            store,
            url,
            replica,
            coordinator,
            channel,
            artifacts,
            endpoint,
            database,
            tokens,
            metrics,
            dashboard,
            client_tls,
            worker_config: self.worker_config,
            handlers: self.handlers,
            workers: Vec::new(),
            artifacts_root,
            _artifacts_dir: artifacts_dir,
            cluster,
        };
        for n in 0..self.workers {
            let mut config = stack.runner_config(&format!("{}-worker-{n}", stack.database));
            for setup in &stack.worker_config {
                setup(&mut config);
            }
            let runner = stack.runner_with(config);
            stack.workers.push(spawn_runner(runner));
        }
        stack
    }
}

/// A fresh database (on the shared cluster or a private one) and a store on it.
async fn open_database(name: &str, private_cluster: bool, config: StoreConfig) -> Database {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("{name}_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    // Starting a cluster (initdb, pg_ctl) and creating a database block.
    let database = name.clone();
    let (cluster, url) = tokio::task::spawn_blocking(move || {
        let cluster = if private_cluster {
            let cluster = LocalCluster::start_temporary(Durability::Fast)
                .unwrap_or_else(|e| panic!("start a private PostgreSQL cluster: {e}"));
            Cluster::Private(cluster)
        } else {
            LocalCluster::shared().unwrap_or_else(|e| panic!("start PostgreSQL: {e}"));
            Cluster::Shared
        };
        let url = cluster
            .get()
            .create_database(&database)
            .unwrap_or_else(|e| panic!("create database {database}: {e}"));
        (cluster, url)
    })
    .await
    .expect("starting PostgreSQL panicked");
    let store = Store::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Database {
        store,
        url,
        name,
        cluster,
    }
}

/// A database of its own and a store on it ([`StackBuilder::database_only`]).
pub struct Database {
    pub store: Store,
    pub url: String,
    /// Its name, as made unique.
    pub name: String,
    // Last: a private cluster stops after the store's connections are closed.
    cluster: Cluster,
}

impl Database {
    /// The PostgreSQL cluster it is on.
    pub fn cluster(&self) -> &LocalCluster {
        self.cluster.get()
    }
}

async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind a loopback port: {e}"))
}

struct Tokens {
    tenant: String,
    worker: String,
    admin: String,
}

/// The shared cluster is a `'static` of the process (stopped when it exits); a private one is
/// owned, and stopped when the stack is dropped.
enum Cluster {
    Shared,
    Private(LocalCluster),
}

impl Cluster {
    fn get(&self) -> &LocalCluster {
        match self {
            Cluster::Shared => LocalCluster::shared().expect("the shared cluster is up"),
            Cluster::Private(cluster) => cluster,
        }
    }
}

/// A running stack. It has no `Drop` of its own, so a test may move fields out (to shut the
/// coordinator down, say); the in-process workers drain when it is dropped.
pub struct Stack {
    pub store: Store,
    /// The database's URL, for direct connections (locks, audit queries).
    pub url: String,
    /// The coordinator the server runs, for serving more of it (metrics on a listener of the
    /// test's own).
    pub replica: Coordinator,
    pub coordinator: RunningCoordinator,
    /// A connected channel to the coordinator (over TLS with [`StackBuilder::tls`]).
    pub channel: Channel,
    /// The artifact store the stack's workers write to, in a temporary directory.
    pub artifacts: ArtifactStore,
    endpoint: String,
    database: String,
    tokens: Option<Tokens>,
    metrics: Option<SocketAddr>,
    dashboard: Option<SocketAddr>,
    client_tls: Option<ClientTlsConfig>,
    worker_config: Vec<ConfigSetup>,
    handlers: Vec<RunnerSetup>,
    workers: Vec<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<RunSummary>,
    )>,
    artifacts_root: PathBuf,
    _artifacts_dir: tempfile::TempDir,
    // Last: a private cluster stops after the store's connections are closed.
    cluster: Cluster,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            database: "lethe".into(),
            store: StoreConfig::default(),
            coordinator: CoordinatorConfig::default(),
            tokens: false,
            metrics: false,
            dashboard: false,
            workers: 0,
            private_cluster: false,
            tls: None,
            worker_config: Vec::new(),
            handlers: Vec::new(),
        }
    }

    /// A stack with every default: a database, a coordinator trusting tenant headers, no
    /// workers.
    pub async fn start() -> Stack {
        Self::builder().start().await
    }

    /// Where clients reach the coordinator (`https://` with [`StackBuilder::tls`]).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The PostgreSQL cluster the database is on (the binary's shared one unless
    /// [`StackBuilder::private_cluster`]).
    pub fn cluster(&self) -> &LocalCluster {
        self.cluster.get()
    }

    fn tokens(&self) -> &Tokens {
        self.tokens
            .as_ref()
            .expect("the stack was built without .tokens(): it issued no credentials")
    }

    /// Tenant [`TENANT`]'s token.
    pub fn tenant_token(&self) -> &str {
        &self.tokens().tenant
    }

    /// The workers' token.
    pub fn worker_token(&self) -> &str {
        &self.tokens().worker
    }

    /// The operators' (admin) token.
    pub fn admin_token(&self) -> &str {
        &self.tokens().admin
    }

    /// `message` as a call of tenant [`TENANT`], as this stack's coordinator authenticates it
    /// (its token, or its tenant header).
    pub fn call<T>(&self, message: T) -> tonic::Request<T> {
        match &self.tokens {
            Some(tokens) => with_token(&tokens.tenant, message),
            None => as_tenant(TENANT, message),
        }
    }

    /// The coordinator's Prometheus endpoint.
    pub fn metrics(&self) -> SocketAddr {
        self.metrics
            .expect("the stack was built without .metrics()")
    }

    /// The coordinator's dashboard.
    pub fn dashboard(&self) -> SocketAddr {
        self.dashboard
            .expect("the stack was built without .dashboard()")
    }

    /// The artifact store's `file://` URL, as workers and clients are given it.
    pub fn artifacts_url(&self) -> String {
        format!("file://{}", self.artifacts_root.display())
    }

    /// The artifact store's directory (created by the first write).
    pub fn artifacts_root(&self) -> &Path {
        &self.artifacts_root
    }

    /// A runner's configuration against this stack: CPU, one slot, a 2 s long-poll, a short
    /// drain grace, the worker token and client TLS where the stack has them.
    pub fn runner_config(&self, name: &str) -> RunnerConfig {
        RunnerConfig {
            endpoint: self.endpoint(),
            name: name.into(),
            device: Device::Cpu,
            memory_bytes: 1 << 34,
            slots: 1,
            poll_wait: Duration::from_secs(2),
            drain_grace: Duration::from_millis(300),
            token: self.tokens.as_ref().map(|tokens| tokens.worker.clone()),
            tls: self.client_tls.clone(),
        }
    }

    /// A runner named `name` with the stack's handlers, not started (see [`spawn_runner`]).
    pub fn runner(&self, name: &str) -> Runner {
        self.runner_with(self.runner_config(name))
    }

    /// A runner with this configuration and the stack's handlers, not started.
    pub fn runner_with(&self, config: RunnerConfig) -> Runner {
        let mut runner = Runner::new(config, self.artifacts.clone());
        for setup in &self.handlers {
            setup(&mut runner);
        }
        runner
    }

    /// A job of noop tasks for `tenant` straight in the store, one task per spec (`seconds`,
    /// `artifact_bytes`, …), as if it had been created through the API.
    pub async fn noop_job(
        &self,
        tenant: &str,
        specs: impl IntoIterator<Item = serde_json::Value>,
    ) -> Uuid {
        let job = NewJob {
            tenant: tenant.into(),
            kind: JobKind::Noop,
            request_id: None,
            spec: serde_json::json!({}),
            priority: 0,
            deadline: None,
            tasks: specs
                .into_iter()
                .map(|spec| NewTask::new("noop", spec))
                .collect(),
            admission: None,
        };
        self.store
            .create_job(&job)
            .await
            .unwrap_or_else(|e| panic!("create a noop job: {e}"))
            .0
            .id
    }

    /// Polls `tenant`'s `job` until it is terminal or `within` has passed (a bound on a hung
    /// test), and returns its state then.
    pub async fn wait_terminal(&self, tenant: &str, job: Uuid, within: Duration) -> JobState {
        let deadline = Instant::now() + within;
        loop {
            let state = self
                .store
                .get_job(tenant, job)
                .await
                .unwrap_or_else(|e| panic!("read job {job}: {e}"))
                .state;
            if state.is_terminal() || Instant::now() > deadline {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follows operation `name` of tenant [`TENANT`] with WatchOperation to its end (see
    /// [`watch_to_end`]) and returns it.
    pub async fn watch(&self, name: &str, limit: Duration) -> Operation {
        let stream = LetheClient::new(self.channel.clone())
            .watch_operation(self.call(WatchOperationRequest { name: name.into() }))
            .await
            .unwrap_or_else(|e| panic!("watch {name}: {e}"))
            .into_inner();
        watch_to_end(stream, limit, async |_| {}).await
    }

    /// A worker process: `binary serve` (the test's `lethe-worker`) against this stack, with
    /// the worker token, writing to the stack's artifact store, killed when dropped.
    pub fn serve(&self, binary: impl AsRef<Path>, name: &str, stderr: Stdio) -> Process {
        self.serve_with(binary, name, stderr, &[])
    }

    /// [`Self::serve`] with more flags.
    pub fn serve_with(
        &self,
        binary: impl AsRef<Path>,
        name: &str,
        stderr: Stdio,
        flags: &[&str],
    ) -> Process {
        let token = self
            .tokens
            .as_ref()
            .map(|tokens| tokens.worker.as_str())
            .unwrap_or_default();
        let mut command =
            worker_command(binary, &self.endpoint, token, &self.artifacts_url(), name);
        command.args(["--drain-grace-seconds", "5"]).args(flags);
        Process::spawn(name, &mut command, stderr)
    }

    /// Stops the in-process workers (they drain), then the coordinator; returns what each
    /// worker did.
    pub async fn shutdown(self) -> Vec<RunSummary> {
        let mut summaries = Vec::new();
        for (stop, worker) in self.workers {
            let _ = stop.send(());
            summaries.push(worker.await.expect("a worker panicked"));
        }
        self.coordinator
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("the coordinator's shutdown: {e}"));
        summaries
    }
}

/// Runs `runner` on the current runtime until the sender fires (or is dropped); the handle
/// gives its summary. Panics in the task if the runner fails.
pub fn spawn_runner(
    runner: Runner,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<RunSummary>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap_or_else(|e| panic!("the runner failed: {e}"))
    });
    (stop, handle)
}

//! Assembles the coordinator: the public and worker services, health and reflection over one
//! gRPC server, and the maintenance loop that every replica runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lethe_proto::google::longrunning::operations_server::OperationsServer;
use lethe_proto::lethe::v1::admin_server::AdminServer;
use lethe_proto::lethe::v1::lethe_server::LetheServer;
use lethe_proto::lethe::v1::worker_service_server::WorkerServiceServer;
use lethe_store::{GroupCommit, GroupCommitLimits, Store};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::Status;

use crate::admin_api::AdminApi;
use crate::auth::{AuthMode, Credentials, GateLayer};
use crate::metrics::Metrics;
use crate::operations::OperationsApi;
use crate::status::overloaded_status;
use crate::tenant::TenantCalls;
use crate::wake::Wakeups;
use crate::worker_api::{WorkerApi, MAX_LONG_POLL};

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often a waiting long-poll or Wait re-reads the database when nothing woke it: the
    /// bound on how late a change made through another replica is seen.
    pub poll_interval: Duration,
    /// How often this replica reaps expired leases, expires deadlines and plans deletion runs.
    pub maintenance_interval: Duration,
    /// How long the oldest pending deletion request of a model waits for others to join its
    /// run: requests that arrive together are served by one fine-tune.
    pub coalescing_window: Duration,
    /// Fraction of the training set forgotten past which a deletion run retrains from scratch
    /// (and indexes the new version) instead of fine-tuning: DMM's linear predictions hold
    /// for small removals.
    pub retrain_threshold: f64,
    /// How callers prove who they are. The default here is trusted headers, for tests and
    /// embedding; the `lethe-coordinator` binary defaults to tokens.
    pub auth: AuthMode,
    /// Calls served at once (long-polls aside); past it, calls are refused with
    /// RESOURCE_EXHAUSTED instead of queueing behind the database pool.
    pub max_concurrent_calls: usize,
    /// Of those, the most one tenant's calls may hold, so that others are still served.
    pub max_concurrent_calls_per_tenant: usize,
    /// WaitOperation, WatchOperation and AcquireTask calls held open at once.
    pub max_long_polls: usize,
    /// Unfinished jobs a tenant may have, unless its own quota says otherwise.
    pub max_active_jobs_per_tenant: u32,
    /// URL prefixes tenants may register datasets and models under (`{tenant}` is the
    /// caller's); empty, any URL the store accepts.
    pub registration_url_prefixes: Vec<String>,
    /// TLS for every connection; with a client CA, workers must present a certificate it
    /// signed (mutual TLS) while public API clients need not.
    pub tls: Option<TlsSettings>,
}

/// The coordinator's TLS identity and, for mutual TLS with workers, the CA of their
/// certificates (PEM bytes).
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
    pub worker_ca: Option<Vec<u8>>,
}

impl TlsSettings {
    fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.certificate, &self.key));
        match &self.worker_ca {
            // Optional at the handshake, so that public API clients connect without a
            // certificate; the gate refuses worker calls that came without one.
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => config,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            maintenance_interval: Duration::from_secs(2),
            coalescing_window: Duration::from_secs(10),
            retrain_threshold: 0.05,
            auth: AuthMode::TrustedHeader,
            max_concurrent_calls: 512,
            max_concurrent_calls_per_tenant: 256,
            max_long_polls: 2048,
            max_active_jobs_per_tenant: 1000,
            registration_url_prefixes: Vec::new(),
            tls: None,
        }
    }
}

/// Refusals written to the audit log at once; past it they are only in the process log.
const AUDIT_WRITES: usize = 64;

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) wake: Wakeups,
    pub(crate) config: CoordinatorConfig,
    pub(crate) credentials: Credentials,
    /// Permits for calls in flight, long-polls aside.
    pub(crate) calls: Arc<Semaphore>,
    /// Each tenant's share of `calls`.
    pub(crate) tenant_calls: Arc<TenantCalls>,
    /// Permits for long-polls held open.
    pub(crate) long_polls: Arc<Semaphore>,
    /// Permits for refusals being written to the audit log in the background.
    pub(crate) audit_writes: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Completions go through one queue per replica, batched under load; started on first use,
    /// inside the runtime that serves the calls.
    completions: std::sync::OnceLock<GroupCommit>,
    /// Worker id → the token it registered with, as read from the database (they never change).
    pub(crate) worker_bindings: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, uuid::Uuid>>,
}

impl Shared {
    pub(crate) fn completions(&self) -> &GroupCommit {
        self.completions.get_or_init(|| {
            let metrics = self.metrics.clone();
            GroupCommit::start_observed(
                self.store.clone(),
                GroupCommitLimits::default(),
                move |size| metrics.completion_statement(size),
            )
        })
    }

    pub(crate) fn calls_limit(&self) -> usize {
        self.config.max_concurrent_calls
    }

    /// Records the end of job `id` (and of the requests a deletion run served) in the metrics.
    pub(crate) async fn observe_finished(&self, id: uuid::Uuid) {
        match self.store.ended_with(id).await {
            Ok(jobs) => {
                for job in jobs {
                    if let Some(finished) = job.finished_at {
                        let seconds = (finished - job.created_at).as_seconds_f64();
                        self.metrics
                            .operation_finished(job.kind, job.state, seconds);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, job = %id, "reading a finished job for metrics"),
        }
    }

    /// A long-poll permit, or RESOURCE_EXHAUSTED when as many are open as allowed.
    pub(crate) fn long_poll(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.long_polls
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded_status("long-polls", self.config.max_long_polls))
    }

    /// The poll interval, ±25 %, so that idle workers do not poll in step.
    pub(crate) fn jittered_poll_interval(&self) -> Duration {
        self.config
            .poll_interval
            .mul_f64(rand::rng().random_range(0.75..1.25))
    }
}

/// One coordinator replica. It holds no authority: any number of them can serve one database.
/// Clones are the same replica (its gRPC server and its metrics endpoint share one state).
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
}

impl Coordinator {
    pub fn new(store: Store, config: CoordinatorConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                wake: Wakeups::new(),
                credentials: Credentials::default(),
                calls: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
                tenant_calls: TenantCalls::new(config.max_concurrent_calls_per_tenant),
                long_polls: Arc::new(Semaphore::new(config.max_long_polls.max(1))),
                audit_writes: Arc::new(Semaphore::new(AUDIT_WRITES)),
                metrics: Arc::new(Metrics::new()),
                completions: std::sync::OnceLock::new(),
                worker_bindings: Default::default(),
                config,
            }),
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains in-flight calls. The health
    /// service says NOT_SERVING from the moment shutdown begins, so load balancers stop sending.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
        health
            .set_serving::<OperationsServer<OperationsApi>>()
            .await;
        health.set_serving::<LetheServer<OperationsApi>>().await;
        health.set_serving::<AdminServer<AdminApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lethe_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are valid");

        let maintenance = tokio::spawn(maintain(self.shared.clone()));
        let shutdown = async move {
            shutdown.await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerApi>>()
                .await;
            health
                .set_not_serving::<OperationsServer<OperationsApi>>()
                .await;
            health.set_not_serving::<LetheServer<OperationsApi>>().await;
            health.set_not_serving::<AdminServer<AdminApi>>().await;
        };
        // tonic's own TCP_NODELAY applies only to listeners it binds: without it here, Nagle's
        // algorithm holds back the end of small answers until the client acknowledges the start.
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            accepted.inspect(|stream| {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::warn!(%error, "could not set TCP_NODELAY on a connection");
                }
            })
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.shared.config.tls {
            builder = builder.tls_config(tls.server_config())?;
        }
        let result = builder
            // Above the longest long-poll, so the server never cuts one short.
            .timeout(MAX_LONG_POLL + Duration::from_secs(30))
            .layer(tower::util::MapResponseLayer::new(
                crate::status::undecodable_is_invalid_argument,
            ))
            .layer(GateLayer {
                shared: self.shared.clone(),
            })
            .add_service(health_service)
            .add_service(reflection)
            .add_service(WorkerServiceServer::new(WorkerApi {
                shared: self.shared.clone(),
            }))
            .add_service(OperationsServer::new(OperationsApi {
                shared: self.shared.clone(),
            }))
            .add_service(LetheServer::new(OperationsApi {
                shared: self.shared.clone(),
            }))
            .add_service(AdminServer::new(AdminApi {
                shared: self.shared.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        maintenance.abort();
        result
    }
}

impl Coordinator {
    /// Serves this replica's Prometheus metrics at `/metrics` on `listener` until `shutdown`.
    pub fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        crate::metrics::serve(
            listener,
            self.shared.store.clone(),
            self.shared.metrics.clone(),
            shutdown,
        )
    }
}

impl Coordinator {
    /// Serves the read-only dashboard at `/` on `listener` until `shutdown`.
    pub fn serve_dashboard(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        crate::dashboard::serve(listener, self.shared.clone(), shutdown)
    }
}

/// A coordinator serving in the background of this process: the all-in-one local stack, tests
/// and benchmarks.
pub struct RunningCoordinator {
    pub address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Coordinator {
    /// Binds `address` (port 0 for any free port) and serves in a background task.
    pub async fn spawn(self, address: std::net::SocketAddr) -> std::io::Result<RunningCoordinator> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningCoordinator {
            address,
            stop: Some(stop),
            task,
        })
    }
}

impl RunningCoordinator {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops accepting calls, lets in-flight ones finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

/// Reaps expired leases, finalises finished jobs, plans deletion runs and expires deadlines. Every replica runs it; the store's queries
/// skip rows another replica holds, so they never do the same work twice.
async fn maintain(shared: Arc<Shared>) {
    loop {
        let pause = shared
            .config
            .maintenance_interval
            .mul_f64(rand::rng().random_range(0.75..1.25));
        tokio::time::sleep(pause).await;
        match shared.store.reap_expired_leases(1000).await {
            Ok(0) => {}
            Ok(n) => {
                shared.metrics.leases_expired(n);
                tracing::info!(tasks = n, "requeued tasks whose lease expired");
                shared.wake.tasks_available(n as usize);
            }
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
        match shared.store.finalize_finished_jobs(1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "finalised jobs whose last completion was not"),
            Err(e) => tracing::warn!(error = %e, "finalising finished jobs failed"),
        }
        match shared.plan_deletion_runs().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "planned deletion runs"),
            Err(e) => tracing::warn!(error = %e, "planning deletion runs failed"),
        }
        match shared.store.expire_deadlines(1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "failed jobs past their deadline"),
            Err(e) => tracing::warn!(error = %e, "expiring deadlines failed"),
        }
    }
}

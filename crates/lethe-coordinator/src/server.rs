//! Assembles a replica: the public, worker and admin services behind the gate, health and
//! reflection, over one gRPC server; beside it the maintenance loop, and on their own
//! listeners the metrics endpoint and the dashboard. Nothing is decided here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lethe_proto::google::longrunning::operations_server::OperationsServer;
use lethe_proto::lethe::v1::admin_server::AdminServer;
use lethe_proto::lethe::v1::lethe_server::LetheServer;
use lethe_proto::lethe::v1::worker_service_server::WorkerServiceServer;
use lethe_store::Store;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::admin_api::AdminApi;
use crate::config::CoordinatorConfig;
use crate::gate::layer::GateLayer;
use crate::limits::MAX_REQUEST_BYTES;
use crate::maintenance::maintain;
use crate::public_api::PublicApi;
use crate::state::Shared;
use crate::worker_api::{WorkerApi, MAX_LONG_POLL};

/// One coordinator replica. It holds no authority: any number of them can serve one database.
/// Clones are the same replica (its gRPC server and its metrics endpoint share one state).
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
}

impl Coordinator {
    pub fn new(store: Store, config: CoordinatorConfig) -> Self {
        Self {
            shared: Arc::new(Shared::new(store, config)),
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
        health.set_serving::<OperationsServer<PublicApi>>().await;
        health.set_serving::<LetheServer<PublicApi>>().await;
        health.set_serving::<AdminServer<AdminApi>>().await;
        // Both versions of reflection: grpcio's client and many tools still ask v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(lethe_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .expect("the embedded descriptor sets are valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the embedded descriptor sets are valid");

        let maintenance = tokio::spawn(maintain(self.shared.clone()));
        let shutdown = async move {
            shutdown.await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerApi>>()
                .await;
            health
                .set_not_serving::<OperationsServer<PublicApi>>()
                .await;
            health.set_not_serving::<LetheServer<PublicApi>>().await;
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
            .layer(tower::util::MapResponseLayer::new(
                crate::status::oversized_is_invalid_argument,
            ))
            .layer(GateLayer {
                gate: self.shared.gate.clone(),
            })
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(WorkerServiceServer::new(WorkerApi {
                shared: self.shared.clone(),
            }))
            .add_service(
                OperationsServer::new(PublicApi {
                    shared: self.shared.clone(),
                })
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                LetheServer::new(PublicApi {
                    shared: self.shared.clone(),
                })
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
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

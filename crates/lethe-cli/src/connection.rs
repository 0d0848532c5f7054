//! The connection to the coordinator: where it is, whom to act for, and the client every
//! command calls through (tenant, token and trace on every call).

use anyhow::Context;
use clap::Args;
use lethe_config::logging::{join_trace, TraceContext};
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use tonic::transport::Channel;

/// Where the coordinator is and whom to act for.
#[derive(Args, Debug, Clone)]
pub(crate) struct Connection {
    /// The coordinator's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "LETHE_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// The tenant to act for, where the coordinator trusts a header (`auth = "trusted-header"`);
    /// with tokens, the token says the tenant.
    #[arg(long, global = true, env = "LETHE_TENANT", default_value = "default")]
    tenant: String,
    /// Your tenant's API token (`lethe-coordinator credentials create --tenant ...`). Prefer the
    /// LETHE_TOKEN variable: a flag is visible to other users in `ps`.
    #[arg(long, global = true, env = "LETHE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate: connect over TLS (use an
    /// https:// --coordinator).
    #[arg(long, global = true, env = "LETHE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// An OpenTelemetry collector's OTLP/HTTP address (`http://localhost:4318`): export this
    /// command's span, the root of the trace its calls carry.
    #[arg(long, global = true, env = "LETHE_OTLP_ENDPOINT", value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
}

pub(crate) struct Client {
    channel: Channel,
    tenant: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// One trace per command: every call it makes carries it (`traceparent`), and the
    /// coordinator and the workers log the work under it.
    trace: TraceContext,
}

impl Client {
    pub(crate) async fn connect(connection: &Connection) -> anyhow::Result<Self> {
        let tenant = connection
            .tenant
            .parse()
            .context("--tenant must be printable ASCII")?;
        let authorization = match &connection.token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .context("--token must be printable ASCII")?,
            ),
            None => None,
        };
        let mut endpoint = Channel::from_shared(connection.coordinator.clone())
            .with_context(|| format!("--coordinator {:?} is not a URL", connection.coordinator))?;
        if let Some(ca) = &connection.tls_ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --tls-ca {}", ca.display()))?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
                .context("--tls-ca")?;
        }
        let channel = endpoint.connect().await.with_context(|| {
            format!(
                "connecting to the coordinator at {}",
                connection.coordinator
            )
        })?;
        let trace = join_trace(&tracing::Span::current(), None);
        tracing::info!(trace_id = %trace.trace_id, coordinator = %connection.coordinator, "connected");
        Ok(Self {
            channel,
            tenant,
            authorization,
            trace,
        })
    }

    pub(crate) fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("x-lethe-tenant", self.tenant.clone());
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Ok(traceparent) = self.trace.traceparent().parse() {
            request.metadata_mut().insert("traceparent", traceparent);
        }
        request
    }

    pub(crate) fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel.clone())
    }

    pub(crate) fn lethe(&self) -> LetheClient<Channel> {
        LetheClient::new(self.channel.clone())
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

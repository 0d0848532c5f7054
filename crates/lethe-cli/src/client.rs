//! The gRPC client verbs: operations (list, get, watch, wait, cancel) and the smoke test.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lethe_config::logging::{join_trace, TraceContext};
use lethe_proto::google::longrunning::operations_client::OperationsClient;
use lethe_proto::google::longrunning::{
    operation, CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use lethe_proto::lethe::v1::lethe_client::LetheClient;
use lethe_proto::lethe::v1::{
    CreateNoopOperationRequest, GetDatasetRequest, GetModelRequest, OperationKind,
    OperationMetadata, OperationState, RegisterDatasetRequest, RegisterModelRequest,
    WatchOperationRequest,
};
use prost::Message;
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

#[derive(Subcommand, Debug)]
pub(crate) enum OperationsVerb {
    /// List operations, newest first.
    List {
        /// `state=RUNNING`, `kind=DELETION`, or both joined by ` AND `.
        #[arg(long, default_value = "")]
        filter: String,
        /// Operations per page; every page is fetched.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
    },
    /// Show one operation.
    Get { name: String },
    /// Follow an operation with a progress bar until it is done.
    Watch { name: String },
    /// Wait until an operation is done (or the timeout passes) and show it.
    Wait {
        name: String,
        #[arg(long, default_value_t = 60.0)]
        timeout_seconds: f64,
    },
    /// Cancel an operation: queued work stops now, running work at its next heartbeat.
    Cancel { name: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DatasetsVerb {
    /// Register a dataset by object-store URL (file:///... or s3://...).
    Register {
        /// The dataset's id: 1 to 100 of [a-z0-9._-].
        id: String,
        uri: String,
        /// SHA-256 of the object, in hex, checked by workers on every read.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Show a dataset.
    Get { id: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ModelsVerb {
    /// Register a model trained on a registered dataset.
    Register {
        id: String,
        uri: String,
        /// The dataset it was trained on.
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Show a model.
    Get { id: String },
    /// List a model's versions, newest first.
    Versions { id: String },
}

#[derive(Args, Debug)]
pub(crate) struct SmokeArgs {
    /// No-op tasks to run.
    #[arg(long, default_value_t = 4)]
    tasks: u32,
    /// Seconds each task waits.
    #[arg(long, default_value_t = 1.0)]
    task_seconds: f64,
    /// Bytes of the artifact each task writes (0: none).
    #[arg(long, default_value_t = 1024)]
    artifact_bytes: u64,
    /// Idempotency key: running the same command again returns the same operation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Print the operation and return without watching it.
    #[arg(long)]
    no_watch: bool,
}

pub(crate) fn operations(connection: Connection, verb: OperationsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        match verb {
            OperationsVerb::List { filter, page_size } => client.list(filter, page_size).await,
            OperationsVerb::Get { name } => {
                let operation = client
                    .operations()
                    .get_operation(client.call(GetOperationRequest { name }))
                    .await?;
                print_operation(&operation.into_inner(), true);
                Ok(())
            }
            OperationsVerb::Watch { name } => client.watch(name).await,
            OperationsVerb::Wait {
                name,
                timeout_seconds,
            } => {
                let timeout = Duration::try_from_secs_f64(timeout_seconds)
                    .context("--timeout-seconds must be a non-negative number")?;
                let request = WaitOperationRequest {
                    name,
                    timeout: Some(timeout.try_into()?),
                };
                let operation = client
                    .operations()
                    .wait_operation(client.call(request))
                    .await?;
                print_operation(&operation.into_inner(), true);
                Ok(())
            }
            OperationsVerb::Cancel { name } => {
                client
                    .operations()
                    .cancel_operation(client.call(CancelOperationRequest { name: name.clone() }))
                    .await?;
                println!("cancellation requested for {name}");
                Ok(())
            }
        }
    })
}

pub(crate) fn datasets(connection: Connection, verb: DatasetsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let dataset = match verb {
            DatasetsVerb::Register { id, uri, sha256 } => {
                let request = RegisterDatasetRequest {
                    dataset_id: id,
                    uri,
                    sha256: parse_hash(sha256)?,
                };
                client
                    .lethe()
                    .register_dataset(client.call(request))
                    .await?
            }
            DatasetsVerb::Get { id } => {
                let request = GetDatasetRequest {
                    name: format!("datasets/{id}"),
                };
                client.lethe().get_dataset(client.call(request)).await?
            }
        }
        .into_inner();
        println!(
            "{}  {}  sha256 {}",
            dataset.name,
            dataset.uri,
            hex_or_none(&dataset.sha256)
        );
        Ok(())
    })
}

pub(crate) fn models(connection: Connection, verb: ModelsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let model = match verb {
            ModelsVerb::Register {
                id,
                uri,
                dataset,
                sha256,
            } => {
                let request = RegisterModelRequest {
                    model_id: id,
                    dataset: format!("datasets/{dataset}"),
                    uri,
                    sha256: parse_hash(sha256)?,
                };
                client.lethe().register_model(client.call(request)).await?
            }
            ModelsVerb::Get { id } => {
                let request = GetModelRequest {
                    name: format!("models/{id}"),
                };
                client.lethe().get_model(client.call(request)).await?
            }
            ModelsVerb::Versions { id } => return crate::submit::print_versions(&client, id).await,
        }
        .into_inner();
        println!(
            "{}  trained on {}  {}  sha256 {}",
            model.name,
            model.dataset,
            model.uri,
            hex_or_none(&model.sha256)
        );
        Ok(())
    })
}

fn parse_hash(text: Option<String>) -> anyhow::Result<Vec<u8>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    hex::decode(&text)
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .with_context(|| format!("--sha256 {text:?} is not 64 hex digits"))
}

fn hex_or_none(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "(none)".into()
    } else {
        hex::encode(bytes)
    }
}

pub(crate) fn smoke(connection: Connection, args: SmokeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let request = CreateNoopOperationRequest {
            request_id: args.request_id,
            tasks: args.tasks,
            task_seconds: args.task_seconds,
            artifact_bytes: args.artifact_bytes,
            priority: 0,
        };
        let operation = client
            .lethe()
            .create_noop_operation(client.call(request))
            .await?
            .into_inner();
        if args.no_watch {
            print_operation(&operation, false);
            return Ok(());
        }
        println!("{}", operation.name);
        client.watch(operation.name).await
    })
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

    async fn list(&self, filter: String, page_size: i32) -> anyhow::Result<()> {
        let mut page_token = String::new();
        let mut shown = 0;
        loop {
            let request = ListOperationsRequest {
                filter: filter.clone(),
                page_size,
                page_token,
                ..Default::default()
            };
            let page = self
                .operations()
                .list_operations(self.call(request))
                .await?
                .into_inner();
            for operation in &page.operations {
                print_operation(operation, false);
            }
            shown += page.operations.len();
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if shown == 0 {
            eprintln!("no operations");
        }
        Ok(())
    }

    pub(crate) async fn watch(&self, name: String) -> anyhow::Result<()> {
        let mut stream = self
            .lethe()
            .watch_operation(self.call(WatchOperationRequest { name: name.clone() }))
            .await?
            .into_inner();
        let bar = ProgressBar::new(1000).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {percent:>3}% {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut last = None;
        while let Some(operation) = stream.message().await? {
            let metadata = metadata(&operation);
            bar.set_position((metadata.progress * 1000.0).round() as u64);
            bar.set_message(progress_line(&metadata));
            last = Some(operation);
        }
        bar.finish_and_clear();
        let Some(operation) = last else {
            anyhow::bail!("the watch of {name} ended without an update")
        };
        print_operation(&operation, true);
        match &operation.result {
            Some(operation::Result::Error(status)) => {
                anyhow::bail!("{name} did not succeed: {}", status.message)
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn metadata(operation: &Operation) -> OperationMetadata {
    operation
        .metadata
        .as_ref()
        .and_then(|any| OperationMetadata::decode(any.value.as_slice()).ok())
        .unwrap_or_default()
}

fn progress_line(metadata: &OperationMetadata) -> String {
    let tasks = metadata.tasks.unwrap_or_default();
    format!(
        "{:<10} {}/{} tasks done, {} running",
        state_name(metadata.state),
        tasks.succeeded,
        tasks.total,
        tasks.running
    )
}

fn state_name(state: i32) -> &'static str {
    OperationState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("OPERATION_STATE_"))
        .unwrap_or("UNKNOWN")
}

pub(crate) fn print_operation(operation: &Operation, detailed: bool) {
    let metadata = metadata(operation);
    let kind = OperationKind::try_from(metadata.kind)
        .map(|k| k.as_str_name().trim_start_matches("OPERATION_KIND_"))
        .unwrap_or("UNKNOWN");
    let created = metadata
        .create_time
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    println!(
        "{}  {:<11} {:>4.0}%  {}  created {created}",
        operation.name,
        kind,
        metadata.progress * 100.0,
        progress_line(&metadata)
    );
    if !detailed {
        return;
    }
    if !metadata.request_id.is_empty() {
        println!("  request_id: {}", metadata.request_id);
    }
    match &operation.result {
        Some(operation::Result::Error(status)) => {
            let code = tonic::Code::from_i32(status.code);
            let reason = lethe_proto::failures::reason_of(status)
                .map(|reason| format!(" [{}]", lethe_proto::failures::reason_name(reason)))
                .unwrap_or_default();
            println!("  error: {code:?}{reason}: {}", status.message);
        }
        Some(operation::Result::Response(any)) => {
            for line in crate::summary::response(any) {
                println!("  {line}");
            }
        }
        None => {}
    }
}

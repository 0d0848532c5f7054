//! `lethe-worker serve`: the worker process of the service. It advertises this machine's
//! device and memory, then runs tasks for the coordinator until SIGTERM or Ctrl-C, when it
//! drains (finishes or hands back what it holds).

use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lethe_artifacts::ArtifactStore;
use lethe_config::logging::LogFormat;
use lethe_config::otlp::OtlpExport;
use lethe_config::ConfigError;
use lethe_proto::lethe::v1::Device;
use lethe_runner::{Runner, RunnerConfig};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How the settings are named in each layer: shown by `serve --help` and `dump-config --help`.
pub(crate) const SETTINGS_HELP: &str = "Every flag is also a key of the --config file \
    (`--drain-grace-seconds` is `drain_grace_seconds`) and a LETHE_ variable \
    (LETHE_DRAIN_GRACE_SECONDS). Precedence: defaults < file < environment < flags.";

/// The worker's settings: built-in defaults < TOML file < `LETHE_<KEY>` variables < flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// The coordinator's gRPC endpoint.
    coordinator: String,
    /// Where artifacts live: file:///path or s3://bucket/prefix (S3 settings from AWS_*).
    artifacts: Option<String>,
    /// Name shown to operators; by default the host name and process id.
    name: Option<String>,
    /// Tasks run at once.
    slots: u32,
    /// Run on the CPU even when CUDA is available.
    cpu: bool,
    /// Seconds running tasks may take to finish after SIGTERM before they are handed back.
    drain_grace_seconds: f64,
    /// The worker credential's token (`lethe-coordinator credentials create --worker`). Secret:
    /// prefer LETHE_TOKEN or the config file to the flag, which other users can see in `ps`.
    token: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate: connect over TLS
    /// (the endpoint is then https://).
    tls_ca: Option<PathBuf>,
    /// PEM certificate and key of this worker, for coordinators that require mutual TLS.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Address to serve this worker's Prometheus metrics on (`/metrics`); none by default.
    metrics_listen: Option<std::net::SocketAddr>,
    /// `text` for people, `json` (one object per line, each task's `trace_id` among the
    /// fields) for log pipelines. The level is `RUST_LOG` (default `info`).
    log_format: LogFormat,
    /// The OTLP/HTTP address of an OpenTelemetry collector (`http://otel-collector:4318`) to
    /// export each task's span to, in the trace of the request it serves; none by default.
    otlp_endpoint: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            coordinator: "http://127.0.0.1:50051".into(),
            artifacts: None,
            name: None,
            slots: 1,
            cpu: false,
            drain_grace_seconds: 30.0,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.artifacts.is_none() {
            return Err(ConfigError::key(
                "artifacts",
                "is required: file:///path or s3://bucket/prefix",
            ));
        }
        if self.slots == 0 {
            return Err(ConfigError::key("slots", "must be at least 1"));
        }
        if !(self.drain_grace_seconds.is_finite() && self.drain_grace_seconds >= 0.0) {
            return Err(ConfigError::key(
                "drain_grace_seconds",
                format!(
                    "must be a non-negative number, got {}",
                    self.drain_grace_seconds
                ),
            ));
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::key(
                "token",
                "is empty: issue one with `lethe-coordinator credentials create --worker`",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::key(
                "tls_cert",
                "and tls_key go together: give both or neither",
            ));
        }
        Ok(())
    }

    /// The settings with the token hidden, for printing.
    fn redacted(&self) -> Self {
        Settings {
            token: self.token.as_ref().map(|_| "(hidden)".into()),
            ..self.clone()
        }
    }
}

/// Command-line flags of `serve` and `dump-config`: each overrides the key of the same name
/// (`--drain-grace-seconds` is `drain_grace_seconds` and LETHE_DRAIN_GRACE_SECONDS).
#[derive(Args, Debug, Default, Serialize)]
pub(crate) struct ServeFlags {
    /// A TOML file of settings (keys as the flags, with `_`); also `LETHE_CONFIG`.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The coordinator's gRPC endpoint [default: http://127.0.0.1:50051].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator: Option<String>,
    /// Where artifacts live: file:///path or s3://bucket/prefix (S3 settings from AWS_*).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    artifacts: Option<String>,
    /// Name shown to operators [default: the host name and process id].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Tasks run at once [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<u32>,
    /// Run on the CPU even when CUDA is available (`--cpu` or `--cpu=false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<bool>,
    /// Seconds running tasks may take to finish after SIGTERM before they are handed back
    /// [default: 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_grace_seconds: Option<f64>,
    /// The worker credential's token; prefer LETHE_TOKEN, which `ps` does not show.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate (TLS).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    /// PEM certificate of this worker, for mutual TLS.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of this worker, for mutual TLS.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Address to serve this worker's metrics on, at /metrics [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log lines as `text` or `json` [default: text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// OpenTelemetry collector to export spans to, over OTLP/HTTP [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
}

impl ServeFlags {
    fn unvalidated(&self) -> Result<Settings, ConfigError> {
        lethe_config::load(self.config.as_deref(), std::env::vars(), self)
    }
}

/// `lethe-worker dump-config`: the settings as they resolve, as a TOML file.
pub(crate) fn dump_config(flags: ServeFlags) -> anyhow::Result<()> {
    let settings = flags.unvalidated()?;
    print!("{}", lethe_config::to_toml(&settings.redacted())?);
    settings.validate()?;
    Ok(())
}

/// The TLS settings of the connection to the coordinator, read from the PEM files named.
fn client_tls(settings: &Settings) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &settings.tls_ca else {
        return Ok(None);
    };
    let read = |key: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {} ({key})", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("tls_ca", ca)?));
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read("tls_cert", cert)?,
            read("tls_key", key)?,
        ));
    }
    Ok(Some(tls))
}

pub(crate) fn run(flags: ServeFlags) -> anyhow::Result<()> {
    let args = flags.unvalidated()?;
    args.validate()?;
    let export = args.otlp_endpoint.clone().map(|endpoint| OtlpExport {
        endpoint,
        service: "lethe-worker",
        unsampled_roots: &[],
    });
    let _telemetry = lethe_config::logging::init(args.log_format, "info", export.as_ref())?;
    let tls = client_tls(&args)?;
    let metrics_listen = args.metrics_listen;
    let artifacts_url = args.artifacts.clone().unwrap_or_default();
    let artifacts = open_artifacts(&artifacts_url)?;
    let cuda = !args.cpu && tch::Cuda::is_available();
    let device = if cuda { Device::Cuda } else { Device::Cpu };
    let tch_device = if cuda {
        tch::Device::Cuda(0)
    } else {
        tch::Device::Cpu
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
    let config = RunnerConfig {
        endpoint: args.coordinator,
        name: name.clone(),
        device,
        memory_bytes: memory_bytes(),
        slots: args.slots.max(1),
        poll_wait: Duration::from_secs(30),
        drain_grace: Duration::from_secs_f64(args.drain_grace_seconds),
        token: args.token.clone(),
        tls,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        eprintln!(
            "lethe-worker {name}: {device:?}, {} slot(s), serving {}",
            config.slots, config.endpoint
        );
        let mut runner = Runner::new(config, artifacts);
        crate::tasks::register(&mut runner, tch_device);
        if let Some(address) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address} (metrics_listen)"))?;
            tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
            let metrics = runner.metrics();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let text = metrics.encode();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                    }
                }),
            );
            // Ends with the process: a drain keeps answering scrapes to the last.
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        anyhow::Ok(runner.run(shutdown_signal()).await?)
    })?;
    eprintln!(
        "lethe-worker {name}: stopped; {} completed, {} failed, {} cancelled, {} lost to another attempt, {} handed back",
        summary.completed, summary.failed, summary.cancelled, summary.fenced, summary.handed_back
    );
    Ok(())
}

/// How long a worker waits for an artifact store it cannot open before giving up: an outage
/// passes, a wrong setting does not.
const ARTIFACTS_PATIENCE: Duration = Duration::from_secs(60);

fn open_artifacts(url: &str) -> anyhow::Result<ArtifactStore> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match ArtifactStore::open(url) {
            Ok(store) => return Ok(store),
            Err(error) if started.elapsed() < ARTIFACTS_PATIENCE => {
                tracing::warn!(%error, "cannot open the artifact store; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "opening artifacts (tried for {} s)",
                    ARTIFACTS_PATIENCE.as_secs()
                )))
            }
        }
    }
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// Memory the worker can give a task: the GPU's when it has one would be better; until the
/// engine reports it, the machine's total memory.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

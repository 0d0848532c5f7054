//! `lethe-coordinator`: serves the public and worker APIs against a PostgreSQL database.

use std::process::ExitCode;
use std::time::Duration;

mod admin;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lethe_config::otlp::OtlpExport;
use lethe_coordinator::settings::{Database, Flags, Settings};
use lethe_coordinator::{AuthMode, Coordinator, CoordinatorConfig};
use lethe_store::{Durability, LocalCluster, Store, StoreConfig};

/// How the settings are named in each layer: shown by every command's --help.
const SETTINGS_HELP: &str = "Every flag is also a key of the --config file (`--lease-seconds` \
                             is `lease_seconds`) and a LETHE_ variable (LETHE_LEASE_SECONDS). \
                             Precedence: defaults < file < environment < flags.";

#[derive(Parser, Debug)]
#[command(name = "lethe-coordinator", version, about, after_help = SETTINGS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the gRPC APIs (what runs without a subcommand).
    #[command(after_help = SETTINGS_HELP)]
    Serve,
    /// Apply the database migrations and exit (a deployment's migration job).
    #[command(after_help = SETTINGS_HELP)]
    Migrate,
    /// Print the settings as they resolve, as a TOML file, with secrets hidden.
    #[command(after_help = SETTINGS_HELP)]
    DumpConfig,
    /// Issue, list and revoke API tokens (in the database the settings name).
    #[command(subcommand)]
    Credentials(admin::CredentialsCommand),
    /// Set a tenant's quota of unfinished operations.
    Quota(admin::QuotaCommand),
    /// Print the audit log, one JSON object per line, oldest first.
    AuditLog(admin::AuditLogCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::DumpConfig = command {
        let settings = cli.flags.unvalidated(std::env::vars())?;
        print!("{}", lethe_config::to_toml(&settings.redacted())?);
        settings.validate()?;
        return Ok(());
    }
    let settings = cli.flags.settings(std::env::vars())?;
    // Logs go to stderr: stdout carries what commands print (a new token, the audit log).
    // The operator's one-off commands print their answer; the database's chatter is noise there.
    let level = match command {
        Command::Serve | Command::Migrate => "info",
        _ => "warn",
    };
    let export = settings.otlp_endpoint.clone().map(|endpoint| OtlpExport {
        endpoint,
        service: "lethe-coordinator",
        // Workers poll and heartbeat thousands of times a second; those calls serve no request.
        unsampled_roots: &["lethe.v1.WorkerService/"],
    });
    let _telemetry = lethe_config::logging::init(settings.log_format, level, export.as_ref())?;
    match command {
        Command::DumpConfig => unreachable!("handled above"),
        Command::Credentials(command) => {
            with_database(&settings, |url| admin::credentials(url, command)).await
        }
        Command::Quota(command) => with_database(&settings, |url| admin::quota(url, command)).await,
        Command::AuditLog(command) => {
            with_database(&settings, |url| admin::audit_log(url, command)).await
        }
        Command::Migrate => {
            let url = database_url(&settings).await?;
            lethe_store::migrate(&url)
                .await
                .context("applying migrations (database_url)")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => serve(settings).await,
    }
}

/// The database URL, starting the embedded cluster first when that is the setting.
async fn database_url(settings: &Settings) -> anyhow::Result<String> {
    match settings.database()? {
        Database::Url(url) => Ok(url),
        Database::Embedded(dir) => {
            let started = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let cluster = LocalCluster::init(&dir, Durability::Durable).with_context(|| {
                    format!("creating the embedded database in {}", dir.display())
                })?;
                cluster.start().with_context(|| {
                    format!("starting the embedded database in {}", dir.display())
                })?;
                // However this process ends, the cluster stops after it.
                cluster.stop_when_process_exits(std::process::id())?;
                let url = cluster.create_database("lethe")?;
                tracing::info!(directory = %dir.display(), port = cluster.port(), "embedded PostgreSQL started");
                Ok(url)
            });
            started.await?
        }
    }
}

/// Runs a one-off command against the database. An embedded database that a running
/// coordinator serves is used as it is; one that is stopped is started for the command and
/// stopped after it.
async fn with_database<F, Fut>(settings: &Settings, command: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let dir = match settings.database()? {
        Database::Url(url) => return command(url).await,
        Database::Embedded(dir) => dir,
    };
    let (url, started) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        if let Some(cluster) = LocalCluster::running(&dir)? {
            return Ok((cluster.url("lethe"), None));
        }
        let cluster = LocalCluster::init(&dir, Durability::Durable)
            .with_context(|| format!("creating the embedded database in {}", dir.display()))?;
        cluster
            .start()
            .with_context(|| format!("starting the embedded database in {}", dir.display()))?;
        let url = cluster.create_database("lethe")?;
        Ok((url, Some(cluster)))
    })
    .await??;
    let outcome = command(url).await;
    if let Some(cluster) = started {
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    outcome
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store_config = StoreConfig {
        lease: Duration::from_secs_f64(settings.lease_seconds),
        max_connections: settings.db_max_connections,
        ..StoreConfig::default()
    };
    let url = database_url(&settings).await?;
    // A database that is not up yet, or restarting, is waited for; a refusal (a wrong URL or
    // password, a failed migration) ends the process.
    let mut backoff = Duration::from_millis(200);
    let store = loop {
        match Store::connect(&url, store_config.clone()).await {
            Ok(store) => break store,
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "database unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown_signal() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context("connecting to the database (database_url)")
                )
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {} (listen)", settings.listen))?;
    tracing::info!(address = %listener.local_addr()?, "coordinator serving");
    let config = CoordinatorConfig {
        tls: settings.tls()?,
        artifacts: settings.artifact_store()?,
        ..settings.coordinator_config()
    };
    if config.auth == AuthMode::TrustedHeader {
        tracing::warn!(
            "auth = \"trusted-header\": callers are believed about their tenant; serve only \
             behind a gateway that authenticates them"
        );
    }
    let coordinator = Coordinator::new(store, config);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut side_servers = Vec::new();
    if let Some(address) = settings.metrics_listen {
        let listener = bind(address, "metrics_listen").await?;
        tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
        side_servers.push(tokio::spawn(
            coordinator.serve_metrics(listener, until_stopped()),
        ));
    }
    if let Some(address) = settings.dashboard_listen {
        let listener = bind(address, "dashboard_listen").await?;
        tracing::info!(address = %listener.local_addr()?, "dashboard at /");
        side_servers.push(tokio::spawn(
            coordinator.serve_dashboard(listener, until_stopped()),
        ));
    }
    coordinator.serve(listener, shutdown_signal()).await?;
    let _ = stop.send(true);
    for server in side_servers {
        server.await??;
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

async fn bind(address: std::net::SocketAddr, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address} ({key})"))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

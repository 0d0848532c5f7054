//! `lethe-coordinator`: serves the public and worker APIs against a PostgreSQL database.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lethe_coordinator::{Coordinator, CoordinatorConfig};
use lethe_store::{Store, StoreConfig};

#[derive(Parser, Debug)]
#[command(name = "lethe-coordinator", version, about)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "LETHE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// PostgreSQL URL; migrations are applied at start.
    #[arg(long, env = "LETHE_DATABASE_URL")]
    database_url: String,
    /// Seconds a task stays leased without a heartbeat.
    #[arg(long, env = "LETHE_LEASE_SECONDS", default_value_t = 30.0)]
    lease_seconds: f64,
    /// Largest number of database connections.
    #[arg(long, env = "LETHE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,
    /// Milliseconds between database re-reads of a waiting long-poll.
    #[arg(long, env = "LETHE_POLL_INTERVAL_MS", default_value_t = 500)]
    poll_interval_ms: u64,
    /// Seconds the oldest pending deletion request of a model waits for others to join its run.
    #[arg(long, env = "LETHE_COALESCING_WINDOW_SECONDS", default_value_t = 10.0)]
    coalescing_window_seconds: f64,
    /// Fraction of the training set forgotten past which a run retrains from scratch.
    #[arg(long, env = "LETHE_RETRAIN_THRESHOLD", default_value_t = 0.05)]
    retrain_threshold: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !(args.lease_seconds.is_finite() && args.lease_seconds >= 1.0) {
        anyhow::bail!(
            "--lease-seconds must be at least 1, got {}",
            args.lease_seconds
        );
    }
    if !(args.coalescing_window_seconds.is_finite() && args.coalescing_window_seconds >= 0.0) {
        anyhow::bail!("--coalescing-window-seconds must be a non-negative number");
    }
    if !(0.0..=1.0).contains(&args.retrain_threshold) {
        anyhow::bail!("--retrain-threshold must lie in [0, 1]");
    }
    let store_config = StoreConfig {
        lease: Duration::from_secs_f64(args.lease_seconds),
        max_connections: args.db_max_connections.max(1),
        ..StoreConfig::default()
    };
    let store = Store::connect(&args.database_url, store_config)
        .await
        .context("connecting to the database (--database-url)")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "coordinator serving");
    let config = CoordinatorConfig {
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        coalescing_window: Duration::from_secs_f64(args.coalescing_window_seconds),
        retrain_threshold: args.retrain_threshold,
        ..CoordinatorConfig::default()
    };
    Coordinator::new(store, config)
        .serve(listener, shutdown_signal())
        .await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

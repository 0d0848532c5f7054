//! Lethe's store: PostgreSQL holds every job, task, attempt, worker and artifact, and every
//! state change is a guarded update, so any number of coordinator replicas can share one
//! database and none of them holds authority in memory.
//!
//! - [`Store::create_job`] writes a job and its task graph in one transaction, idempotently.
//! - [`Store::claim`] leases available tasks with a `FOR UPDATE SKIP LOCKED` CTE.
//! - [`Store::heartbeat`], [`Store::complete`] and [`Store::fail`] quote the attempt they were
//!   given (the fencing token): a stale worker's call changes nothing and gets
//!   [`StoreError::Fenced`].
//! - [`Store::reap_expired_leases`] and [`Store::expire_deadlines`] are safe to run from every
//!   replica at once.

mod cluster;
mod error;
mod jobs;
mod leases;
mod retry;
mod rows;
mod types;
mod workers;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use cluster::{Durability, LocalCluster};
pub use error::StoreError;
pub use jobs::MAX_TASKS_PER_JOB;
pub use retry::RetryPolicy;
pub use types::*;

/// The schema, embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a claim or a heartbeat keeps a task leased.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// Largest pool of connections this process opens.
    pub max_connections: u32,
    /// Bound on any statement, so that no transaction holds back vacuum for long.
    pub statement_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_connections: 16,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    config: StoreConfig,
}

impl Store {
    /// Connects and brings the schema up to date (migrations take an advisory lock, so
    /// replicas starting together apply them once).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([(
            "statement_timeout",
            format!("{}", config.statement_timeout.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, config })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Whether the database answers: the readiness probe.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

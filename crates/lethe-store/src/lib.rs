//! Lethe's store: PostgreSQL holds every job, task, attempt, worker and artifact, and every
//! state change is a guarded update, so any number of coordinator replicas can share one
//! database and none of them holds authority in memory.
//!
//! - [`Store::register_dataset`] and [`Store::register_model`] bind a tenant's names to
//!   object-store URLs.
//! - [`Store::create_job`] writes a job and its task graph in one transaction, idempotently.
//! - [`Store::claim`] leases available tasks with a `FOR UPDATE SKIP LOCKED` CTE.
//! - [`Store::heartbeat`], [`Store::complete`] and [`Store::fail`] quote the attempt they were
//!   given (the fencing token): a stale worker's call changes nothing and gets
//!   [`StoreError::Fenced`].
//! - [`Store::create_deletion_request`] files a request; [`Store::start_deletion_run`]
//!   coalesces a model's pending requests into one run, and a trigger carries the run's state
//!   to its requests and records the model version it made.
//! - [`Store::create_credential`] issues API tokens (kept as SHA-256 only); jobs submitted with
//!   an [`Admission`] are checked against their tenant's quota and audited in the transaction
//!   that creates them, in an append-only `audit_log`.
//! - [`Store::reap_expired_leases`], [`Store::finalize_finished_jobs`] and
//!   [`Store::expire_deadlines`] are safe to run from every replica at once.
//!
//! Lock order, which is what keeps transitions free of deadlocks: a job row before its task
//! rows (failures, cancellation, expiry), a leased task before blocked ones (a completion
//! releasing its dependents; stopping a job). Completions take no job lock at all.

mod cluster;
mod deletions;
mod error;
mod failure;
mod group_commit;
mod jobs;
mod leases;
mod registry;
mod reports;
mod retry;
mod rows;
mod tenancy;
mod types;
mod views;
mod workers;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use cluster::{Durability, LocalCluster};
pub use deletions::{
    IndexRef, ModelVersion, NewVersion, PendingRequest, RunInputs, RunPlan, StoredRef, TaskInput,
};
pub use error::StoreError;
pub use failure::Failure;
pub use group_commit::{CompletionOutcome, CompletionRequest, GroupCommit, GroupCommitLimits};
pub use jobs::MAX_TASKS_PER_JOB;
pub use registry::{check_resource_id, Dataset, Model};
pub use reports::ReportedTask;
pub use retry::RetryPolicy;
/// The driver, for callers that run their own SQL against the store's pool (benchmarks, checks).
pub use sqlx;
pub use tenancy::{
    token_digest, Admission, AuditEntry, AuditOutcome, AuditRecord, Credential, CredentialKind,
    IssuedCredential,
};
pub use types::*;
pub use views::{AttemptRecord, JobGraph};
pub use workers::{HeldTask, WorkerInfo};

/// The schema, embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a claim or a heartbeat keeps a task leased.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// Connections for work: claims, heartbeats, completions, creates.
    pub max_connections: u32,
    /// Connections kept for reads (Get, List, Wait), so that a busy fleet of workers never
    /// makes an operator's Get queue behind it.
    pub read_connections: u32,
    /// Bound on any statement, so that no transaction holds back vacuum for long.
    pub statement_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_connections: 16,
            read_connections: 4,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    reads: PgPool,
    config: StoreConfig,
}

/// Brings the schema of the database at `url` up to date and disconnects: what a migration
/// job runs before coordinators of a new release start.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

impl Store {
    /// Connects and brings the schema up to date (migrations take an advisory lock, so
    /// replicas starting together apply them once).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([
            (
                "statement_timeout",
                format!("{}", config.statement_timeout.as_millis()),
            ),
            // The hot statements are prepared once per connection; left to choose, PostgreSQL
            // keeps re-planning their CTEs for every execution (a custom plan per parameter
            // set), which cost more than executing them. Their generic plans are the same.
            ("plan_cache_mode", "force_generic_plan".to_string()),
            // A transaction left open by a crashed caller must not hold back vacuum.
            ("idle_in_transaction_session_timeout", "60000".to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let reads = PgPoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            reads,
            config,
        })
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

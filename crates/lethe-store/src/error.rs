use uuid::Uuid;

use crate::types::TaskState;

/// Everything the store can refuse or fail with. Callers map these to gRPC codes in one place
/// (the coordinator); the variants carry what a message needs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller's claim on a task is no longer the current one: its lease expired and the task
    /// was leased again, or it already ended. Nothing was changed.
    #[error(
        "task {task} attempt {attempt} is not the current lease (task is {state} at attempt \
         {current_attempt})"
    )]
    Fenced {
        task: Uuid,
        attempt: i32,
        state: TaskState,
        current_attempt: i32,
    },
    /// The task's job is being cancelled; the attempt was recorded as cancelled.
    #[error("task {task} was cancelled")]
    TaskCancelled { task: Uuid },
    /// A name is already bound to something else.
    #[error("{what} {name:?} is already registered with a different URL or hash")]
    AlreadyExists { what: &'static str, name: String },
    /// An idempotency key was reused for a request that differs from the first one.
    #[error("request_id {request_id:?} was already used for a different request")]
    IdempotencyConflict { request_id: String },
    /// The tenant already has as many unfinished jobs as its quota allows.
    #[error("tenant {tenant:?} already has its quota of {limit} unfinished jobs")]
    QuotaExceeded { tenant: String, limit: u32 },
    /// The request is valid but the state it would act on does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("local PostgreSQL cluster: {0}")]
    Cluster(String),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Characters of a caller's value that a message quotes: refusals travel in HTTP/2 trailers,
/// which clients cap at a few KiB, and a value of any size may be what was refused.
const QUOTED_CHARS: usize = 64;

/// `value` as a message quotes it: in full when short, else its start and its length.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
        None => format!("{value:?}"),
    }
}

impl StoreError {
    /// Whether the same call may succeed if tried again (the database was unreachable or a
    /// connection dropped), as opposed to a refusal that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => transient(e),
            // Migrations run on connect: a database that restarts meanwhile drops them.
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => transient(e),
            _ => false,
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // Serialization failure, deadlock, admin shutdown, cannot connect now.
        .is_some_and(|c| matches!(c.as_ref(), "40001" | "40P01" | "57P01" | "57P03"))
}

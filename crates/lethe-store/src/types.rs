//! The rows of the store and the values that create them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Failure, StoreError};

/// A closed set of names stored as `text` with a CHECK constraint: one spelling in Rust, one in
/// SQL, and a row holding anything else is reported as corrupt rather than guessed at.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Result<Self, StoreError> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " {:?}"), other
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// What a job does.
    JobKind {
        IndexBuild => "index_build",
        /// A deletion request: the operation a tenant follows. Its work is done by the run it
        /// is coalesced into.
        Deletion => "deletion",
        /// The task graph that serves one or more deletion requests on one model.
        DeletionRun => "deletion_run",
        Noop => "noop",
    }
);

text_enum!(
    /// A job's life: queued until a task is claimed, running until every task succeeded (or one
    /// failed for good), `cancelling` while leased tasks are being told to stop.
    JobState {
        Queued => "queued",
        Running => "running",
        Cancelling => "cancelling",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// A task's life: blocked on its dependencies, available to claim, leased to one worker
    /// attempt, then terminal.
    TaskState {
        Blocked => "blocked",
        Available => "available",
        Leased => "leased",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// The device a worker runs tasks on.
    Device { Cpu => "cpu", Cuda => "cuda" }
);

text_enum!(
    /// Why an attempt ended without success, as the worker reports it.
    FailureClass {
        /// May succeed if tried again (I/O, out of memory): spends one of `max_attempts` and
        /// waits out a backoff.
        Retryable => "retryable",
        /// Will fail again (bad input, a bug): the task and its job fail now.
        Fatal => "fatal",
        /// Not the task's fault (the worker is draining, was preempted): requeued at once,
        /// counted against `max_interruptions` instead of `max_attempts`.
        Interrupted => "interrupted",
        /// The worker stopped because cancellation was requested.
        Cancelled => "cancelled",
    }
);

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A job to create, with its whole task graph: a job exists with all its tasks or not at all.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub tenant: String,
    pub kind: JobKind,
    /// AIP-155 idempotency key: a second create with the same key and the same request returns
    /// the first job.
    pub request_id: Option<String>,
    pub spec: Value,
    pub priority: i16,
    pub deadline: Option<DateTime<Utc>>,
    pub tasks: Vec<NewTask>,
    /// For a job a caller submitted: the quota it must fit and the audit line that records it.
    /// `None` for the coordinator's own jobs and for tests.
    pub admission: Option<crate::Admission>,
}

#[derive(Clone, Debug)]
pub struct NewTask {
    pub kind: String,
    pub spec: Value,
    pub requires_device: Option<Device>,
    pub min_memory_bytes: i64,
    pub max_attempts: i32,
    pub max_interruptions: i32,
    /// Indices of earlier tasks of the same job that must succeed first. Only earlier ones,
    /// so every graph is acyclic by construction.
    pub depends_on: Vec<usize>,
}

impl NewTask {
    pub fn new(kind: impl Into<String>, spec: Value) -> Self {
        Self {
            kind: kind.into(),
            spec,
            requires_device: None,
            min_memory_bytes: 0,
            max_attempts: 3,
            max_interruptions: 10,
            depends_on: Vec::new(),
        }
    }

    pub fn after(mut self, parents: impl IntoIterator<Item = usize>) -> Self {
        self.depends_on.extend(parents);
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub tenant: String,
    pub kind: JobKind,
    pub request_id: Option<String>,
    pub spec: Value,
    pub priority: i16,
    pub state: JobState,
    pub tasks_total: i32,
    pub error: Option<Failure>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The model an index build, deletion request or deletion run is about.
    pub model_id: Option<Uuid>,
    /// The run a deletion request was coalesced into.
    pub run_id: Option<Uuid>,
    /// Its tasks by state, read with the job (a deletion request's are its run's).
    pub tasks: TaskCounts,
}

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub id: Uuid,
    pub job_id: Uuid,
    pub kind: String,
    pub spec: Value,
    pub state: TaskState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub interruptions: i32,
    pub lease_owner: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub run_at: DateTime<Utc>,
    pub unmet_deps: i32,
    pub depends_on: Vec<Uuid>,
    pub progress: Option<TaskProgress>,
    pub last_error: Option<Failure>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How far a running attempt has got, as its last heartbeat said.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskProgress {
    /// In [0, 1].
    pub fraction: f64,
    pub message: String,
}

/// A task as handed to a worker: what to run and the fencing token to quote back.
#[derive(Clone, Debug)]
pub struct LeasedTask {
    pub id: Uuid,
    pub job_id: Uuid,
    pub tenant: String,
    /// The W3C `traceparent` of the span that accepted the request this task serves.
    pub traceparent: Option<String>,
    pub kind: String,
    pub spec: Value,
    pub attempt: i32,
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewWorker {
    pub name: String,
    pub device: Device,
    pub memory_bytes: i64,
    pub slots: i32,
    pub version: String,
    /// The task kinds it runs; empty means every kind.
    pub kinds: Vec<String>,
    /// The worker token it registered with, which alone may act for it afterwards; `None`
    /// without token authentication.
    pub credential_id: Option<Uuid>,
}

/// An object a worker wrote, as reported on completion. The coordinator records it; readers
/// check the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArtifactRef {
    pub name: String,
    pub uri: String,
    pub sha256: [u8; 32],
    pub size_bytes: i64,
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct LeaseRenewal {
    pub lease_expires_at: DateTime<Utc>,
    pub cancel_requested: bool,
}

/// What a completion did beyond ending the task.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub job_id: Uuid,
    /// Whether this completion finished its job.
    pub job_done: bool,
    pub tasks_released: i64,
}

/// Where a failed attempt left its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureOutcome {
    pub job_id: Uuid,
    pub task_state: TaskState,
    pub job_state: JobState,
    /// When the task may be claimed again, if it was requeued.
    pub retry_at: Option<DateTime<Utc>>,
}

/// Tasks of a job by state: the job's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TaskCounts {
    pub blocked: i64,
    pub available: i64,
    pub leased: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Sum over leased tasks of the fraction each last reported (0 to 1 each).
    pub running_progress: f64,
}

impl TaskCounts {
    pub fn total(&self) -> i64 {
        self.blocked + self.available + self.leased + self.succeeded + self.failed + self.cancelled
    }

    /// Fraction of the job done: finished tasks and the reported share of running ones; 0
    /// while no task is planned (a deletion request waiting for its run).
    pub fn fraction_done(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        ((self.succeeded + self.failed + self.cancelled) as f64 + self.running_progress)
            / total as f64
    }
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub kind: Option<JobKind>,
    pub state: Option<JobState>,
}

/// One page of a keyset listing: `next` is the last id of this page when more may follow.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Uuid>,
}

/// Unfinished tasks of one kind, state and priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskGroup {
    pub kind: String,
    pub state: String,
    pub priority: i16,
    pub count: i64,
}

/// The fleet as the database sees it, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// Available and leased tasks.
    pub tasks: Vec<TaskGroup>,
    /// (device, state, count) of workers seen recently.
    pub workers: Vec<(String, String, i64)>,
    /// (table, dead tuples) of the hot tables.
    pub dead_tuples: Vec<(String, i64)>,
}

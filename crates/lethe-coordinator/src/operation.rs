//! Jobs as long-running operations (AIP-151): an operation's name, metadata, and, once done,
//! its response (the result message of its kind) or its error (a `google.rpc.Status` with a
//! reason). Each kind's module builds its own result; this one only dispatches.

use lethe_proto::failures;
use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::{
    self as pb, DeletionResult, FailureReason, IndexBuildResult, NoopResult, OperationKind,
    OperationMetadata, OperationState,
};
use lethe_store::{Job, JobKind, JobState, Store};
use prost_types::Any;
use tonic::Status;

use crate::kinds::{deletion_run, index_build, noop};
use crate::names::{operation_name, timestamp};

/// What a succeeded operation produced, by kind.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum OperationResponse {
    Noop(NoopResult),
    IndexBuild(IndexBuildResult),
    Deletion(Box<DeletionResult>),
}

impl OperationResponse {
    /// As `google.longrunning.Operation.response` carries it.
    pub(crate) fn to_any(&self) -> Any {
        match self {
            OperationResponse::Noop(result) => pack(result),
            OperationResponse::IndexBuild(result) => pack(result),
            OperationResponse::Deletion(result) => pack(result.as_ref()),
        }
    }
}

/// The response of `job` once it succeeded (`None` before).
pub(crate) async fn response(
    store: &Store,
    job: &Job,
) -> Result<Option<OperationResponse>, Status> {
    if job.state != JobState::Succeeded {
        return Ok(None);
    }
    let response = match job.kind {
        JobKind::Noop => OperationResponse::Noop(noop::result(store, job.id).await?),
        JobKind::IndexBuild => {
            OperationResponse::IndexBuild(index_build::result(store, job.id).await?)
        }
        JobKind::DeletionRun => {
            OperationResponse::Deletion(Box::new(deletion_run::run_result(store, job).await?))
        }
        JobKind::Deletion => {
            OperationResponse::Deletion(Box::new(deletion_run::request_result(store, job).await?))
        }
    };
    Ok(Some(response))
}

/// `job` as an operation, with its response once it succeeded.
pub(crate) async fn operation_of(store: &Store, job: &Job) -> Result<Operation, Status> {
    let response = response(store, job).await?;
    Ok(to_operation(job, response.as_ref().map(|r| r.to_any())))
}

fn to_operation(job: &Job, response: Option<prost_types::Any>) -> Operation {
    let counts = &job.tasks;
    let metadata = OperationMetadata {
        kind: kind_to_proto(job.kind) as i32,
        state: state_to_proto(job.state) as i32,
        create_time: Some(timestamp(job.created_at)),
        update_time: Some(timestamp(job.updated_at)),
        end_time: job.finished_at.map(timestamp),
        request_id: job.request_id.clone().unwrap_or_default(),
        tasks: Some(pb::TaskCounts {
            total: counts.total(),
            blocked: counts.blocked,
            available: counts.available,
            running: counts.leased,
            succeeded: counts.succeeded,
            failed: counts.failed,
            cancelled: counts.cancelled,
        }),
        progress: if job.state == JobState::Succeeded {
            1.0
        } else {
            counts.fraction_done()
        },
        cancel_requested: matches!(job.state, JobState::Cancelling | JobState::Cancelled),
        run: job.run_id.map(operation_name).unwrap_or_default(),
    };
    let result = match job.state {
        JobState::Succeeded => response.map(operation::Result::Response),
        JobState::Cancelled => Some(operation::Result::Error(failures::failure(
            FailureReason::Cancelled,
            "the operation was cancelled",
            [],
        ))),
        JobState::Failed => Some(operation::Result::Error(match &job.error {
            Some(failure) => failure.0.clone(),
            None => failures::failure(
                FailureReason::Unspecified,
                "the operation failed without a recorded reason",
                [],
            ),
        })),
        JobState::Queued | JobState::Running | JobState::Cancelling => None,
    };
    Operation {
        name: operation_name(job.id),
        metadata: Some(pack(&metadata)),
        done: job.state.is_terminal(),
        result,
    }
}

fn kind_to_proto(kind: JobKind) -> OperationKind {
    match kind {
        JobKind::IndexBuild => OperationKind::IndexBuild,
        JobKind::Deletion => OperationKind::Deletion,
        JobKind::DeletionRun => OperationKind::DeletionRun,
        JobKind::Noop => OperationKind::Noop,
    }
}

fn state_to_proto(state: JobState) -> OperationState {
    match state {
        JobState::Queued => OperationState::Queued,
        JobState::Running => OperationState::Running,
        JobState::Cancelling => OperationState::Cancelling,
        JobState::Succeeded => OperationState::Succeeded,
        JobState::Failed => OperationState::Failed,
        JobState::Cancelled => OperationState::Cancelled,
    }
}

pub(crate) fn pack<M: prost::Name>(message: &M) -> Any {
    Any::from_msg(message).expect("a result encodes")
}

//! Noop operations: tasks that sleep and may write an artifact, to exercise the queue and the
//! workers without ML.

use lethe_proto::lethe::v1::{CreateNoopOperationRequest, NoopResult};
use lethe_proto::reports::NOOP;
use lethe_proto::tasks::NoopSpec;
use lethe_store::{Job, JobKind, NewJob, NewTask, Store};
use serde::Serialize;
use tonic::Status;
use uuid::Uuid;

use super::fields::{parse_priority, request_id};
use crate::gate::principal::Caller;
use crate::state::Shared;
use crate::status::{from_store, invalid};

/// A noop operation's spec: its tasks and what each does.
#[derive(Serialize)]
struct NoopOperationSpec {
    tasks: u32,
    task: NoopSpec,
}

/// Validates `request` and submits its job.
pub(crate) async fn create(
    shared: &Shared,
    caller: &Caller,
    request: CreateNoopOperationRequest,
) -> Result<Job, Status> {
    if !(1..=1000).contains(&request.tasks) {
        return Err(invalid(
            "tasks",
            format!("must be 1 to 1000, got {}", request.tasks),
        ));
    }
    if !(0.0..=3600.0).contains(&request.task_seconds) {
        return Err(invalid("task_seconds", "must be in [0, 3600]"));
    }
    if request.artifact_bytes > 64 << 20 {
        return Err(invalid("artifact_bytes", "must be at most 64 MiB"));
    }
    let priority = parse_priority(request.priority)?;
    let task = NoopSpec {
        seconds: request.task_seconds,
        artifact_bytes: (request.artifact_bytes > 0).then_some(request.artifact_bytes),
    };
    let spec = serde_json::to_value(&task).expect("a noop spec serialises");
    let job = NewJob {
        tenant: caller.tenant.clone(),
        kind: JobKind::Noop,
        request_id: request_id(request.request_id)?,
        spec: serde_json::to_value(NoopOperationSpec {
            tasks: request.tasks,
            task,
        })
        .expect("a noop spec serialises"),
        priority,
        deadline: None,
        tasks: (0..request.tasks)
            .map(|_| NewTask::new(NOOP, spec.clone()))
            .collect(),
        admission: Some(shared.gate.job_admission(
            caller,
            "noop.create",
            serde_json::json!({"tasks": request.tasks}),
        )),
    };
    let (job, created) = shared.store.create_job(&job).await.map_err(from_store)?;
    if created {
        shared.wake.tasks_available(request.tasks as usize);
    }
    Ok(job)
}

/// What a succeeded noop operation answers: how many tasks ran and the bytes they wrote.
pub(crate) async fn result(store: &Store, job: Uuid) -> Result<NoopResult, Status> {
    let tasks = store
        .reported_tasks(job, &[NOOP])
        .await
        .map_err(from_store)?;
    Ok(NoopResult {
        tasks: tasks.len() as u32,
        artifact_bytes: tasks
            .iter()
            .flat_map(|task| &task.artifacts)
            .map(|(_, object)| object.size_bytes.unwrap_or(0) as u64)
            .sum(),
    })
}

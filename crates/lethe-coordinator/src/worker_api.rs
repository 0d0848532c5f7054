//! The worker API: registration, long-poll acquisition, heartbeats and the ends of attempts.
//! Every call that touches a task quotes its attempt; the store rejects stale ones.

use std::sync::Arc;
use std::time::Duration;

use lethe_proto::lethe::v1::{
    worker_service_server::WorkerService, AcquireTaskRequest, AcquireTaskResponse, Artifact,
    CompleteTaskRequest, CompleteTaskResponse, Device as ProtoDevice, DrainWorkerRequest,
    DrainWorkerResponse, ErrorClass, FailTaskRequest, FailTaskResponse, GetTaskInputsRequest,
    GetTaskInputsResponse, HeartbeatRequest, HeartbeatResponse, LeasedTask, RegisterWorkerRequest,
    RegisterWorkerResponse, TaskInput,
};
use lethe_store::{
    ArtifactRef, CompletionRequest, Device, FailureClass, JobState, NewWorker, TaskProgress,
    TaskState,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::gate::principal::{authenticated, WorkerCaller};
use crate::names::{operation_name, timestamp};
use crate::state::{jittered, Shared};
use crate::status::{from_store, invalid, parse_uuid};

/// The longest a worker may ask AcquireTask to wait; the server's own timeout is above it.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);
const MAX_MESSAGE: usize = 4096;

pub(crate) struct WorkerApi {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let device = match ProtoDevice::try_from(request.device) {
            Ok(ProtoDevice::Cpu) => Device::Cpu,
            Ok(ProtoDevice::Cuda) => Device::Cuda,
            _ => return Err(invalid("device", "must be DEVICE_CPU or DEVICE_CUDA")),
        };
        let new = NewWorker {
            name: request.name,
            device,
            memory_bytes: i64::try_from(request.memory_bytes)
                .map_err(|_| invalid("memory_bytes", "too large"))?,
            slots: match request.slots {
                0 => return Err(invalid("slots", "must be at least 1")),
                n => i32::try_from(n).map_err(|_| invalid("slots", "too large"))?,
            },
            version: request.version.chars().take(100).collect(),
            kinds: request.kinds,
            credential_id: caller.credential_id,
        };
        let id = self
            .shared
            .store
            .register_worker(&new)
            .await
            .map_err(from_store)?;
        tracing::info!(worker = %id, name = %new.name, device = %device, "worker registered");
        let lease = self.shared.store.config().lease;
        Ok(Response::new(RegisterWorkerResponse {
            worker_id: id.to_string(),
            lease: Some(duration(lease)),
            heartbeat_interval: Some(duration(lease / 3)),
        }))
    }

    async fn acquire_task(
        &self,
        request: Request<AcquireTaskRequest>,
    ) -> Result<Response<AcquireTaskResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let worker = parse_uuid("worker_id", &request.worker_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "task.acquire")
            .await?;
        let wait = match request.wait {
            None => Duration::ZERO,
            Some(w) => Duration::try_from(w)
                .map_err(|_| invalid("wait", "must not be negative"))?
                .min(MAX_LONG_POLL),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut checked_worker = false;
        loop {
            // Claim first, then wait: a long-poll dropped by its client holds no claim.
            if let Some(task) = claim_one(&self.shared, worker).await? {
                return Ok(Response::new(AcquireTaskResponse { task: Some(task) }));
            }
            if !checked_worker {
                // Nothing claimed: say so plainly if the worker is unknown or draining.
                if !self
                    .shared
                    .store
                    .touch_worker(worker)
                    .await
                    .map_err(from_store)?
                {
                    return Err(Status::failed_precondition(format!(
                        "worker {worker} is draining or gone; it takes no new tasks"
                    )));
                }
                checked_worker = true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(AcquireTaskResponse { task: None }));
            }
            let poll = now + jittered(self.shared.config.poll_interval);
            let _ = tokio::time::timeout_at(poll.min(deadline), self.shared.wake.task_wait()).await;
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let (task, worker) = ids(&request.task_id, &request.worker_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "task.heartbeat")
            .await?;
        let progress = match &request.progress {
            Some(p) if !(0.0..=1.0).contains(&p.fraction) => {
                return Err(invalid("progress.fraction", "must be in [0, 1]"))
            }
            Some(p) => Some(TaskProgress {
                fraction: p.fraction,
                message: truncate(&p.message),
            }),
            None => None,
        };
        let renewal = self
            .shared
            .store
            .heartbeat(task, request.attempt, worker, progress.as_ref())
            .await
            .map_err(from_store)?;
        Ok(Response::new(HeartbeatResponse {
            lease_expires_at: Some(timestamp(renewal.lease_expires_at)),
            cancel_requested: renewal.cancel_requested,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let (task, worker) = ids(&request.task_id, &request.worker_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "task.complete")
            .await?;
        let artifacts = request
            .artifacts
            .iter()
            .enumerate()
            .map(|(i, a)| artifact(i, a, task, request.attempt))
            .collect::<Result<Vec<_>, _>>()?;
        if request.report.as_ref().is_some_and(|r| r.report.is_none()) {
            return Err(invalid("report", "holds no report of any task kind"));
        }
        let (completion, next_task) = self
            .shared
            .completions()
            .complete(CompletionRequest {
                task,
                attempt: request.attempt,
                worker,
                artifacts,
                report: request.report,
                acquire_next: request.acquire_next,
            })
            .await
            .map_err(from_store)?;
        self.shared
            .wake
            .tasks_available(completion.tasks_released as usize);
        self.shared.wake.job_changed(completion.job_id);
        self.shared.metrics.completed();
        if completion.job_done {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.observe_finished(completion.job_id).await });
        }
        let next_task = next_task.map(|task| leased(&self.shared, task));
        Ok(Response::new(CompleteTaskResponse {
            operation_done: completion.job_done,
            tasks_released: completion.tasks_released,
            next_task,
        }))
    }

    async fn fail_task(
        &self,
        request: Request<FailTaskRequest>,
    ) -> Result<Response<FailTaskResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let (task, worker) = ids(&request.task_id, &request.worker_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "task.fail")
            .await?;
        let class = match ErrorClass::try_from(request.class) {
            Ok(ErrorClass::Retryable) => FailureClass::Retryable,
            Ok(ErrorClass::Fatal) => FailureClass::Fatal,
            Ok(ErrorClass::Interrupted) => FailureClass::Interrupted,
            Ok(ErrorClass::Cancelled) => FailureClass::Cancelled,
            _ => {
                return Err(invalid(
                    "class",
                    "must be one of the ERROR_CLASS_ values other than UNSPECIFIED",
                ))
            }
        };
        let outcome = self
            .shared
            .store
            .fail(
                task,
                request.attempt,
                worker,
                class,
                &truncate(&request.message),
            )
            .await
            .map_err(from_store)?;
        let requeued = outcome.task_state == TaskState::Available;
        self.shared.metrics.failed(class.as_str(), requeued);
        if outcome.job_state.is_terminal() {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.observe_finished(outcome.job_id).await });
        }
        if requeued {
            // A task in backoff is not claimable yet; the woken poll finds nothing and waits on.
            self.shared.wake.tasks_available(1);
        }
        Ok(Response::new(FailTaskResponse {
            requeued,
            retry_at: outcome.retry_at.filter(|_| requeued).map(timestamp),
            operation_failed: outcome.job_state == JobState::Failed,
        }))
    }

    async fn get_task_inputs(
        &self,
        request: Request<GetTaskInputsRequest>,
    ) -> Result<Response<GetTaskInputsResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let worker = parse_uuid("worker_id", &request.worker_id)?;
        let task = parse_uuid("task_id", &request.task_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "task.inputs")
            .await?;
        let inputs = self
            .shared
            .store
            .task_inputs(task, request.attempt, worker)
            .await
            .map_err(from_store)?;
        Ok(Response::new(GetTaskInputsResponse {
            inputs: inputs
                .into_iter()
                .map(|input| TaskInput {
                    task_id: input.task_id.to_string(),
                    task_kind: input.task_kind,
                    task_spec_json: input.task_spec.to_string(),
                    artifact: Some(Artifact {
                        name: input.name,
                        uri: input.uri,
                        sha256: input.sha256.to_vec(),
                        size_bytes: input.size_bytes as u64,
                    }),
                })
                .collect(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<DrainWorkerRequest>,
    ) -> Result<Response<DrainWorkerResponse>, Status> {
        let caller: WorkerCaller = authenticated(&request)?;
        let request = request.into_inner();
        let worker = parse_uuid("worker_id", &request.worker_id)?;
        self.shared
            .gate
            .admit_worker(&caller, worker, "worker.drain")
            .await?;
        let handed_back = drain(&self.shared, worker, request.hand_back).await?;
        Ok(Response::new(DrainWorkerResponse {
            tasks_handed_back: handed_back as u32,
        }))
    }
}

/// Drains `worker` and wakes long-polls for the tasks it handed back.
pub(crate) async fn drain(shared: &Shared, worker: Uuid, hand_back: bool) -> Result<u64, Status> {
    let handed_back = shared
        .store
        .drain_worker(worker, hand_back)
        .await
        .map_err(from_store)?;
    shared.wake.tasks_available(handed_back as usize);
    tracing::info!(%worker, handed_back, "worker draining");
    Ok(handed_back)
}

/// Leases one task to `worker` if one is available now.
async fn claim_one(shared: &Shared, worker: Uuid) -> Result<Option<LeasedTask>, Status> {
    let task = shared
        .store
        .claim(worker, 1)
        .await
        .map_err(from_store)?
        .pop();
    Ok(task.map(|task| leased(shared, task)))
}

/// A task a claim leased, as the worker gets it; its operation's watchers hear of it.
fn leased(shared: &Shared, task: lethe_store::LeasedTask) -> LeasedTask {
    shared.wake.job_changed(task.job_id);
    shared.metrics.claimed(&task.kind);
    LeasedTask {
        task_id: task.id.to_string(),
        operation: operation_name(task.job_id),
        tenant: task.tenant,
        kind: task.kind,
        spec_json: task.spec.to_string(),
        attempt: task.attempt,
        lease_expires_at: Some(timestamp(task.lease_expires_at)),
        traceparent: task.traceparent.unwrap_or_default(),
    }
}

fn ids(task: &str, worker: &str) -> Result<(Uuid, Uuid), Status> {
    Ok((
        parse_uuid("task_id", task)?,
        parse_uuid("worker_id", worker)?,
    ))
}

/// A reported artifact, checked: a 32-byte hash, and a URI under the attempt's own prefix
/// (`.../tasks/{task}/attempts/{attempt}/...`), so that no attempt can commit an object another
/// attempt may still write.
fn artifact(
    index: usize,
    artifact: &lethe_proto::lethe::v1::Artifact,
    task: Uuid,
    attempt: i32,
) -> Result<ArtifactRef, Status> {
    let field = |name: &str| format!("artifacts[{index}].{name}");
    let sha256: [u8; 32] = artifact.sha256.as_slice().try_into().map_err(|_| {
        invalid(
            &field("sha256"),
            format!("must be 32 bytes, got {}", artifact.sha256.len()),
        )
    })?;
    if artifact.name.is_empty() || artifact.name.len() > 200 {
        return Err(invalid(&field("name"), "must be 1 to 200 bytes"));
    }
    if artifact.uri.is_empty() || artifact.uri.len() > 2000 {
        return Err(invalid(&field("uri"), "must be 1 to 2000 bytes"));
    }
    let scope = format!("/tasks/{task}/attempts/{attempt}/");
    if !artifact.uri.contains(&scope) || artifact.uri.contains("/../") {
        return Err(invalid(
            &field("uri"),
            format!("must be under this attempt's prefix ({scope})"),
        ));
    }
    Ok(ArtifactRef {
        name: artifact.name.clone(),
        uri: artifact.uri.clone(),
        sha256,
        size_bytes: i64::try_from(artifact.size_bytes)
            .map_err(|_| invalid(&field("size_bytes"), "too large"))?,
    })
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_MESSAGE).collect()
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

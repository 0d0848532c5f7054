//! Jobs as long-running operations (AIP-151): Get, List, Cancel, Wait, and Watch.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lethe_proto::failures;
use lethe_proto::google::longrunning::{
    operation, operations_server::Operations, CancelOperationRequest, GetOperationRequest,
    ListOperationsRequest, ListOperationsResponse, Operation, WaitOperationRequest,
};
use lethe_proto::lethe::v1::{
    self as pb, lethe_server::Lethe, CreateNoopOperationRequest, FailureReason, OperationKind,
    OperationMetadata, OperationState, WatchOperationRequest,
};
use lethe_proto::tasks::NoopSpec;
use lethe_store::{AuditOutcome, Job, JobFilter, JobKind, JobState, NewJob, NewTask, Store};
use serde::{Deserialize, Serialize};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::Caller;
use crate::registry::{dataset_to_proto, model_to_proto, optional_hash, resource_id};
use crate::requests::parse_priority;
use crate::results::{self, pack};
use crate::server::Shared;
use crate::status::{from_store, invalid, parse_uuid};
use crate::tenant::caller_of;

const PREFIX: &str = "operations/";
const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_PAGE_SIZE: u32 = 50;

pub(crate) struct OperationsApi {
    pub(crate) shared: Arc<Shared>,
}

pub fn operation_name(job: Uuid) -> String {
    format!("{PREFIX}{job}")
}

/// A noop operation's spec: its tasks and what each does.
#[derive(Serialize)]
struct NoopOperationSpec {
    tasks: u32,
    task: NoopSpec,
}

fn parse_name(name: &str) -> Result<Uuid, Status> {
    let id = name.strip_prefix(PREFIX).ok_or_else(|| {
        invalid(
            "name",
            format!("{name:?} is not of the form operations/{{uuid}}"),
        )
    })?;
    parse_uuid("name", id)
}

impl Shared {
    async fn operation(
        &self,
        caller: &Caller,
        action: &str,
        id: Uuid,
    ) -> Result<Operation, Status> {
        match self.store.get_job(&caller.tenant, id).await {
            Ok(job) => operation_of(&self.store, &job).await,
            Err(error) => Err(self.refused(caller, action, error).await),
        }
    }

    /// The operation once it is done, or as it is when `timeout` passes.
    async fn wait(
        &self,
        caller: &Caller,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Operation, Status> {
        let _permit = self.long_poll()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.wake.watch_jobs();
        loop {
            let operation = self.operation(caller, "operation.wait", id).await?;
            if operation.done || tokio::time::Instant::now() >= deadline {
                return Ok(operation);
            }
            self.next_change(&mut changes, id, deadline).await;
        }
    }

    /// Returns when `id` changed through this replica, a poll interval passed (changes made
    /// through other replicas), or `deadline` came.
    async fn next_change(
        &self,
        changes: &mut tokio::sync::broadcast::Receiver<Uuid>,
        id: Uuid,
        deadline: tokio::time::Instant,
    ) {
        let poll = tokio::time::Instant::now() + self.config.poll_interval;
        let until = poll.min(deadline);
        loop {
            match tokio::time::timeout_at(until, changes.recv()).await {
                Ok(Ok(changed)) if changed != id => continue,
                _ => return,
            }
        }
    }
}

#[tonic::async_trait]
impl Operations for OperationsApi {
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_name(&request.get_ref().name)?;
        Ok(Response::new(
            self.shared.operation(&caller, "operation.get", id).await?,
        ))
    }

    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = caller_of(&request)?;
        let tenant = caller.tenant.clone();
        let request = request.into_inner();
        let filter = parse_filter(&request.filter)?;
        let page_size = match request.page_size {
            n if n < 0 => return Err(invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(1000),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => match PageToken::decode(token, &request.filter, &tenant) {
                Ok(after) => Some(after),
                Err(Foreign(status)) => {
                    self.shared
                        .record(caller.audit(
                            "operation.list",
                            String::new(),
                            AuditOutcome::Denied,
                            Some("a page token issued to another tenant".into()),
                            serde_json::json!({}),
                        ))
                        .await;
                    return Err(status);
                }
                Err(Invalid(status)) => return Err(status),
            },
        };
        let page = self
            .shared
            .store
            .list_jobs(&tenant, &filter, page_size, after)
            .await
            .map_err(from_store)?;
        let mut operations = Vec::with_capacity(page.items.len());
        for job in &page.items {
            operations.push(operation_of(&self.shared.store, job).await?);
        }
        let next_page_token = page
            .next
            .map(|after| {
                PageToken {
                    after,
                    filter: request.filter.clone(),
                    tenant: tenant.clone(),
                }
                .encode()
            })
            .unwrap_or_default();
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
        }))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_name(&request.get_ref().name)?;
        if let Err(error) = self.shared.store.cancel_job(&caller.tenant, id).await {
            return Err(self
                .shared
                .refused(&caller, "operation.cancel", error)
                .await);
        }
        self.shared.wake.job_changed(id);
        self.shared
            .record(caller.audit(
                "operation.cancel",
                operation_name(id),
                AuditOutcome::Allowed,
                None,
                serde_json::json!({}),
            ))
            .await;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let id = parse_name(&request.name)?;
        let timeout = match request.timeout {
            None => MAX_WAIT,
            Some(t) => Duration::try_from(t)
                .map_err(|_| invalid("timeout", "must not be negative"))?
                .min(MAX_WAIT),
        };
        Ok(Response::new(self.shared.wait(&caller, id, timeout).await?))
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

#[tonic::async_trait]
impl Lethe for OperationsApi {
    type WatchOperationStream = OperationStream;

    async fn register_dataset(
        &self,
        request: Request<pb::RegisterDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let sha256 = optional_hash("sha256", &request.sha256)?;
        self.shared
            .admit_registration(
                &caller,
                "dataset.register",
                format!("datasets/{}", request.dataset_id),
                &request.uri,
            )
            .await?;
        let (dataset, created) = self
            .shared
            .store
            .register_dataset(&caller.tenant, &request.dataset_id, &request.uri, sha256)
            .await
            .map_err(from_store)?;
        if created {
            self.shared
                .record(caller.audit(
                    "dataset.register",
                    format!("datasets/{}", dataset.name),
                    AuditOutcome::Allowed,
                    None,
                    serde_json::json!({"uri": dataset.uri}),
                ))
                .await;
        }
        Ok(Response::new(dataset_to_proto(dataset)))
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let caller = caller_of(&request)?;
        let id = resource_id("name", "datasets", &request.get_ref().name)?;
        let dataset = match self.shared.store.get_dataset(&caller.tenant, id).await {
            Ok(dataset) => dataset,
            Err(error) => return Err(self.shared.refused(&caller, "dataset.get", error).await),
        };
        Ok(Response::new(dataset_to_proto(dataset)))
    }

    async fn register_model(
        &self,
        request: Request<pb::RegisterModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let sha256 = optional_hash("sha256", &request.sha256)?;
        let dataset = resource_id("dataset", "datasets", &request.dataset)?;
        self.shared
            .admit_registration(
                &caller,
                "model.register",
                format!("models/{}", request.model_id),
                &request.uri,
            )
            .await?;
        let registered = self
            .shared
            .store
            .register_model(
                &caller.tenant,
                &request.model_id,
                dataset,
                &request.uri,
                sha256,
            )
            .await;
        let (model, created) = match registered {
            Ok(registered) => registered,
            Err(error) => return Err(self.shared.refused(&caller, "model.register", error).await),
        };
        if created {
            self.shared
                .record(caller.audit(
                    "model.register",
                    format!("models/{}", model.name),
                    AuditOutcome::Allowed,
                    None,
                    serde_json::json!({"uri": model.uri, "dataset": model.dataset}),
                ))
                .await;
        }
        Ok(Response::new(model_to_proto(model)))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let caller = caller_of(&request)?;
        let id = resource_id("name", "models", &request.get_ref().name)?;
        let model = match self.shared.store.get_model(&caller.tenant, id).await {
            Ok(model) => model,
            Err(error) => return Err(self.shared.refused(&caller, "model.get", error).await),
        };
        Ok(Response::new(model_to_proto(model)))
    }

    async fn list_model_versions(
        &self,
        request: Request<pb::ListModelVersionsRequest>,
    ) -> Result<Response<pb::ListModelVersionsResponse>, Status> {
        let caller = caller_of(&request)?;
        let versions = self
            .shared
            .list_model_versions(&caller, request.into_inner())
            .await?;
        Ok(Response::new(versions))
    }

    async fn create_index_build(
        &self,
        request: Request<pb::CreateIndexBuildRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let operation = self
            .shared
            .create_index_build(&caller, request.into_inner())
            .await?;
        tracing::info!(operation = %operation.name, tenant = %caller.tenant, "index build accepted");
        Ok(Response::new(operation))
    }

    async fn create_deletion_request(
        &self,
        request: Request<pb::CreateDeletionRequestRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let operation = self
            .shared
            .create_deletion_request(&caller, request.into_inner())
            .await?;
        tracing::info!(operation = %operation.name, tenant = %caller.tenant, "deletion request accepted");
        Ok(Response::new(operation))
    }

    async fn create_noop_operation(
        &self,
        request: Request<CreateNoopOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
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
            request_id: crate::requests::request_id(request.request_id)?,
            spec: serde_json::to_value(NoopOperationSpec {
                tasks: request.tasks,
                task,
            })
            .expect("a noop spec serialises"),
            priority,
            deadline: None,
            tasks: (0..request.tasks)
                .map(|_| NewTask::new("noop", spec.clone()))
                .collect(),
            admission: Some(self.shared.admission(
                &caller,
                "noop.create",
                serde_json::json!({"tasks": request.tasks}),
            )),
        };
        let (job, created) = self
            .shared
            .store
            .create_job(&job)
            .await
            .map_err(from_store)?;
        if created {
            self.shared.wake.tasks_available(request.tasks as usize);
        }
        tracing::info!(operation = %operation_name(job.id), tenant = %caller.tenant, "noop operation accepted");
        Ok(Response::new(operation_of(&self.shared.store, &job).await?))
    }

    async fn watch_operation(
        &self,
        request: Request<WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_name(&request.get_ref().name)?;
        let permit = self.shared.long_poll()?;
        // Fail now, not in the stream, for an operation that does not exist.
        let first = self
            .shared
            .operation(&caller, "operation.watch", id)
            .await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // The stream holds its long-poll permit until it ends.
            let _permit = permit;
            let mut changes = shared.wake.watch_jobs();
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !last.done {
                let far = tokio::time::Instant::now() + MAX_WAIT;
                shared.next_change(&mut changes, id, far).await;
                let now = match shared.operation(&caller, "operation.watch", id).await {
                    Ok(now) => now,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if now != last {
                    // A closed stream means the client went away.
                    if sender.send(Ok(now.clone())).await.is_err() {
                        return;
                    }
                    last = now;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// `job` as an operation, with its response once it succeeded.
pub(crate) async fn operation_of(store: &Store, job: &Job) -> Result<Operation, Status> {
    let response = results::response(store, job).await?;
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

pub(crate) fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
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

/// `state=SUCCEEDED AND kind=DELETION`: each term at most once; values are the enum names with
/// or without their prefix, in any case.
fn parse_filter(filter: &str) -> Result<JobFilter, Status> {
    let mut parsed = JobFilter::default();
    if filter.trim().is_empty() {
        return Ok(parsed);
    }
    for term in filter.split(" AND ") {
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| invalid("filter", format!("{term:?} is not key=value")))?;
        let value = value.trim().to_ascii_lowercase();
        match key.trim() {
            "state" if parsed.state.is_none() => {
                let name = value.strip_prefix("operation_state_").unwrap_or(&value);
                parsed.state = Some(
                    *JobState::ALL
                        .iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| invalid("filter", format!("unknown state {value:?}")))?,
                );
            }
            "kind" if parsed.kind.is_none() => {
                let name = value.strip_prefix("operation_kind_").unwrap_or(&value);
                parsed.kind = Some(
                    *JobKind::ALL
                        .iter()
                        .find(|k| k.as_str() == name)
                        .ok_or_else(|| invalid("filter", format!("unknown kind {value:?}")))?,
                );
            }
            other => {
                return Err(invalid(
                    "filter",
                    format!(
                    "{other:?} is not a filterable field, or appears twice (use state and kind)"
                ),
                ))
            }
        }
    }
    Ok(parsed)
}

/// Why a page token was refused: a token of another tenant is also audited.
#[derive(Debug)]
enum BadPageToken {
    Invalid(Status),
    Foreign(Status),
}
use BadPageToken::{Foreign, Invalid};

/// Opaque to clients; binds a page to the filter it was made with (AIP-158) and to the
/// tenant it was issued to.
#[derive(Serialize, Deserialize)]
struct PageToken {
    after: Uuid,
    filter: String,
    tenant: String,
}

impl PageToken {
    fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(token: &str, filter: &str, tenant: &str) -> Result<Uuid, BadPageToken> {
        let token: PageToken = hex::decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| Invalid(invalid("page_token", "not a token this API issued")))?;
        if token.tenant != tenant {
            return Err(Foreign(invalid(
                "page_token",
                "was issued to another tenant",
            )));
        }
        if token.filter != filter {
            return Err(Invalid(invalid(
                "page_token",
                "was issued for a different filter",
            )));
        }
        Ok(token.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn filters_parse_and_reject_what_they_do_not_know() {
        let f = parse_filter("state=OPERATION_STATE_SUCCEEDED AND kind=deletion").unwrap();
        assert_eq!(
            (f.state, f.kind),
            (Some(JobState::Succeeded), Some(JobKind::Deletion))
        );
        assert!(parse_filter("").unwrap().state.is_none());
        for bad in [
            "state",
            "state=done",
            "owner=me",
            "state=queued AND state=running",
        ] {
            assert_eq!(
                parse_filter(bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let id = Uuid::now_v7();
        let token = PageToken {
            after: id,
            filter: "kind=noop".into(),
            tenant: "acme".into(),
        }
        .encode();
        assert_eq!(PageToken::decode(&token, "kind=noop", "acme").unwrap(), id);
        assert!(matches!(
            PageToken::decode(&token, "", "acme"),
            Err(Invalid(status)) if status.code() == Code::InvalidArgument
        ));
        assert!(matches!(
            PageToken::decode(&token, "kind=noop", "globex"),
            Err(Foreign(status)) if status.code() == Code::InvalidArgument
        ));
        assert!(matches!(
            PageToken::decode("zz", "", "acme"),
            Err(Invalid(status)) if status.code() == Code::InvalidArgument
        ));
    }
}

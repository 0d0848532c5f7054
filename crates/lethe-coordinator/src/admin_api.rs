//! The admin API: the worker fleet and the queue across tenants, for operators and their
//! dashboards. The gate lets only admin tokens in.

use std::sync::Arc;

use lethe_proto::lethe::v1::{
    self as pb, admin_server::Admin, AdminDrainWorkerRequest, AdminDrainWorkerResponse,
    GetQueueStatsRequest, ListWorkersRequest, ListWorkersResponse, QueueStats,
};
use lethe_store::{AuditEntry, AuditOutcome, WorkerInfo};
use tonic::{Request, Response, Status};

use crate::gate::principal::{authenticated, Operator};
use crate::names::{operation_name, timestamp};
use crate::state::Shared;
use crate::status::{from_store, parse_uuid};
use crate::worker_api::drain;

pub(crate) struct AdminApi {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self
            .shared
            .store
            .list_workers(request.get_ref().include_silent)
            .await
            .map_err(from_store)?;
        Ok(Response::new(ListWorkersResponse {
            workers: workers.into_iter().map(worker_to_proto).collect(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<AdminDrainWorkerRequest>,
    ) -> Result<Response<AdminDrainWorkerResponse>, Status> {
        let operator: Operator = authenticated(&request)?;
        let request = request.into_inner();
        let worker = parse_uuid("worker_id", &request.worker_id)?;
        let handed_back = drain(&self.shared, worker, request.hand_back).await?;
        self.shared
            .gate
            .record(AuditEntry {
                tenant: None,
                credential_id: operator.credential_id,
                actor: operator.actor,
                action: "worker.drain".into(),
                resource: format!("workers/{worker}"),
                outcome: AuditOutcome::Allowed,
                reason: None,
                detail: serde_json::json!({"hand_back": request.hand_back, "handed_back": handed_back}),
            })
            .await;
        Ok(Response::new(AdminDrainWorkerResponse {
            tasks_handed_back: handed_back as u32,
        }))
    }

    async fn get_queue_stats(
        &self,
        _request: Request<GetQueueStatsRequest>,
    ) -> Result<Response<QueueStats>, Status> {
        let fleet = self
            .shared
            .store
            .fleet_snapshot()
            .await
            .map_err(from_store)?;
        let operations = self
            .shared
            .store
            .open_operations()
            .await
            .map_err(from_store)?;
        Ok(Response::new(QueueStats {
            tasks: fleet
                .tasks
                .into_iter()
                .map(|group| pb::TaskGroupCount {
                    kind: group.kind,
                    state: group.state,
                    priority: i32::from(group.priority),
                    count: group.count,
                })
                .collect(),
            workers: fleet
                .workers
                .into_iter()
                .map(|(device, state, count)| pb::WorkerGroupCount {
                    device,
                    state,
                    count,
                })
                .collect(),
            operations: operations
                .into_iter()
                .map(|(kind, state, count)| pb::OperationGroupCount { kind, state, count })
                .collect(),
        }))
    }
}

fn worker_to_proto(worker: WorkerInfo) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: worker.id.to_string(),
        name: worker.name,
        device: match worker.device.as_str() {
            "cuda" => pb::Device::Cuda,
            _ => pb::Device::Cpu,
        } as i32,
        memory_bytes: worker.memory_bytes.max(0) as u64,
        slots: worker.slots.max(0) as u32,
        state: worker.state,
        version: worker.version,
        registered_at: Some(timestamp(worker.registered_at)),
        last_seen_at: Some(timestamp(worker.last_seen_at)),
        tasks: worker
            .tasks
            .into_iter()
            .map(|task| pb::HeldTask {
                task_id: task.id.to_string(),
                operation: operation_name(task.job_id),
                tenant: task.tenant,
                kind: task.kind,
                attempt: task.attempt,
                leased_at: Some(timestamp(task.leased_at)),
                lease_expires_at: Some(timestamp(task.lease_expires_at)),
                progress: task.progress,
            })
            .collect(),
    }
}

//! The `lethe.v1.Lethe` service: datasets, models and their versions (and their downloads,
//! [`super::download`]), the Create call of each operation kind, and WatchOperation.

use std::pin::Pin;

use lethe_proto::google::longrunning::Operation;
use lethe_proto::lethe::v1::{
    self as pb, lethe_server::Lethe, CreateNoopOperationRequest, WatchOperationRequest,
};
use lethe_store::AuditOutcome;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::download::ChunkStream;
use super::PublicApi;
use crate::gate::principal::caller_of;
use crate::kinds::fields::named_model;
use crate::kinds::{deletion, index_build, noop};
use crate::limits::{MAX_WAIT, MAX_WATCH};
use crate::names::{operation_name, parse_operation_name, resource_id};
use crate::operation::operation_of;
use crate::registry::{dataset_to_proto, model_to_proto, optional_hash, version_to_proto};
use crate::status::from_store;

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

#[tonic::async_trait]
impl Lethe for PublicApi {
    type WatchOperationStream = OperationStream;
    type DownloadModelVersionStream = ChunkStream;

    async fn register_dataset(
        &self,
        request: Request<pb::RegisterDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let sha256 = optional_hash("sha256", &request.sha256)?;
        self.shared
            .gate
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
                .gate
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
            Err(error) => {
                return Err(self
                    .shared
                    .gate
                    .refused(&caller, "dataset.get", error)
                    .await)
            }
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
            .gate
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
            Err(error) => {
                return Err(self
                    .shared
                    .gate
                    .refused(&caller, "model.register", error)
                    .await)
            }
        };
        if created {
            self.shared
                .gate
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
            Err(error) => return Err(self.shared.gate.refused(&caller, "model.get", error).await),
        };
        Ok(Response::new(model_to_proto(model)))
    }

    async fn list_model_versions(
        &self,
        request: Request<pb::ListModelVersionsRequest>,
    ) -> Result<Response<pb::ListModelVersionsResponse>, Status> {
        let caller = caller_of(&request)?;
        let model = named_model(
            &self.shared,
            &caller,
            "model.list_versions",
            &request.get_ref().model,
        )
        .await?;
        let versions = self
            .shared
            .store
            .model_versions(&caller.tenant, model.id)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::ListModelVersionsResponse {
            versions: versions.iter().map(version_to_proto).collect(),
        }))
    }

    async fn download_model_version(
        &self,
        request: Request<pb::DownloadModelVersionRequest>,
    ) -> Result<Response<Self::DownloadModelVersionStream>, Status> {
        let caller = caller_of(&request)?;
        let stream = self.download(&caller, &request.get_ref().name).await?;
        Ok(Response::new(stream))
    }

    async fn get_model_version_download_url(
        &self,
        request: Request<pb::GetModelVersionDownloadUrlRequest>,
    ) -> Result<Response<pb::ModelVersionDownloadUrl>, Status> {
        let caller = caller_of(&request)?;
        let url = self.download_url(&caller, request.into_inner()).await?;
        Ok(Response::new(url))
    }

    async fn create_index_build(
        &self,
        request: Request<pb::CreateIndexBuildRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let job = index_build::create(&self.shared, &caller, request.into_inner()).await?;
        let operation = operation_of(&self.shared.store, &job).await?;
        tracing::info!(operation = %operation.name, tenant = %caller.tenant, "index build accepted");
        Ok(Response::new(operation))
    }

    async fn create_deletion_request(
        &self,
        request: Request<pb::CreateDeletionRequestRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let job = deletion::create(&self.shared, &caller, request.into_inner()).await?;
        let operation = operation_of(&self.shared.store, &job).await?;
        tracing::info!(operation = %operation.name, tenant = %caller.tenant, "deletion request accepted");
        Ok(Response::new(operation))
    }

    async fn create_noop_operation(
        &self,
        request: Request<CreateNoopOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let job = noop::create(&self.shared, &caller, request.into_inner()).await?;
        tracing::info!(operation = %operation_name(job.id), tenant = %caller.tenant, "noop operation accepted");
        Ok(Response::new(operation_of(&self.shared.store, &job).await?))
    }

    async fn watch_operation(
        &self,
        request: Request<WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_operation_name("name", &request.get_ref().name)?;
        let permit = self.shared.gate.long_poll()?;
        // Fail now, not in the stream, for an operation that does not exist.
        let first = self.operation(&caller, "operation.watch", id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            // The stream holds its long-poll permit until it ends: when the operation is
            // done, when the client goes away (noticed at once, not at the next send), or
            // after MAX_WATCH, whichever comes first.
            let _permit = permit;
            let end = tokio::time::Instant::now() + MAX_WATCH;
            let mut changes = api.shared.wake.watch_jobs();
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !last.done {
                let next = (tokio::time::Instant::now() + MAX_WAIT).min(end);
                tokio::select! {
                    _ = api.next_change(&mut changes, id, next) => {}
                    _ = sender.closed() => return,
                }
                if tokio::time::Instant::now() >= end {
                    return;
                }
                let now = match api.operation(&caller, "operation.watch", id).await {
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

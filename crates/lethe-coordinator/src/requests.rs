//! The operations that do ML work: index builds, deletion requests, and the planning of the
//! runs that serve deletion requests.

use std::collections::BTreeSet;

use lethe_config::logging::TraceContext;
use lethe_proto::google::longrunning::Operation;
use lethe_proto::lethe::v1 as pb;
use lethe_proto::lethe::v1::IndexEstimator;
use lethe_proto::tasks::{ObjectRef, TrakSettings};
use lethe_store::{Admission, AuditOutcome, JobKind, NewJob};
use serde_json::json;
use tonic::Status;

use crate::auth::Caller;
use crate::operations::operation_of;
use crate::planner::{
    self, DeletionRequestSpec, IndexBuildPlan, DEFAULT_ALPHA, DEFAULT_MEMBERS,
    DEFAULT_MEMBERS_PER_TASK,
};
use crate::registry::resource_id;
use crate::server::Shared;
use crate::status::{from_store, invalid};

/// Subset retrains an index build may ask for.
const MAX_MEMBERS: u32 = 100_000;
/// Examples one deletion request may name.
const MAX_FORGET: usize = 100_000;
const MAX_AUDIT_ORACLES: u32 = 1_000;

pub(crate) fn parse_priority(priority: i32) -> Result<i16, Status> {
    i16::try_from(priority)
        .ok()
        .filter(|p| (-100..=100).contains(p))
        .ok_or_else(|| invalid("priority", "must be -100 to 100"))
}

/// The idempotency key of a Create call: absent when empty, else at most 200 characters
/// without control characters.
pub(crate) fn request_id(id: String) -> Result<Option<String>, Status> {
    if id.chars().count() > 200 || id.chars().any(char::is_control) {
        return Err(invalid(
            "request_id",
            "must be at most 200 characters, without control characters",
        ));
    }
    Ok(Some(id).filter(|id| !id.is_empty()))
}

impl Shared {
    /// What a job submitted by `caller` carries to the store: its quota and its audit line.
    pub(crate) fn admission(
        &self,
        caller: &Caller,
        action: &str,
        detail: serde_json::Value,
    ) -> Admission {
        Admission {
            audit: caller.audit(action, String::new(), AuditOutcome::Allowed, None, detail),
            default_max_active_jobs: self.config.max_active_jobs_per_tenant,
            traceparent: caller.trace.as_ref().map(TraceContext::traceparent),
        }
    }

    /// The model a request names (`models/{id}`), of the caller's tenant.
    async fn model(
        &self,
        caller: &Caller,
        action: &str,
        name: &str,
    ) -> Result<lethe_store::Model, Status> {
        let id = resource_id("model", "models", name)?;
        match self.store.get_model(&caller.tenant, id).await {
            Ok(model) => Ok(model),
            Err(error) => Err(self.refused(caller, action, error).await),
        }
    }

    pub(crate) async fn create_index_build(
        &self,
        caller: &Caller,
        request: pb::CreateIndexBuildRequest,
    ) -> Result<Operation, Status> {
        let tenant = caller.tenant.clone();
        let model = self
            .model(caller, "index_build.create", &request.model)
            .await?;
        let dataset = self
            .store
            .get_dataset(&tenant, &model.dataset)
            .await
            .map_err(from_store)?;
        // The index serves the latest anchor: version 0, or the latest full retrain.
        let versions = self
            .store
            .model_versions(&tenant, model.id)
            .await
            .map_err(from_store)?;
        let anchor = versions
            .into_iter()
            .find(|version| version.anchor)
            .ok_or_else(|| Status::internal("a model without version 0"))?;
        let members = match request.members {
            0 => DEFAULT_MEMBERS,
            n if !(2..=MAX_MEMBERS).contains(&n) => {
                return Err(invalid("members", format!("must be 2 to {MAX_MEMBERS}")))
            }
            n => n as usize,
        };
        let alpha = match request.alpha {
            0.0 => DEFAULT_ALPHA,
            a if a > 0.0 && a < 1.0 => a,
            _ => return Err(invalid("alpha", "must lie in (0, 1)")),
        };
        let members_per_task = match request.members_per_task {
            0 => DEFAULT_MEMBERS_PER_TASK.min(members),
            n if n as usize > members => {
                return Err(invalid(
                    "members_per_task",
                    format!("{n} is more than the {members} members"),
                ))
            }
            n => n as usize,
        };
        let trak = match IndexEstimator::try_from(request.estimator) {
            Ok(IndexEstimator::Unspecified | IndexEstimator::Subsample) => None,
            Ok(IndexEstimator::Trak) => Some(TrakSettings {
                checkpoints: match request.trak_checkpoints {
                    0 => 4,
                    n @ 1..=64 => n as usize,
                    _ => return Err(invalid("trak_checkpoints", "must be at most 64")),
                },
                projection_dim: match request.trak_projection_dim {
                    0 => 2048,
                    n @ 16..=16384 => i64::from(n),
                    _ => return Err(invalid("trak_projection_dim", "must be 16 to 16384")),
                },
                seed: request.seed,
                relative_damping: 1e-3,
            }),
            Err(_) => return Err(invalid("estimator", "unknown estimator")),
        };
        let trak_shards = match request.trak_shards {
            0 => 4,
            n @ 1..=1024 => n as usize,
            _ => return Err(invalid("trak_shards", "must be at most 1024")),
        };
        let plan = IndexBuildPlan {
            model: model.name.clone(),
            dataset: ObjectRef {
                uri: dataset.uri,
                sha256: dataset.sha256.map(hex::encode),
            },
            checkpoint: planner::object_ref(&anchor.object),
            members,
            alpha,
            members_per_task,
            seed: request.seed,
            exclude: anchor.forgotten,
            anchor_version: anchor.version,
            trak,
            trak_shards,
        };
        let request_id = request_id(request.request_id)?;
        let detail = json!({"model": model.name, "members": members, "request_id": request_id});
        let job = NewJob {
            tenant,
            kind: JobKind::IndexBuild,
            request_id,
            spec: serde_json::to_value(&plan).expect("plans serialise"),
            priority: parse_priority(request.priority)?,
            deadline: None,
            tasks: planner::index_build_tasks(&plan),
            admission: Some(self.admission(caller, "index_build.create", detail)),
        };
        let (job, created) = self
            .store
            .create_index_build(&job, model.id, anchor.run_id)
            .await
            .map_err(from_store)?;
        if created {
            self.wake.tasks_available(job.tasks.available as usize);
        }
        operation_of(&self.store, &job).await
    }

    pub(crate) async fn create_deletion_request(
        &self,
        caller: &Caller,
        request: pb::CreateDeletionRequestRequest,
    ) -> Result<Operation, Status> {
        let tenant = caller.tenant.clone();
        let model = self
            .model(caller, "deletion.create", &request.model)
            .await?;
        if request.forget.is_empty() || request.forget.len() > MAX_FORGET {
            return Err(invalid(
                "forget",
                format!("name 1 to {MAX_FORGET} training indices"),
            ));
        }
        if request.audit_oracles > MAX_AUDIT_ORACLES {
            return Err(invalid(
                "audit_oracles",
                format!("must be at most {MAX_AUDIT_ORACLES}"),
            ));
        }
        if let Some(minimum) = request.min_confidence {
            if !(minimum > 0.0 && minimum <= 1.0) {
                return Err(invalid(
                    "min_confidence",
                    "must lie in (0, 1], or be unset to run DMM whatever its confidence",
                ));
            }
        }
        // The index says how large the training set is; without one no run can be planned.
        let index = self
            .store
            .latest_index(&tenant, model.id)
            .await
            .map_err(from_store)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "model {} has no attribution index yet: build one with CreateIndexBuild",
                    model.name
                ))
            })?;
        let num_train = index.report.num_train;
        // Only an index with a noise model (subsample, or TRAK with two or more checkpoints)
        // gives targets a confidence figure.
        let trak_without_noise =
            index.report.estimator() == IndexEstimator::Trak && !index.report.noise_model;
        if request.min_confidence.is_some() && trak_without_noise {
            return Err(Status::failed_precondition(format!(
                "model {}'s latest index is a TRAK index of one checkpoint, which has no noise model and so no confidence figure: drop min_confidence, or build a subsample index or a TRAK index of two or more checkpoints with CreateIndexBuild",
                model.name
            )));
        }
        if let Some(bad) = request
            .forget
            .iter()
            .find(|&&i| !(0..num_train).contains(&i))
        {
            return Err(invalid(
                "forget",
                format!("index {bad} is outside the training set 0..{num_train}"),
            ));
        }
        let forget: BTreeSet<i64> = request.forget.iter().copied().collect();
        if forget.len() != request.forget.len() {
            let mut seen = BTreeSet::new();
            let repeated = request.forget.iter().find(|&&i| !seen.insert(i));
            return Err(invalid(
                "forget",
                format!(
                    "index {} appears more than once: name each training index once",
                    repeated.copied().unwrap_or_default()
                ),
            ));
        }
        let spec = DeletionRequestSpec {
            model: model.name.clone(),
            forget: forget.into_iter().collect(),
            audit_oracles: request.audit_oracles as usize,
            seed: request.seed,
            min_confidence: request.min_confidence,
        };
        let request_id = request_id(request.request_id)?;
        // The legal record: who asked to forget which examples of which model.
        let detail = json!({
            "model": model.name,
            "forget": spec.forget,
            "audit_oracles": spec.audit_oracles,
            "min_confidence": spec.min_confidence,
            "request_id": request_id,
        });
        let job = NewJob {
            tenant,
            kind: JobKind::Deletion,
            request_id,
            spec: serde_json::to_value(&spec).expect("specs serialise"),
            priority: parse_priority(request.priority)?,
            deadline: None,
            tasks: Vec::new(),
            admission: Some(self.admission(caller, "deletion.create", detail)),
        };
        let (job, _) = self
            .store
            .create_deletion_request(&job, model.id)
            .await
            .map_err(from_store)?;
        operation_of(&self.store, &job).await
    }

    pub(crate) async fn list_model_versions(
        &self,
        caller: &Caller,
        request: pb::ListModelVersionsRequest,
    ) -> Result<pb::ListModelVersionsResponse, Status> {
        let model = self
            .model(caller, "model.list_versions", &request.model)
            .await?;
        let versions = self
            .store
            .model_versions(&caller.tenant, model.id)
            .await
            .map_err(from_store)?;
        Ok(pb::ListModelVersionsResponse {
            versions: versions.iter().map(version_to_proto).collect(),
        })
    }

    /// Starts a run for every model whose pending requests have waited out the window.
    /// Returns how many runs started.
    pub(crate) async fn plan_deletion_runs(&self) -> Result<usize, lethe_store::StoreError> {
        let due = self
            .store
            .models_due_for_a_run(self.config.coalescing_window, 100)
            .await?;
        let mut started = 0;
        for model in due {
            if let Some(run) = self
                .store
                .start_deletion_run(model, |inputs| {
                    planner::deletion_run(inputs, self.config.retrain_threshold)
                })
                .await?
            {
                tracing::info!(run = %run.id, model = %model, "started a deletion run");
                self.wake.tasks_available(run.tasks_total as usize);
                started += 1;
            }
        }
        Ok(started)
    }
}

/// A model version as the API shows it, in `ListModelVersions` and a deletion's result.
pub(crate) fn version_to_proto(version: &lethe_store::ModelVersion) -> pb::ModelVersion {
    pb::ModelVersion {
        version: version.version,
        uri: version.object.uri.clone(),
        sha256: version
            .object
            .sha256
            .map(|h| h.to_vec())
            .unwrap_or_default(),
        forgotten_count: version.forgotten.len() as i64,
        size_bytes: version.object.size_bytes.unwrap_or(0) as u64,
        run: version
            .run_id
            .map(crate::operations::operation_name)
            .unwrap_or_default(),
    }
}

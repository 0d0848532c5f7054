//! Deletion requests: "forget these training examples of this model". A request is stored
//! pending; the maintenance loop coalesces a model's pending requests into one
//! [`deletion_run`](super::deletion_run), whose result each request answers with.

use std::collections::BTreeSet;

use lethe_proto::lethe::v1::{self as pb, IndexEstimator};
use lethe_store::{Job, JobKind, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::Status;

use super::fields::{named_model, parse_priority, request_id};
use crate::gate::principal::Caller;
use crate::limits::MAX_FORGET;
use crate::state::Shared;
use crate::status::{from_store, invalid};

const MAX_AUDIT_ORACLES: u32 = 1_000;

/// What one deletion request asks for, as stored in its job's spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeletionRequestSpec {
    pub(crate) model: String,
    pub(crate) forget: Vec<i64>,
    pub(crate) audit_oracles: usize,
    pub(crate) seed: u64,
    /// Retrain instead of DMM when the run's confidence in its targets is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_confidence: Option<f64>,
}

/// Validates `request` and stores it pending, for the next run of its model.
pub(crate) async fn create(
    shared: &Shared,
    caller: &Caller,
    request: pb::CreateDeletionRequestRequest,
) -> Result<Job, Status> {
    let tenant = caller.tenant.clone();
    let model = named_model(shared, caller, "deletion.create", &request.model).await?;
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
    let index = shared
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
        admission: Some(shared.gate.job_admission(caller, "deletion.create", detail)),
    };
    let (job, _) = shared
        .store
        .create_deletion_request(&job, model.id)
        .await
        .map_err(from_store)?;
    Ok(job)
}

//! Sequential deletions. Model versions form a lineage from the first deployed version θ0: a
//! request on version v predicts its targets from θ0's outputs with the union of everything
//! forgotten so far, and fine-tunes v. Anchoring at θ0 keeps the index's predictions valid
//! (β describes removals from θ0's training set) and stops errors from compounding across
//! versions.

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::model::Model;
use crate::outputs::Outputs;
use crate::unlearn::{unlearn, ForgetSet, Method, MethodConfig, Resources, UnlearnSummary};

/// One request in a lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageEntry {
    /// The version the request produced.
    pub version: u32,
    pub method: Method,
    pub forget: Vec<i64>,
    pub seed: u64,
}

/// Where a model version comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// SHA-256 of the first version's checkpoint (θ0), whose outputs anchor every request.
    pub base_sha256: String,
    pub version: u32,
    /// Everything forgotten since θ0, sorted.
    pub forgotten: Vec<i64>,
    pub requests: Vec<LineageEntry>,
}

impl Lineage {
    /// The lineage of a model that has forgotten nothing yet.
    pub fn start(base_sha256: impl Into<String>) -> Self {
        Lineage {
            base_sha256: base_sha256.into(),
            version: 0,
            forgotten: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// The forget set a request for `request` on this version works with: everything
    /// forgotten so far and the new examples.
    pub fn accumulate(&self, request: &ForgetSet, num_train: i64) -> Result<ForgetSet> {
        if self.forgotten.is_empty() {
            return Ok(request.clone());
        }
        Ok(ForgetSet::new(self.forgotten.clone(), num_train)?.union(request))
    }

    /// The fraction of the training split forgotten so far; past a threshold a full retrain
    /// and a fresh index are due.
    pub fn forgotten_fraction(&self, num_train: i64) -> f64 {
        self.forgotten.len() as f64 / num_train.max(1) as f64
    }

    /// The lineage of the version a request for `request` makes from this one, having
    /// forgotten `forgotten` in all (see [`Lineage::accumulate`]).
    pub fn advance(
        &self,
        forgotten: &ForgetSet,
        method: Method,
        request: &ForgetSet,
        seed: u64,
    ) -> Lineage {
        let version = self.version + 1;
        let mut requests = self.requests.clone();
        requests.push(LineageEntry {
            version,
            method,
            forget: request.indices().to_vec(),
            seed,
        });
        Lineage {
            base_sha256: self.base_sha256.clone(),
            version,
            forgotten: forgotten.indices().to_vec(),
            requests,
        }
    }
}

/// Applies a request for `request` to `current` (a version of `lineage`), in place: targets
/// come from `base` (θ0) with the union of everything forgotten, and the fine-tune starts
/// from `current`. Returns the new version's lineage.
pub fn unlearn_version(
    current: &mut Model,
    base: &mut Model,
    lineage: &Lineage,
    request: &ForgetSet,
    config: &MethodConfig,
    resources: &Resources,
    seed: u64,
) -> Result<(Lineage, UnlearnSummary)> {
    if base.members() != current.members() || base.spec != current.spec {
        return Err(MlError::spec(
            "sequential request",
            "the base model and the current version must be the same architecture and size",
        ));
    }
    let data = resources.data;
    let forgotten = lineage.accumulate(request, data.num_train)?;
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let anchor = Outputs::compute(base, data, &targets)?.logits;
    let anchored = Resources {
        anchor_logits: Some(&anchor),
        ..*resources
    };
    let summary = unlearn(current, config, &forgotten, &anchored, seed)?;
    Ok((
        lineage.advance(&forgotten, config.method(), request, seed),
        summary,
    ))
}

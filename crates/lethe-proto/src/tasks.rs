//! The specs of the ML task kinds: what the coordinator's planner writes into a task and a
//! worker's handler reads back (as `LeasedTask.spec_json`). One definition for both sides.

use serde::{Deserialize, Serialize};

/// Subset retrains of a member range (an index build), or oracle retrains without the
/// forgotten examples (an audit). Artifacts: `members` (the range's masks and logits) and
/// `manifest`.
pub const RETRAIN: &str = "retrain";
/// The reduce of an index build: β from every `retrain` input (and, for TRAK, the checkpoints
/// and every shard's features). Artifacts: `beta`, and `beta_noise` for the subsample
/// estimator.
pub const BUILD_INDEX: &str = "build_index";
/// TRAK's checkpoints: models trained on the whole training split. Artifacts:
/// `checkpoint-0` … `checkpoint-{K-1}`.
pub const TRAK_CHECKPOINTS: &str = "trak_checkpoints";
/// TRAK's projected gradients of one shard of the training split, for every checkpoint.
/// Artifact: `trak_features` (none for a shard past the end of a small training split).
pub const TRAK_SHARD: &str = "trak_shard";
/// DMM's predicted retrain outputs on every target. Artifact: `targets`.
pub const PREDICT: &str = "predict";
/// The matching fine-tune towards `predict`'s targets. Artifact: `model`, the new version.
pub const MATCH: &str = "match";
/// KLoM of the method applied to originals against oracle retrains (with the do-nothing
/// baseline and the noise floor), and the margins of the version before and after. A report
/// only (`AuditReport`), no artifact.
pub const AUDIT: &str = "audit";
/// A retrain from scratch without everything forgotten, once too much was forgotten for
/// DMM's linear predictions. Artifact: `model`, the new version (a new anchor).
pub const FULL_RETRAIN: &str = "full_retrain";

/// Every ML task kind, in the order a deletion run's graph goes.
pub const ALL: [&str; 8] = [
    RETRAIN,
    BUILD_INDEX,
    TRAK_CHECKPOINTS,
    TRAK_SHARD,
    PREDICT,
    MATCH,
    AUDIT,
    FULL_RETRAIN,
];

/// A `noop` task (lethe-runner's): how long it waits and the size of the artifact it writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoopSpec {
    #[serde(default)]
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes: Option<u64>,
}

/// An object a task reads, with the hash to check when one is known (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A dataset: `builtin:NAME` (a dataset the worker image carries, such as `fmnist-tiny`) or an
/// object-store prefix holding `train.safetensors` and `val.safetensors`.
pub type DatasetRef = ObjectRef;

/// The ensemble a `retrain` task trains part of, and a `build_index` task reduces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleTask {
    pub dataset: DatasetRef,
    /// The checkpoint whose architecture and recipe the retrains use.
    pub model: ObjectRef,
    pub members: usize,
    pub alpha: f64,
    pub seed: u64,
    pub members_per_task: usize,
    /// Training indices no member sees (oracles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<i64>,
    /// Keep every member's weights in its `members` artifact: an audit's originals, which the
    /// audited method is then applied to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_weights: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrainSpec {
    #[serde(flatten)]
    pub ensemble: EnsembleTask,
    /// Members `start..end` of the ensemble, one group of `members_per_task`.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildIndexSpec {
    #[serde(flatten)]
    pub ensemble: EnsembleTask,
    /// TRAK instead of the subsample estimator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trak: Option<TrakSettings>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrakSettings {
    pub checkpoints: usize,
    pub projection_dim: i64,
    pub seed: u64,
    /// λ of (ΦᵀΦ + λI)⁻¹, relative to the mean of ΦᵀΦ's diagonal.
    pub relative_damping: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrakCheckpointsSpec {
    #[serde(flatten)]
    pub ensemble: EnsembleTask,
    pub trak: TrakSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrakShardSpec {
    #[serde(flatten)]
    pub ensemble: EnsembleTask,
    pub trak: TrakSettings,
    /// Shard `shard` of `shards`: the training split is cut into `shards` ranges of equal
    /// length, rounded up to a multiple of 512 examples.
    pub shard: usize,
    pub shards: usize,
}

impl TrakShardSpec {
    /// The examples of this shard in a training split of `num_train` (empty past its end).
    pub fn examples(&self, num_train: i64) -> std::ops::Range<i64> {
        const ALIGN: i64 = 512;
        let shards = self.shards.max(1) as i64;
        let per_shard = ((num_train + shards - 1) / shards).max(1);
        let per_shard = (per_shard + ALIGN - 1) / ALIGN * ALIGN;
        let start = (self.shard as i64 * per_shard).min(num_train);
        start..(start + per_shard).min(num_train)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictSpec {
    pub dataset: DatasetRef,
    /// The anchor (version 0, or the latest version retrained from scratch) whose outputs the
    /// prediction starts from.
    pub base: ObjectRef,
    pub beta: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_noise: Option<ObjectRef>,
    /// What to forget relative to `base` (everything forgotten since that anchor, this run's
    /// requests included), sorted.
    pub forgotten: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchSpec {
    pub dataset: DatasetRef,
    pub base: ObjectRef,
    /// The version the fine-tune starts from.
    pub current: ObjectRef,
    pub forgotten: Vec<i64>,
    /// What this run's requests asked for (the lineage records it).
    pub requested: Vec<i64>,
    /// Examples the anchor (`base`) was retrained without: never used as retained points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<i64>,
    pub seed: u64,
    /// Below this confidence of the predicted targets, the run's `full_retrain` writes the
    /// version and this task completes without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullRetrainSpec {
    pub dataset: DatasetRef,
    /// A checkpoint of the model, for its architecture and recipe.
    pub model: ObjectRef,
    /// Everything forgotten: the retrain never sees it.
    pub exclude: Vec<i64>,
    pub seed: u64,
    /// Retrain only if the confidence of the run's predicted targets (its `predict` input) is
    /// below this; otherwise complete without a model, the `match` writing the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_below_confidence: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditSpec {
    pub dataset: DatasetRef,
    /// The version before the run, for the "before" figures.
    pub before: ObjectRef,
    /// Everything forgotten: what the oracles were trained without.
    pub forgotten: Vec<i64>,
    /// Oracles (the last ones) left out of the comparison: their KLoM against the others is
    /// the noise floor.
    #[serde(default)]
    pub held_out: usize,
    /// How DMM is audited; absent for a run that retrained from scratch, which is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmm: Option<AuditDmm>,
}

/// DMM as the run applied it, for the audit to apply to the originals: independently trained
/// copies of the anchor (docs/DESIGN.md §1.7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditDmm {
    pub beta: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_noise: Option<ObjectRef>,
    /// The examples forgotten since the anchor: the forget set DMM is given.
    pub since_anchor: Vec<i64>,
    pub seed: u64,
}

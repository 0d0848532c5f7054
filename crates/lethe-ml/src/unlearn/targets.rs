//! DMM's predicted retrain outputs: ŷ(x) = f_θ0(x) − m·Σ_{i∈F} β[i, x, :].
//!
//! The sum over F adds the estimation noise of |F| rows of β to every target. For most
//! retained points the true shift is close to zero, so that noise alone would become the
//! fine-tune's target and damage them. When the index carries its noise model
//! ([`IndexNoise`]), each target's predicted shift is tested against its standard error and
//! shrunk ([`Denoise`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::attribution::beta_file::BetaReader;
use crate::error::{MlError, Result};
use crate::tensorio;
use crate::unlearn::ForgetSet;

/// The noise model of a linear index β = W·Z: `target_std` (`T × C`), the spread of each
/// logit across the estimation models, and `source_weight_sq` (`n`), ‖W_i‖². The standard
/// error of Σ_{i∈F} β[i, x, c] is then about target_std[x, c]·√(Σ_{i∈F} ‖W_i‖²) (the cross
/// terms vanish in expectation for random subsets).
#[derive(Debug)]
pub struct IndexNoise {
    pub target_std: Tensor,
    pub source_weight_sq: Tensor,
    /// Each target's label (`T`, int64), which the shared component of the noise depends on.
    pub target_labels: Option<Tensor>,
}

impl IndexNoise {
    /// Where the noise model of the index at `index` lives.
    pub fn path_for(index: &Path) -> PathBuf {
        index.with_extension("noise.safetensors")
    }

    pub(crate) fn write(&self, index: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut tensors = vec![
            (
                "target_std".to_owned(),
                self.target_std.to_kind(Kind::Float),
            ),
            (
                "source_weight_sq".to_owned(),
                self.source_weight_sq.to_kind(Kind::Float),
            ),
        ];
        if let Some(labels) = &self.target_labels {
            tensors.push(("target_labels".to_owned(), labels.to_kind(Kind::Int64)));
        }
        tensorio::write_safetensors(&Self::path_for(index), &tensors, metadata)
    }

    /// The noise model next to the index at `index`, if it has one (a TRAK index of one
    /// checkpoint does not).
    pub fn load(index: &Path) -> Result<Option<Self>> {
        let path = Self::path_for(index);
        if !path.is_file() {
            return Ok(None);
        }
        let file = tensorio::read_safetensors(&path)?;
        let get = |name: &str| {
            file.get(name)
                .map(|tensor| tensor.to_kind(Kind::Float))
                .ok_or_else(|| MlError::malformed(&path, format!("missing tensor `{name}`")))
        };
        let target_labels = file
            .get("target_labels")
            .map(|labels| labels.to_kind(Kind::Int64));
        if let Some(labels) = &target_labels {
            if labels.numel() > 0 && labels.min().int64_value(&[]) < 0 {
                return Err(MlError::malformed(&path, "negative target label"));
            }
        }
        Ok(Some(IndexNoise {
            target_std: get("target_std")?,
            source_weight_sq: get("source_weight_sq")?,
            target_labels,
        }))
    }
}

/// How the predicted shift of a target outside F is shrunk towards zero. `z` is the target's
/// root-mean-square z-score over its C logits, s = √(mean_c (Δ_c / se_c)²).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Denoise {
    /// Use Σ β as it is (the DMM paper's arithmetic).
    None,
    /// Keep a target's shift when s > z, otherwise drop it.
    Hard { z: f64 },
    /// Scale a target's shift by max(0, 1 − z/s).
    Soft { z: f64 },
}

/// An attribution index opened for requests: β and, for linear estimators, its noise model.
pub struct AttributionIndex {
    pub beta: BetaReader,
    pub noise: Option<IndexNoise>,
}

impl AttributionIndex {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(AttributionIndex {
            beta: BetaReader::open(path)?,
            noise: IndexNoise::load(path)?,
        })
    }

    /// Whether β holds TRAK scores (calibrated at build time) rather than a linear estimator's.
    pub fn is_trak(&self) -> bool {
        self.beta.metadata.get("method").map(String::as_str) == Some("trak")
    }
}

/// The predicted shift of every target's logits when `forget` is removed, Σ_{i∈F} β_i
/// (`T × C`), after `denoise`. Reads only the |F| rows of β.
///
/// With denoising, a forget point keeps its own term β_x[x] whole (its self-influence, the
/// best-estimated entry of its row) and only the sum of the other forget points' terms is
/// tested; every other target's whole sum is tested. For a random forget set those cross
/// terms are pure noise, while for a cluster they carry the neighbours' real effect.
pub fn predicted_shift(
    index: &AttributionIndex,
    forget: &ForgetSet,
    denoise: Denoise,
) -> Result<Tensor> {
    let (shift, own) = sum_rows(index, forget)?;
    let z = match denoise {
        Denoise::None => return Ok(shift),
        Denoise::Hard { z } | Denoise::Soft { z } => z,
    };
    if !(z.is_finite() && z >= 0.0) {
        return Err(MlError::spec(
            "denoising",
            format!("threshold {z} must be ≥ 0"),
        ));
    }
    let Some(noise) = &index.noise else {
        return Err(MlError::spec(
            "denoising",
            "this index has no noise model (the subsample and ridge estimators and TRAK with two or more checkpoints write one); use no denoising",
        ));
    };
    if noise.target_std.size() != shift.size() {
        return Err(MlError::Shape(format!(
            "noise model is {:?}, β targets are {:?}",
            noise.target_std.size(),
            shift.size()
        )));
    }
    let forget_rows = Tensor::from_slice(forget.indices());
    let weight_sq = noise.source_weight_sq.index_select(0, &forget_rows);
    let shrink = |sum: &Tensor, std: &Tensor, weight_sq: &Tensor| -> Tensor {
        let standard_error = (std * weight_sq.sqrt().unsqueeze(-1)).clamp_min(1e-12);
        let score = (sum / standard_error)
            .square()
            .mean_dim([-1].as_slice(), false, Kind::Float)
            .sqrt();
        let factor = match denoise {
            Denoise::Hard { .. } => score.gt(z).to_kind(Kind::Float),
            _ => (score.clamp_min(1e-12).reciprocal() * (-z) + 1.0).clamp_min(0.0),
        };
        sum * factor.unsqueeze(-1)
    };
    let total_weight_sq = weight_sq.sum(Kind::Float);
    let mut denoised = shrink(
        &shift,
        &noise.target_std,
        &total_weight_sq.expand([shift.size()[0]], false),
    );
    // Estimation models differ in their overall logit levels, and that shared component
    // enters every target's sum alike: measured on the targets outside F, it is removed from
    // the cross terms before they are pooled.
    let outside = Tensor::ones([shift.size()[0]], (Kind::Float, tch::Device::Cpu)).index_fill(
        0,
        &forget_rows,
        0.0,
    );
    let common = common_shift(&shift, &outside, noise.target_labels.as_ref())?;
    let cross = shift.index_select(0, &forget_rows) - &own - common.index_select(0, &forget_rows);
    let cross_variance = noise.target_std.index_select(0, &forget_rows).square()
        * (total_weight_sq - &weight_sq).clamp_min(0.0).unsqueeze(1);
    let forget_shift = own + pooled_cross_terms(&cross, &cross_variance);
    let _ = denoised.index_copy_(0, &forget_rows, &forget_shift);
    Ok(denoised)
}

/// Every target's share (`T × C`) of the shift that the estimation models' overall logit
/// levels put on all targets alike: the mean shift of the targets outside F (`outside`, 1 or 0
/// per target) with the same label, or of all of them when the labels are not known. Models
/// differ in how confident they are on each class, so the shared part depends on the label.
fn common_shift(shift: &Tensor, outside: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
    let targets = shift.size()[0];
    let Some(labels) = labels else {
        let mean =
            (shift * outside.unsqueeze(1)).sum_dim_intlist([0].as_slice(), true, Kind::Float)
                / outside.sum(Kind::Float).clamp_min(1.0);
        return Ok(mean.expand([targets, -1], false));
    };
    if labels.size() != [targets] {
        return Err(MlError::Shape(format!(
            "noise model labels are {:?} for {targets} targets",
            labels.size()
        )));
    }
    let groups = labels.max().int64_value(&[]) + 1;
    let weighted = shift * outside.unsqueeze(1);
    let sums = Tensor::zeros([groups, shift.size()[1]], (Kind::Float, tch::Device::Cpu))
        .index_add(0, labels, &weighted);
    let counts =
        Tensor::zeros([groups], (Kind::Float, tch::Device::Cpu)).index_add(0, labels, outside);
    Ok((sums / counts.clamp_min(1.0).unsqueeze(1)).index_select(0, labels))
}

/// Σ_{i∈F} β_i (`T × C`) and each forget point's own term β_x[x] (`|F| × C`), in logit units.
/// The rows are the request's largest read: they are read, converted and summed a few at a
/// time, so that the working set stays in cache and no buffer of all |F| rows is allocated.
fn sum_rows(index: &AttributionIndex, forget: &ForgetSet) -> Result<(Tensor, Tensor)> {
    const ROWS_AT_ONCE: usize = 8;
    let shape = index.beta.shape;
    let mut shift = Tensor::zeros(
        [shape.targets, shape.classes],
        (Kind::Float, tch::Device::Cpu),
    );
    let mut own = Vec::with_capacity(forget.len());
    for sources in forget.indices().chunks(ROWS_AT_ONCE) {
        let rows = index.beta.stored_rows(sources)?.to_kind(Kind::Float);
        shift += rows.sum_dim_intlist([0].as_slice(), false, Kind::Float);
        own.push(
            rows.index_select(1, &Tensor::from_slice(sources))
                .diagonal(0, 0, 1)
                .transpose(0, 1),
        );
    }
    let scale = index.beta.scale;
    Ok((shift * scale, Tensor::cat(&own, 0) * scale))
}

/// Empirical-Bayes shrinkage of the forget points' cross terms (`|F| × C`, with their noise
/// variances) towards their per-logit mean over F. A cluster's members shift alike, so the
/// mean carries the signal that no single noisy sum passes a test for; for a random forget
/// set the mean is close to zero and so is everything shrunk towards it. Each point keeps
/// the fraction s²/(s² + v) of its deviation, s² the spread of the cross terms beyond their
/// noise.
pub fn pooled_cross_terms(cross: &Tensor, variance: &Tensor) -> Tensor {
    let mean = cross.mean_dim([0].as_slice(), true, Kind::Float);
    let deviation = cross - &mean;
    let signal = (deviation
        .square()
        .mean_dim([0].as_slice(), true, Kind::Float)
        - variance.mean_dim([0].as_slice(), true, Kind::Float))
    .clamp_min(0.0);
    let keep = &signal / (&signal + variance).clamp_min(1e-12);
    mean + deviation * keep
}

/// DMM targets for `examples`: the anchor logits on those examples (`M × L × C`, the
/// deployed model's outputs) minus `multiplier` × their rows of the shift (`T × C`).
pub fn dmm_targets(
    anchor_logits: &Tensor,
    shift: &Tensor,
    multiplier: f64,
    examples: &[i64],
) -> Result<Tensor> {
    if anchor_logits.dim() != 3
        || anchor_logits.size()[1] != examples.len() as i64
        || anchor_logits.size()[2] != shift.size()[1]
    {
        return Err(MlError::Shape(format!(
            "anchor logits {:?} do not match {} examples of a shift {:?}",
            anchor_logits.size(),
            examples.len(),
            shift.size()
        )));
    }
    let rows = Tensor::from_slice(examples).to_device(shift.device());
    let shift = shift
        .index_select(0, &rows)
        .to_device(anchor_logits.device());
    Ok(anchor_logits.to_kind(Kind::Float) - shift.unsqueeze(0) * multiplier)
}

//! The attribution index: β[i, x, c], the effect of training example i on logit c of target x.
//!
//! - [`beta_file`]: the on-disk layout (one safetensors tensor `beta`, `n × T × C` float16, rows
//!   of one source example contiguous), a resumable row-by-row writer and a reader that fetches
//!   the rows of a forget set without reading the rest;
//! - [`subsample`]: the default estimator, per-logit subsampled influence from the masks and
//!   logits of subset retrains;
//! - [`ridge`]: the datamodels estimator, ridge regression per target, its penalty chosen by
//!   LDS on held-out estimation models;
//! - [`projection`] and [`trak`]: TRAK for the zoo's MLPs, with a seeded JL projection that is
//!   never materialised and a scale calibrated to logit units on subset retrains;
//! - [`lds`]: the linear datamodeling score of an index on held-out subset retrains, and
//!   DM-direct predictions of the outputs after removing a forget set.

pub mod beta_file;
pub mod lds;
pub mod projection;
pub mod ridge;
pub mod subsample;
pub mod trak;

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::path::Path;

use crate::ensemble::EnsembleResults;
use crate::error::{MlError, Result};
use crate::unlearn::targets::IndexNoise;
use ridge::{PenaltySelection, RidgeWeights};
use subsample::{write_linear_index, BuildProgress, EstimatorWeights, SubsampleWeights};
use tch::{Kind, Tensor};

/// How β is estimated from subset retrains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// Per-logit subsampled influence (difference of means); the default.
    Subsample,
    /// Ridge regression per target; without a penalty, it is chosen by LDS on held-out
    /// estimation models.
    Ridge { penalty: Option<f64> },
}

/// What an index build did.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexBuild {
    /// False when `progress` stopped the build (a rerun resumes it).
    pub complete: bool,
    /// The ridge penalty used, with the validation LDS of each candidate when it was selected.
    pub penalty: Option<f64>,
    pub penalty_selection: Option<PenaltySelection>,
}

/// Builds the index of the members `members` of an ensemble (the others can be held out to
/// evaluate it) and writes it to `out`.
pub fn build_index(
    ensemble: &EnsembleResults,
    members: Range<usize>,
    estimator: Estimator,
    out: &Path,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<IndexBuild> {
    let total = ensemble.seeds.len();
    if members.len() < 2 || members.end > total {
        return Err(MlError::spec(
            "index",
            format!("estimation members {members:?} must be at least two of 0..{total}"),
        ));
    }
    let (start, count) = (members.start as i64, members.len() as i64);
    let masks = ensemble.masks.narrow(0, start, count);
    let logits = ensemble.logits.narrow(0, start, count);
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "ensemble_fingerprint".to_owned(),
        ensemble.manifest.fingerprint.clone(),
    );
    metadata.insert(
        "dataset_hash".to_owned(),
        ensemble.manifest.dataset_hash.clone(),
    );
    metadata.insert(
        "estimation_members".to_owned(),
        format!("{}..{}", members.start, members.end),
    );
    metadata.insert(
        "num_train".to_owned(),
        ensemble.manifest.num_train.to_string(),
    );
    let (weights, penalty, penalty_selection): (Box<dyn EstimatorWeights>, _, _) = match estimator {
        Estimator::Subsample => {
            metadata.insert("method".to_owned(), "subsample".to_owned());
            (Box::new(SubsampleWeights::new(&masks)?), None, None)
        }
        Estimator::Ridge { penalty } => {
            let (num_train, num_targets) =
                (ensemble.manifest.num_train, ensemble.manifest.num_targets);
            let targets = if num_targets > num_train {
                num_train..num_targets
            } else {
                0..num_targets
            };
            let selection = match penalty {
                Some(_) => None,
                None => Some(ridge::select_penalty(
                    &ensemble.masks,
                    &ensemble.logits,
                    &ensemble.labels,
                    members.clone(),
                    targets,
                    0.15,
                )?),
            };
            let chosen = penalty
                .or(selection.as_ref().map(|selection| selection.chosen))
                .expect("a penalty is given or selected");
            metadata.insert("method".to_owned(), "ridge".to_owned());
            metadata.insert("ridge_penalty".to_owned(), chosen.to_string());
            (
                Box::new(RidgeWeights::fit(&masks, chosen)?),
                Some(chosen),
                selection,
            )
        }
    };
    let complete = write_linear_index(weights.as_ref(), &logits, out, &metadata, None, progress)?;
    if complete {
        let mut noise = linear_noise(weights.as_ref(), &logits)?;
        noise.target_labels = Some(ensemble.labels.shallow_clone());
        noise.write(out, &metadata)?;
    }
    Ok(IndexBuild {
        complete,
        penalty,
        penalty_selection,
    })
}

/// The noise model of β = W·Z ([`IndexNoise`]): each logit's spread across the estimation
/// models and each source's ‖W_i‖².
fn linear_noise(weights: &dyn EstimatorWeights, logits: &Tensor) -> Result<IndexNoise> {
    const BLOCK: i64 = 1024;
    let sources = weights.sources();
    let mut source_weight_sq = Vec::new();
    for start in (0..sources).step_by(BLOCK as usize) {
        let rows = weights.rows(start, BLOCK.min(sources - start))?;
        source_weight_sq.push(
            rows.square()
                .sum_dim_intlist([1].as_slice(), false, Kind::Float),
        );
    }
    let targets = logits.size()[1];
    let mut target_std = Vec::new();
    for start in (0..targets).step_by(BLOCK as usize) {
        let chunk = logits
            .narrow(1, start, BLOCK.min(targets - start))
            .to_kind(Kind::Float);
        target_std.push(chunk.std_correction([0].as_slice(), 1, false));
    }
    Ok(IndexNoise {
        target_std: Tensor::cat(&target_std, 0),
        source_weight_sq: Tensor::cat(&source_weight_sq, 0),
        target_labels: None,
    })
}

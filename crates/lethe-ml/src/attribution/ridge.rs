//! Ridge regression per target and logit (the datamodels estimator): for every target x and
//! class c, the linear model z_c(x) ≈ b + Σ_i a_i·β[i, x, c] over the subset models, fitted with
//! an L2 penalty. All targets share the design matrix (the masks), so one dual solve serves
//! them all: W = Āᵀ (Ā Āᵀ + λ I)⁻¹ with Ā the column-centred masks, and β = W·Z (centring Z is
//! unnecessary: the rows of W sum to zero).
//!
//! The penalty is chosen by measurement: each candidate is fitted on most of the estimation
//! models and scored by LDS on the rest; the best is refitted on all of them.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::lds::score;
use super::subsample::EstimatorWeights;
use crate::error::{MlError, Result};

/// Candidate penalties, as multiples of the mean squared norm of a centred mask row.
pub const PENALTY_GRID: [f64; 9] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// Ridge weights W (`n × M`).
pub struct RidgeWeights {
    weights: Tensor,
}

impl RidgeWeights {
    /// Fits W for `masks` (`M × n`) with penalty `relative_penalty` × mean row norm².
    pub fn fit(masks: &Tensor, relative_penalty: f64) -> Result<Self> {
        if masks.dim() != 2 || masks.size()[0] < 2 {
            return Err(MlError::spec(
                "ridge estimator",
                format!(
                    "needs masks of at least two models (M × n), got {:?}",
                    masks.size()
                ),
            ));
        }
        if !(relative_penalty.is_finite() && relative_penalty > 0.0) {
            return Err(MlError::spec(
                "ridge estimator",
                format!("penalty {relative_penalty} must be positive"),
            ));
        }
        let models = masks.size()[0];
        let design = masks.to_kind(Kind::Double);
        let centred = &design - design.mean_dim(0, true, Kind::Double);
        let gram = centred.matmul(&centred.transpose(0, 1));
        let scale = gram
            .diagonal(0, 0, 1)
            .mean(Kind::Double)
            .double_value(&[])
            .max(f64::MIN_POSITIVE);
        let regularised =
            gram + Tensor::eye(models, (Kind::Double, masks.device())) * (relative_penalty * scale);
        let inverse = Tensor::f_linalg_inv(&regularised)?;
        let weights = centred
            .transpose(0, 1)
            .matmul(&inverse)
            .to_kind(Kind::Float);
        Ok(RidgeWeights { weights })
    }
}

impl EstimatorWeights for RidgeWeights {
    fn sources(&self) -> i64 {
        self.weights.size()[0]
    }

    fn rows(&self, start: i64, len: i64) -> Result<Tensor> {
        Ok(self.weights.narrow(0, start, len))
    }
}

/// The validation LDS of each candidate penalty and the one chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct PenaltySelection {
    pub chosen: f64,
    pub candidates: Vec<(f64, f64)>,
    pub fit_models: usize,
    pub validation_models: usize,
}

/// Picks the penalty with the best LDS on the last `validation_fraction` of the models
/// `estimation` (the rest fit), on targets `targets`.
pub fn select_penalty(
    masks: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    estimation: Range<usize>,
    targets: Range<i64>,
    validation_fraction: f64,
) -> Result<PenaltySelection> {
    let validation_models =
        ((estimation.len() as f64 * validation_fraction).round() as usize).max(3);
    if validation_models + 2 > estimation.len() {
        return Err(MlError::spec(
            "ridge estimator",
            format!(
                "{} estimation models are too few to hold {validation_models} out for the penalty",
                estimation.len()
            ),
        ));
    }
    let fit = estimation.start..estimation.end - validation_models;
    let validation = fit.end..estimation.end;
    let fit_masks = masks.narrow(0, fit.start as i64, fit.len() as i64);
    let (target_start, target_len) = (targets.start, targets.end - targets.start);
    let fit_logits = logits
        .narrow(0, fit.start as i64, fit.len() as i64)
        .narrow(1, target_start, target_len)
        .to_kind(Kind::Float);
    let classes = logits.size()[2];
    let mut candidates = Vec::new();
    for penalty in PENALTY_GRID {
        let weights = RidgeWeights::fit(&fit_masks, penalty)?.weights;
        let beta = weights
            .matmul(&fit_logits.reshape([fit.len() as i64, -1]))
            .view([-1, target_len, classes]);
        let rows = |start: i64, len: i64| -> Result<Tensor> { Ok(beta.narrow(0, start, len)) };
        let report = score(
            &rows,
            masks.size()[1],
            masks,
            logits,
            labels,
            fit.clone(),
            validation.clone(),
            targets.clone(),
        )?;
        candidates.push((penalty, report.lds));
    }
    let chosen = candidates
        .iter()
        .filter(|(_, lds)| lds.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(1.0, |(penalty, _)| *penalty);
    Ok(PenaltySelection {
        chosen,
        candidates,
        fit_models: fit.len(),
        validation_models,
    })
}

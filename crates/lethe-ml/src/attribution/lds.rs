//! How good an index is: the linear datamodeling score (LDS) on held-out subset retrains, and
//! DM-direct predictions of the outputs after removing a forget set.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::beta_file::BetaReader;
use crate::error::{MlError, Result};
use crate::outputs::margins;

/// Rows of β read at once while predicting.
const ROW_CHUNK: i64 = 512;

/// The LDS of an index and what it was measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct LdsReport {
    /// Mean over targets of the Spearman correlation, across held-out models, between the
    /// predicted and the actual margin.
    pub lds: f64,
    pub estimation_models: usize,
    pub held_out_models: usize,
    pub targets: usize,
}

/// The LDS of `index` on the models `held_out` of an ensemble (masks `M × n`, logits
/// `M × T × C`, labels `T`), for the targets `targets`. The prediction for a model with mask a
/// is z̄ + Σ_i (a_i − p_i)·β_i, with z̄ and p (each example's inclusion rate) taken from the
/// `estimation` models, which must be the ones the index was built from.
pub fn linear_datamodeling_score(
    index: &BetaReader,
    masks: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    estimation: Range<usize>,
    held_out: Range<usize>,
    targets: Range<i64>,
) -> Result<LdsReport> {
    if targets.is_empty() || targets.end > index.shape.targets || targets.start < 0 {
        return Err(MlError::spec(
            "LDS",
            format!("targets {targets:?} must lie in 0..{}", index.shape.targets),
        ));
    }
    let (target_start, target_len) = (targets.start, targets.end - targets.start);
    let rows = |start: i64, len: i64| -> Result<Tensor> {
        Ok(index
            .row_range(start, len)?
            .narrow(1, target_start, target_len))
    };
    score(
        &rows,
        index.shape.sources,
        masks,
        logits,
        labels,
        estimation,
        held_out,
        targets,
    )
}

/// The LDS of a β whose rows (restricted to `targets`) come from `beta_rows(start, len)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score(
    beta_rows: &dyn Fn(i64, i64) -> Result<Tensor>,
    sources: i64,
    masks: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    estimation: Range<usize>,
    held_out: Range<usize>,
    targets: Range<i64>,
) -> Result<LdsReport> {
    let models = masks.size()[0] as usize;
    if held_out.len() < 3
        || held_out.end > models
        || estimation.is_empty()
        || estimation.end > models
    {
        return Err(MlError::spec("LDS", format!("held-out {held_out:?} (at least 3) and estimation {estimation:?} must lie in 0..{models}")));
    }
    if estimation.start < held_out.end && held_out.start < estimation.end {
        return Err(MlError::spec(
            "LDS",
            "held-out models must not be estimation models",
        ));
    }
    if masks.size()[1] != sources {
        return Err(MlError::Shape(format!(
            "masks cover {} examples, the index {sources}",
            masks.size()[1]
        )));
    }
    let range = |r: &Range<usize>| (r.start as i64, r.len() as i64);
    let (estimation_start, estimation_len) = range(&estimation);
    let (held_start, held_len) = range(&held_out);
    let (target_start, target_len) = (targets.start, targets.end - targets.start);
    let classes = logits.size()[2];

    let estimation_masks = masks
        .narrow(0, estimation_start, estimation_len)
        .to_kind(Kind::Float);
    let inclusion_rate = estimation_masks.mean_dim(0, false, Kind::Float);
    let mean_logits = logits
        .narrow(0, estimation_start, estimation_len)
        .narrow(1, target_start, target_len)
        .to_kind(Kind::Float)
        .mean_dim(0, false, Kind::Float);
    let centred_masks =
        masks.narrow(0, held_start, held_len).to_kind(Kind::Float) - inclusion_rate.unsqueeze(0);

    let mut shift = Tensor::zeros(
        [held_len, target_len * classes],
        (Kind::Float, tch::Device::Cpu),
    );
    for start in (0..sources).step_by(ROW_CHUNK as usize) {
        let rows = ROW_CHUNK.min(sources - start);
        let beta = beta_rows(start, rows)?
            .to_kind(Kind::Float)
            .reshape([rows, -1]);
        shift += centred_masks.narrow(1, start, rows).matmul(&beta);
    }
    let predicted_logits = mean_logits.unsqueeze(0) + shift.view([held_len, target_len, classes]);
    let target_labels = labels.narrow(0, target_start, target_len);
    let predicted = margins(&predicted_logits, &target_labels);
    let actual = margins(
        &logits
            .narrow(0, held_start, held_len)
            .narrow(1, target_start, target_len)
            .to_kind(Kind::Float),
        &target_labels,
    );
    let correlation = spearman_columns(&predicted, &actual);
    Ok(LdsReport {
        lds: correlation.mean(Kind::Double).double_value(&[]),
        estimation_models: estimation.len(),
        held_out_models: held_out.len(),
        targets: target_len as usize,
    })
}

/// Spearman correlation of each column of `a` with the same column of `b` (`rows × columns`).
pub fn spearman_columns(a: &Tensor, b: &Tensor) -> Tensor {
    let ranks = |x: &Tensor| {
        let rank = x.argsort(0, false).argsort(0, false).to_kind(Kind::Double);
        &rank - rank.mean_dim(0, true, Kind::Double)
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let numerator = (&ra * &rb).sum_dim_intlist(0, false, Kind::Double);
    let denominator = ((&ra * &ra).sum_dim_intlist(0, false, Kind::Double)
        * (&rb * &rb).sum_dim_intlist(0, false, Kind::Double))
    .sqrt();
    numerator / denominator.clamp_min(f64::MIN_POSITIVE)
}

/// DM-direct prediction of a model's logits after removing `forget`: base − Σ_{i∈F} β_i, where
/// `base` is the deployed model's logits on every target (`T × C`).
pub fn predict_without(index: &BetaReader, base: &Tensor, forget: &[i64]) -> Result<Tensor> {
    if forget.is_empty() {
        return Err(MlError::spec("forget set", "is empty"));
    }
    let mut sorted = forget.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(MlError::spec(
            "forget set",
            format!("index {} appears more than once", pair[0]),
        ));
    }
    let expected = [index.shape.targets, index.shape.classes];
    if base.size() != expected {
        return Err(MlError::Shape(format!(
            "base logits are {:?}, the index needs {expected:?}",
            base.size()
        )));
    }
    let rows = index.rows(forget)?.to_kind(Kind::Float);
    Ok(base.to_kind(Kind::Float) - rows.sum_dim_intlist(0, false, Kind::Float))
}

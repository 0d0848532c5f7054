//! Per-logit subsampled influence (the default estimator):
//! β[i, x, c] = mean of z_c(x) over the subset models that trained on i − mean over those that
//! did not.
//!
//! Both estimators of this crate are linear in the logits: β_i = Σ_m w[i, m]·z_m, with weights
//! that depend on the masks only. [`write_linear_index`] computes β = W·Z in blocks of rows and
//! chunks of columns: memory holds the logits (float16, as stored), one chunk of them in float32,
//! one block of rows of W and one block of rows of β.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use tch::{Kind, Tensor};

use super::beta_file::{BetaShape, BetaWriter};
use crate::error::{MlError, Result};

/// Bytes of float32 β rows held at once.
const ROW_BLOCK_BYTES: i64 = 128 << 20;
/// Columns (target × class) of the logits converted to float32 at once.
const COLUMN_CHUNK: i64 = 16_384;

/// Where a build is: rows of β written so far, out of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildProgress {
    pub rows_done: i64,
    pub rows_total: i64,
}

/// The weights w[i, m] of a linear estimator, produced a block of rows at a time.
pub trait EstimatorWeights {
    /// Number of source examples n.
    fn sources(&self) -> i64;
    /// Rows `start..start + len` of the weights, `len × M`, float32.
    fn rows(&self, start: i64, len: i64) -> Result<Tensor>;
}

/// Subsampled influence: w[i, m] = a_mi / in_i − (1 − a_mi) / out_i, and 0 for an example that
/// every model (or no model) trained on, which has no contrast.
pub struct SubsampleWeights {
    included: Tensor,
    in_count: Tensor,
    out_count: Tensor,
}

impl SubsampleWeights {
    pub fn new(masks: &Tensor) -> Result<Self> {
        if masks.dim() != 2 || masks.size()[0] < 2 {
            return Err(MlError::spec(
                "subsample estimator",
                format!(
                    "needs masks of at least two models (M × n), got {:?}",
                    masks.size()
                ),
            ));
        }
        let included = masks.to_kind(Kind::Float);
        let in_count = included.sum_dim_intlist(0, false, Kind::Float);
        let out_count = (masks.size()[0] as f64) - &in_count;
        Ok(SubsampleWeights {
            included,
            in_count,
            out_count,
        })
    }
}

impl EstimatorWeights for SubsampleWeights {
    fn sources(&self) -> i64 {
        self.included.size()[1]
    }

    fn rows(&self, start: i64, len: i64) -> Result<Tensor> {
        let included = self.included.narrow(1, start, len).transpose(0, 1);
        let in_count = self.in_count.narrow(0, start, len).unsqueeze(1);
        let out_count = self.out_count.narrow(0, start, len).unsqueeze(1);
        let estimable = in_count
            .gt(0.0)
            .logical_and(&out_count.gt(0.0))
            .to_kind(Kind::Float);
        let weights =
            &included / in_count.clamp_min(1.0) - (1.0 - &included) / out_count.clamp_min(1.0);
        Ok(weights * estimable)
    }
}

/// Writes the subsampled-influence β of `masks` (`M × n`, 0/1) and `logits` (`M × T × C`) to
/// `out`; see [`write_linear_index`].
pub fn write_subsample_index(
    masks: &Tensor,
    logits: &Tensor,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    block_rows: Option<i64>,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<bool> {
    write_linear_index(
        &SubsampleWeights::new(masks)?,
        logits,
        out,
        metadata,
        block_rows,
        progress,
    )
}

/// Writes β = W·Z for `weights` W and `logits` Z (`M × T × C`) to `out`, resuming an
/// interrupted build with the same metadata. Rows are computed and written in blocks
/// (`block_rows`, or as many as fit in 128 MiB of float32); `progress` is called after every
/// block, and returning `Break` stops the build there (it can be resumed). Returns whether β is
/// complete.
pub fn write_linear_index(
    weights: &dyn EstimatorWeights,
    logits: &Tensor,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    block_rows: Option<i64>,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<bool> {
    let (members, targets, classes) = match logits.size()[..] {
        [members, targets, classes] => (members, targets, classes),
        _ => {
            return Err(MlError::Shape(format!(
                "logits must be M × T × C, got {:?}",
                logits.size()
            )))
        }
    };
    let sources = weights.sources();
    let columns = targets * classes;
    let logits = logits.reshape([members, columns]);
    let shape = BetaShape {
        sources,
        targets,
        classes,
    };
    let mut writer = BetaWriter::create_or_resume(out, shape, metadata)?;
    let block_rows = block_rows
        .unwrap_or(ROW_BLOCK_BYTES / (columns * 4))
        .clamp(1, sources);
    while writer.rows_written() < sources {
        let start = writer.rows_written();
        let rows = block_rows.min(sources - start);
        let weight_rows = weights.rows(start, rows)?;
        if weight_rows.size() != [rows, members] {
            return Err(MlError::Shape(format!(
                "estimator weights are {:?} for {members} models",
                weight_rows.size()
            )));
        }
        let block = Tensor::zeros([rows, columns], (Kind::Float, logits.device()));
        for column in (0..columns).step_by(COLUMN_CHUNK as usize) {
            let width = COLUMN_CHUNK.min(columns - column);
            let chunk = logits.narrow(1, column, width).to_kind(Kind::Float);
            block
                .narrow(1, column, width)
                .copy_(&weight_rows.matmul(&chunk));
        }
        writer.append_rows(&block.view([rows, targets, classes]))?;
        let reported = BuildProgress {
            rows_done: writer.rows_written(),
            rows_total: sources,
        };
        if progress(reported).is_break() && writer.rows_written() < sources {
            return Ok(false);
        }
    }
    writer.finish()?;
    Ok(true)
}

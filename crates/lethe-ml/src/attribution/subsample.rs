//! Per-logit subsampled influence (the default estimator):
//! β[i, x, c] = mean of z_c(x) over the subset models that trained on i − mean over those that
//! did not. One chunked matrix product of the masks with the logits: memory holds the logits
//! (float16, as stored), one chunk of them in float32 and one block of rows of β.

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::path::Path;

use tch::{Kind, Tensor};

use super::beta_file::{BetaShape, BetaWriter};
use crate::ensemble::EnsembleResults;
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

/// Writes the subsampled-influence β of `masks` (`M × n`, 0/1) and `logits` (`M × T × C`) to
/// `out`, resuming an interrupted build with the same metadata. Rows are computed and written
/// in blocks (`block_rows`, or as many as fit in 128 MiB of float32); `progress` is called
/// after every block, and returning `Break` stops the build there (it can be resumed).
/// Returns whether β is complete.
pub fn write_subsample_index(
    masks: &Tensor,
    logits: &Tensor,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    block_rows: Option<i64>,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<bool> {
    let (members, sources) = match masks.size()[..] {
        [members, sources] => (members, sources),
        _ => {
            return Err(MlError::Shape(format!(
                "masks must be M × n, got {:?}",
                masks.size()
            )))
        }
    };
    let (targets, classes) = match logits.size()[..] {
        [rows, targets, classes] if rows == members => (targets, classes),
        _ => {
            return Err(MlError::Shape(format!(
                "logits must be {members} × T × C, got {:?}",
                logits.size()
            )))
        }
    };
    if members < 2 {
        return Err(MlError::spec(
            "subsample estimator",
            "needs at least two subset models",
        ));
    }
    let columns = targets * classes;
    let included = masks.to_kind(Kind::Float);
    let in_count = included.sum_dim_intlist(0, false, Kind::Float);
    let out_count = (members as f64) - &in_count;
    // An example that every model (or no model) trained on has no contrast: its β is zero.
    let estimable = in_count
        .gt(0.0)
        .logical_and(&out_count.gt(0.0))
        .to_kind(Kind::Float);
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
        let included_rows = included.narrow(1, start, rows).transpose(0, 1);
        let in_rows = in_count.narrow(0, start, rows).clamp_min(1.0).unsqueeze(1);
        let out_rows = out_count.narrow(0, start, rows).clamp_min(1.0).unsqueeze(1);
        let block = Tensor::zeros([rows, columns], (Kind::Float, masks.device()));
        for column in (0..columns).step_by(COLUMN_CHUNK as usize) {
            let width = COLUMN_CHUNK.min(columns - column);
            let chunk = logits.narrow(1, column, width).to_kind(Kind::Float);
            let sum_in = included_rows.matmul(&chunk);
            let sum_all = chunk.sum_dim_intlist(0, true, Kind::Float);
            let beta = &sum_in / &in_rows - (sum_all - &sum_in) / &out_rows;
            block.narrow(1, column, width).copy_(&beta);
        }
        let block = block * estimable.narrow(0, start, rows).unsqueeze(1);
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

/// Builds the index of members `members` of an ensemble directory (the others can be held out
/// to evaluate it).
pub fn build_from_ensemble(
    ensemble: &EnsembleResults,
    members: Range<usize>,
    out: &Path,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<bool> {
    let total = ensemble.seeds.len();
    if members.len() < 2 || members.end > total {
        return Err(MlError::spec(
            "index",
            format!("estimation members {members:?} must be at least two of 0..{total}"),
        ));
    }
    let start = members.start as i64;
    let count = members.len() as i64;
    let mut metadata = BTreeMap::new();
    metadata.insert("method".to_owned(), "subsample".to_owned());
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
    write_subsample_index(
        &ensemble.masks.narrow(0, start, count),
        &ensemble.logits.narrow(0, start, count),
        out,
        &metadata,
        None,
        progress,
    )
}

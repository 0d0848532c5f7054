//! CIFAR-10 binary batches: records of one label byte followed by 3 × 32 × 32 pixel bytes.

use std::path::{Path, PathBuf};

use super::raw::{RawSplit, RawValues};
use crate::error::{MlError, Result};

const IMAGE_BYTES: usize = 3 * 32 * 32;
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
const CLASSES: u8 = 10;

/// Loads and concatenates CIFAR-10 binary batch files, in the order given.
pub fn load_cifar10_batches(paths: &[PathBuf]) -> Result<RawSplit> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|source| MlError::io(path, source))?;
        append_batch(path, &bytes, &mut pixels, &mut labels)?;
    }
    Ok(RawSplit {
        sample_shape: vec![3, 32, 32],
        values: RawValues::U8(pixels),
        labels,
    })
}

fn append_batch(
    path: &Path,
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    if bytes.is_empty() {
        return Err(MlError::malformed(path, "empty CIFAR-10 batch file"));
    }
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(MlError::malformed(
            path,
            format!(
                "truncated: {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records",
                bytes.len()
            ),
        ));
    }
    for (record_index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if label >= CLASSES {
            return Err(MlError::malformed(
                path,
                format!("record {record_index} has label {label}, CIFAR-10 labels are 0..=9"),
            ));
        }
        labels.push(i64::from(label));
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// The training batches (`data_batch_1.bin` … `data_batch_5.bin`, those present) and the test
/// batch of a CIFAR-10 binary directory.
pub(super) fn cifar10_dir_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let train: Vec<PathBuf> = (1..=5)
        .map(|batch| dir.join(format!("data_batch_{batch}.bin")))
        .filter(|path| path.is_file())
        .collect();
    if train.is_empty() {
        return Err(MlError::malformed(
            dir,
            "no CIFAR-10 training batches (data_batch_1.bin …) in this directory",
        ));
    }
    let test = dir.join("test_batch.bin");
    if !test.is_file() {
        return Err(MlError::malformed(
            dir,
            "no test_batch.bin in this directory",
        ));
    }
    Ok((train, test))
}

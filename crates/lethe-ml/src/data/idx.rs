//! IDX files (the MNIST family), raw or gzipped.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::raw::{RawSplit, RawValues};
use crate::error::{MlError, Result};

const IDX_UBYTE: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a file, transparently gunzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| MlError::io(path, source))?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut decoded = Vec::with_capacity(bytes.len() * 4);
    GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut decoded)
        .map_err(|err| MlError::malformed(path, format!("corrupt gzip stream: {err}")))?;
    Ok(decoded)
}

/// An unsigned-byte IDX array: its dimensions and its values.
struct IdxArray {
    dims: Vec<usize>,
    values: Vec<u8>,
}

fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(MlError::malformed(
            path,
            format!("file is {} bytes, too short for an IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(MlError::malformed(
            path,
            format!(
                "bad IDX magic {:02x}{:02x}{:02x}{:02x}: the first two bytes must be zero",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != IDX_UBYTE {
        return Err(MlError::malformed(
            path,
            format!(
                "unsupported IDX element type 0x{:02x}: only unsigned bytes (0x08) are supported",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(MlError::malformed(
            path,
            "IDX header declares zero dimensions",
        ));
    }
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(MlError::malformed(
            path,
            format!(
                "truncated IDX header: {ndim} dimensions need {header_len} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    for chunk in bytes[4..header_len].chunks_exact(4) {
        let dim = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        dims.push(dim);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, dim| acc.checked_mul(*dim))
        .ok_or_else(|| MlError::malformed(path, format!("IDX dimensions {dims:?} overflow")))?;
    let payload = &bytes[header_len..];
    if payload.len() < expected {
        return Err(MlError::malformed(
            path,
            format!(
                "truncated: dimensions {dims:?} need {expected} bytes of data, file has {}",
                payload.len()
            ),
        ));
    }
    if payload.len() > expected {
        return Err(MlError::malformed(
            path,
            format!(
                "{} trailing bytes after the {expected} bytes that dimensions {dims:?} declare",
                payload.len() - expected
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        values: payload.to_vec(),
    })
}

/// Loads an image file (n × h × w, or n × c × h × w) and its label file (n) into one split.
pub fn load_idx_split(images_path: &Path, labels_path: &Path) -> Result<RawSplit> {
    let images = parse_idx(images_path, &read_maybe_gzipped(images_path)?)?;
    let labels = parse_idx(labels_path, &read_maybe_gzipped(labels_path)?)?;
    let sample_shape: Vec<i64> = match images.dims.as_slice() {
        [_, height, width] => vec![1, *height as i64, *width as i64],
        [_, channels, height, width] => vec![*channels as i64, *height as i64, *width as i64],
        dims => {
            return Err(MlError::malformed(
                images_path,
                format!("image file must have 3 or 4 dimensions (n, [c,] h, w), found {dims:?}"),
            ))
        }
    };
    if labels.dims.len() != 1 {
        return Err(MlError::malformed(
            labels_path,
            format!("label file must have 1 dimension, found {:?}", labels.dims),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(MlError::malformed(
            labels_path,
            format!(
                "{} labels for {} images in {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        ));
    }
    Ok(RawSplit {
        sample_shape,
        values: RawValues::U8(images.values),
        labels: labels.values.into_iter().map(i64::from).collect(),
    })
}

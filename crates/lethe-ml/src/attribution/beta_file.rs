//! β files: a safetensors file holding one tensor `beta` (float16, `n × T × C`), so that the
//! `T × C` values of source example i are contiguous, at a known offset.
//!
//! The metadata entry `scale` (default 1) multiplies the stored values: an estimator whose
//! values are far below float16's normal range (TRAK's, in logit units) stores them unscaled
//! and records the factor, instead of losing them to subnormal rounding.
//!
//! The writer appends rows in order to `<path>.partial` and renames it when all rows are in; a
//! rerun of an interrupted build finds the partial file, checks that its header (which carries
//! the build's fingerprint) is identical, drops any half-written row and continues.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{MlError, Result};

pub const BETA_FORMAT: &str = "lethe-beta/1";
const TENSOR_NAME: &str = "beta";

/// Dimensions of β: source examples, targets, classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BetaShape {
    pub sources: i64,
    pub targets: i64,
    pub classes: i64,
}

impl BetaShape {
    fn row_bytes(&self) -> u64 {
        (self.targets * self.classes * 2) as u64
    }
}

fn header_bytes(shape: BetaShape, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut metadata = metadata.clone();
    metadata.insert("format".to_owned(), BETA_FORMAT.to_owned());
    let data_len = shape.row_bytes() * shape.sources as u64;
    let header = serde_json::json!({
        "__metadata__": metadata,
        TENSOR_NAME: {
            "dtype": "F16",
            "shape": [shape.sources, shape.targets, shape.classes],
            "data_offsets": [0, data_len],
        },
    });
    let mut json = serde_json::to_vec(&header).expect("the header serialises");
    // safetensors readers align the data on 8 bytes; the padding is spaces, as the format allows.
    while !(json.len() + 8).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes
}

/// Appends the rows of β in order; resumable.
pub struct BetaWriter {
    file: File,
    partial_path: PathBuf,
    final_path: PathBuf,
    shape: BetaShape,
    header_len: u64,
    rows_written: i64,
}

impl BetaWriter {
    /// Starts a build of `path`, or resumes an interrupted one with the same shape and metadata
    /// (an interrupted build with other metadata is discarded).
    pub fn create_or_resume(
        path: &Path,
        shape: BetaShape,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let header = header_bytes(shape, metadata);
        let partial_path = PathBuf::from(format!("{}.partial", path.display()));
        let io = |source| MlError::io(&partial_path, source);
        let mut rows_written = 0;
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(&partial_path)
        {
            Ok(mut file) => {
                let mut existing = vec![0u8; header.len()];
                let same_build = file.read_exact(&mut existing).is_ok() && existing == header;
                if same_build {
                    let length = file.metadata().map_err(io)?.len();
                    rows_written = ((length - header.len() as u64) / shape.row_bytes())
                        .min(shape.sources as u64) as i64;
                } else {
                    file.set_len(0).map_err(io)?;
                    file.seek(SeekFrom::Start(0)).map_err(io)?;
                    file.write_all(&header).map_err(io)?;
                }
                file
            }
            Err(_) => {
                if let Some(dir) = partial_path
                    .parent()
                    .filter(|dir| !dir.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|source| MlError::io(dir, source))?;
                }
                let mut file = File::create(&partial_path).map_err(io)?;
                file.write_all(&header).map_err(io)?;
                file
            }
        };
        let end = header.len() as u64 + rows_written as u64 * shape.row_bytes();
        file.set_len(end).map_err(io)?;
        file.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(BetaWriter {
            file,
            partial_path,
            final_path: path.to_owned(),
            shape,
            header_len: header.len() as u64,
            rows_written,
        })
    }

    /// Rows already in the file: the next row to append.
    pub fn rows_written(&self) -> i64 {
        self.rows_written
    }

    /// Appends rows (`r × T × C`, converted to float16) and makes them durable.
    pub fn append_rows(&mut self, rows: &Tensor) -> Result<()> {
        let expected = [rows.size()[0], self.shape.targets, self.shape.classes];
        if rows.size() != expected || self.rows_written + expected[0] > self.shape.sources {
            return Err(MlError::Shape(format!(
                "β rows of shape {:?} do not fit after row {} of {:?}",
                rows.size(),
                self.rows_written,
                self.shape
            )));
        }
        let half = rows.to_kind(Kind::Half).contiguous();
        let mut bytes = vec![0u8; half.numel() * 2];
        half.f_copy_data_u8(&mut bytes, half.numel())?;
        let io = |source| MlError::io(&self.partial_path, source);
        self.file.write_all(&bytes).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.rows_written += expected[0];
        Ok(())
    }

    /// Renames the finished file into place.
    pub fn finish(self) -> Result<()> {
        if self.rows_written != self.shape.sources {
            return Err(MlError::Shape(format!(
                "β has {} of {} rows",
                self.rows_written, self.shape.sources
            )));
        }
        debug_assert_eq!(
            self.header_len + self.rows_written as u64 * self.shape.row_bytes(),
            self.file.metadata().map(|m| m.len()).unwrap_or(0)
        );
        std::fs::rename(&self.partial_path, &self.final_path)
            .map_err(|source| MlError::io(&self.final_path, source))
    }
}

/// Reads rows of a β file without reading the whole file.
pub struct BetaReader {
    file: File,
    path: PathBuf,
    pub shape: BetaShape,
    pub metadata: BTreeMap<String, String>,
    /// The factor applied to the stored values (metadata `scale`).
    pub scale: f64,
    data_offset: u64,
}

impl BetaReader {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|source| MlError::io(path, source))?;
        let mut length_bytes = [0u8; 8];
        file.read_exact(&mut length_bytes)
            .map_err(|_| MlError::malformed(path, "too short for a safetensors header"))?;
        let header_len = u64::from_le_bytes(length_bytes);
        let file_len = file
            .metadata()
            .map_err(|source| MlError::io(path, source))?
            .len();
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(MlError::malformed(
                path,
                format!("header length {header_len} exceeds the file"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|source| MlError::io(path, source))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|err| MlError::malformed(path, format!("header is not JSON: {err}")))?;
        let metadata: BTreeMap<String, String> =
            serde_json::from_value(header["__metadata__"].clone()).unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(BETA_FORMAT) {
            return Err(MlError::malformed(
                path,
                format!("not a β file (format is not {BETA_FORMAT})"),
            ));
        }
        let entry = &header[TENSOR_NAME];
        let dims: Vec<i64> = serde_json::from_value(entry["shape"].clone()).unwrap_or_default();
        let [sources, targets, classes] = dims[..] else {
            return Err(MlError::malformed(
                path,
                "tensor `beta` must have three dimensions",
            ));
        };
        if entry["dtype"] != "F16" {
            return Err(MlError::malformed(path, "tensor `beta` must be float16"));
        }
        let shape = BetaShape {
            sources,
            targets,
            classes,
        };
        let scale = match metadata.get("scale") {
            None => 1.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|scale| scale.is_finite())
                .ok_or_else(|| {
                    MlError::malformed(
                        path,
                        format!("metadata scale `{text}` is not a finite number"),
                    )
                })?,
        };
        let data_offset = 8 + header_len;
        if file_len != data_offset + shape.row_bytes() * sources as u64 {
            return Err(MlError::malformed(
                path,
                format!(
                    "file is {file_len} bytes, its header promises {}",
                    data_offset + shape.row_bytes() * sources as u64
                ),
            ));
        }
        Ok(BetaReader {
            file,
            path: path.to_owned(),
            shape,
            metadata,
            scale,
            data_offset,
        })
    }

    /// The rows of `sources` (`|F| × T × C`, float32, with the file's scale applied), in the
    /// order given.
    pub fn rows(&self, sources: &[i64]) -> Result<Tensor> {
        Ok(self.stored_rows(sources)?.to_kind(Kind::Float) * self.scale)
    }

    /// The rows of `sources` as stored: float16, without the scale.
    pub fn stored_rows(&self, sources: &[i64]) -> Result<Tensor> {
        if let Some(bad) = sources
            .iter()
            .find(|index| **index < 0 || **index >= self.shape.sources)
        {
            return Err(MlError::spec(
                "source indices",
                format!("index {bad} is out of range 0..{}", self.shape.sources),
            ));
        }
        let row_bytes = self.shape.row_bytes() as usize;
        let mut bytes = vec![0u8; row_bytes * sources.len()];
        for (slot, source) in sources.iter().enumerate() {
            let offset = self.data_offset + *source as u64 * row_bytes as u64;
            self.file
                .read_exact_at(&mut bytes[slot * row_bytes..(slot + 1) * row_bytes], offset)
                .map_err(|source| MlError::io(&self.path, source))?;
        }
        Ok(Tensor::f_from_data_size(
            &bytes,
            &[sources.len() as i64, self.shape.targets, self.shape.classes],
            Kind::Half,
        )?)
    }

    /// Rows `start..start + len`.
    pub fn row_range(&self, start: i64, len: i64) -> Result<Tensor> {
        let sources: Vec<i64> = (start..start + len).collect();
        self.rows(&sources)
    }
}

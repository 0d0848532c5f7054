//! Datasets with stable example indices.
//!
//! A dataset has a training split (indices `0..n`) and a validation split. Outputs are recorded
//! on *targets*, one index space over both splits: `0..n` are the training examples and
//! `n..n + |V|` the validation examples, in file order. Limits keep the first examples of a file,
//! so an index always names the same example.

mod cifar;
mod idx;
mod raw;
mod tensor_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

pub use cifar::load_cifar10_batches;
pub use idx::load_idx_split;
pub use raw::{RawSplit, RawValues};
pub use tensor_file::load_safetensors_split;

use crate::error::{MlError, Result};

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The files a dataset comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum DatasetSource {
    /// Fashion-MNIST IDX files (`train-*` and `t10k-*`, gzipped or not) in a directory.
    FashionMnist { dir: PathBuf },
    /// Any IDX image and label files.
    Idx {
        train_images: PathBuf,
        train_labels: PathBuf,
        val_images: PathBuf,
        val_labels: PathBuf,
    },
    /// A CIFAR-10 binary directory (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10 { dir: PathBuf },
    /// Two safetensors files with tensors `x` and `y`.
    Safetensors { train: PathBuf, val: PathBuf },
}

/// A dataset: its source and how many examples of each split to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub source: DatasetSource,
    /// Use only the first `train_limit` training examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Use only the first `val_limit` validation examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_limit: Option<usize>,
}

impl DatasetSpec {
    /// Full Fashion-MNIST from the Debian package: 60,000 train and 10,000 validation examples.
    pub fn fashion_mnist() -> Self {
        DatasetSpec {
            source: DatasetSource::FashionMnist {
                dir: PathBuf::from(FASHION_MNIST_DIR),
            },
            train_limit: None,
            val_limit: None,
        }
    }

    /// The `fmnist-tiny` workload of tests and CI: 512 train and 256 validation examples.
    pub fn fmnist_tiny() -> Self {
        Self::fashion_mnist().with_limits(Some(512), Some(256))
    }

    /// The `fmnist-bench` workload: 5,000 train and 1,000 validation examples.
    pub fn fmnist_bench() -> Self {
        Self::fashion_mnist().with_limits(Some(5_000), Some(1_000))
    }

    pub fn with_limits(mut self, train_limit: Option<usize>, val_limit: Option<usize>) -> Self {
        self.train_limit = train_limit;
        self.val_limit = val_limit;
        self
    }
}

/// Parses the command-line form of a dataset:
/// `fmnist`, `fmnist-tiny`, `fmnist-bench`, `fmnist:DIR`, `cifar10:DIR`,
/// `idx:TRAIN_IMAGES,TRAIN_LABELS,VAL_IMAGES,VAL_LABELS` or `safetensors:TRAIN,VAL`.
impl FromStr for DatasetSpec {
    type Err = MlError;

    fn from_str(text: &str) -> Result<Self> {
        let (format, argument) = match text.split_once(':') {
            Some((format, argument)) => (format, Some(argument)),
            None => (text, None),
        };
        let paths = |count: usize| -> Result<Vec<PathBuf>> {
            let argument = argument.unwrap_or_default();
            let parts: Vec<PathBuf> = argument
                .split(',')
                .filter(|part| !part.is_empty())
                .map(PathBuf::from)
                .collect();
            if parts.len() != count {
                return Err(MlError::spec(
                    "dataset",
                    format!("`{format}:` takes {count} comma-separated paths, got `{argument}`"),
                ));
            }
            Ok(parts)
        };
        let source = match (format, argument) {
            ("fmnist", None) => return Ok(Self::fashion_mnist()),
            ("fmnist-tiny", None) => return Ok(Self::fmnist_tiny()),
            ("fmnist-bench", None) => return Ok(Self::fmnist_bench()),
            ("fmnist", Some(_)) => DatasetSource::FashionMnist {
                dir: paths(1)?.remove(0),
            },
            ("cifar10", Some(_)) => DatasetSource::Cifar10 {
                dir: paths(1)?.remove(0),
            },
            ("idx", Some(_)) => {
                let mut parts = paths(4)?.into_iter();
                DatasetSource::Idx {
                    train_images: parts.next().expect("four paths"),
                    train_labels: parts.next().expect("four paths"),
                    val_images: parts.next().expect("four paths"),
                    val_labels: parts.next().expect("four paths"),
                }
            }
            ("safetensors", Some(_)) => {
                let mut parts = paths(2)?.into_iter();
                DatasetSource::Safetensors {
                    train: parts.next().expect("two paths"),
                    val: parts.next().expect("two paths"),
                }
            }
            _ => {
                return Err(MlError::spec(
                    "dataset",
                    format!(
                        "unknown dataset `{text}`: expected fmnist, fmnist-tiny, fmnist-bench, \
                         fmnist:DIR, cifar10:DIR, idx:TI,TL,VI,VL or safetensors:TRAIN,VAL"
                    ),
                ))
            }
        };
        Ok(DatasetSpec {
            source,
            train_limit: None,
            val_limit: None,
        })
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            DatasetSource::FashionMnist { dir } => write!(f, "fmnist:{}", dir.display())?,
            DatasetSource::Cifar10 { dir } => write!(f, "cifar10:{}", dir.display())?,
            DatasetSource::Idx { train_images, .. } => {
                write!(f, "idx:{}…", train_images.display())?
            }
            DatasetSource::Safetensors { train, .. } => {
                write!(f, "safetensors:{}…", train.display())?
            }
        }
        if let Some(limit) = self.train_limit {
            write!(f, " train[..{limit}]")?;
        }
        if let Some(limit) = self.val_limit {
            write!(f, " val[..{limit}]")?;
        }
        Ok(())
    }
}

/// A loaded dataset: both splits as float tensors on one device.
#[derive(Debug)]
pub struct Dataset {
    pub spec: DatasetSpec,
    /// All targets, training examples first: `(n + |V|) × sample_shape`, float32.
    pub x: Tensor,
    /// Labels of all targets, int64.
    pub y: Tensor,
    pub num_train: i64,
    pub num_val: i64,
    pub num_classes: i64,
    pub sample_shape: Vec<i64>,
    /// Hex sha256 of the examples and labels actually used (after limits).
    pub content_hash: String,
}

impl Dataset {
    /// Loads a dataset from its files onto the CPU.
    pub fn load(spec: &DatasetSpec) -> Result<Self> {
        let (mut train, mut val) = load_raw_splits(&spec.source)?;
        if let Some(limit) = spec.train_limit {
            train.truncate(limit);
        }
        if let Some(limit) = spec.val_limit {
            val.truncate(limit);
        }
        Self::from_raw(spec.clone(), train, val)
    }

    /// Builds a dataset from already-parsed splits.
    pub fn from_raw(spec: DatasetSpec, train: RawSplit, val: RawSplit) -> Result<Self> {
        if train.count() == 0 {
            return Err(MlError::spec("dataset", "the training split is empty"));
        }
        if train.sample_shape != val.sample_shape {
            return Err(MlError::spec(
                "dataset",
                format!(
                    "train examples have shape {:?} but validation examples {:?}",
                    train.sample_shape, val.sample_shape
                ),
            ));
        }
        let max_label = train
            .labels
            .iter()
            .chain(&val.labels)
            .copied()
            .max()
            .unwrap_or(0);
        let num_classes = (max_label + 1).max(2);
        let mut hasher = Sha256::new();
        train.hash_into(&mut hasher);
        val.hash_into(&mut hasher);
        let content_hash = hex::encode(hasher.finalize());
        let num_train = train.count() as i64;
        let num_val = val.count() as i64;
        let sample_shape = train.sample_shape.clone();
        let x = Tensor::cat(&[values_tensor(&train), values_tensor(&val)], 0);
        let labels: Vec<i64> = train.labels.into_iter().chain(val.labels).collect();
        Ok(Dataset {
            spec,
            x,
            y: Tensor::from_slice(&labels),
            num_train,
            num_val,
            num_classes,
            sample_shape,
            content_hash,
        })
    }

    pub fn num_targets(&self) -> i64 {
        self.num_train + self.num_val
    }

    pub fn device(&self) -> Device {
        self.x.device()
    }

    /// Another handle on the same tensors (no copy), for another thread.
    pub fn shallow_clone(&self) -> Dataset {
        self.to_device(self.device())
    }

    /// Moves the examples to `device` (the whole dataset lives there during training).
    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset {
            spec: self.spec.clone(),
            x: self.x.to_device(device),
            y: self.y.to_device(device),
            num_train: self.num_train,
            num_val: self.num_val,
            num_classes: self.num_classes,
            sample_shape: self.sample_shape.clone(),
            content_hash: self.content_hash.clone(),
        }
    }

    /// Checks that every index names a target (`0..n + |V|`).
    pub fn check_targets(&self, targets: &[i64]) -> Result<()> {
        let limit = self.num_targets();
        if let Some(bad) = targets.iter().find(|index| **index < 0 || **index >= limit) {
            return Err(MlError::spec(
                "target indices",
                format!("index {bad} is out of range 0..{limit}"),
            ));
        }
        Ok(())
    }

    /// All training indices `0..n`.
    pub fn train_indices(&self) -> Vec<i64> {
        (0..self.num_train).collect()
    }

    /// All validation targets `n..n + |V|`.
    pub fn val_indices(&self) -> Vec<i64> {
        (self.num_train..self.num_targets()).collect()
    }
}

fn values_tensor(split: &RawSplit) -> Tensor {
    let mut shape = vec![split.count() as i64];
    shape.extend_from_slice(&split.sample_shape);
    match &split.values {
        RawValues::U8(values) => Tensor::from_slice(values)
            .to_kind(Kind::Float)
            .divide_scalar(255.0)
            .view(shape.as_slice()),
        RawValues::F32(values) => Tensor::from_slice(values).view(shape.as_slice()),
    }
}

fn load_raw_splits(source: &DatasetSource) -> Result<(RawSplit, RawSplit)> {
    match source {
        DatasetSource::FashionMnist { dir } => {
            let train = load_idx_split(
                &idx_file(dir, "train-images-idx3-ubyte")?,
                &idx_file(dir, "train-labels-idx1-ubyte")?,
            )?;
            let val = load_idx_split(
                &idx_file(dir, "t10k-images-idx3-ubyte")?,
                &idx_file(dir, "t10k-labels-idx1-ubyte")?,
            )?;
            Ok((train, val))
        }
        DatasetSource::Idx {
            train_images,
            train_labels,
            val_images,
            val_labels,
        } => Ok((
            load_idx_split(train_images, train_labels)?,
            load_idx_split(val_images, val_labels)?,
        )),
        DatasetSource::Cifar10 { dir } => {
            let (train_files, test_file) = cifar::cifar10_dir_files(dir)?;
            Ok((
                load_cifar10_batches(&train_files)?,
                load_cifar10_batches(&[test_file])?,
            ))
        }
        DatasetSource::Safetensors { train, val } => {
            Ok((load_safetensors_split(train)?, load_safetensors_split(val)?))
        }
    }
}

/// Finds `stem` or `stem.gz` in `dir`.
fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let plain = dir.join(stem);
    if plain.is_file() {
        return Ok(plain);
    }
    let gzipped = dir.join(format!("{stem}.gz"));
    if gzipped.is_file() {
        return Ok(gzipped);
    }
    Err(MlError::io(
        gzipped,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {stem} nor {stem}.gz exists (is dataset-fashion-mnist installed?)"),
        ),
    ))
}

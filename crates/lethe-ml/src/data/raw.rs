//! Loader output before it becomes tensors: plain arrays that can be hashed and checked.

use sha2::{Digest, Sha256};

/// Pixel or feature values as stored in the source file.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValues {
    /// Bytes in 0..=255, scaled to [0, 1] when they become tensors.
    U8(Vec<u8>),
    /// Values used as they are.
    F32(Vec<f32>),
}

impl RawValues {
    fn truncate(&mut self, len: usize) {
        match self {
            RawValues::U8(values) => values.truncate(len),
            RawValues::F32(values) => values.truncate(len),
        }
    }
}

/// One split as a loader produced it: `count` examples of `sample_shape`, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSplit {
    pub sample_shape: Vec<i64>,
    pub values: RawValues,
    pub labels: Vec<i64>,
}

impl RawSplit {
    pub(crate) fn count(&self) -> usize {
        self.labels.len()
    }

    pub(crate) fn sample_len(&self) -> usize {
        self.sample_shape.iter().product::<i64>() as usize
    }

    /// Keeps the first `limit` examples, so indices stay stable under a limit.
    pub(crate) fn truncate(&mut self, limit: usize) {
        if limit < self.count() {
            let sample_len = self.sample_len();
            self.labels.truncate(limit);
            self.values.truncate(limit * sample_len);
        }
    }

    pub(crate) fn hash_into(&self, hasher: &mut Sha256) {
        hasher.update((self.sample_shape.len() as u64).to_le_bytes());
        for dim in &self.sample_shape {
            hasher.update(dim.to_le_bytes());
        }
        hasher.update((self.labels.len() as u64).to_le_bytes());
        match &self.values {
            RawValues::U8(values) => {
                hasher.update(b"u8");
                hasher.update(values);
            }
            RawValues::F32(values) => {
                hasher.update(b"f32");
                for value in values {
                    hasher.update(value.to_le_bytes());
                }
            }
        }
        for label in &self.labels {
            hasher.update(label.to_le_bytes());
        }
    }
}

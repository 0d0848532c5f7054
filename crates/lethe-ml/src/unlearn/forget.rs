//! Forget sets: validated training indices, and the retained rest.

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};

/// Distinct training indices, sorted; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ForgetSet(Vec<i64>);

impl ForgetSet {
    /// Checks that `indices` are distinct training indices in `0..num_train` and that at least
    /// one training example is left to retain.
    pub fn new(indices: Vec<i64>, num_train: i64) -> Result<Self> {
        if indices.is_empty() {
            return Err(MlError::spec("forget set", "is empty"));
        }
        let mut sorted = indices;
        sorted.sort_unstable();
        if let Some(bad) = sorted.iter().find(|index| !(0..num_train).contains(*index)) {
            return Err(MlError::spec(
                "forget set",
                format!("index {bad} is outside the training split 0..{num_train}"),
            ));
        }
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MlError::spec(
                "forget set",
                format!("index {} appears more than once", pair[0]),
            ));
        }
        if sorted.len() as i64 >= num_train {
            return Err(MlError::spec(
                "forget set",
                "covers the whole training split: nothing would be left to train on",
            ));
        }
        Ok(ForgetSet(sorted))
    }

    pub fn indices(&self) -> &[i64] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, index: i64) -> bool {
        self.0.binary_search(&index).is_ok()
    }

    /// Everything forgotten by either set.
    pub fn union(&self, other: &ForgetSet) -> ForgetSet {
        let mut all = self.0.clone();
        all.extend_from_slice(&other.0);
        all.sort_unstable();
        all.dedup();
        ForgetSet(all)
    }

    /// The training indices not in the set (S∖F), in order.
    pub fn retained(&self, num_train: i64) -> Vec<i64> {
        (0..num_train)
            .filter(|index| !self.contains(*index))
            .collect()
    }
}

/// Parses indices separated by commas or whitespace; `#` starts a comment that runs to the
/// end of the line. This is the format of forget-set files and of `--forget` lists.
pub fn parse_indices(text: &str) -> Result<Vec<i64>> {
    let mut indices = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default();
        for token in content
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|token| !token.is_empty())
        {
            let index = token.parse::<i64>().map_err(|_| {
                MlError::spec(
                    "forget set",
                    format!("line {}: `{token}` is not an example index", number + 1),
                )
            })?;
            indices.push(index);
        }
    }
    Ok(indices)
}

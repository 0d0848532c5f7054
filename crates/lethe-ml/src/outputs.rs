//! Logits and margins of a model's members on target points.
//!
//! File layout (safetensors, readable with `safetensors.numpy.load_file`):
//! - `logits`: float16, `M × T × C`, member-major;
//! - `margins`: float16, `M × T`, where margin = z_y − logsumexp_{j≠y} z_j;
//! - `targets`: int64, `T`, target indices (`0..n` train, `n..n+|V|` validation);
//! - `labels`: int64, `T`.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::data::Dataset;
use crate::error::Result;
use crate::model::Model;
use crate::tensorio;

const EVAL_CHUNK: i64 = 256;

/// Outputs of M members on T targets, in float32 until they are written.
#[derive(Debug)]
pub struct Outputs {
    pub targets: Vec<i64>,
    pub labels: Tensor,
    /// `M × T × C`.
    pub logits: Tensor,
}

impl Outputs {
    /// Runs every member on `targets` in evaluation mode.
    pub fn compute(model: &mut Model, data: &Dataset, targets: &[i64]) -> Result<Self> {
        data.check_targets(targets)?;
        let device = model.device();
        let members = model.members();
        let mut chunks = Vec::new();
        for chunk in targets.chunks(EVAL_CHUNK as usize) {
            let index = Tensor::from_slice(chunk).to_device(data.device());
            let x = data.x.index_select(0, &index).to_device(device);
            let mut shape = vec![members];
            shape.extend_from_slice(&x.size());
            let x = x.unsqueeze(0).expand(shape.as_slice(), false).contiguous();
            chunks.push(tch::no_grad(|| model.forward(&x, false))?);
        }
        let logits = Tensor::cat(&chunks, 1).to_device(tch::Device::Cpu);
        let labels = data
            .y
            .index_select(0, &Tensor::from_slice(targets).to_device(data.device()))
            .to_device(tch::Device::Cpu);
        Ok(Outputs {
            targets: targets.to_vec(),
            labels,
            logits,
        })
    }

    /// The outputs on targets `start..start + len` of this set.
    pub fn narrow(&self, start: i64, len: i64) -> Outputs {
        Outputs {
            targets: self.targets[start as usize..(start + len) as usize].to_vec(),
            labels: self.labels.narrow(0, start, len),
            logits: self.logits.narrow(1, start, len),
        }
    }

    /// `M × T` margins.
    pub fn margins(&self) -> Tensor {
        margins(&self.logits, &self.labels)
    }

    /// Per-member accuracy.
    pub fn accuracy(&self) -> Vec<f64> {
        let correct = self
            .logits
            .argmax(-1, false)
            .eq_tensor(&self.labels.unsqueeze(0))
            .to_kind(Kind::Double)
            .mean_dim(1, false, Kind::Double);
        Vec::<f64>::try_from(correct).expect("a 1-d double tensor converts to Vec<f64>")
    }

    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let tensors = vec![
            ("logits".to_owned(), self.logits.to_kind(Kind::Half)),
            ("margins".to_owned(), self.margins().to_kind(Kind::Half)),
            ("targets".to_owned(), Tensor::from_slice(&self.targets)),
            ("labels".to_owned(), self.labels.shallow_clone()),
        ];
        tensorio::write_safetensors(path, &tensors, metadata)
    }
}

/// Margins z_y − logsumexp_{j≠y} z_j of `logits` (`… × C`) for `labels` (broadcast over the
/// leading dimensions).
pub fn margins(logits: &Tensor, labels: &Tensor) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let mut label_shape = vec![1i64; logits.dim() - 1];
    *label_shape
        .last_mut()
        .expect("logits have at least two dimensions") = labels.size()[0];
    label_shape.push(1);
    let label_index = labels.view(label_shape.as_slice()).expand(
        {
            let mut shape = logits.size();
            *shape.last_mut().expect("non-empty") = 1;
            shape
        }
        .as_slice(),
        false,
    );
    let correct = logits.gather(-1, &label_index, false).squeeze_dim(-1);
    let others = logits.scatter_value(-1, &label_index, f64::NEG_INFINITY);
    correct - others.logsumexp([-1], false)
}

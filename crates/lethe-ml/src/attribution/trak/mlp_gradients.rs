//! The hand-written featuriser of the zoo's MLPs: per-example gradients of an MLP are outer
//! products (layer input ⊗ back-propagated error), so they are never formed; each layer's part
//! is projected through a Kronecker block ([`super::super::projection`]), with no backward pass
//! and no copies of the model. It has not been timed against the autograd featuriser on the
//! same MLP yet; its equivalence to autograd is tested below.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::super::projection::{ParameterShape, Projection};
use crate::error::{MlError, Result};
use crate::model::Model;

/// One checkpoint's weights as `(in × out, out)` per layer.
pub(super) struct MlpWeights {
    layers: Vec<(Tensor, Tensor)>,
}

impl MlpWeights {
    pub(super) fn of_member(model: &Model, member: i64) -> Result<Self> {
        let state: BTreeMap<String, Tensor> = model.member_state(member).into_iter().collect();
        let mut layers = Vec::new();
        while let (Some(weight), Some(bias)) = (
            state.get(&format!("layers.{}.weight", layers.len())),
            state.get(&format!("layers.{}.bias", layers.len())),
        ) {
            layers.push((weight.transpose(0, 1).contiguous(), bias.shallow_clone()));
        }
        if layers.is_empty() {
            return Err(MlError::spec(
                "TRAK",
                "only the zoo's MLPs can be featurised",
            ));
        }
        Ok(MlpWeights { layers })
    }

    pub(super) fn parameter_shapes(&self) -> Vec<ParameterShape> {
        let mut shapes = Vec::new();
        for (weight, bias) in &self.layers {
            let size = weight.size();
            shapes.push(ParameterShape::Matrix {
                rows: size[0],
                cols: size[1],
            });
            shapes.push(ParameterShape::Vector {
                len: bias.size()[0],
            });
        }
        shapes
    }

    /// The inputs of every layer and the logits, for `x` (`B × D`).
    pub(super) fn forward(&self, x: &Tensor) -> (Vec<Tensor>, Tensor) {
        let mut inputs = vec![x.shallow_clone()];
        let last = self.layers.len() - 1;
        let mut logits = Tensor::empty([0], (Kind::Float, Device::Cpu));
        for (index, (weight, bias)) in self.layers.iter().enumerate() {
            let h = inputs[index].matmul(weight) + bias;
            if index < last {
                inputs.push(h.relu());
            } else {
                logits = h;
            }
        }
        (inputs, logits)
    }

    /// The projected gradients (`B × k`) of Σ_c w_c·z_c for output weights `w` (`B × C`).
    pub(super) fn projected_gradients(
        &self,
        projection: &Projection,
        inputs: &[Tensor],
        output_weights: &Tensor,
    ) -> Tensor {
        let batch = output_weights.size()[0];
        let mut features = Tensor::zeros([batch, projection.dim], (Kind::Float, Device::Cpu));
        let mut delta = output_weights.shallow_clone();
        for index in (0..self.layers.len()).rev() {
            features += projection.project_outer(2 * index, &inputs[index], &delta);
            features += projection.project_flat(2 * index + 1, &delta);
            if index > 0 {
                let mask = inputs[index].gt(0.0).to_kind(Kind::Float);
                delta = delta.matmul(&self.layers[index].0.transpose(0, 1)) * mask;
            }
        }
        features / (projection.dim as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;

    /// The factored, projected gradients equal autograd's per-example gradients of the margin,
    /// flattened in parameter order and projected as plain vectors.
    #[test]
    fn projected_gradients_match_autograd() {
        let spec = ModelSpec::Mlp {
            hidden: vec![12, 7],
        };
        let model = Model::new(&spec, &[5], &[1, 3, 3], 4, Device::Cpu).unwrap();
        let weights = MlpWeights::of_member(&model, 0).unwrap();
        let projection = Projection::new(9, 64, &weights.parameter_shapes()).unwrap();
        tch::manual_seed(2);
        let x = Tensor::randn([6, 9], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 1, 2, 2, 0]);
        let (inputs, logits) = weights.forward(&x);
        let others = logits
            .scatter_value(1, &y.unsqueeze(1), f64::NEG_INFINITY)
            .softmax(1, Kind::Float);
        let output_weights = -others.scatter_value(1, &y.unsqueeze(1), -1.0);
        let factored = weights.projected_gradients(&projection, &inputs, &output_weights);

        let mut flat = Vec::new();
        for example in 0..6 {
            let leaves: Vec<(Tensor, Tensor)> = weights
                .layers
                .iter()
                .map(|(w, b)| {
                    (
                        w.detach().set_requires_grad(true),
                        b.detach().set_requires_grad(true),
                    )
                })
                .collect();
            let mut h = x.get(example).unsqueeze(0);
            for (index, (w, b)) in leaves.iter().enumerate() {
                h = h.matmul(w) + b;
                if index + 1 < leaves.len() {
                    h = h.relu();
                }
            }
            let label = y.int64_value(&[example]);
            let margin = crate::outputs::margins(&h.unsqueeze(0), &Tensor::from_slice(&[label]))
                .sum(Kind::Float);
            let parameters: Vec<&Tensor> = leaves.iter().flat_map(|(w, b)| [w, b]).collect();
            let gradients = Tensor::run_backward(&[margin], &parameters, false, false);
            flat.push(Tensor::cat(
                &gradients
                    .iter()
                    .map(|g| g.flatten(0, -1))
                    .collect::<Vec<_>>(),
                0,
            ));
        }
        let autograd = projection.project(&Tensor::stack(&flat, 0)).unwrap();
        let difference = (&factored - &autograd).abs().max().double_value(&[]);
        assert!(
            difference < 1e-4,
            "projected gradients differ by {difference}"
        );
    }
}

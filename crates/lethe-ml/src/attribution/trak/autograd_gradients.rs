//! The featuriser of every other network: per-example gradients through autograd.
//!
//! A zoo network is member-batched, so R copies of one checkpoint, each given one example, have
//! as parameter gradients the R per-example gradients (what `torch.func.vmap` computes in
//! PyTorch); the copies run grouped convolutions, one group per example. A TorchScript module
//! holds one model, so its examples go through one at a time.

use tch::{Kind, Tensor};

use super::super::projection::{ParameterShape, Projection};
use crate::error::{MlError, Result};
use crate::model::{ConvLayout, Model, ModelSpec};

/// Parameter entries of all copies together, at most: bounds the copies' memory (4 bytes per
/// entry, twice with the gradients) to about 0.5 GB.
const REPLICA_ENTRIES: i64 = 1 << 26;
const MAX_REPLICAS: i64 = 64;

/// See [`AutogradGradients::projected`].
type Objective<'a> = dyn Fn(&Tensor, i64, i64) -> Tensor + 'a;

pub(super) struct AutogradGradients {
    /// R copies of the checkpoint (zoo), or the checkpoint itself (TorchScript, R = 1).
    replicas: Model,
    /// The trainable parameters, in name order: `R × shape` for the zoo, `shape` otherwise.
    parameters: Vec<Tensor>,
    member_dim: bool,
}

impl AutogradGradients {
    /// The featuriser of a one-member checkpoint.
    pub(super) fn of_checkpoint(checkpoint: &Model) -> Result<Self> {
        match checkpoint.spec {
            ModelSpec::Torchscript { .. } => Self::one_model(checkpoint.try_clone()?),
            _ => {
                let count = (REPLICA_ENTRIES / checkpoint.parameters_per_member().max(1))
                    .clamp(1, MAX_REPLICAS);
                let mut replicas = Model::new(
                    &checkpoint.spec,
                    &vec![checkpoint.member_seeds[0]; count as usize],
                    &checkpoint.sample_shape,
                    checkpoint.num_classes,
                    checkpoint.device(),
                )?;
                let state = checkpoint.member_state(0);
                for replica in 0..count {
                    replicas.load_member_state(
                        replica,
                        &state,
                        std::path::Path::new("checkpoint"),
                    )?;
                }
                // One example per copy: grouped convolutions batch them, a loop would not.
                replicas.set_conv_layout(ConvLayout::Grouped);
                Self::with_parameters(replicas, true)
            }
        }
    }

    /// The featuriser of a model that cannot be copied into members (a TorchScript module):
    /// one forward pass per batch, one backward pass per example.
    fn one_model(model: Model) -> Result<Self> {
        Self::with_parameters(model, false)
    }

    fn with_parameters(replicas: Model, member_dim: bool) -> Result<Self> {
        let parameters = trainable_parameters(&replicas);
        if parameters.is_empty() {
            return Err(MlError::spec(
                "TRAK",
                "the network has no trainable parameters",
            ));
        }
        Ok(AutogradGradients {
            replicas,
            parameters,
            member_dim,
        })
    }

    /// Examples featurised per forward pass.
    fn replicas(&self) -> i64 {
        if self.member_dim {
            self.replicas.members()
        } else {
            MAX_REPLICAS
        }
    }

    /// Each parameter as the projection sees it: weights of two or more dimensions as
    /// `out × rest` matrices (Kronecker blocks), the others as vectors.
    pub(super) fn parameter_shapes(&self) -> Vec<ParameterShape> {
        self.parameters
            .iter()
            .map(|parameter| {
                let size = parameter.size();
                let shape = if self.member_dim {
                    &size[1..]
                } else {
                    &size[..]
                };
                match shape {
                    [rows, rest @ ..] if !rest.is_empty() => ParameterShape::Matrix {
                        rows: *rows,
                        cols: rest.iter().product(),
                    },
                    _ => ParameterShape::Vector {
                        len: shape.iter().product(),
                    },
                }
            })
            .collect()
    }

    /// For `x` (`n × sample_shape`): the logits (`n × C`, evaluation mode) and, for each of
    /// `objectives`, the projected gradients (`n × k`) of every example's value. An objective
    /// maps the logits of one pass (`R × C`) and the example rows `start..start + len` they
    /// hold (the rows past `len` are padding) to `R` values.
    fn projected(
        &mut self,
        projection: &Projection,
        x: &Tensor,
        objectives: &[&Objective<'_>],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = x.size()[0];
        let chunk = self.replicas();
        let mut logits = Vec::new();
        let mut features: Vec<Vec<Tensor>> = objectives.iter().map(|_| Vec::new()).collect();
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let mut batch = x.narrow(0, start, len);
            if len < chunk {
                // Copies without an example of their own see zeros; their gradients are dropped.
                let mut padding = batch.size();
                padding[0] = chunk - len;
                let zeros = Tensor::zeros(padding.as_slice(), (batch.kind(), batch.device()));
                batch = Tensor::cat(&[batch, zeros], 0);
            }
            // Copy r gets example r: `R × 1 × sample_shape` (one model: `1 × R × …`).
            let input = if self.member_dim {
                batch.unsqueeze(1)
            } else {
                batch.unsqueeze(0)
            };
            let z = self.replicas.forward(&input, false)?;
            let z = if self.member_dim {
                z.squeeze_dim(1)
            } else {
                z.squeeze_dim(0)
            };
            logits.push(z.detach().narrow(0, 0, len));
            for (index, objective) in objectives.iter().enumerate() {
                let values = objective(&z, start, len);
                let keep_graph = index + 1 < objectives.len();
                let block = if self.member_dim {
                    // Every copy's value depends on its own parameters only.
                    let gradients = Tensor::run_backward(
                        &[values.sum(Kind::Float)],
                        &self.parameters,
                        keep_graph,
                        false,
                    );
                    project(projection, &gradients, chunk).narrow(0, 0, len)
                } else {
                    // One model: one backward pass per example.
                    let rows: Vec<Tensor> = (0..len)
                        .map(|row| {
                            let gradients = Tensor::run_backward(
                                &[values.get(row)],
                                &self.parameters,
                                keep_graph || row + 1 < len,
                                false,
                            );
                            let flat: Vec<Tensor> =
                                gradients.iter().map(|g| g.unsqueeze(0)).collect();
                            project(projection, &flat, 1)
                        })
                        .collect();
                    Tensor::cat(&rows, 0)
                };
                features[index].push(block);
            }
        }
        Ok((
            Tensor::cat(&logits, 0),
            features
                .iter()
                .map(|blocks| Tensor::cat(blocks, 0))
                .collect(),
        ))
    }

    /// Margin gradients (`n × k`) and the logits (`n × C`) of `x` with labels `y`.
    pub(super) fn margin_gradients(
        &mut self,
        projection: &Projection,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // TRAK's output function for classification: z_y − logsumexp_{j≠y} z_j.
        let margin = |z: &Tensor, start: i64, len: i64| -> Tensor {
            let rows = z.size()[0];
            let mut label = y.narrow(0, start, len);
            if len < rows {
                let padding = Tensor::zeros([rows - len], (Kind::Int64, z.device()));
                label = Tensor::cat(&[label, padding], 0);
            }
            let label = label.unsqueeze(1);
            let own = z.gather(1, &label, false).squeeze_dim(1);
            let others = z
                .scatter_value(1, &label, f64::NEG_INFINITY)
                .logsumexp([1], false);
            own - others
        };
        let (logits, mut features) = self.projected(projection, x, &[&margin])?;
        Ok((features.remove(0), logits))
    }

    /// Per-logit gradients of `x`: `n × C × k`.
    pub(super) fn logit_gradients(
        &mut self,
        projection: &Projection,
        x: &Tensor,
    ) -> Result<Tensor> {
        let selectors: Vec<Box<Objective<'static>>> = (0..self.replicas.num_classes)
            .map(|class| {
                Box::new(move |z: &Tensor, _, _| z.select(1, class)) as Box<Objective<'static>>
            })
            .collect();
        let objectives: Vec<&Objective<'_>> = selectors.iter().map(Box::as_ref).collect();
        let (_, features) = self.projected(projection, x, &objectives)?;
        Ok(Tensor::stack(&features, 1))
    }
}

/// A model's trainable parameters in name order: the order of the projection's blocks.
fn trainable_parameters(model: &Model) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = model
        .vars
        .variables()
        .into_iter()
        .filter(|(_, tensor)| tensor.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, tensor)| tensor).collect()
}

/// `rows × k` from per-parameter gradients `rows × shape`, scaled by 1/√k.
fn project(projection: &Projection, gradients: &[Tensor], rows: i64) -> Tensor {
    let mut total = Tensor::zeros([rows, projection.dim], (Kind::Float, gradients[0].device()));
    for (index, gradient) in gradients.iter().enumerate() {
        total += projection.project_flat(index, &gradient.reshape([rows, -1]));
    }
    total / (projection.dim as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The gradients of one plain backward pass per example, projected.
    fn one_at_a_time(model: &mut Model, projection: &Projection, x: &Tensor, y: &Tensor) -> Tensor {
        let parameters = trainable_parameters(model);
        let rows: Vec<Tensor> = (0..x.size()[0])
            .map(|row| {
                let z = model
                    .forward(&x.narrow(0, row, 1).unsqueeze(0), false)
                    .unwrap();
                let label = y.int64_value(&[row]);
                let margin =
                    crate::outputs::margins(&z, &Tensor::from_slice(&[label])).sum(Kind::Float);
                let gradients = Tensor::run_backward(&[margin], &parameters, false, false);
                project(projection, &gradients, 1)
            })
            .collect();
        Tensor::cat(&rows, 0)
    }

    /// The copies' gradients are each example's own, for a padded last chunk too; and so are
    /// those of the one-model path that TorchScript modules take.
    #[test]
    fn replicated_gradients_are_per_example_gradients() {
        for (spec, shape) in [
            ("cnn", vec![1, 8, 8]),
            ("resnet9", vec![1, 12, 12]),
            ("mlp:6", vec![1, 3, 3]),
        ] {
            let spec: ModelSpec = spec.parse().unwrap();
            let mut model = Model::new(&spec, &[5], &shape, 4, Device::Cpu).unwrap();
            let mut featurizer = AutogradGradients::of_checkpoint(&model).unwrap();
            let projection = Projection::new(9, 64, &featurizer.parameter_shapes()).unwrap();
            tch::manual_seed(2);
            let mut x_shape = vec![featurizer.replicas() + 3];
            x_shape.extend_from_slice(&shape);
            let x = Tensor::randn(x_shape.as_slice(), (Kind::Float, Device::Cpu));
            let y = Tensor::randint(4, [x_shape[0]], (Kind::Int64, Device::Cpu));
            let (features, logits) = featurizer.margin_gradients(&projection, &x, &y).unwrap();
            let expected = one_at_a_time(&mut model, &projection, &x, &y);
            let difference = (&features - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(
                difference <= 1e-4 * (1.0 + scale),
                "{spec}: margin gradients differ by {difference}"
            );
            // The path of a model that cannot be copied (TorchScript), on the same network
            // and a few of the examples.
            let (x, y) = (x.narrow(0, 0, 5), y.narrow(0, 0, 5));
            let mut single = AutogradGradients::one_model(model.try_clone().unwrap()).unwrap();
            let single_projection = Projection::new(9, 64, &single.parameter_shapes()).unwrap();
            let (single_features, _) = single.margin_gradients(&single_projection, &x, &y).unwrap();
            let expected = one_at_a_time(&mut model, &single_projection, &x, &y);
            let difference = (&single_features - &expected).abs().max().double_value(&[]);
            assert!(
                difference <= 1e-4 * (1.0 + scale),
                "{spec}, one model: margin gradients differ by {difference}"
            );
            assert_eq!(logits.size(), [x_shape[0], 4]);
            let per_logit = featurizer
                .logit_gradients(&projection, &x.narrow(0, 0, 3))
                .unwrap();
            assert_eq!(per_logit.size(), [3, 4, 64], "{spec}");
        }
    }
}

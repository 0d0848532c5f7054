//! The MLP's hand-written backward pass.
//!
//! Subset retrains are thousands of small MLPs; per step, autograd's graph and the allocation
//! of every activation and gradient cost a measurable share of the time on a CPU. The arithmetic
//! is autograd's: softmax cross-entropy, ReLU masks from the activations, batched products for
//! the weight and input gradients. A test holds it to autograd.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::zoo::Mlp;
use super::ManualBackward;
use crate::error::Result;

impl ManualBackward for Mlp {
    fn parameters(&self) -> Vec<Tensor> {
        let mut parameters = Vec::new();
        for layer in &self.layers {
            parameters.push(layer.weight().shallow_clone());
            if let Some(bias) = layer.bias() {
                parameters.push(bias.shallow_clone());
            }
        }
        parameters
    }

    fn loss_and_gradients(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        tch::no_grad(|| self.step(x, y))
    }
}

/// Every tensor a training step writes, kept from step to step. Fresh activations of a
/// megabyte or so per step go back to the kernel when freed and come back as page faults,
/// which cost a CPU ensemble as much as its elementwise work.
#[derive(Default)]
pub(crate) struct Workspace {
    gradients: Vec<Tensor>,
    /// Per batch size (the last batch of an epoch is usually shorter): each layer's output and
    /// the gradient of the loss with respect to it, `[members, batch, width]`.
    activations: BTreeMap<i64, Activations>,
}

struct Activations {
    outputs: Vec<Tensor>,
    output_gradients: Vec<Tensor>,
}

impl Mlp {
    fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let members = x.size()[0];
        let batch = x.size()[1];
        let workspace = &mut self.workspace;
        if workspace.gradients.is_empty() {
            workspace.gradients = self
                .layers
                .iter()
                .flat_map(|layer| std::iter::once(layer.weight()).chain(layer.bias()))
                .map(Tensor::zeros_like)
                .collect();
        }
        let gradients = &workspace.gradients;
        let Activations {
            outputs,
            output_gradients,
        } = workspace.activations.entry(batch).or_insert_with(|| {
            let buffers = || {
                self.layers
                    .iter()
                    .map(|layer| {
                        let width = layer.weight().size()[2];
                        Tensor::zeros([members, batch, width], (Kind::Float, x.device()))
                    })
                    .collect()
            };
            Activations {
                outputs: buffers(),
                output_gradients: buffers(),
            }
        });
        // Forward; a layer's input is the previous output (the ReLU outputs double as masks).
        let flat = x.f_flatten(2, -1)?;
        let input_of = |index: usize| {
            if index == 0 {
                &flat
            } else {
                &outputs[index - 1]
            }
        };
        let last = self.layers.len() - 1;
        for (index, layer) in self.layers.iter().enumerate() {
            let mut h = input_of(index).f_bmm_out(&outputs[index], layer.weight())?;
            if let Some(bias) = layer.bias() {
                let _ = h.f_add_(&bias.unsqueeze(1))?;
            }
            if index < last {
                let _ = h.f_relu_()?;
            }
        }
        let log_probabilities = outputs[last].f_log_softmax(-1, Kind::Float)?;
        let labels = y.view([members, batch, 1]);
        let member_loss = log_probabilities
            .f_gather(-1, &labels, false)?
            .f_mean_dim(&[1i64, 2][..], false, Kind::Float)?
            .f_neg()?;
        // d(mean over the batch of −log p_y)/dz = (softmax − one-hot) / B, per member.
        let mut delta = log_probabilities.f_exp_out(&output_gradients[last])?;
        let _ = delta.f_scatter_add_(
            -1,
            &labels,
            &Tensor::full([members, batch, 1], -1.0, (Kind::Float, delta.device())),
        )?;
        let _ = delta.f_div_scalar_(batch as f64)?;
        let mut slot = gradients.len();
        for index in (0..self.layers.len()).rev() {
            let layer = &self.layers[index];
            let delta = &output_gradients[index];
            if layer.bias().is_some() {
                slot -= 1;
                let _ =
                    delta.f_sum_intlist_out(&gradients[slot], &[1i64][..], false, Kind::Float)?;
            }
            slot -= 1;
            let _ = input_of(index)
                .f_transpose(1, 2)?
                .f_bmm_out(&gradients[slot], delta)?;
            if index > 0 {
                let upstream = &output_gradients[index - 1];
                let _ = delta.f_bmm_out(upstream, &layer.weight().f_transpose(1, 2)?)?;
                // ReLU's backward in place, in one pass and without a boolean mask.
                let _ =
                    outputs[index - 1].f_threshold_backward_grad_input(upstream, upstream, 0.0)?;
            }
        }
        Ok((
            member_loss,
            gradients.iter().map(Tensor::shallow_clone).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::model::{Model, ModelSpec};

    #[test]
    fn manual_gradients_match_autograd() {
        let spec = ModelSpec::Mlp {
            hidden: vec![32, 16],
        };
        let mut model = Model::new(&spec, &[1, 2, 3], &[1, 6, 6], 5, Device::Cpu).unwrap();
        tch::manual_seed(0);
        // Two batch sizes, then the first again: the reused buffers must not leak between them.
        for batch in [10, 7, 10] {
            let x = Tensor::rand([3, batch, 1, 6, 6], (Kind::Float, Device::Cpu));
            let y = Tensor::randint(5, [3 * batch], (Kind::Int64, Device::Cpu));

            for parameter in model.vars.trainable_variables() {
                let mut grad = parameter.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
            let logits = model.forward(&x, true).unwrap();
            let member_loss = logits
                .view([-1, 5])
                .log_softmax(-1, Kind::Float)
                .gather(-1, &y.view([-1, 1]), false)
                .view([3, batch])
                .mean_dim(1, false, Kind::Float)
                .neg();
            member_loss.sum(Kind::Float).backward();

            let manual = model
                .manual_backward()
                .expect("the MLP has a manual backward pass");
            let parameters = manual.parameters();
            let (loss, gradients) = manual.loss_and_gradients(&x, &y).unwrap();
            assert!((&loss - &member_loss).abs().max().double_value(&[]) < 1e-6);
            assert_eq!(parameters.len(), 6);
            for (parameter, gradient) in parameters.iter().zip(&gradients) {
                let difference = (parameter.grad() - gradient).abs().max().double_value(&[]);
                assert!(
                    difference < 1e-6,
                    "batch {batch}: gradient of a {:?} parameter differs by {difference}",
                    parameter.size()
                );
            }
        }
    }
}

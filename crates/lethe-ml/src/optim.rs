//! SGD and Adam over all trainable variables, written with as few passes over memory as
//! libtorch's public ops allow.
//!
//! On a CPU the optimizer step of a batched ensemble is memory-bound and, at the small batch
//! sizes of subset retrains, costs as much as the matrix products; libtorch's own Adam makes
//! about twelve passes and several temporaries per parameter. This one makes seven and keeps
//! the second moment pre-scaled by 1/(1−β2) so that the update needs no extra scaling pass.
//! The arithmetic is PyTorch's (coupled weight decay, bias-corrected Adam, SGD momentum with
//! the first buffer set to the gradient), and every operation is elementwise, so each member of
//! an ensemble is updated exactly as if it were alone.

mod fused_adam;

use fused_adam::AdamCoefficients;
use tch::nn::OptimizerConfig;
use tch::{nn, Tensor};

use crate::error::Result;
use crate::recipe::{Optimizer, Recipe};

enum State {
    Sgd {
        momentum_buffer: Option<Tensor>,
    },
    Adam {
        exp_avg: Tensor,
        exp_avg_sq_scaled: Tensor,
        /// Reused every step: a fresh multi-megabyte temporary per step costs page faults
        /// that take longer than the arithmetic.
        denominator: Tensor,
    },
}

pub(crate) struct BatchedOptimizer {
    params: Vec<Tensor>,
    states: Vec<State>,
    kind: Optimizer,
    weight_decay: f64,
    steps: i32,
}

/// Clears autograd's gradients between steps. It uses libtorch's optimizer only for its
/// `zero_grad`, which sets gradients to undefined, so that the next backward pass writes them
/// instead of adding to zeroed buffers.
pub(crate) struct GradientReset(nn::Optimizer);

impl GradientReset {
    pub(crate) fn new(vars: &nn::VarStore) -> Result<Self> {
        Ok(GradientReset(nn::Sgd::default().build(vars, 0.0)?))
    }

    pub(crate) fn zero_grad(&mut self) {
        self.0.zero_grad();
    }
}

impl BatchedOptimizer {
    /// An optimizer for `params`; [`BatchedOptimizer::step`] takes their gradients in the same
    /// order.
    pub(crate) fn new(params: Vec<Tensor>, recipe: &Recipe) -> Self {
        let states = params
            .iter()
            .map(|param| match recipe.optimizer {
                Optimizer::Sgd { .. } => State::Sgd {
                    momentum_buffer: None,
                },
                Optimizer::Adam { .. } => State::Adam {
                    exp_avg: param.zeros_like(),
                    exp_avg_sq_scaled: param.zeros_like(),
                    denominator: param.zeros_like(),
                },
            })
            .collect();
        BatchedOptimizer {
            params,
            states,
            kind: recipe.optimizer.clone(),
            weight_decay: recipe.weight_decay,
            steps: 0,
        }
    }

    /// One update with learning rate `lr`; `gradients[i]` belongs to the i-th parameter, and an
    /// undefined gradient leaves its parameter alone.
    pub(crate) fn step(&mut self, lr: f64, gradients: &[Tensor]) -> Result<()> {
        debug_assert_eq!(gradients.len(), self.params.len());
        self.steps += 1;
        let steps = self.steps;
        let kind = self.kind.clone();
        let weight_decay = self.weight_decay;
        tch::no_grad(|| -> Result<()> {
            for ((param, state), gradient) in self
                .params
                .iter_mut()
                .zip(self.states.iter_mut())
                .zip(gradients)
            {
                let raw_grad = gradient.shallow_clone();
                if !raw_grad.defined() {
                    continue;
                }
                match (state, &kind) {
                    (
                        State::Adam {
                            exp_avg,
                            exp_avg_sq_scaled,
                            denominator,
                        },
                        Optimizer::Adam { beta1, beta2, eps },
                    ) => {
                        let coefficients =
                            AdamCoefficients::new(*beta1, *beta2, *eps, weight_decay, steps, lr);
                        if !fused_adam::adam_step(
                            param,
                            &raw_grad,
                            exp_avg,
                            exp_avg_sq_scaled,
                            coefficients,
                        ) {
                            let grad = with_weight_decay(param, raw_grad, weight_decay)?;
                            let moments = AdamMoments {
                                exp_avg,
                                exp_avg_sq_scaled,
                                denominator,
                            };
                            adam_update(param, &grad, moments, coefficients)?;
                        }
                    }
                    (State::Sgd { momentum_buffer }, Optimizer::Sgd { momentum, nesterov }) => {
                        let grad = with_weight_decay(param, raw_grad, weight_decay)?;
                        sgd_update(param, grad, momentum_buffer, *momentum, *nesterov, lr)?
                    }
                    _ => unreachable!("states are created from the same optimizer kind"),
                }
            }
            Ok(())
        })
    }
}

fn with_weight_decay(param: &Tensor, grad: Tensor, weight_decay: f64) -> Result<Tensor> {
    if weight_decay > 0.0 {
        Ok(grad.f_add(&param.f_mul_scalar(weight_decay)?)?)
    } else {
        Ok(grad)
    }
}

impl AdamCoefficients {
    /// PyTorch's step p ← p − (lr/bc1)·m / (sqrt(v)/sqrt(bc2) + eps), written as
    /// p ← p + m / (a·sqrt(v') + c) so that it takes one `addcdiv_`, which has no scale argument.
    fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64, steps: i32, lr: f64) -> Self {
        let bias_correction1 = 1.0 - beta1.powi(steps);
        let bias_correction2 = 1.0 - beta2.powi(steps);
        let scale = if lr == 0.0 {
            0.0
        } else {
            -bias_correction1 / lr
        };
        AdamCoefficients {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            weight_decay: weight_decay as f32,
            denominator_scale: (scale * ((1.0 - beta2) / bias_correction2).sqrt()) as f32,
            denominator_offset: (scale * eps) as f32,
            update_parameter: lr != 0.0,
        }
    }
}

struct AdamMoments<'a> {
    exp_avg: &'a mut Tensor,
    exp_avg_sq_scaled: &'a mut Tensor,
    denominator: &'a mut Tensor,
}

/// The op-by-op update, for tensors the fused kernel does not take (CUDA, other dtypes).
fn adam_update(
    param: &mut Tensor,
    grad: &Tensor,
    moments: AdamMoments<'_>,
    coefficients: AdamCoefficients,
) -> Result<()> {
    let AdamMoments {
        exp_avg,
        exp_avg_sq_scaled,
        denominator,
    } = moments;
    // m ← β1·m + (1−β1)·g
    let _ = exp_avg.f_lerp_(grad, 1.0 - f64::from(coefficients.beta1))?;
    // v' ← β2·v' + g², where v' = v / (1−β2)
    let _ = exp_avg_sq_scaled.f_mul_scalar_(f64::from(coefficients.beta2))?;
    let _ = exp_avg_sq_scaled.f_addcmul_(grad, grad)?;
    if !coefficients.update_parameter {
        return Ok(());
    }
    let _ = exp_avg_sq_scaled.f_sqrt_out(denominator)?;
    let _ = denominator.f_mul_scalar_(f64::from(coefficients.denominator_scale))?;
    let _ = denominator.f_add_scalar_(f64::from(coefficients.denominator_offset))?;
    let _ = param.f_addcdiv_(exp_avg, denominator)?;
    Ok(())
}

fn sgd_update(
    param: &mut Tensor,
    grad: Tensor,
    momentum_buffer: &mut Option<Tensor>,
    momentum: f64,
    nesterov: bool,
    lr: f64,
) -> Result<()> {
    let direction = if momentum == 0.0 {
        grad
    } else {
        let buffer = match momentum_buffer {
            Some(buffer) => {
                let _ = buffer.f_mul_scalar_(momentum)?;
                let _ = buffer.f_add_(&grad)?;
                buffer
            }
            None => momentum_buffer.insert(grad.detach().copy()),
        };
        if nesterov {
            grad.f_add(&buffer.f_mul_scalar(momentum)?)?
        } else {
            buffer.shallow_clone()
        }
    };
    let _ = param.f_sub_(&direction.f_mul_scalar(lr)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The fused CPU kernel and the op-by-op update compute the same thing.
    #[test]
    fn fused_adam_matches_the_op_by_op_update() {
        tch::manual_seed(3);
        let shape = [3, 70_000];
        let options = (Kind::Float, Device::Cpu);
        let fused_param = Tensor::randn(shape, options);
        let ops_param = fused_param.copy();
        let (fused_m, fused_v) = (Tensor::zeros(shape, options), Tensor::zeros(shape, options));
        let (mut ops_m, mut ops_v, mut denominator) = (
            Tensor::zeros(shape, options),
            Tensor::zeros(shape, options),
            Tensor::zeros(shape, options),
        );
        let mut ops_param = ops_param;
        for step in 1..=5 {
            let grad = Tensor::randn(shape, options);
            let coefficients = AdamCoefficients::new(0.9, 0.999, 1e-8, 1e-2, step, 1e-3);
            assert!(fused_adam::adam_step(
                &fused_param,
                &grad,
                &fused_m,
                &fused_v,
                coefficients
            ));
            let grad_with_decay =
                with_weight_decay(&ops_param, grad.shallow_clone(), 1e-2).unwrap();
            let moments = AdamMoments {
                exp_avg: &mut ops_m,
                exp_avg_sq_scaled: &mut ops_v,
                denominator: &mut denominator,
            };
            adam_update(&mut ops_param, &grad_with_decay, moments, coefficients).unwrap();
        }
        let difference = (&fused_param - &ops_param).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "parameters differ by {difference}");
        assert!((&fused_m - &ops_m).abs().max().double_value(&[]) < 1e-6);
    }

    /// Both are PyTorch's Adam: compare with libtorch's own implementation.
    #[test]
    fn batched_adam_matches_libtorch_adam() {
        tch::manual_seed(4);
        let ours = nn::VarStore::new(Device::Cpu);
        let reference = nn::VarStore::new(Device::Cpu);
        let init = Tensor::randn([4, 50_000], (Kind::Float, Device::Cpu));
        let ours_param = ours.root().var_copy("w", &init);
        let reference_param = reference.root().var_copy("w", &init);
        let recipe = Recipe {
            weight_decay: 1e-3,
            ..Recipe::fmnist_mlp()
        };
        let params = ours.trainable_variables();
        let mut optimizer =
            BatchedOptimizer::new(params.iter().map(Tensor::shallow_clone).collect(), &recipe);
        let mut reset = GradientReset::new(&ours).unwrap();
        let mut libtorch = nn::Adam {
            wd: 1e-3,
            ..Default::default()
        }
        .build(&reference, 1e-3)
        .unwrap();
        let target = Tensor::randn([4, 50_000], (Kind::Float, Device::Cpu));
        for _ in 0..10 {
            reset.zero_grad();
            (&ours_param - &target).square().sum(Kind::Float).backward();
            let gradients: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
            optimizer.step(1e-3, &gradients).unwrap();
            libtorch.zero_grad();
            (&reference_param - &target)
                .square()
                .sum(Kind::Float)
                .backward();
            libtorch.step();
        }
        let difference = (&ours_param - &reference_param)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            difference < 1e-5,
            "differs from libtorch Adam by {difference}"
        );
    }
}

//! Training recipes: optimizer, learning-rate schedule, epochs, batch size.

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};

/// The optimizer and its hyper-parameters (weight decay is the coupled L2 of PyTorch's SGD and
/// Adam).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd { momentum: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64, eps: f64 },
}

/// How the learning rate changes during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Multiplies the rate by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: usize,
        gamma: f64,
    },
    /// One cycle: linear from 0 to the peak rate at `peak_epoch`, then linear to 0 at the end,
    /// evaluated per step (the ffcv / DMM ResNet-9 schedule).
    Triangular {
        peak_epoch: f64,
    },
}

/// A complete training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    pub batch_size: usize,
}

impl Recipe {
    /// The fmnist-bench recipe: Adam 1e-3, batch 128, 20 epochs.
    pub fn fmnist_mlp() -> Self {
        Recipe {
            optimizer: Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            epochs: 20,
            batch_size: 128,
        }
    }

    /// The DMM paper's CIFAR-10 ResNet-9 recipe: SGD lr 0.4 (momentum 0.9, weight decay 5e-4),
    /// triangular schedule peaking at epoch 5, 24 epochs, batch 256.
    pub fn resnet9_cifar10() -> Self {
        Recipe {
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            lr: 0.4,
            weight_decay: 5e-4,
            schedule: Schedule::Triangular { peak_epoch: 5.0 },
            epochs: 24,
            batch_size: 256,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |reason: String| Err(MlError::spec("recipe", reason));
        if self.epochs == 0 {
            return fail("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return fail("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return fail(format!(
                "learning rate {} must be finite and non-negative",
                self.lr
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(format!(
                "weight decay {} must be finite and non-negative",
                self.weight_decay
            ));
        }
        match &self.schedule {
            Schedule::Step {
                every_epochs: 0, ..
            } => return fail("step schedule needs every_epochs ≥ 1".into()),
            Schedule::Step { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                return fail(format!("step schedule gamma {gamma} must be positive"))
            }
            Schedule::Triangular { peak_epoch }
                if !(*peak_epoch > 0.0 && *peak_epoch < self.epochs as f64) =>
            {
                return fail(format!(
                    "triangular peak epoch {peak_epoch} must lie inside (0, {})",
                    self.epochs
                ))
            }
            _ => {}
        }
        if let Optimizer::Sgd { momentum, .. } = self.optimizer {
            if !(0.0..1.0).contains(&momentum) {
                return fail(format!("momentum {momentum} must lie in [0, 1)"));
            }
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based) of epoch `epoch`.
    pub fn lr_at(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step {
                every_epochs,
                gamma,
            } => self.lr * gamma.powi((epoch / every_epochs) as i32),
            Schedule::Triangular { peak_epoch } => {
                let progress = epoch as f64 + (step + 1) as f64 / steps_per_epoch as f64;
                let total = self.epochs as f64;
                let fraction = if progress <= *peak_epoch {
                    progress / peak_epoch
                } else {
                    (total - progress) / (total - peak_epoch)
                };
                self.lr * fraction.clamp(0.0, 1.0)
            }
        }
    }
}

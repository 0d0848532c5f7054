//! Flags shared by the training commands.

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lethe_ml::checkpoint::CheckpointInfo;
use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::recipe::{Optimizer, Recipe, Schedule};
use tch::Device;

#[derive(Args, Debug, Clone)]
pub(crate) struct DataArgs {
    /// fmnist, fmnist-tiny (512/256), fmnist-bench (5000/1000), fmnist:DIR, cifar10:DIR,
    /// idx:TRAIN_IMAGES,TRAIN_LABELS,VAL_IMAGES,VAL_LABELS or safetensors:TRAIN,VAL
    #[arg(long, default_value = "fmnist-bench")]
    pub(crate) dataset: String,
    /// Use only the first N training examples.
    #[arg(long)]
    pub(crate) train_limit: Option<usize>,
    /// Use only the first N validation examples.
    #[arg(long)]
    pub(crate) val_limit: Option<usize>,
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
}

impl DataArgs {
    pub(crate) fn load(&self) -> anyhow::Result<Dataset> {
        let mut spec: DatasetSpec = self.dataset.parse()?;
        if self.train_limit.is_some() {
            spec.train_limit = self.train_limit;
        }
        if self.val_limit.is_some() {
            spec.val_limit = self.val_limit;
        }
        Dataset::load(&spec).with_context(|| format!("load dataset {}", self.dataset))
    }

    pub(crate) fn device(&self) -> anyhow::Result<Device> {
        parse_device(&self.device)
    }
}

pub(crate) fn parse_device(text: &str) -> anyhow::Result<Device> {
    let device = match text {
        "auto" => lethe_ml::default_device(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => bail!("unknown device `{other}`: expected cpu, cuda, cuda:N or auto"),
        },
    };
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count() as usize;
        if index >= available {
            bail!("device cuda:{index} requested but libtorch sees {available} CUDA device(s)");
        }
    }
    Ok(device)
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub(crate) enum RecipePreset {
    /// Adam 1e-3, batch 128, 20 epochs (the fmnist-bench recipe).
    FmnistMlp,
    /// SGD 0.4, momentum 0.9, weight decay 5e-4, triangular peak at epoch 5, 24 epochs, batch 256.
    Resnet9Cifar10,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub(crate) enum OptimizerName {
    Sgd,
    Adam,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct RecipeArgs {
    /// Starting point; the flags below override its fields.
    #[arg(long, value_enum, default_value = "fmnist-mlp")]
    pub(crate) recipe: RecipePreset,
    #[arg(long, value_enum)]
    pub(crate) optimizer: Option<OptimizerName>,
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    pub(crate) momentum: Option<f64>,
    /// Nesterov momentum for SGD.
    #[arg(long)]
    pub(crate) nesterov: bool,
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    /// constant, step:EVERY_EPOCHS:GAMMA or triangular:PEAK_EPOCH
    #[arg(long)]
    pub(crate) schedule: Option<String>,
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
}

impl RecipeArgs {
    pub(crate) fn recipe(&self) -> anyhow::Result<Recipe> {
        let mut recipe = match self.recipe {
            RecipePreset::FmnistMlp => Recipe::fmnist_mlp(),
            RecipePreset::Resnet9Cifar10 => Recipe::resnet9_cifar10(),
        };
        match (self.optimizer, &recipe.optimizer) {
            (Some(OptimizerName::Sgd), Optimizer::Adam { .. }) => {
                recipe.optimizer = Optimizer::Sgd {
                    momentum: 0.9,
                    nesterov: false,
                }
            }
            (Some(OptimizerName::Adam), Optimizer::Sgd { .. }) => {
                recipe.optimizer = Optimizer::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                }
            }
            _ => {}
        }
        if let Optimizer::Sgd { momentum, nesterov } = &mut recipe.optimizer {
            if let Some(value) = self.momentum {
                *momentum = value;
            }
            *nesterov |= self.nesterov;
        } else if self.momentum.is_some() || self.nesterov {
            bail!("--momentum and --nesterov apply to SGD only");
        }
        recipe.lr = self.lr.unwrap_or(recipe.lr);
        recipe.weight_decay = self.weight_decay.unwrap_or(recipe.weight_decay);
        recipe.epochs = self.epochs.unwrap_or(recipe.epochs);
        recipe.batch_size = self.batch_size.unwrap_or(recipe.batch_size);
        if let Some(text) = &self.schedule {
            recipe.schedule = parse_schedule(text)?;
        }
        recipe.validate()?;
        Ok(recipe)
    }
}

fn parse_schedule(text: &str) -> anyhow::Result<Schedule> {
    let parts: Vec<&str> = text.split(':').collect();
    let number = |value: &str| -> anyhow::Result<f64> {
        value
            .parse::<f64>()
            .with_context(|| format!("`{value}` in schedule `{text}` is not a number"))
    };
    Ok(match parts.as_slice() {
        ["constant"] => Schedule::Constant,
        ["step", every, gamma] => Schedule::Step {
            every_epochs: every.parse().with_context(|| format!("`{every}` in schedule `{text}` is not a whole number"))?,
            gamma: number(gamma)?,
        },
        ["triangular", peak] => Schedule::Triangular { peak_epoch: number(peak)? },
        _ => bail!("unknown schedule `{text}`: expected constant, step:EVERY_EPOCHS:GAMMA or triangular:PEAK_EPOCH"),
    })
}

/// Fails unless the checkpoint's model takes `data`'s samples and classes; returns whether it
/// was trained on this very data (content hashes equal, or unrecorded).
pub(crate) fn checkpoint_fits(
    info: &CheckpointInfo,
    data: &Dataset,
    path: &Path,
) -> anyhow::Result<bool> {
    if info.sample_shape != data.sample_shape || info.num_classes != data.num_classes {
        bail!(
            "checkpoint {} expects samples {:?} and {} classes, dataset {} has {:?} and {}",
            path.display(),
            info.sample_shape,
            info.num_classes,
            data.spec,
            data.sample_shape,
            data.num_classes
        );
    }
    Ok(info
        .dataset_hash
        .as_deref()
        .is_none_or(|hash| hash == data.content_hash))
}

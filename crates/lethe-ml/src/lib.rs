//! Lethe's ML engine: everything that touches libtorch.
//!
//! - [`data`]: datasets with stable indices (IDX, CIFAR-10 binary, safetensors);
//! - [`model`]: the zoo (MLP, small CNN, ResNet-9, ResNet-18) and user TorchScript modules,
//!   all built as member-batched networks;
//! - [`recipe`] and [`train`]: optimizers, schedules and the training loop;
//! - [`ensemble`]: subset models trained many at once, streamed to disk per group;
//! - [`outputs`]: logits and margins on target points;
//! - [`checkpoint`]: safetensors checkpoints that PyTorch loads;
//! - [`attribution`]: the attribution index (β), its estimators and its evaluation (LDS);
//! - [`unlearn`]: DMM, Oracle Matching and the baselines, and sequential requests;
//! - [`forget_sets`]: forget sets by family (random, clusters, class slices, high loss), and
//!   the suite that fixes which instances are for tuning and which only for reporting;
//! - [`audit`]: KLoM, the audit of unlearned models against oracles.
//!
//! Architecture invariants: this is the only library crate that links libtorch; it does no
//! networking and reads no environment; user data never panics it (errors are [`MlError`]).

pub mod attribution;
pub mod audit;
pub mod checkpoint;
pub mod data;
pub mod ensemble;
pub mod error;
pub mod forget_sets;
pub mod model;
mod optim;
pub mod outputs;
pub mod recipe;
pub mod seed;
pub mod tensorio;
pub mod train;
pub mod unlearn;

pub use error::{MlError, Result};

/// Picks CUDA when libtorch sees a GPU, the CPU otherwise.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}

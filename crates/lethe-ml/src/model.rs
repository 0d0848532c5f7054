//! The model zoo and user TorchScript models, built as *member-batched* networks.
//!
//! A network built for M member seeds holds M independent models and maps inputs
//! `M × B × sample_shape` to logits `M × B × C`. A single model is the case M = 1, so a model
//! trained alone and the same member trained inside an ensemble run the same code.

mod layers;
mod mlp_backward;
mod params;
mod torchscript;
mod zoo;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::data::Dataset;
use crate::error::{MlError, Result};
pub use layers::ConvLayout;
use params::ParamBuilder;

/// A model architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelSpec {
    /// Fully connected network with the given hidden widths.
    Mlp { hidden: Vec<i64> },
    /// Two conv stages and a 128-unit hidden layer.
    SmallCnn,
    /// ResNet-9 of the DMM paper's CIFAR-10 setting.
    Resnet9,
    /// torchvision's ResNet-18.
    Resnet18,
    /// A user module saved with TorchScript; it starts from the weights in the file.
    Torchscript { path: PathBuf },
}

/// Parses `mlp` (one hidden layer of 128), `mlp:256,128`, `cnn`, `resnet9`, `resnet18` or
/// `torchscript:PATH`.
impl FromStr for ModelSpec {
    type Err = MlError;

    fn from_str(text: &str) -> Result<Self> {
        let (name, argument) = match text.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (text, None),
        };
        match (name, argument) {
            ("mlp", None) => Ok(ModelSpec::Mlp { hidden: vec![128] }),
            ("mlp", Some(widths)) => {
                let mut hidden = Vec::new();
                for width in widths.split(',').filter(|width| !width.is_empty()) {
                    let parsed: i64 = width.trim().parse().map_err(|_| {
                        MlError::spec("model", format!("`{width}` in `{text}` is not a layer width"))
                    })?;
                    if !(1..=1 << 20).contains(&parsed) {
                        return Err(MlError::spec("model", format!("layer width {parsed} is out of range 1..=1048576")));
                    }
                    hidden.push(parsed);
                }
                Ok(ModelSpec::Mlp { hidden })
            }
            ("cnn" | "small_cnn", None) => Ok(ModelSpec::SmallCnn),
            ("resnet9", None) => Ok(ModelSpec::Resnet9),
            ("resnet18", None) => Ok(ModelSpec::Resnet18),
            ("torchscript", Some(path)) if !path.is_empty() => Ok(ModelSpec::Torchscript { path: PathBuf::from(path) }),
            _ => Err(MlError::spec(
                "model",
                format!("unknown model `{text}`: expected mlp, mlp:W1,W2,…, cnn, resnet9, resnet18 or torchscript:PATH"),
            )),
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Mlp { hidden } => {
                let widths: Vec<String> = hidden.iter().map(i64::to_string).collect();
                write!(f, "mlp:{}", widths.join(","))
            }
            ModelSpec::SmallCnn => write!(f, "cnn"),
            ModelSpec::Resnet9 => write!(f, "resnet9"),
            ModelSpec::Resnet18 => write!(f, "resnet18"),
            ModelSpec::Torchscript { path } => write!(f, "torchscript:{}", path.display()),
        }
    }
}

/// Forward pass of a member-batched network.
pub trait Network {
    /// Maps `M × B × sample_shape` to logits `M × B × C`; `train` selects batch statistics.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// A hand-written training step, for networks simple enough to have one; the others train
    /// through autograd.
    fn manual_backward(&mut self) -> Option<&mut dyn ManualBackward> {
        None
    }

    /// The network cut before its final affine layer, in evaluation mode: the features of `x`
    /// (`M × B × d`) and that layer, sharing storage with the parameters. `None` for networks
    /// whose logits are not a known affine map of features (TorchScript modules).
    fn linear_head(&mut self, _x: &Tensor) -> Option<Result<LinearHead>> {
        None
    }

    /// The layout of a convolutional network's convolutions, to choose it; `None` for networks
    /// without any.
    fn conv_layout(&mut self) -> Option<&mut ConvLayout> {
        None
    }
}

/// Features and the final affine layer of a network; see [`Network::linear_head`]. The logits
/// are `scale · (features · weight + bias)`.
pub struct LinearHead {
    pub features: Tensor,
    /// `M × d × C`.
    pub weight: Tensor,
    /// `M × C`, when the layer has one (ResNet-9's has none).
    pub bias: Option<Tensor>,
    /// A constant factor on the layer's output (ResNet-9's 0.2).
    pub scale: f64,
}

impl LinearHead {
    fn of(features: Tensor, layer: &layers::Linear, scale: f64) -> Self {
        LinearHead {
            features,
            weight: layer.weight().shallow_clone(),
            bias: layer.bias().map(Tensor::shallow_clone),
            scale,
        }
    }
}

/// A training step without autograd: the forward pass, the loss and the gradients, written
/// into buffers that live as long as the network. For small networks trained many at once this
/// saves the autograd graph and a fresh allocation of every activation and gradient per step.
pub trait ManualBackward {
    /// The trainable parameters, in the order of the gradients that
    /// [`ManualBackward::loss_and_gradients`] returns.
    fn parameters(&self) -> Vec<Tensor>;

    /// Each member's mean cross-entropy on `x` (`M × B × sample_shape`) and labels `y`
    /// (`M·B`, member-major), and the gradients of their sum with respect to
    /// [`ManualBackward::parameters`].
    fn loss_and_gradients(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Vec<Tensor>)>;
}

/// M models of one architecture: their parameters and the network that runs them.
pub struct Model {
    pub spec: ModelSpec,
    pub member_seeds: Vec<u64>,
    pub sample_shape: Vec<i64>,
    pub num_classes: i64,
    /// Parameters (trainable) and buffers (not trainable), each `M × PyTorch shape` for the
    /// zoo; TorchScript parameters keep their own shapes.
    pub vars: nn::VarStore,
    net: Net,
}

enum Net {
    Zoo {
        net: Box<dyn Network>,
        /// Weights stored as `M × in × out`, transposed relative to PyTorch.
        transposed: Vec<String>,
    },
    TorchScript {
        net: torchscript::TorchScriptNet,
        /// Var-store name → PyTorch parameter name.
        names: BTreeMap<String, String>,
    },
}

impl Model {
    /// Builds one member per seed on `device`, each initialised from its seed alone.
    pub fn new(
        spec: &ModelSpec,
        member_seeds: &[u64],
        sample_shape: &[i64],
        num_classes: i64,
        device: Device,
    ) -> Result<Self> {
        if member_seeds.is_empty() {
            return Err(MlError::spec("model", "a model needs at least one member"));
        }
        let vars = nn::VarStore::new(device);
        let mut params = ParamBuilder::new(vars.root(), member_seeds);
        let inputs: i64 = sample_shape.iter().product();
        let zoo_net: Option<Box<dyn Network>> = match spec {
            ModelSpec::Mlp { hidden } => Some(Box::new(zoo::Mlp::new(
                &mut params,
                inputs,
                hidden,
                num_classes,
            ))),
            ModelSpec::SmallCnn => Some(Box::new(zoo::SmallCnn::new(
                &mut params,
                sample_shape,
                num_classes,
            )?)),
            ModelSpec::Resnet9 => Some(Box::new(zoo::ResNet9::new(
                &mut params,
                sample_shape,
                num_classes,
            )?)),
            ModelSpec::Resnet18 => Some(Box::new(zoo::ResNet18::new(
                &mut params,
                sample_shape,
                num_classes,
            )?)),
            ModelSpec::Torchscript { .. } => None,
        };
        let net = match (zoo_net, spec) {
            (Some(net), _) => Net::Zoo {
                net,
                transposed: params.into_transposed(),
            },
            (None, ModelSpec::Torchscript { path }) => {
                if member_seeds.len() != 1 {
                    return Err(MlError::spec(
                        "model",
                        "a TorchScript model cannot be trained as an ensemble",
                    ));
                }
                let (net, names) = torchscript::TorchScriptNet::load(path, vars.root())?;
                Net::TorchScript { net, names }
            }
            (None, _) => unreachable!("every zoo architecture builds a network"),
        };
        let mut model = Model {
            spec: spec.clone(),
            member_seeds: member_seeds.to_vec(),
            sample_shape: sample_shape.to_vec(),
            num_classes,
            vars,
            net,
        };
        model.check_output_shape()?;
        Ok(model)
    }

    /// Runs one example through the network so that an architecture that does not fit the
    /// data fails here, with a clear error, and not in the middle of training.
    fn check_output_shape(&mut self) -> Result<()> {
        let mut shape = vec![self.members(), 2];
        shape.extend_from_slice(&self.sample_shape);
        let probe = Tensor::zeros(shape.as_slice(), (tch::Kind::Float, self.vars.device()));
        let logits = tch::no_grad(|| self.forward(&probe, false))?;
        let expected = [self.members(), 2, self.num_classes];
        if logits.size() != expected {
            return Err(MlError::spec(
                "model",
                format!(
                    "{} maps samples of shape {:?} to logits {:?}, expected {:?}",
                    self.spec,
                    self.sample_shape,
                    logits.size(),
                    expected
                ),
            ));
        }
        Ok(())
    }

    /// An independent copy: same architecture, seeds and weights.
    pub fn try_clone(&self) -> Result<Model> {
        let mut copy = Model::new(
            &self.spec,
            &self.member_seeds,
            &self.sample_shape,
            self.num_classes,
            self.device(),
        )?;
        copy.vars.copy(&self.vars)?;
        Ok(copy)
    }

    /// Member `member` alone, as a one-member model.
    pub fn select_member(&self, member: i64) -> Result<Model> {
        self.select_members(member..member + 1)
    }

    /// Members `range`, in order, as a model of their own.
    pub fn select_members(&self, range: std::ops::Range<i64>) -> Result<Model> {
        if range.is_empty() || range.start < 0 || range.end > self.members() {
            return Err(MlError::spec(
                "model",
                format!(
                    "members {}..{} are not a non-empty range inside 0..{}",
                    range.start,
                    range.end,
                    self.members()
                ),
            ));
        }
        let mut selected = Model::new(
            &self.spec,
            &self.member_seeds[range.start as usize..range.end as usize],
            &self.sample_shape,
            self.num_classes,
            self.device(),
        )?;
        for (position, member) in range.enumerate() {
            selected.load_member_state(
                position as i64,
                &self.member_state(member),
                Path::new("<ensemble member>"),
            )?;
        }
        Ok(selected)
    }

    /// Fails, naming `what`, unless `data`'s samples have the shape this model takes.
    pub fn check_samples(&self, data: &Dataset, what: &'static str) -> Result<()> {
        if data.sample_shape == self.sample_shape {
            return Ok(());
        }
        Err(MlError::spec(
            what,
            format!(
                "model expects samples {:?}, dataset has {:?}",
                self.sample_shape, data.sample_shape
            ),
        ))
    }

    pub fn members(&self) -> i64 {
        self.member_seeds.len() as i64
    }

    pub fn device(&self) -> Device {
        self.vars.device()
    }

    /// Maps `M × B × sample_shape` to logits `M × B × C`.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &mut self.net {
            Net::Zoo { net, .. } => net.forward(x, train),
            Net::TorchScript { net, .. } => net.forward(x, train),
        }
    }

    /// The network cut before its final affine layer, if it has one ([`Network::linear_head`]).
    pub fn linear_head(&mut self, x: &Tensor) -> Option<Result<LinearHead>> {
        match &mut self.net {
            Net::Zoo { net, .. } => net.linear_head(x),
            Net::TorchScript { .. } => None,
        }
    }

    /// Runs the convolutions in `layout` instead of the device's default
    /// ([`ConvLayout::for_device`]); `false` for a network without convolutions of its own.
    pub fn set_conv_layout(&mut self, layout: ConvLayout) -> bool {
        match &mut self.net {
            Net::Zoo { net, .. } => net.conv_layout().map(|current| *current = layout).is_some(),
            Net::TorchScript { .. } => false,
        }
    }

    /// The hand-written training step of the network, if it has one.
    pub fn manual_backward(&mut self) -> Option<&mut dyn ManualBackward> {
        match &mut self.net {
            Net::Zoo { net, .. } => net.manual_backward(),
            Net::TorchScript { .. } => None,
        }
    }

    /// Number of trainable parameters of one member.
    pub fn parameters_per_member(&self) -> i64 {
        let total: i64 = self
            .vars
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        total / self.members()
    }

    /// Member `member`'s parameters and buffers under their PyTorch names and shapes, as
    /// copies that later training does not change.
    pub fn member_state(&self, member: i64) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = self
            .vars
            .variables()
            .into_iter()
            .map(|(name, tensor)| match &self.net {
                Net::Zoo { transposed, .. } => {
                    let mut value = tensor.select(0, member);
                    if transposed.contains(&name) {
                        value = value.transpose(0, 1);
                    }
                    (name, value.to_device(Device::Cpu).detach().copy())
                }
                Net::TorchScript { names, .. } => {
                    let pytorch_name = names.get(&name).cloned().unwrap_or(name);
                    (pytorch_name, tensor.to_device(Device::Cpu).detach().copy())
                }
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// Overwrites member `member` with `state` (PyTorch names and shapes). Every parameter
    /// and buffer must be present with the right shape; extra entries are an error too.
    pub fn load_member_state(
        &mut self,
        member: i64,
        state: &[(String, Tensor)],
        origin: &Path,
    ) -> Result<()> {
        let expected = self.member_state(member);
        let provided: BTreeMap<&str, &Tensor> = state
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
            .collect();
        for (name, _) in state {
            if !expected
                .iter()
                .any(|(expected_name, _)| expected_name == name)
            {
                return Err(MlError::malformed(
                    origin,
                    format!("unexpected tensor `{name}` for model {}", self.spec),
                ));
            }
        }
        let store_names: BTreeMap<String, String> = match &self.net {
            Net::Zoo { .. } => expected
                .iter()
                .map(|(name, _)| (name.clone(), name.clone()))
                .collect(),
            Net::TorchScript { names, .. } => names
                .iter()
                .map(|(store, pytorch)| (pytorch.clone(), store.clone()))
                .collect(),
        };
        let variables = self.vars.variables();
        for (name, current) in &expected {
            let Some(value) = provided.get(name.as_str()) else {
                return Err(MlError::malformed(
                    origin,
                    format!("missing tensor `{name}` for model {}", self.spec),
                ));
            };
            if value.size() != current.size() {
                return Err(MlError::malformed(
                    origin,
                    format!(
                        "tensor `{name}` has shape {:?}, model {} needs {:?}",
                        value.size(),
                        self.spec,
                        current.size()
                    ),
                ));
            }
            let store_name = &store_names[name];
            let variable = &variables[store_name];
            let value = value.to_kind(current.kind()).to_device(self.device());
            tch::no_grad(|| match &self.net {
                Net::Zoo { transposed, .. } if transposed.contains(name) => {
                    variable.select(0, member).copy_(&value.transpose(0, 1))
                }
                Net::Zoo { .. } => variable.select(0, member).copy_(&value),
                Net::TorchScript { .. } => variable.shallow_clone().copy_(&value),
            });
        }
        Ok(())
    }

    /// Saves a TorchScript model's module (parameters and buffers) next to its checkpoint.
    pub fn save_torchscript(&self, path: &Path) -> Result<bool> {
        match &self.net {
            Net::TorchScript { net, .. } => net.save(path).map(|()| true),
            Net::Zoo { .. } => Ok(false),
        }
    }
}

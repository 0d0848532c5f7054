//! Parameters of member-batched networks.
//!
//! Every parameter has a leading member dimension: a network of M members stores a weight of
//! PyTorch shape `s` as one `M × s` tensor. Member `m` is initialised from its own seed only,
//! in declaration order, so its initial weights do not depend on which ensemble it is in.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Kind, Tensor};

use crate::seed::{self, Stream};

pub(crate) struct ParamBuilder<'a> {
    root: nn::Path<'a>,
    member_rngs: Vec<ChaCha8Rng>,
    /// Names of 2-d weights stored transposed (`M × in × out`) relative to PyTorch.
    transposed: Vec<String>,
}

impl<'a> ParamBuilder<'a> {
    pub(crate) fn new(root: nn::Path<'a>, member_seeds: &[u64]) -> Self {
        let member_rngs = member_seeds
            .iter()
            .map(|member_seed| seed::rng(*member_seed, Stream::Init))
            .collect();
        ParamBuilder {
            root,
            member_rngs,
            transposed: Vec::new(),
        }
    }

    pub(crate) fn into_transposed(self) -> Vec<String> {
        self.transposed
    }

    /// A linear weight of PyTorch shape `outputs × inputs`, drawn like [`Self::uniform`] (so
    /// a member's values do not depend on the layout) and stored as `M × inputs × outputs`.
    pub(crate) fn uniform_transposed(&mut self, name: &str, outputs: i64, inputs: i64) -> Tensor {
        let values = self.draw_uniform(outputs * inputs, inputs);
        let init = Tensor::from_slice(&values)
            .view([self.members(), outputs, inputs])
            .transpose(1, 2)
            .contiguous();
        self.transposed.push(name.to_owned());
        let (path, leaf) = self.path_for(name);
        path.var_copy(&leaf, &init)
    }

    /// The convolution layout that measures faster on the parameters' device.
    pub(crate) fn conv_layout(&self) -> super::ConvLayout {
        super::ConvLayout::for_device(self.root.device())
    }

    pub(crate) fn members(&self) -> i64 {
        self.member_rngs.len() as i64
    }

    /// A trainable parameter drawn from U(−bound, bound) per member, PyTorch's default for
    /// linear and convolution layers with `bound = 1 / sqrt(fan_in)`.
    pub(crate) fn uniform(&mut self, name: &str, shape: &[i64], fan_in: i64) -> Tensor {
        let values = self.draw_uniform(shape.iter().product(), fan_in);
        let init = Tensor::from_slice(&values).view(self.member_shape(shape).as_slice());
        let (path, leaf) = self.path_for(name);
        path.var_copy(&leaf, &init)
    }

    fn draw_uniform(&mut self, per_member: i64, fan_in: i64) -> Vec<f32> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut values = Vec::with_capacity((per_member * self.members()) as usize);
        for rng in &mut self.member_rngs {
            for _ in 0..per_member {
                let unit: f64 = rng.random();
                values.push(((2.0 * unit - 1.0) * bound) as f32);
            }
        }
        values
    }

    /// A trainable parameter filled with `value` (batch-norm scales and shifts).
    pub(crate) fn constant(&mut self, name: &str, shape: &[i64], value: f64) -> Tensor {
        let init = Tensor::full(
            self.member_shape(shape).as_slice(),
            value,
            (Kind::Float, tch::Device::Cpu),
        );
        let (path, leaf) = self.path_for(name);
        path.var_copy(&leaf, &init)
    }

    /// A non-trainable buffer filled with `value` (batch-norm running statistics).
    pub(crate) fn buffer(&mut self, name: &str, shape: &[i64], value: f64) -> Tensor {
        let init = Tensor::full(
            self.member_shape(shape).as_slice(),
            value,
            (Kind::Float, tch::Device::Cpu),
        );
        let (path, leaf) = self.path_for(name);
        path.add(&leaf, init.to_device(path.device()), false)
    }

    fn member_shape(&self, shape: &[i64]) -> Vec<i64> {
        let mut full = vec![self.members()];
        full.extend_from_slice(shape);
        full
    }

    /// Splits a dotted PyTorch name into the var-store path and the leaf name.
    fn path_for(&self, name: &str) -> (nn::Path<'a>, String) {
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts
            .pop()
            .expect("split yields at least one part")
            .to_owned();
        let mut path = self.root.clone();
        for part in parts {
            path = path.sub(part);
        }
        (path, leaf)
    }
}

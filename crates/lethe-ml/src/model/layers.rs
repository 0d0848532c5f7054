//! Member-batched layers.
//!
//! Linear layers take `M × B × in` and run one batched matrix product. Convolutional layers work
//! on the *grouped* layout `B × (M·C) × H × W`, where member `m` owns channels `m·C..(m+1)·C`,
//! so one grouped convolution (`groups = M`) runs every member at once and batch norm's
//! per-channel statistics are per member.

use tch::Tensor;

use super::params::ParamBuilder;
use crate::error::Result;

pub(crate) struct Linear {
    /// `M × in × out`: the transpose of PyTorch's layout, so that the forward product and the
    /// weight gradient are plain batched products with no transposed copies.
    weight: Tensor,
    /// `M × out`.
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        name: &str,
        inputs: i64,
        outputs: i64,
        bias: bool,
    ) -> Self {
        let weight = params.uniform_transposed(&format!("{name}.weight"), outputs, inputs);
        let bias = bias.then(|| params.uniform(&format!("{name}.bias"), &[outputs], inputs));
        Linear { weight, bias }
    }

    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `M × B × in` → `M × B × out`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.f_bmm(&self.weight)?;
        if let Some(bias) = &self.bias {
            out = out.f_add_(&bias.unsqueeze(1))?;
        }
        Ok(out)
    }
}

pub(crate) struct Conv2d {
    /// `M × out × in × k × k`.
    weight: Tensor,
    bias: Option<Tensor>,
    members: i64,
    stride: i64,
    padding: i64,
}

pub(crate) struct ConvShape {
    pub(crate) inputs: i64,
    pub(crate) outputs: i64,
    pub(crate) kernel: i64,
    pub(crate) stride: i64,
    pub(crate) padding: i64,
}

impl Conv2d {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        name: &str,
        shape: ConvShape,
        bias: bool,
    ) -> Self {
        let fan_in = shape.inputs * shape.kernel * shape.kernel;
        let weight = params.uniform(
            &format!("{name}.weight"),
            &[shape.outputs, shape.inputs, shape.kernel, shape.kernel],
            fan_in,
        );
        let bias = bias.then(|| params.uniform(&format!("{name}.bias"), &[shape.outputs], fan_in));
        Conv2d {
            weight,
            bias,
            members: params.members(),
            stride: shape.stride,
            padding: shape.padding,
        }
    }

    /// Grouped layout in, grouped layout out.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = self.weight.size();
        let grouped_weight = self
            .weight
            .view([size[0] * size[1], size[2], size[3], size[4]]);
        let grouped_bias = self.bias.as_ref().map(|bias| bias.view([-1]));
        Ok(x.f_conv2d(
            &grouped_weight,
            grouped_bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.members,
        )?)
    }
}

pub(crate) struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm2d {
    pub(crate) fn new(params: &mut ParamBuilder<'_>, name: &str, channels: i64) -> Self {
        BatchNorm2d {
            weight: params.constant(&format!("{name}.weight"), &[channels], 1.0),
            bias: params.constant(&format!("{name}.bias"), &[channels], 0.0),
            running_mean: params.buffer(&format!("{name}.running_mean"), &[channels], 0.0),
            running_var: params.buffer(&format!("{name}.running_var"), &[channels], 1.0),
        }
    }

    /// Grouped layout in and out; in training mode the running statistics (views of the
    /// buffers) are updated in place, as in PyTorch.
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(x.f_batch_norm(
            Some(self.weight.view([-1])),
            Some(self.bias.view([-1])),
            Some(self.running_mean.view([-1])),
            Some(self.running_var.view([-1])),
            train,
            0.1,
            1e-5,
            false,
        )?)
    }
}

/// `M × B × C × H × W` → grouped `B × (M·C) × H × W`.
pub(crate) fn to_grouped(x: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (members, batch) = (size[0], size[1]);
    let mut grouped = vec![batch, members * size[2]];
    grouped.extend_from_slice(&size[3..]);
    Ok(x.f_transpose(0, 1)?.f_reshape(grouped.as_slice())?)
}

/// Grouped `B × (M·C) × H × W` → `M × B × (C·H·W)`, each member's features in PyTorch's
/// flatten order.
pub(crate) fn grouped_to_features(x: &Tensor, members: i64) -> Result<Tensor> {
    let batch = x.size()[0];
    Ok(x.f_reshape([batch, members, -1])?.f_transpose(0, 1)?)
}

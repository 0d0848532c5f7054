//! Member-batched layers.
//!
//! Linear layers take `M × B × in` and run one batched matrix product. Convolutional layers run
//! in one of two layouts ([`ConvLayout`]): *grouped*, `B × (M·C) × H × W` with member `m`
//! owning channels `m·C..(m+1)·C`, where one grouped convolution (`groups = M`) runs every
//! member at once and batch norm's per-channel statistics are per member; or *per member*, a
//! loop that runs member `m`'s weights on its own `B × C × H × W` slice.

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

    /// Grouped layout in and out when `member` is `None`; member `member`'s own
    /// `B × C × H × W` otherwise.
    pub(crate) fn forward(&self, x: &Tensor, member: Option<i64>) -> Result<Tensor> {
        let (weight, bias, groups) = match member {
            None => {
                let size = self.weight.size();
                let grouped = self
                    .weight
                    .view([size[0] * size[1], size[2], size[3], size[4]]);
                (
                    grouped,
                    self.bias.as_ref().map(|bias| bias.view([-1])),
                    self.members,
                )
            }
            Some(member) => (
                channels_last(&self.weight.select(0, member))?,
                self.bias.as_ref().map(|bias| bias.select(0, member)),
                1,
            ),
        };
        Ok(x.f_conv2d(
            &weight,
            bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            groups,
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

    /// The layout of [`Conv2d::forward`]; in training mode the running statistics (views of
    /// the buffers) are updated in place, as in PyTorch.
    pub(crate) fn forward(&self, x: &Tensor, member: Option<i64>, train: bool) -> Result<Tensor> {
        let of_member = |tensor: &Tensor| match member {
            None => tensor.view([-1]),
            Some(member) => tensor.select(0, member),
        };
        Ok(x.f_batch_norm(
            Some(of_member(&self.weight)),
            Some(of_member(&self.bias)),
            Some(of_member(&self.running_mean)),
            Some(of_member(&self.running_var)),
            train,
            0.1,
            1e-5,
            false,
        )?)
    }
}

/// How a member-batched network runs its convolutions. On CPU the per-member loop trains 1.7×
/// (small CNN) and 1.3× (ResNet-9) as fast as grouped convolution (`make bench-ensemble`,
/// `cnn.layouts`, `resnet9.layouts`): each
/// member's activations stay in cache, and oneDNN's grouped kernels are slower than its plain
/// ones. A GPU has the opposite trade-off: one large grouped kernel fills it, M small ones do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvLayout {
    Grouped,
    PerMember,
}

impl ConvLayout {
    /// The layout that measures faster on `device`.
    pub fn for_device(device: tch::Device) -> Self {
        if device.is_cuda() {
            ConvLayout::Grouped
        } else {
            ConvLayout::PerMember
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConvLayout::Grouped => "grouped",
            ConvLayout::PerMember => "per_member",
        }
    }
}

/// Runs a convolutional trunk on `M × B × C × H × W` in `layout` and returns each member's
/// flattened features `M × B × d` in PyTorch's flatten order. `trunk` maps a layout's input to
/// its output for one member (`Some(m)`) or all of them (`None`, grouped).
pub(crate) fn conv_features(
    x: &Tensor,
    members: i64,
    layout: ConvLayout,
    mut trunk: impl FnMut(&Tensor, Option<i64>) -> Result<Tensor>,
) -> Result<Tensor> {
    match layout {
        ConvLayout::Grouped => grouped_to_features(&trunk(&to_grouped(x)?, None)?, members),
        ConvLayout::PerMember => {
            let features = (0..members)
                .map(|member| {
                    let input = channels_last(&x.f_select(0, member)?)?;
                    Ok(trunk(&input, Some(member))?.f_flatten(1, -1)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_stack(&features, 0)?)
        }
    }
}

/// The same `N × C × H × W` tensor stored channels-last (NHWC strides), the format oneDNN's
/// convolution and max-pool kernels run fastest in; the logical shape is unchanged.
fn channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// `M × B × C × H × W` → grouped `B × (M·C) × H × W`.
fn to_grouped(x: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (members, batch) = (size[0], size[1]);
    let mut grouped = vec![batch, members * size[2]];
    grouped.extend_from_slice(&size[3..]);
    Ok(x.f_transpose(0, 1)?.f_reshape(grouped.as_slice())?)
}

/// Grouped `B × (M·C) × H × W` → `M × B × (C·H·W)`, each member's features in PyTorch's
/// flatten order.
fn grouped_to_features(x: &Tensor, members: i64) -> Result<Tensor> {
    let batch = x.size()[0];
    Ok(x.f_reshape([batch, members, -1])?.f_transpose(0, 1)?)
}

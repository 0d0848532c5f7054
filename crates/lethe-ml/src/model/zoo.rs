//! The built-in architectures. Parameter names are those of the matching PyTorch modules in
//! `python/lethe_zoo.py`, so a member's checkpoint loads there with `load_state_dict`.

use tch::Tensor;

use super::layers::{conv_features, BatchNorm2d, Conv2d, ConvLayout, ConvShape, Linear};
use super::params::ParamBuilder;
use super::Network;
use crate::error::{MlError, Result};

/// Multi-layer perceptron on flattened inputs: `layers.{i}` linear layers with ReLU between.
pub(crate) struct Mlp {
    pub(super) layers: Vec<Linear>,
    /// Buffers of the hand-written backward pass, allocated on first use.
    pub(super) workspace: super::mlp_backward::Workspace,
}

impl Mlp {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        inputs: i64,
        hidden: &[i64],
        classes: i64,
    ) -> Self {
        let mut widths = vec![inputs];
        widths.extend_from_slice(hidden);
        widths.push(classes);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(index, pair)| {
                Linear::new(params, &format!("layers.{index}"), pair[0], pair[1], true)
            })
            .collect();
        Mlp {
            layers,
            workspace: Default::default(),
        }
    }
}

impl Network for Mlp {
    fn forward(&mut self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let mut h = x.f_flatten(2, -1)?;
        let last = self.layers.len() - 1;
        for (index, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if index < last {
                h = h.f_relu()?;
            }
        }
        Ok(h)
    }

    fn manual_backward(&mut self) -> Option<&mut dyn super::ManualBackward> {
        Some(self)
    }

    fn linear_head(&mut self, x: &Tensor) -> Option<Result<super::LinearHead>> {
        let (last, hidden) = self.layers.split_last()?;
        let features = (|| {
            let mut h = x.f_flatten(2, -1)?;
            for layer in hidden {
                h = layer.forward(&h)?.f_relu()?;
            }
            Ok(h)
        })();
        Some(features.map(|features| super::LinearHead::of(features, last, 1.0)))
    }
}

/// A small CNN: two 3×3 conv + ReLU + 2×2 max-pool stages (32 and 64 channels), then a
/// 128-unit hidden layer.
pub(crate) struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    members: i64,
    layout: ConvLayout,
}

impl SmallCnn {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        sample_shape: &[i64],
        classes: i64,
    ) -> Result<Self> {
        let [channels, height, width] = image_shape(sample_shape, 4)?;
        let conv = |inputs, outputs| ConvShape {
            inputs,
            outputs,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let features = 64 * (height / 4) * (width / 4);
        Ok(SmallCnn {
            conv1: Conv2d::new(params, "conv1", conv(channels, 32), true),
            conv2: Conv2d::new(params, "conv2", conv(32, 64), true),
            fc1: Linear::new(params, "fc1", features, 128, true),
            fc2: Linear::new(params, "fc2", 128, classes, true),
            members: params.members(),
            layout: params.conv_layout(),
        })
    }

    /// The input of `fc2`: `M × B × 128`.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let trunk = |h: &Tensor, member| -> Result<Tensor> {
            // Pooling before the ReLU gives the same values and gradients (ReLU is monotone)
            // on a quarter of the elements.
            let h = max_pool(&self.conv1.forward(h, member)?)?.f_relu()?;
            Ok(max_pool(&self.conv2.forward(&h, member)?)?.f_relu()?)
        };
        let h = conv_features(x, self.members, self.layout, trunk)?;
        Ok(self.fc1.forward(&h)?.f_relu()?)
    }
}

fn max_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?)
}

impl Network for SmallCnn {
    fn forward(&mut self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.fc2.forward(&self.features(x)?)
    }

    fn linear_head(&mut self, x: &Tensor) -> Option<Result<super::LinearHead>> {
        Some(
            self.features(x)
                .map(|features| super::LinearHead::of(features, &self.fc2, 1.0)),
        )
    }

    fn conv_layout(&mut self) -> Option<&mut ConvLayout> {
        Some(&mut self.layout)
    }
}

/// Convolution (no bias), batch norm and ReLU: the unit of both ResNets.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        params: &mut ParamBuilder<'_>,
        conv_name: &str,
        bn_name: &str,
        shape: ConvShape,
    ) -> Self {
        let channels = shape.outputs;
        ConvBn {
            conv: Conv2d::new(params, conv_name, shape, false),
            bn: BatchNorm2d::new(params, bn_name, channels),
        }
    }

    /// Convolution and batch norm, without the activation, in the layout of
    /// [`Conv2d::forward`].
    fn forward_linear(&self, x: &Tensor, member: Option<i64>, train: bool) -> Result<Tensor> {
        self.bn
            .forward(&self.conv.forward(x, member)?, member, train)
    }

    fn forward(&self, x: &Tensor, member: Option<i64>, train: bool) -> Result<Tensor> {
        Ok(self.forward_linear(x, member, train)?.f_relu()?)
    }
}

fn conv_shape(inputs: i64, outputs: i64, kernel: i64, stride: i64, padding: i64) -> ConvShape {
    ConvShape {
        inputs,
        outputs,
        kernel,
        stride,
        padding,
    }
}

/// ResNet-9 of the DMM paper's CIFAR-10 setting (the ffcv/TRAK architecture, 2,274,880
/// parameters on CIFAR-10): conv-BN-ReLU blocks, two residual stages, adaptive max-pool,
/// a bias-free linear head scaled by 0.2.
pub(crate) struct ResNet9 {
    stem: Vec<ConvBn>,
    residual1: [ConvBn; 2],
    conv3: ConvBn,
    residual2: [ConvBn; 2],
    conv6: ConvBn,
    head: Linear,
    members: i64,
    layout: ConvLayout,
}

/// ResNet-9 multiplies its logits by this constant.
const RESNET9_OUTPUT_SCALE: f64 = 0.2;

impl ResNet9 {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        sample_shape: &[i64],
        classes: i64,
    ) -> Result<Self> {
        // Below 12 pixels the unpadded 3×3 convolution after the max-pool has nothing to cover.
        let [channels, _, _] = image_shape(sample_shape, 12)?;
        let mut block = |index: &str, shape| {
            ConvBn::new(params, &format!("{index}.0"), &format!("{index}.1"), shape)
        };
        let stem = vec![
            block("0", conv_shape(channels, 64, 3, 1, 1)),
            block("1", conv_shape(64, 128, 5, 2, 2)),
        ];
        let residual1 = [
            block("2.module.0", conv_shape(128, 128, 3, 1, 1)),
            block("2.module.1", conv_shape(128, 128, 3, 1, 1)),
        ];
        let conv3 = block("3", conv_shape(128, 256, 3, 1, 1));
        let residual2 = [
            block("5.module.0", conv_shape(256, 256, 3, 1, 1)),
            block("5.module.1", conv_shape(256, 256, 3, 1, 1)),
        ];
        let conv6 = block("6", conv_shape(256, 128, 3, 1, 0));
        let head = Linear::new(params, "9", 128, classes, false);
        Ok(ResNet9 {
            stem,
            residual1,
            conv3,
            residual2,
            conv6,
            head,
            members: params.members(),
            layout: params.conv_layout(),
        })
    }

    /// The input of the head: `M × B × 128`.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let trunk = |x: &Tensor, member| -> Result<Tensor> {
            let mut h = x.shallow_clone();
            for block in &self.stem {
                h = block.forward(&h, member, train)?;
            }
            let [first, second] = &self.residual1;
            let r = second.forward(&first.forward(&h, member, train)?, member, train)?;
            h = h.f_add(&r)?;
            h = max_pool(&self.conv3.forward(&h, member, train)?)?;
            let [first, second] = &self.residual2;
            let r = second.forward(&first.forward(&h, member, train)?, member, train)?;
            h = h.f_add(&r)?;
            Ok(self
                .conv6
                .forward(&h, member, train)?
                .f_adaptive_max_pool2d([1, 1])?
                .0)
        };
        conv_features(x, self.members, self.layout, trunk)
    }
}

impl Network for ResNet9 {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .head
            .forward(&self.features(x, train)?)?
            .f_mul_scalar(RESNET9_OUTPUT_SCALE)?)
    }

    fn linear_head(&mut self, x: &Tensor) -> Option<Result<super::LinearHead>> {
        Some(
            self.features(x, false)
                .map(|features| super::LinearHead::of(features, &self.head, RESNET9_OUTPUT_SCALE)),
        )
    }

    fn conv_layout(&mut self) -> Option<&mut ConvLayout> {
        Some(&mut self.layout)
    }
}

/// torchvision's BasicBlock.
struct BasicBlock {
    first: ConvBn,
    second: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn new(
        params: &mut ParamBuilder<'_>,
        name: &str,
        inputs: i64,
        outputs: i64,
        stride: i64,
    ) -> Self {
        let first = ConvBn::new(
            params,
            &format!("{name}.conv1"),
            &format!("{name}.bn1"),
            conv_shape(inputs, outputs, 3, stride, 1),
        );
        let second = ConvBn::new(
            params,
            &format!("{name}.conv2"),
            &format!("{name}.bn2"),
            conv_shape(outputs, outputs, 3, 1, 1),
        );
        let downsample = (stride != 1 || inputs != outputs).then(|| {
            ConvBn::new(
                params,
                &format!("{name}.downsample.0"),
                &format!("{name}.downsample.1"),
                conv_shape(inputs, outputs, 1, stride, 0),
            )
        });
        BasicBlock {
            first,
            second,
            downsample,
        }
    }

    fn forward(&self, x: &Tensor, member: Option<i64>, train: bool) -> Result<Tensor> {
        let h = self.first.forward(x, member, train)?;
        let h = self.second.forward_linear(&h, member, train)?;
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward_linear(x, member, train)?,
            None => x.shallow_clone(),
        };
        Ok(h.f_add(&shortcut)?.f_relu()?)
    }
}

/// torchvision's ResNet-18 (7×7 stem, max-pool, four stages of two basic blocks, average pool,
/// linear head), with torchvision's parameter names.
pub(crate) struct ResNet18 {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    fc: Linear,
    members: i64,
    layout: ConvLayout,
}

impl ResNet18 {
    pub(crate) fn new(
        params: &mut ParamBuilder<'_>,
        sample_shape: &[i64],
        classes: i64,
    ) -> Result<Self> {
        let [channels, _, _] = image_shape(sample_shape, 16)?;
        let stem = ConvBn::new(params, "conv1", "bn1", conv_shape(channels, 64, 7, 2, 3));
        let mut blocks = Vec::new();
        let mut inputs = 64;
        for (stage, outputs) in [64, 128, 256, 512].into_iter().enumerate() {
            for index in 0..2 {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    params,
                    &format!("layer{}.{index}", stage + 1),
                    inputs,
                    outputs,
                    stride,
                ));
                inputs = outputs;
            }
        }
        let fc = Linear::new(params, "fc", 512, classes, true);
        Ok(ResNet18 {
            stem,
            blocks,
            fc,
            members: params.members(),
            layout: params.conv_layout(),
        })
    }

    /// The input of `fc`: `M × B × 512`.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let trunk = |x: &Tensor, member| -> Result<Tensor> {
            let mut h = self.stem.forward(x, member, train)?;
            h = h.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
            for block in &self.blocks {
                h = block.forward(&h, member, train)?;
            }
            Ok(h.f_adaptive_avg_pool2d([1, 1])?)
        };
        conv_features(x, self.members, self.layout, trunk)
    }
}

impl Network for ResNet18 {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.fc.forward(&self.features(x, train)?)
    }

    fn linear_head(&mut self, x: &Tensor) -> Option<Result<super::LinearHead>> {
        Some(
            self.features(x, false)
                .map(|features| super::LinearHead::of(features, &self.fc, 1.0)),
        )
    }

    fn conv_layout(&mut self) -> Option<&mut ConvLayout> {
        Some(&mut self.layout)
    }
}

/// Checks that samples are images `C × H × W` of at least `min_side` pixels a side.
fn image_shape(sample_shape: &[i64], min_side: i64) -> Result<[i64; 3]> {
    match sample_shape {
        [channels, height, width] if *height >= min_side && *width >= min_side => Ok([*channels, *height, *width]),
        _ => Err(MlError::spec(
            "model",
            format!("this convolutional model needs images C×H×W of at least {min_side}×{min_side}, the dataset has samples of shape {sample_shape:?}"),
        )),
    }
}

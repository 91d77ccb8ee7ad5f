//! EfficientNet-Lite0: EfficientNet-B0's mobile variant (no squeeze-and-excitation, ReLU6 instead
//! of swish), laid out so that its variable names are the keys of the PyTorch port of Google's
//! TensorFlow weights (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_fc`).
//!
//! The weights were trained in TensorFlow, whose "SAME" padding puts the odd zero of a stride-2
//! convolution after the input rather than splitting it, so every convolution pads that way (the
//! checkpoint's own module list names a `static_padding` per convolution, the port's TF-style
//! padding). PyTorch-style symmetric padding still recognises the test photos but with clearly
//! lower confidence, which the backbone tests check. Batch norm uses TensorFlow's epsilon, 1e-3.

use tch::nn;
use tch::Tensor;

use super::layers::{BatchNorm, Conv2d, ConvBn, ConvSpec, Linear, Padding};

/// Input side length the network was trained at.
pub const INPUT_SIZE: u32 = 224;
/// Width of the pooled features (the head convolution's channels).
pub const FEATURE_DIM: i64 = 1280;
/// The first stage (index into `STAGES`) whose output multi-scale pooling keeps: the earlier
/// ones (16 and 24 channels, at 112 and 56 px) describe edges more than objects.
const MULTISCALE_FIRST_STAGE: usize = 2;
/// Width of the multi-scale features: the outputs of stages 2–6 (40 + 80 + 112 + 192 + 320
/// channels) and the head's 1280, each globally averaged.
pub const MULTISCALE_DIM: i64 = multiscale_stage_channels() + FEATURE_DIM;

/// Side of the grid of regions grid pooling averages each kept map over.
pub const GRID: i64 = 4;
/// Width of the grid features: `GRID × GRID` regions of `MULTISCALE_DIM` channels each.
pub const GRID_DIM: i64 = GRID * GRID * MULTISCALE_DIM;

const fn multiscale_stage_channels() -> i64 {
    let mut sum = 0;
    let mut stage = MULTISCALE_FIRST_STAGE;
    while stage < STAGES.len() {
        sum += STAGES[stage].out_channels;
        stage += 1;
    }
    sum
}
/// ImageNet classes of `_fc`.
pub const NUM_CLASSES: i64 = 1000;

/// Batch-norm epsilon of the TensorFlow original.
const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: i64 = 32;

/// The padding of a convolution with a square `kernel` under `rule`: TfSame is computed per
/// input, symmetric padding is half the kernel (the PyTorch convention for "same").
fn padding_for(rule: Padding, kernel: i64) -> Padding {
    match rule {
        Padding::TfSame => Padding::TfSame,
        Padding::Symmetric(_) => Padding::Symmetric([kernel / 2, kernel / 2]),
    }
}

/// One stage of mobile inverted bottleneck blocks: EfficientNet-B0's list, which Lite0 keeps
/// unchanged (width and depth multipliers 1.0).
struct StageSpec {
    repeats: usize,
    kernel: i64,
    /// Stride of the stage's first block; the others use 1.
    stride: i64,
    expand_ratio: i64,
    in_channels: i64,
    out_channels: i64,
}

#[rustfmt::skip]
const STAGES: [StageSpec; 7] = [
    StageSpec { repeats: 1, kernel: 3, stride: 1, expand_ratio: 1, in_channels: 32, out_channels: 16 },
    StageSpec { repeats: 2, kernel: 3, stride: 2, expand_ratio: 6, in_channels: 16, out_channels: 24 },
    StageSpec { repeats: 2, kernel: 5, stride: 2, expand_ratio: 6, in_channels: 24, out_channels: 40 },
    StageSpec { repeats: 3, kernel: 3, stride: 2, expand_ratio: 6, in_channels: 40, out_channels: 80 },
    StageSpec { repeats: 3, kernel: 5, stride: 1, expand_ratio: 6, in_channels: 80, out_channels: 112 },
    StageSpec { repeats: 4, kernel: 5, stride: 2, expand_ratio: 6, in_channels: 112, out_channels: 192 },
    StageSpec { repeats: 1, kernel: 3, stride: 1, expand_ratio: 6, in_channels: 192, out_channels: 320 },
];

/// A mobile inverted bottleneck: 1x1 expansion, depthwise convolution, 1x1 projection, with a
/// residual connection when the shape is unchanged.
struct MbConvBlock {
    /// Absent when the expansion ratio is 1 (the first stage).
    expand: Option<ConvBn>,
    /// Depthwise convolution and `_bn1`.
    depthwise: ConvBn,
    /// Projection and `_bn2`.
    project: ConvBn,
    residual: bool,
}

impl MbConvBlock {
    fn new(vs: &nn::Path, stage: &StageSpec, in_channels: i64, stride: i64, rule: Padding) -> Self {
        let hidden = in_channels * stage.expand_ratio;
        let expand = (stage.expand_ratio != 1).then(|| {
            ConvBn::new(
                Conv2d::new(
                    &(vs / "_expand_conv"),
                    ConvSpec::new(in_channels, hidden, 1).padding(padding_for(rule, 1)),
                ),
                BatchNorm::new(&(vs / "_bn0"), hidden, BN_EPS),
            )
        });
        let depthwise = Conv2d::new(
            &(vs / "_depthwise_conv"),
            ConvSpec::new(hidden, hidden, stage.kernel)
                .stride(stride)
                .groups(hidden)
                .padding(padding_for(rule, stage.kernel)),
        );
        let project = Conv2d::new(
            &(vs / "_project_conv"),
            ConvSpec::new(hidden, stage.out_channels, 1).padding(padding_for(rule, 1)),
        );
        MbConvBlock {
            expand,
            depthwise: ConvBn::new(depthwise, BatchNorm::new(&(vs / "_bn1"), hidden, BN_EPS)),
            project: ConvBn::new(
                project,
                BatchNorm::new(&(vs / "_bn2"), stage.out_channels, BN_EPS),
            ),
            residual: stride == 1 && in_channels == stage.out_channels,
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let hidden = match &self.expand {
            Some(expand) => relu6(expand.forward(xs)),
            None => xs.shallow_clone(),
        };
        let hidden = relu6(self.depthwise.forward(&hidden));
        // The projection is linear: no activation, so the residual sum stays unclipped.
        let mut out = self.project.forward(&hidden);
        if self.residual {
            out += xs;
        }
        out
    }
}

/// `[N, C, H, W]` -> `[N, C]`, the mean over every position.
fn global_average(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// ReLU6 in place: the activation is the only user of its input, so no second map is allocated.
fn relu6(mut xs: Tensor) -> Tensor {
    let _ = xs.clamp_(0.0, 6.0);
    xs
}

/// EfficientNet-Lite0 with its ImageNet classifier.
pub struct EfficientNetLite0 {
    /// Stem convolution and `_bn0`.
    stem: ConvBn,
    blocks: Vec<MbConvBlock>,
    /// Head convolution and `_bn1`.
    head: ConvBn,
    fc: Linear,
}

impl EfficientNetLite0 {
    /// Registers every weight under `vs` with TensorFlow "SAME" padding (what the weights expect).
    pub fn new(vs: &nn::Path) -> Self {
        Self::with_padding(vs, Padding::TfSame)
    }

    /// As [`EfficientNetLite0::new`] with every convolution padded by `padding`'s rule: `TfSame`,
    /// or PyTorch-style symmetric `kernel / 2` when given `Padding::Symmetric` (its values are
    /// ignored, each convolution uses half its own kernel).
    pub fn with_padding(vs: &nn::Path, padding: Padding) -> Self {
        let pad_for = |kernel: i64| padding_for(padding, kernel);
        let stem = Conv2d::new(
            &(vs / "_conv_stem"),
            ConvSpec::new(3, STEM_CHANNELS, 3)
                .stride(2)
                .padding(pad_for(3)),
        );
        let bn0 = BatchNorm::new(&(vs / "_bn0"), STEM_CHANNELS, BN_EPS);
        let blocks_vs = vs / "_blocks";
        let mut blocks = Vec::new();
        for stage in &STAGES {
            for repeat in 0..stage.repeats {
                let (in_channels, stride) = if repeat == 0 {
                    (stage.in_channels, stage.stride)
                } else {
                    (stage.out_channels, 1)
                };
                let block_vs = &blocks_vs / blocks.len();
                blocks.push(MbConvBlock::new(
                    &block_vs,
                    stage,
                    in_channels,
                    stride,
                    padding,
                ));
            }
        }
        let last_channels = STAGES[STAGES.len() - 1].out_channels;
        let head = Conv2d::new(
            &(vs / "_conv_head"),
            ConvSpec::new(last_channels, FEATURE_DIM, 1).padding(pad_for(1)),
        );
        EfficientNetLite0 {
            stem: ConvBn::new(stem, bn0),
            blocks,
            head: ConvBn::new(head, BatchNorm::new(&(vs / "_bn1"), FEATURE_DIM, BN_EPS)),
            fc: Linear::new(&(vs / "_fc"), FEATURE_DIM, NUM_CLASSES),
        }
    }

    /// `[N, 3, H, W]` normalised images -> `[N, 1280]` globally average-pooled features.
    pub fn features(&self, xs: &Tensor) -> Tensor {
        global_average(&self.head_map(xs, |_| {}))
    }

    /// `[N, 3, H, W]` normalised images -> `[N, MULTISCALE_DIM]`: the global averages of the
    /// last block of each stage from `MULTISCALE_FIRST_STAGE` on, then of the head (so the last
    /// 1280 columns are [`EfficientNetLite0::features`]). The head's channels are tuned to
    /// ImageNet's classes and keep little of an object's colour; the middle stages keep it.
    pub fn multiscale_features(&self, xs: &Tensor) -> Tensor {
        let mut parts = Vec::new();
        let head = self.head_map(xs, |stage_output| parts.push(global_average(stage_output)));
        parts.push(global_average(&head));
        Tensor::cat(&parts, 1)
    }

    /// `[N, 3, H, W]` normalised images -> `[N, GRID_DIM]`: every map multi-scale pooling keeps,
    /// averaged over each region of a `GRID × GRID` grid, region-major (row-major over the grid;
    /// within a region, the channels in multi-scale order), so that `view([N, GRID², 2024])`
    /// gives one multi-scale vector per region. A global average of a picture of two objects
    /// mixes their colours and shapes (red and blue channels averaged look like purple); a
    /// region mostly sees one object, whole.
    pub fn grid_features(&self, xs: &Tensor) -> Tensor {
        let mut maps = Vec::new();
        let grid = |map: &Tensor| map.adaptive_avg_pool2d([GRID, GRID]);
        let head = self.head_map(xs, |stage_output| maps.push(grid(stage_output)));
        maps.push(grid(&head));
        Tensor::cat(&maps, 1).permute([0, 2, 3, 1]).flatten(1, -1)
    }

    /// The head's `[N, 1280, H/32, W/32]` map; `stage_output` sees the output of each stage
    /// multi-scale pooling keeps, in order.
    fn head_map(&self, xs: &Tensor, mut stage_output: impl FnMut(&Tensor)) -> Tensor {
        let mut xs = relu6(self.stem.forward(xs));
        let mut blocks = self.blocks.iter();
        for (index, stage) in STAGES.iter().enumerate() {
            for block in blocks.by_ref().take(stage.repeats) {
                xs = block.forward(&xs);
            }
            if index >= MULTISCALE_FIRST_STAGE {
                stage_output(&xs);
            }
        }
        relu6(self.head.forward(&xs))
    }

    /// `[N, 1280]` features -> `[N, 1000]` ImageNet logits (dropout is a no-op at inference).
    pub fn logits(&self, features: &Tensor) -> Tensor {
        self.fc.forward(features)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    #[test]
    fn random_weights_give_feature_and_logit_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = EfficientNetLite0::new(&vs.root());
        let input = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
        let features = tch::no_grad(|| net.features(&input));
        assert_eq!(features.size(), [2, FEATURE_DIM]);
        assert_eq!(net.logits(&features).size(), [2, NUM_CLASSES]);
        assert_eq!(net.blocks.len(), 16);
    }

    #[test]
    fn variable_names_follow_the_checkpoint() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = EfficientNetLite0::new(&vs.root());
        let variables = vs.variables();
        let shape = |name: &str| variables.get(name).map(|t| t.size());
        assert_eq!(shape("_conv_stem.weight"), Some(vec![32, 3, 3, 3]));
        assert_eq!(
            shape("_blocks.0._depthwise_conv.weight"),
            Some(vec![32, 1, 3, 3])
        );
        assert_eq!(shape("_blocks.0._expand_conv.weight"), None);
        assert_eq!(
            shape("_blocks.12._depthwise_conv.weight"),
            Some(vec![1152, 1, 5, 5])
        );
        assert_eq!(
            shape("_blocks.15._project_conv.weight"),
            Some(vec![320, 1152, 1, 1])
        );
        assert_eq!(shape("_bn1.running_var"), Some(vec![1280]));
        assert_eq!(shape("_fc.weight"), Some(vec![1000, 1280]));
        // 5 tensors per batch norm, 1 per conv, 2 for fc; the checkpoint adds a
        // num_batches_tracked per batch norm, which is not a weight.
        let batch_norms = 2 + 15 * 3 + 2;
        let convs = 2 + 15 * 3 + 2;
        assert_eq!(variables.len(), batch_norms * 4 + convs + 2);
    }
}

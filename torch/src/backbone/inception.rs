//! InceptionV3 as torchvision builds it (`torchvision.models.inception_v3`), with variable names
//! equal to torchvision's state-dict keys so its ImageNet checkpoint loads by name.
//!
//! The auxiliary classifier (`AuxLogits`) only helps training, but its weights are part of the
//! checkpoint; they are registered (so loading stays strict about every tensor) and never run.

use tch::nn;
use tch::Tensor;

use super::layers::{BatchNorm, Conv2d, ConvBn, ConvSpec, Linear};

/// Input side length the network was trained at.
pub const INPUT_SIZE: u32 = 299;
/// Width of the pooled features (Mixed_7c's channels).
pub const FEATURE_DIM: i64 = 2048;
/// ImageNet classes of `fc`.
pub const NUM_CLASSES: i64 = 1000;

/// torchvision's batch-norm epsilon for InceptionV3 (the TensorFlow original's value).
const BN_EPS: f64 = 1e-3;

/// Convolution without bias, batch norm, ReLU: torchvision's `BasicConv2d` (`<name>.conv`,
/// `<name>.bn`).
struct BasicConv2d {
    layer: ConvBn,
}

impl BasicConv2d {
    fn new(vs: &nn::Path, spec: ConvSpec) -> Self {
        BasicConv2d {
            layer: ConvBn::new(
                Conv2d::new(&(vs / "conv"), spec),
                BatchNorm::new(&(vs / "bn"), spec.out_channels, BN_EPS),
            ),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        // In place: the activation is the only user of the convolution's output.
        let mut out = self.layer.forward(xs);
        let _ = out.relu_();
        out
    }
}

/// A `BasicConv2d` named `name` under `vs`.
fn basic(vs: &nn::Path, name: &str, spec: ConvSpec) -> BasicConv2d {
    BasicConv2d::new(&(vs / name), spec)
}

/// torchvision pools the pooling branches with 3x3 windows, stride 1, padding 1, counting the
/// padding zeros in the average.
fn avg_pool_3x3(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None)
}

fn max_pool_3x3_stride_2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// 35x35 block: 1x1, 5x5, double 3x3 and pooling branches.
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(vs: &nn::Path, in_channels: i64, pool_features: i64) -> Self {
        InceptionA {
            branch1x1: basic(vs, "branch1x1", ConvSpec::new(in_channels, 64, 1)),
            branch5x5_1: basic(vs, "branch5x5_1", ConvSpec::new(in_channels, 48, 1)),
            branch5x5_2: basic(vs, "branch5x5_2", ConvSpec::new(48, 64, 5).pad([2, 2])),
            branch3x3dbl_1: basic(vs, "branch3x3dbl_1", ConvSpec::new(in_channels, 64, 1)),
            branch3x3dbl_2: basic(vs, "branch3x3dbl_2", ConvSpec::new(64, 96, 3).pad([1, 1])),
            branch3x3dbl_3: basic(vs, "branch3x3dbl_3", ConvSpec::new(96, 96, 3).pad([1, 1])),
            branch_pool: basic(
                vs,
                "branch_pool",
                ConvSpec::new(in_channels, pool_features, 1),
            ),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(xs);
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(xs));
        let b3 = self.branch3x3dbl_3.forward(
            &self
                .branch3x3dbl_2
                .forward(&self.branch3x3dbl_1.forward(xs)),
        );
        let bp = self.branch_pool.forward(&avg_pool_3x3(xs));
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// Grid reduction 35x35 -> 17x17.
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(vs: &nn::Path, in_channels: i64) -> Self {
        InceptionB {
            branch3x3: basic(
                vs,
                "branch3x3",
                ConvSpec::new(in_channels, 384, 3).stride(2),
            ),
            branch3x3dbl_1: basic(vs, "branch3x3dbl_1", ConvSpec::new(in_channels, 64, 1)),
            branch3x3dbl_2: basic(vs, "branch3x3dbl_2", ConvSpec::new(64, 96, 3).pad([1, 1])),
            branch3x3dbl_3: basic(vs, "branch3x3dbl_3", ConvSpec::new(96, 96, 3).stride(2)),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let b3 = self.branch3x3.forward(xs);
        let bd = self.branch3x3dbl_3.forward(
            &self
                .branch3x3dbl_2
                .forward(&self.branch3x3dbl_1.forward(xs)),
        );
        let bp = max_pool_3x3_stride_2(xs);
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

/// 17x17 block with factorised 7x7 convolutions (1x7 then 7x1).
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(vs: &nn::Path, in_channels: i64, channels_7x7: i64) -> Self {
        let c7 = channels_7x7;
        let row = |i: i64, o: i64| ConvSpec::new(i, o, 1).kernel([1, 7]).pad([0, 3]);
        let column = |i: i64, o: i64| ConvSpec::new(i, o, 1).kernel([7, 1]).pad([3, 0]);
        InceptionC {
            branch1x1: basic(vs, "branch1x1", ConvSpec::new(in_channels, 192, 1)),
            branch7x7: [
                basic(vs, "branch7x7_1", ConvSpec::new(in_channels, c7, 1)),
                basic(vs, "branch7x7_2", row(c7, c7)),
                basic(vs, "branch7x7_3", column(c7, 192)),
            ],
            branch7x7dbl: [
                basic(vs, "branch7x7dbl_1", ConvSpec::new(in_channels, c7, 1)),
                basic(vs, "branch7x7dbl_2", column(c7, c7)),
                basic(vs, "branch7x7dbl_3", row(c7, c7)),
                basic(vs, "branch7x7dbl_4", column(c7, c7)),
                basic(vs, "branch7x7dbl_5", row(c7, 192)),
            ],
            branch_pool: basic(vs, "branch_pool", ConvSpec::new(in_channels, 192, 1)),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let chain = |convs: &[BasicConv2d]| {
            convs
                .iter()
                .fold(xs.shallow_clone(), |acc, conv| conv.forward(&acc))
        };
        let b1 = self.branch1x1.forward(xs);
        let b7 = chain(&self.branch7x7);
        let bd = chain(&self.branch7x7dbl);
        let bp = self.branch_pool.forward(&avg_pool_3x3(xs));
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// Grid reduction 17x17 -> 8x8.
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(vs: &nn::Path, in_channels: i64) -> Self {
        InceptionD {
            branch3x3: [
                basic(vs, "branch3x3_1", ConvSpec::new(in_channels, 192, 1)),
                basic(vs, "branch3x3_2", ConvSpec::new(192, 320, 3).stride(2)),
            ],
            branch7x7x3: [
                basic(vs, "branch7x7x3_1", ConvSpec::new(in_channels, 192, 1)),
                basic(
                    vs,
                    "branch7x7x3_2",
                    ConvSpec::new(192, 192, 1).kernel([1, 7]).pad([0, 3]),
                ),
                basic(
                    vs,
                    "branch7x7x3_3",
                    ConvSpec::new(192, 192, 1).kernel([7, 1]).pad([3, 0]),
                ),
                basic(vs, "branch7x7x3_4", ConvSpec::new(192, 192, 3).stride(2)),
            ],
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let chain = |convs: &[BasicConv2d]| {
            convs
                .iter()
                .fold(xs.shallow_clone(), |acc, conv| conv.forward(&acc))
        };
        let b3 = chain(&self.branch3x3);
        let b7 = chain(&self.branch7x7x3);
        let bp = max_pool_3x3_stride_2(xs);
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// 8x8 block whose 3x3 branches split into parallel 1x3 and 3x1 convolutions.
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionE {
    fn new(vs: &nn::Path, in_channels: i64) -> Self {
        let row = || ConvSpec::new(384, 384, 1).kernel([1, 3]).pad([0, 1]);
        let column = || ConvSpec::new(384, 384, 1).kernel([3, 1]).pad([1, 0]);
        InceptionE {
            branch1x1: basic(vs, "branch1x1", ConvSpec::new(in_channels, 320, 1)),
            branch3x3_1: basic(vs, "branch3x3_1", ConvSpec::new(in_channels, 384, 1)),
            branch3x3_2a: basic(vs, "branch3x3_2a", row()),
            branch3x3_2b: basic(vs, "branch3x3_2b", column()),
            branch3x3dbl_1: basic(vs, "branch3x3dbl_1", ConvSpec::new(in_channels, 448, 1)),
            branch3x3dbl_2: basic(vs, "branch3x3dbl_2", ConvSpec::new(448, 384, 3).pad([1, 1])),
            branch3x3dbl_3a: basic(vs, "branch3x3dbl_3a", row()),
            branch3x3dbl_3b: basic(vs, "branch3x3dbl_3b", column()),
            branch_pool: basic(vs, "branch_pool", ConvSpec::new(in_channels, 192, 1)),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(xs);
        let t = self.branch3x3_1.forward(xs);
        let b3 = Tensor::cat(
            &[self.branch3x3_2a.forward(&t), self.branch3x3_2b.forward(&t)],
            1,
        );
        let t = self
            .branch3x3dbl_2
            .forward(&self.branch3x3dbl_1.forward(xs));
        let bd = Tensor::cat(
            &[
                self.branch3x3dbl_3a.forward(&t),
                self.branch3x3dbl_3b.forward(&t),
            ],
            1,
        );
        let bp = self.branch_pool.forward(&avg_pool_3x3(xs));
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

/// Registers the auxiliary classifier's weights (`AuxLogits.conv0`, `.conv1`, `.fc`); see the
/// module doc for why it is never run.
fn register_aux_logits(vs: &nn::Path, in_channels: i64) {
    let _conv0 = basic(vs, "conv0", ConvSpec::new(in_channels, 128, 1));
    let _conv1 = basic(vs, "conv1", ConvSpec::new(128, 768, 5));
    let _fc = Linear::new(&(vs / "fc"), 768, NUM_CLASSES);
}

/// InceptionV3 with its ImageNet classifier.
pub struct InceptionV3 {
    stem: [BasicConv2d; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7: [InceptionE; 2],
    fc: Linear,
}

impl InceptionV3 {
    /// Registers every weight under `vs`.
    pub fn new(vs: &nn::Path) -> Self {
        let stem = [
            basic(vs, "Conv2d_1a_3x3", ConvSpec::new(3, 32, 3).stride(2)),
            basic(vs, "Conv2d_2a_3x3", ConvSpec::new(32, 32, 3)),
            basic(vs, "Conv2d_2b_3x3", ConvSpec::new(32, 64, 3).pad([1, 1])),
            basic(vs, "Conv2d_3b_1x1", ConvSpec::new(64, 80, 1)),
            basic(vs, "Conv2d_4a_3x3", ConvSpec::new(80, 192, 3)),
        ];
        let mixed_5 = [
            InceptionA::new(&(vs / "Mixed_5b"), 192, 32),
            InceptionA::new(&(vs / "Mixed_5c"), 256, 64),
            InceptionA::new(&(vs / "Mixed_5d"), 288, 64),
        ];
        let mixed_6a = InceptionB::new(&(vs / "Mixed_6a"), 288);
        let mixed_6 = [
            InceptionC::new(&(vs / "Mixed_6b"), 768, 128),
            InceptionC::new(&(vs / "Mixed_6c"), 768, 160),
            InceptionC::new(&(vs / "Mixed_6d"), 768, 160),
            InceptionC::new(&(vs / "Mixed_6e"), 768, 192),
        ];
        register_aux_logits(&(vs / "AuxLogits"), 768);
        let mixed_7a = InceptionD::new(&(vs / "Mixed_7a"), 768);
        let mixed_7 = [
            InceptionE::new(&(vs / "Mixed_7b"), 1280),
            InceptionE::new(&(vs / "Mixed_7c"), 2048),
        ];
        InceptionV3 {
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7,
            fc: Linear::new(&(vs / "fc"), FEATURE_DIM, NUM_CLASSES),
        }
    }

    /// `[N, 3, 299, 299]` images scaled to [-1, 1] -> `[N, 2048]` average-pooled features.
    pub fn features(&self, xs: &Tensor) -> Tensor {
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        let xs = c2b.forward(&c2a.forward(&c1a.forward(xs)));
        let xs = max_pool_3x3_stride_2(&xs);
        let xs = c4a.forward(&c3b.forward(&xs));
        let mut xs = max_pool_3x3_stride_2(&xs);
        for block in &self.mixed_5 {
            xs = block.forward(&xs);
        }
        xs = self.mixed_6a.forward(&xs);
        for block in &self.mixed_6 {
            xs = block.forward(&xs);
        }
        xs = self.mixed_7a.forward(&xs);
        for block in &self.mixed_7 {
            xs = block.forward(&xs);
        }
        xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// `[N, 2048]` features -> `[N, 1000]` ImageNet logits (dropout is a no-op at inference).
    pub fn logits(&self, features: &Tensor) -> Tensor {
        self.fc.forward(features)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    #[test]
    fn parameter_count_matches_torchvision() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = InceptionV3::new(&vs.root());
        // torchvision's inception_v3(aux_logits=True) has 27,161,264 parameters (running
        // statistics are buffers, not parameters).
        let parameters: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(parameters, 27_161_264);
        let variables = vs.variables();
        assert_eq!(
            variables
                .get("Mixed_6e.branch7x7dbl_5.conv.weight")
                .map(|t| t.size()),
            Some(vec![192, 192, 1, 7])
        );
        assert_eq!(
            variables
                .get("AuxLogits.conv1.bn.running_mean")
                .map(|t| t.size()),
            Some(vec![768])
        );
        assert_eq!(
            variables.get("fc.weight").map(|t| t.size()),
            Some(vec![1000, 2048])
        );
    }

    #[test]
    fn random_weights_give_feature_and_logit_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = InceptionV3::new(&vs.root());
        let input = Tensor::randn([1, 3, 299, 299], (Kind::Float, Device::Cpu));
        let features = tch::no_grad(|| net.features(&input));
        assert_eq!(features.size(), [1, FEATURE_DIM]);
        assert_eq!(net.logits(&features).size(), [1, NUM_CLASSES]);
    }
}

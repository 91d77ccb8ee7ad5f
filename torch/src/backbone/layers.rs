//! The few layers the backbones are built from (convolution, batch norm, linear), as plain
//! inference-only functions over tensors registered in a `tch` var store under the names PyTorch
//! gives them (`<module>.weight`, `<module>.running_mean`, ...), so checkpoints load by name.

use std::cell::OnceCell;

use tch::nn::{self, Init};
use tch::Tensor;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros on both sides of each spatial axis (PyTorch's `padding=`).
    Symmetric([i64; 2]),
    /// TensorFlow's "SAME": the output is ceil(input / stride) and, when the total padding is
    /// odd, the extra zero goes after (bottom/right). Computed per input size, so any size works.
    TfSame,
}

/// A 2-D convolution.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: [i64; 2],
    stride: [i64; 2],
    padding: Padding,
    groups: i64,
}

/// The shape of a convolution, for [`Conv2d::new`].
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: Padding,
    pub groups: i64,
    pub bias: bool,
}

impl ConvSpec {
    /// A square `kernel` with stride 1, no padding, no groups, no bias.
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: Padding::Symmetric([0, 0]),
            groups: 1,
            bias: false,
        }
    }

    pub fn kernel(mut self, kernel: [i64; 2]) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn stride(mut self, stride: i64) -> Self {
        self.stride = [stride, stride];
        self
    }

    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Symmetric padding `[height, width]`.
    pub fn pad(self, padding: [i64; 2]) -> Self {
        self.padding(Padding::Symmetric(padding))
    }

    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }
}

impl Conv2d {
    /// Registers `weight` (and `bias`) under `vs`, initialised as PyTorch initialises convs (the
    /// values only matter for random-weight tests; real weights overwrite them).
    pub fn new(vs: &nn::Path, spec: ConvSpec) -> Conv2d {
        let dims = [
            spec.out_channels,
            spec.in_channels / spec.groups,
            spec.kernel[0],
            spec.kernel[1],
        ];
        let weight = vs.var("weight", &dims, nn::init::DEFAULT_KAIMING_UNIFORM);
        let bias = spec
            .bias
            .then(|| vs.var("bias", &[spec.out_channels], Init::Const(0.)));
        Conv2d {
            weight,
            bias,
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
            groups: spec.groups,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let padding = match self.padding {
            Padding::Symmetric(padding) => padding,
            Padding::TfSame => {
                let size = xs.size();
                let (height, width) = (size[size.len() - 2], size[size.len() - 1]);
                let (top, bottom) = tf_same_padding(height, self.kernel[0], self.stride[0]);
                let (left, right) = tf_same_padding(width, self.kernel[1], self.stride[1]);
                if top == bottom && left == right {
                    // Let the convolution pad: no padded copy of the input.
                    [top, left]
                } else {
                    let padded = xs.constant_pad_nd([left, right, top, bottom]);
                    return self.convolve(&padded, [0, 0]);
                }
            }
        };
        self.convolve(xs, padding)
    }

    fn convolve(&self, xs: &Tensor, padding: [i64; 2]) -> Tensor {
        xs.conv2d(
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            padding,
            [1, 1],
            self.groups,
        )
    }
}

/// TensorFlow "SAME" padding of one axis: (before, after).
pub fn tf_same_padding(input: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let output = (input + stride - 1) / stride;
    let total = ((output - 1) * stride + kernel - input).max(0);
    (total / 2, total - total / 2)
}

/// Batch normalisation with running statistics (inference only).
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
}

impl BatchNorm {
    /// Registers `weight`, `bias`, `running_mean` and `running_var` under `vs`.
    pub fn new(vs: &nn::Path, channels: i64, eps: f64) -> BatchNorm {
        BatchNorm {
            weight: vs.var("weight", &[channels], Init::Const(1.)),
            bias: vs.var("bias", &[channels], Init::Const(0.)),
            running_mean: vs.zeros_no_train("running_mean", &[channels]),
            running_var: vs.ones_no_train("running_var", &[channels]),
            eps,
        }
    }

    /// Normalises `xs` with the running statistics: what [`ConvBn`] folds into its convolution.
    #[cfg(test)]
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        // Momentum only matters when training updates the running statistics; never here.
        xs.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.,
            self.eps,
            true,
        )
    }
}

/// A convolution followed by batch normalisation, run as one convolution: on first use the
/// normalisation's scale and shift are folded into the convolution's weights and bias, which
/// saves a pass over every activation map and is exact up to rounding. It folds then, not when
/// built, because a backbone's weights are copied in after its layers are registered; a frozen
/// backbone never changes them once it has run.
#[derive(Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    folded: OnceCell<Conv2d>,
}

impl ConvBn {
    pub fn new(conv: Conv2d, bn: BatchNorm) -> ConvBn {
        ConvBn {
            conv,
            bn,
            folded: OnceCell::new(),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.folded.get_or_init(|| self.fold()).forward(xs)
    }

    /// The convolution with the normalisation folded in: per output channel, scale = γ / √(σ² +
    /// ε); weight' = weight · scale; bias' = (bias − μ) · scale + β. The weight is laid out
    /// channels-last, as the backbones run their activations.
    fn fold(&self) -> Conv2d {
        let (conv, bn) = (&self.conv, &self.bn);
        tch::no_grad(|| {
            let scale = &bn.weight / (&bn.running_var + bn.eps).sqrt();
            let weight = &conv.weight * scale.view([-1, 1, 1, 1]);
            let shifted = match &conv.bias {
                Some(bias) => bias - &bn.running_mean,
                None => -&bn.running_mean,
            };
            Conv2d {
                weight: channels_last(&weight),
                bias: Some(shifted * &scale + &bn.bias),
                kernel: conv.kernel,
                stride: conv.stride,
                padding: conv.padding,
                groups: conv.groups,
            }
        })
    }

    /// The convolution and the normalisation one after the other, as the weights define them.
    #[cfg(test)]
    pub fn forward_unfolded(&self, xs: &Tensor) -> Tensor {
        self.bn.forward(&self.conv.forward(xs))
    }
}

/// `xs` `[N, C, H, W]` laid out channels-last in memory (strides `[HWC, 1, WC, C]`), same
/// shape and values.
pub fn channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A fully connected layer.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Registers `weight` `[out, in]` and `bias` `[out]` under `vs`, initialised like PyTorch.
    pub fn new(vs: &nn::Path, inputs: i64, outputs: i64) -> Linear {
        let bound = 1.0 / (inputs as f64).sqrt();
        Linear {
            weight: vs.var(
                "weight",
                &[outputs, inputs],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            bias: vs.var(
                "bias",
                &[outputs],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding_puts_the_odd_zero_after() {
        // 224 -> 112 with a 3x3 stride-2 kernel needs one zero, at the end.
        assert_eq!(tf_same_padding(224, 3, 2), (0, 1));
        assert_eq!(tf_same_padding(112, 5, 2), (1, 2));
        assert_eq!(tf_same_padding(56, 3, 1), (1, 1));
        assert_eq!(tf_same_padding(7, 1, 1), (0, 0));
        // Odd sizes: 225 -> 113 needs (113 - 1) * 2 + 3 - 225 = 2 zeros.
        assert_eq!(tf_same_padding(225, 3, 2), (1, 1));
    }

    #[test]
    fn folding_the_batch_norm_into_the_convolution_changes_nothing() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        for (groups, channels, bias) in [(1, 6, false), (6, 6, false), (1, 4, true)] {
            let mut spec = ConvSpec::new(6, channels, 3).stride(2).groups(groups);
            spec.padding = Padding::TfSame;
            spec.bias = bias;
            let root = vs.root() / format!("g{groups}c{channels}{bias}");
            let conv = Conv2d::new(&(&root / "conv"), spec);
            let bn = BatchNorm::new(&(&root / "bn"), channels, 1e-3);
            // Statistics far from the identity, as trained ones are.
            tch::no_grad(|| {
                let random = |lo: f64, hi: f64| {
                    Tensor::rand([channels], (tch::Kind::Float, tch::Device::Cpu)) * (hi - lo) + lo
                };
                bn.weight.shallow_clone().copy_(&random(0.5, 2.0));
                bn.bias.shallow_clone().copy_(&random(-1.0, 1.0));
                bn.running_mean.shallow_clone().copy_(&random(-0.5, 0.5));
                bn.running_var.shallow_clone().copy_(&random(0.1, 3.0));
            });
            let layer = ConvBn::new(conv, bn);
            let xs = Tensor::randn([2, 6, 15, 16], (tch::Kind::Float, tch::Device::Cpu));
            let expected = layer.forward_unfolded(&xs);
            let folded = layer.forward(&xs);
            assert_eq!(folded.size(), expected.size());
            let error = (&folded - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(
                error <= 1e-5 * scale.max(1.0),
                "max error {error} (scale {scale})"
            );
        }
    }

    #[test]
    fn tf_same_convolution_keeps_ceil_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let spec = ConvSpec::new(3, 4, 3).stride(2).padding(Padding::TfSame);
        let conv = Conv2d::new(&vs.root(), spec);
        let out = conv.forward(&Tensor::ones(
            [1, 3, 15, 16],
            (tch::Kind::Float, tch::Device::Cpu),
        ));
        assert_eq!(out.size(), [1, 4, 8, 8]);
    }
}

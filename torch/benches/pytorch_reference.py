"""PyTorch eager reference for the `ml` benchmark (torch/benches/ml.rs), which runs it in a
throwaway virtual environment and compares its figures with onenet's.

Two measurements, each the plain PyTorch way of doing what onenet does, on the same shapes:

* ``features``: EfficientNet-Lite0 written here to match onenet's Rust network layer for layer
  (TensorFlow "SAME" padding with the odd zero after, ReLU6, no squeeze-and-excitation, batch
  norm with eps 1e-3, global average pooling to 1280 values), random weights, in eval mode under
  ``torch.inference_mode()``. Each batch's JPEG files are decoded with PIL and resized to 224 in
  the loop, one after another, as a plain eager script does without DataLoader workers.
* ``train``: onenet's caption network (Linear + ReLU image encoder, embedding, GRU with
  batch_first, Linear, Linear, cross-entropy ignoring padding id 0) trained with Adam and
  gradient-norm clipping at 5, as onenet's ``train`` stage does, on random features and token
  sequences shaped as the Rust side makes them.

Each prints one JSON object on its last line of stdout; the timed part excludes interpreter
start-up and ``import torch``, which the benchmark reports separately.

Usage: ``python pytorch_reference.py features --files LIST --threads 2 --batch-size 8 --reps 3``
or ``python pytorch_reference.py train --threads 2 --steps 40 --warmup 3 ...``.
"""

import argparse
import json
import math
import sys
import time

import_start = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - import_start

# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0

INPUT_SIZE = 224
FEATURE_DIM = 1280
BN_EPS = 1e-3
STEM_CHANNELS = 32
# (repeats, kernel, stride of the first block, expand ratio, in channels, out channels):
# EfficientNet-B0's stages, which Lite0 keeps (width and depth multipliers 1.0).
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def tf_same_padding(size, kernel, stride):
    """TensorFlow "SAME" padding of one axis as (before, after): the odd zero goes after."""
    output = (size + stride - 1) // stride
    total = max((output - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding, computed per input size.

    Symmetric padding is left to the convolution itself; only the asymmetric case of a stride-2
    convolution pads a copy first. This is exactly what the Rust layer does.
    """

    def __init__(self, in_channels, out_channels, kernel, stride=1, groups=1):
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False
        )

    def forward(self, x):
        height, width = x.shape[-2:]
        top, bottom = tf_same_padding(height, self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(width, self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, None, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation: 1x1 expansion, depthwise
    convolution, linear 1x1 projection, residual when the shape is unchanged."""

    def __init__(self, in_channels, out_channels, kernel, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand = SameConv2d(in_channels, hidden, 1)
            self.bn0 = batch_norm(hidden)
        else:
            self.expand = None
        self.depthwise = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.bn1 = batch_norm(hidden)
        self.project = SameConv2d(hidden, out_channels, 1)
        self.bn2 = batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        hidden = x
        if self.expand is not None:
            hidden = F.relu6(self.bn0(self.expand(hidden)))
        hidden = F.relu6(self.bn1(self.depthwise(hidden)))
        out = self.bn2(self.project(hidden))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self.bn0 = batch_norm(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for repeat in range(repeats):
                first = repeat == 0
                blocks.append(
                    MBConvBlock(
                        in_channels if first else out_channels,
                        out_channels,
                        kernel,
                        stride if first else 1,
                        expand,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.head = SameConv2d(STAGES[-1][5], FEATURE_DIM, 1)
        self.bn1 = batch_norm(FEATURE_DIM)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn1(self.head(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_image(path):
    """A JPEG file -> [3, 224, 224] float tensor scaled as TensorFlow's EfficientNet-Lite
    expects, (x - 127) / 128, like onenet's preprocessing."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (INPUT_SIZE, INPUT_SIZE):
            image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return (pixels.permute(2, 0, 1).float() - 127.0) / 128.0


def features(args):
    with open(args.files, encoding="utf-8") as f:
        files = [line.strip() for line in f if line.strip()]
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    example = torch.zeros(args.batch_size, 3, INPUT_SIZE, INPUT_SIZE)
    layout = torch.contiguous_format
    # bf16 weights and activations: oneDNN runs them on AVX-512 BF16 / AMX where the CPU has it.
    dtype = torch.bfloat16 if args.mode == "frozen_bf16" else torch.float32
    model = model.to(dtype)
    example = example.to(dtype)
    if args.mode in ("channels_last", "frozen", "frozen_bf16"):
        # The layout oneDNN's CPU convolutions (depthwise ones above all) run fastest in.
        layout = torch.channels_last
        model = model.to(memory_format=layout)
        example = example.to(memory_format=layout)
    frozen = args.mode in ("frozen", "frozen_bf16")
    if frozen:
        # What a PyTorch user deploys: a traced TorchScript module, frozen (weights inlined,
        # batch norms folded into the convolutions, oneDNN fusions applied).
        with torch.no_grad():
            model = torch.jit.freeze(torch.jit.trace(model, example))
    # A first forward pass picks the convolution kernels (a frozen graph is also optimised on
    # its first runs); a real script pays it once too, and the Rust side's whole-process figure
    # includes the same cost.
    with torch.inference_mode():
        for _ in range(3 if frozen else 1):
            model(example)
    seconds = []
    for _ in range(args.reps):
        start = time.perf_counter()
        with torch.inference_mode():
            out = []
            for i in range(0, len(files), args.batch_size):
                batch = torch.stack([load_image(p) for p in files[i : i + args.batch_size]])
                batch = batch.to(dtype)
                if batch.shape[0] != args.batch_size and frozen:
                    # A traced graph is specialised to its batch size: pad the last batch.
                    pad = batch[-1:].expand(args.batch_size - batch.shape[0], -1, -1, -1)
                    rows = batch.shape[0]
                    batch = torch.cat([batch, pad])
                    out.append(model(batch.contiguous(memory_format=layout))[:rows])
                    continue
                out.append(model(batch.contiguous(memory_format=layout)))
            matrix = torch.cat(out)
        seconds.append(time.perf_counter() - start)
        if tuple(matrix.shape) != (len(files), FEATURE_DIM) or not bool(
            torch.isfinite(matrix).all()
        ):
            sys.exit(f"unexpected features: shape {tuple(matrix.shape)}")
    return {"images": len(files), "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# The caption network


class CaptionModel(nn.Module):
    def __init__(self, vocab, feature_dim, image_dim, embed_dim, hidden_dim):
        super().__init__()
        self.vocab = vocab
        self.image_encoder = nn.Linear(feature_dim, image_dim)
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.rnn = nn.GRU(image_dim + embed_dim, hidden_dim, batch_first=True)
        self.hidden = nn.Linear(hidden_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, vocab)

    def loss(self, features, tokens):
        """Mean cross-entropy of each next token over the real ones (padding id 0 ignored)."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        image = F.relu(self.image_encoder(features))
        words = self.embedding(inputs)
        image = image.unsqueeze(1).expand(-1, inputs.shape[1], -1)
        hidden, _ = self.rnn(torch.cat([image, words], 2))
        logits = self.output(self.hidden(hidden))
        return F.cross_entropy(
            logits.reshape(-1, self.vocab), targets.reshape(-1), ignore_index=0
        )


def row_lengths(args):
    """Words of each token row: from --lengths (one count a line) if given, else
    MIN_WORDS + i % 5."""
    rows = args.batch_size * args.batches
    if args.lengths:
        with open(args.lengths) as f:
            lengths = [int(line) for line in f if line.strip()]
        if len(lengths) != rows:
            sys.exit(f"{args.lengths}: {len(lengths)} lengths, expected {rows}")
        return lengths
    return [args.min_words + i % 5 for i in range(rows)]


def training_data(args):
    """Random features and token rows with the Rust side's layout: row i holds <start>, then
    its number of random words, then <end>, padded with 0 to the longest row; and each batch's
    padded length (its longest row)."""
    generator = torch.Generator().manual_seed(0)
    rows = args.batch_size * args.batches
    lengths = row_lengths(args)
    feats = torch.rand(rows, args.feature_dim, generator=generator)
    length = max(lengths) + 2
    tokens = torch.zeros(rows, length, dtype=torch.long)
    for i in range(rows):
        words = lengths[i]
        tokens[i, 0] = 1
        tokens[i, 1 : 1 + words] = torch.randint(4, args.vocab, (words,), generator=generator)
        tokens[i, 1 + words] = 2
    batch_lengths = [
        max(lengths[b * args.batch_size : (b + 1) * args.batch_size]) + 2
        for b in range(args.batches)
    ]
    return feats, tokens, batch_lengths


def train(args):
    torch.manual_seed(0)
    model = CaptionModel(
        args.vocab, args.feature_dim, args.image_dim, args.embed_dim, args.hidden_dim
    )
    feats, tokens, batch_lengths = training_data(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(n):
        b = n % args.batches
        rows = slice(b * args.batch_size, (b + 1) * args.batch_size)
        optimizer.zero_grad()
        # bf16: CPU autocast, PyTorch's mixed precision (weights and optimiser state stay f32).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model.loss(feats[rows], tokens[rows, : batch_lengths[b]])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return loss.item()

    for n in range(args.warmup):
        step(n)
    start = time.perf_counter()
    last = math.nan
    for n in range(args.steps):
        last = step(args.warmup + n)
    seconds = time.perf_counter() - start
    if not math.isfinite(last):
        sys.exit(f"training diverged: loss {last}")
    return {
        "steps": args.steps,
        "samples": args.steps * args.batch_size,
        "seconds": seconds,
        "last_loss": last,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="EfficientNet-Lite0 features of JPEG files")
    f.add_argument("--files", required=True, help="a file listing one image path a line")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--reps", type=int, default=3)
    f.add_argument(
        "--mode",
        choices=["eager", "channels_last", "frozen", "frozen_bf16"],
        default="eager",
        help="eager channels-first (PyTorch's default), eager channels-last, channels-last "
        "traced and frozen TorchScript, or the same in bfloat16",
    )
    t = sub.add_parser("train", help="training steps of the caption network")
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    t.add_argument("--vocab", type=int, default=50)
    t.add_argument("--feature-dim", type=int, default=1280)
    t.add_argument("--image-dim", type=int, default=300)
    t.add_argument("--embed-dim", type=int, default=300)
    t.add_argument("--hidden-dim", type=int, default=516)
    t.add_argument("--min-words", type=int, default=8)
    t.add_argument("--lengths", help="a file of words per token row, one count a line")
    t.add_argument(
        "--precision",
        choices=["f32", "bf16"],
        default="f32",
        help="f32, or bf16 through CPU autocast (mixed precision)",
    )
    for p in (f, t):
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    result = features(args) if args.command == "features" else train(args)
    result.update(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        import_seconds=IMPORT_SECONDS,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

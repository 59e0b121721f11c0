#!/usr/bin/env python3
"""Golden files for tests/pytorch_parity.rs: one DenseNet training step in PyTorch.

How to run (by hand; CI only runs the Rust test against the committed files):

    pip install torch            # CPU build is enough; numpy and safetensors are NOT needed
    python3 tests/pytorch/make_golden.py            # from the repository root
    python3 tests/pytorch/make_golden.py --out DIR  # elsewhere (default: tests/data)
    cargo test --test pytorch_parity

The model below mirrors the seed project's PyTorch DenseNet (efficient_densenet_pytorch,
models/densenet.py) with torchvision's parameter names, exactly as the Rust `densenet` crate builds
it:

- stem, small_inputs: conv0 3x3 stride 1 pad 1; otherwise conv0 7x7/2 pad 3, norm0, ReLU,
  max pool 3/2 pad 1;
- dense layer: cat -> norm1 -> ReLU -> conv1 1x1 (bn_size * k) -> norm2 -> ReLU -> conv2 3x3 pad 1
  (k) -> dropout;
- transition: norm -> ReLU -> conv 1x1 (floor(c * compression)) -> avg pool 2/2;
- head: norm5 -> ReLU -> adaptive avg pool 1x1 -> flatten -> classifier (Linear);
- BatchNorm eps 1e-5, momentum 0.1; every conv bias-free.

For each case it builds the model in float64, randomises every parameter AND every running
statistic (so that a swapped BN weight/bias or running mean/var shows up), and in train mode runs
one forward + backward of the mean cross-entropy. It writes to `<out>/<case>/`:

- `config.json`: the Rust `DenseNetConfig` (serde field names);
- `weights.safetensors`: the state_dict before the step (params, running stats,
  num_batches_tracked);
- `batch.safetensors`: `input` [n, c, h, w] (float64) and `labels` [n] (int64);
- `expected.safetensors`: `logits`, `loss` (0-d), `grad.<param>` for every parameter, and
  `<bn>.running_mean` / `<bn>.running_var` after the step;
- `expected_bf16.safetensors`: the same step in float32 under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (`--bf16-only` writes only these, from the
  committed weights and batch).

Dropout masks come from different RNGs in PyTorch and in Rust, so every case has drop_rate 0.
Files are written with a tiny safetensors writer below (little-endian, the format's spec), so the
script needs only torch.
"""

import argparse
import json
import math
import os
import struct
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# The model (the seed's densenet.py, naive mode, torchvision names: norm5 for norm_final).
# ----------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features, eps=1e-5, momentum=0.1)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate, eps=1e-5, momentum=0.1)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, *prev_features):
        concated = torch.cat(prev_features, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concated)))
        new_features = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features, eps=1e-5, momentum=0.1))
        self.add_module("relu", nn.ReLU())
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseBlock(nn.Module):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features):
        features = [init_features]
        for _, layer in self.named_children():
            features.append(layer(*features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth_rate=12, block_config=(16, 16, 16), compression=0.5, num_init_features=24,
                 bn_size=4, drop_rate=0.0, num_classes=10, small_inputs=True, in_channels=3):
        super().__init__()
        assert 0 < compression <= 1
        if small_inputs:
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)),
            ]))
        else:
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features, eps=1e-5, momentum=0.1)),
                ("relu0", nn.ReLU()),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)),
            ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                out = int(math.floor(num_features * compression))
                self.features.add_module("transition%d" % (i + 1), Transition(num_features, out))
                num_features = out
        self.features.add_module("norm5", nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


# ----------------------------------------------------------------------------------------------
# Cases: small, odd sizes, drop_rate 0 (see the module docstring).
# ----------------------------------------------------------------------------------------------

CASES = [
    # CIFAR stem, 9x9; 7 + 2*4 = 15 channels -> floor(7.5) = 7 after the transition.
    dict(name="small_inputs_9x9", seed=1, batch=3, hw=(9, 9), config=dict(
        growth_rate=4, block_config=[2, 3], compression=0.5, num_init_features=7, bn_size=4,
        drop_rate=0.0, num_classes=5, small_inputs=True, in_channels=3)),
    # ImageNet stem (7x7/2, norm0, ReLU, 3x3/2 max pool), 19x19 -> 10x10 -> 5x5 -> 2x2.
    dict(name="imagenet_stem_19x19", seed=2, batch=3, hw=(19, 19), config=dict(
        growth_rate=4, block_config=[2, 3], compression=0.5, num_init_features=8, bn_size=2,
        drop_rate=0.0, num_classes=6, small_inputs=False, in_channels=3)),
    # Three blocks, a non-square 11x9 image (catches h/w mix-ups), 2 input channels,
    # compression 0.7 (5 + 3 = 8 -> 5; 5 + 6 = 11 -> 7), single-layer first block.
    dict(name="three_blocks_11x9", seed=3, batch=3, hw=(11, 9), config=dict(
        growth_rate=3, block_config=[1, 2, 2], compression=0.7, num_init_features=5, bn_size=2,
        drop_rate=0.0, num_classes=4, small_inputs=True, in_channels=2)),
]


def randomise(model, gen):
    """Random parameters and running statistics, so every tensor's role matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv" in name:
                n = p.size(0) * p.size(2) * p.size(3)
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / n))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.startswith("classifier"):
                bound = 1.0 / math.sqrt(model.classifier.in_features)
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                raise AssertionError(name)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(7)


# ----------------------------------------------------------------------------------------------
# A minimal safetensors writer (header length u64 LE, JSON header, raw little-endian data).
# ----------------------------------------------------------------------------------------------

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = bytes(t.reshape(-1).view(torch.uint8).tolist()) if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # align the data start to 8 bytes
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------


def make_case(case, out_root):
    cfg = case["config"]
    gen = torch.Generator().manual_seed(case["seed"])
    model = DenseNet(**cfg)
    randomise(model, gen)
    model.train()

    before = {k: v.clone() for k, v in model.state_dict().items()}
    n, (h, w) = case["batch"], case["hw"]
    x = torch.randn(n, cfg["in_channels"], h, w, generator=gen)
    labels = torch.randint(0, cfg["num_classes"], (n,), generator=gen, dtype=torch.int64)

    logits = model(x)
    loss = F.cross_entropy(logits, labels)  # mean
    loss.backward()

    expected = {"logits": logits.detach(), "loss": loss.detach()}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        expected["grad." + name] = p.grad.detach()
    for name, t in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var"):
            expected[name] = t

    d = os.path.join(out_root, case["name"])
    os.makedirs(d, exist_ok=True)
    rust_cfg = dict(cfg)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(rust_cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(d, "weights.safetensors"), before)
    save_safetensors(os.path.join(d, "batch.safetensors"), {"input": x, "labels": labels})
    save_safetensors(os.path.join(d, "expected.safetensors"), expected)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{case['name']}: {nparams} parameters, loss {loss.item():.12f}, "
          f"{len(expected)} expected tensors -> {d}")


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "I64": torch.int64}


def load_safetensors(path):
    """The tensors of a safetensors file (F64, F32 and I64 only)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dtype = _TORCH_DTYPES[meta["dtype"]]
        t = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dtype)
        out[name] = t.reshape(meta["shape"]).clone()
    return out


def make_bf16_case(case, out_root):
    """`expected_bf16.safetensors` beside a case's files: the same step from the committed
    weights and batch, with the model in float32 under `torch.autocast("cpu", torch.bfloat16)`
    (bf16 convolutions and linear layer, bf16 activations, f32 cross-entropy, f32 master
    weights). Logits are stored as f32 (their bf16 values, exactly)."""
    d = os.path.join(out_root, case["name"])
    state = load_safetensors(os.path.join(d, "weights.safetensors"))
    batch = load_safetensors(os.path.join(d, "batch.safetensors"))
    model = DenseNet(**case["config"]).float()
    model.load_state_dict({k: (v if k.endswith("num_batches_tracked") else v.float())
                           for k, v in state.items()})
    model.train()
    x, labels = batch["input"].float(), batch["labels"].long()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    expected = {"logits": logits.detach().float(), "loss": loss.detach()}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        expected["grad." + name] = p.grad.detach()
    for name, t in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var"):
            expected[name] = t
    save_safetensors(os.path.join(d, "expected_bf16.safetensors"), expected)
    print(f"{case['name']} (bf16 autocast): loss {loss.item():.8f} -> {d}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "data")),
                    help="output folder (default: tests/data)")
    ap.add_argument("--bf16-only", action="store_true",
                    help="only (re)write expected_bf16.safetensors from the committed files")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for case in CASES:
        if not args.bf16_only:
            torch.set_default_dtype(torch.float64)
            make_case(case, args.out)
        torch.set_default_dtype(torch.float32)
        make_bf16_case(case, args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden files for tests/resnet_parity.rs: one training-mode forward + backward of one
torchvision ResNet block in PyTorch (float64).

How to run (by hand; CI only runs the Rust test against the committed files):

    pip install torch torchvision safetensors     # CPU builds are enough
    python3 tests/pytorch/make_golden_resnet.py   # from the repository root
    cargo test --test resnet_parity

Cases (one folder each under tests/data/):

- resnet_block: torchvision's BasicBlock(inplanes=4, planes=6, stride=2) with its projection
  shortcut (downsample = conv1x1 stride 2 + BatchNorm2d), input [3, 4, 7, 7];
- resnet_bottleneck: torchvision's Bottleneck(inplanes=6, planes=3, stride=2) (output 12
  channels, stride on the 3x3 conv) with its projection shortcut, input [2, 6, 7, 7].

Every parameter AND every running statistic is drawn at random (so that a swapped BN weight and
bias, or running mean and variance, shows up). The loss is `sum(out * r)` for a fixed random `r`
of the output's shape. Written per case:

- weights.safetensors: the block's state_dict before the step (torchvision names: conv1.weight,
  bn1.running_mean, downsample.0.weight, downsample.1.num_batches_tracked, ...);
- batch.safetensors: `input` and `r`;
- expected.safetensors: `output`, `loss` (0-d), `grad.input`, `grad.<param>` for every
  parameter, and `<bn>.running_mean`, `<bn>.running_var`, `<bn>.num_batches_tracked` after the
  step.
"""

import argparse
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1


def projection(inplanes, outplanes, stride):
    return nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))


def randomise(block, gen):
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
                m.num_batches_tracked.fill_(3)


def run_case(out_dir, name, block, input_shape, gen):
    block = block.double()
    randomise(block, gen)
    weights = {k: v.detach().clone().contiguous() for k, v in block.state_dict().items()}
    block.train()
    x = torch.randn(input_shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    out = block(x)
    r = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    loss = (out * r).sum()
    loss.backward()

    expected = {
        "output": out.detach().contiguous(),
        "loss": loss.detach().reshape(()),
        "grad.input": x.grad.detach().contiguous(),
    }
    for pname, p in block.named_parameters():
        expected[f"grad.{pname}"] = p.grad.detach().contiguous()
    for bname, buf in block.named_buffers():
        expected[bname] = buf.detach().clone().contiguous()

    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    save_file(weights, os.path.join(case_dir, "weights.safetensors"))
    save_file({"input": x.detach().contiguous(), "r": r}, os.path.join(case_dir, "batch.safetensors"))
    save_file(expected, os.path.join(case_dir, "expected.safetensors"))
    print(f"{name}: output {tuple(out.shape)}, loss {loss.item():.6f} -> {case_dir}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/data", help="folder of the case folders")
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(20240601)
    run_case(args.out, "resnet_block", BasicBlock(4, 6, 2, downsample=projection(4, 6, 2)), (3, 4, 7, 7), gen)
    run_case(args.out, "resnet_bottleneck", Bottleneck(6, 3, 2, downsample=projection(6, 12, 2)), (2, 6, 7, 7), gen)


if __name__ == "__main__":
    main()

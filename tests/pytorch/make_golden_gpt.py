#!/usr/bin/env python3
"""Golden files for tests/gpt_parity.rs: one nanoGPT decoder block in PyTorch, float64.

How to run (by hand; CI only runs the Rust test against the committed files):

    pip install torch safetensors    # CPU build is enough
    python3 tests/pytorch/make_golden_gpt.py          # from the repository root
    cargo test --test gpt_parity

The block is nanoGPT's (model.py): pre-norm, `x + attn(ln_1(x))` then `x + mlp(ln_2(x))`, causal
self-attention with a fused q/k/v projection `c_attn` and an output projection `c_proj`, an MLP
`c_fc` (4x) -> exact GELU (`nn.GELU()`) -> `c_proj`, biases on, dropout 0. Every parameter
(layer-norm scales and biases included) is random, so swapped tensors show up. It writes to
`tests/data/gpt_block/`:

- `weights.safetensors`: the block's state_dict (`ln_1.weight`, ..., `mlp.c_proj.bias`);
- `batch.safetensors`: `x` [B, T, C] and `r` [B, T, C];
- `expected.safetensors`: `out` = block(x), `loss` = sum(out * r) (0-d), `grad.<param>` for
  every parameter and `grad.x`;
- `expected_bf16.safetensors`: the same step from the committed weights and batch, the block in
  float32 under `torch.autocast("cpu", dtype=torch.bfloat16)` (`--bf16-only` writes only it).
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

B, T, C, N_HEAD = 2, 5, 8, 2


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        k = k.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        v = v.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def main():
    torch.manual_seed(1234)
    block = Block().double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    r = torch.randn(B, T, C, dtype=torch.float64)
    out = block(x)
    loss = (out * r).sum()
    loss.backward()
    out_dir = os.path.join(os.path.dirname(__file__), "..", "data", "gpt_block")
    os.makedirs(out_dir, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in block.state_dict().items()}
    save_file(weights, os.path.join(out_dir, "weights.safetensors"))
    save_file({"x": x.detach(), "r": r}, os.path.join(out_dir, "batch.safetensors"))
    expected = {"out": out.detach(), "loss": loss.detach(), "grad.x": x.grad}
    for name, p in block.named_parameters():
        expected["grad." + name] = p.grad
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    print("wrote", out_dir, "loss", loss.item())


def bf16():
    """`expected_bf16.safetensors` from the committed weights and batch, under CPU autocast."""
    out_dir = os.path.join(os.path.dirname(__file__), "..", "data", "gpt_block")
    block = Block().float()
    block.load_state_dict({k: v.float() for k, v in
                           load_file(os.path.join(out_dir, "weights.safetensors")).items()})
    batch = load_file(os.path.join(out_dir, "batch.safetensors"))
    x = batch["x"].float().requires_grad_(True)
    r = batch["r"].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        loss = (out * r).sum()
    loss.backward()
    expected = {"out": out.detach().float(), "loss": loss.detach().float(), "grad.x": x.grad}
    for name, p in block.named_parameters():
        expected["grad." + name] = p.grad
    save_file(expected, os.path.join(out_dir, "expected_bf16.safetensors"))
    print("wrote", out_dir, "bf16 loss", loss.item(), "out dtype", out.dtype)


if __name__ == "__main__":
    import sys
    if "--bf16-only" not in sys.argv:
        main()
    bf16()

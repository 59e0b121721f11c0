#!/usr/bin/env python3
"""PyTorch reference for the benchmark table: DenseNet-BC training steps, naive vs checkpointed.

The model is the seed project's DenseNet (efficient_densenet_pytorch, models/densenet.py), with
torchvision names, the same network as the Rust `densenet` crate (see tests/pytorch/make_golden.py
for the layer-by-layer description). Modes:

- `naive`: plain autograd; every concat / BN / ReLU output is kept;
- `efficient`: the seed's memory-efficient mode: `torch.utils.checkpoint` around each dense layer's
  bottleneck (concat -> norm1 -> ReLU -> conv1), recomputed in backward (the Rust `bottleneck` mode).

One step = forward, mean cross-entropy, backward, SGD (momentum 0.9, nesterov, wd 1e-4, the seed's
recipe) in fp32. Each (model, mode) case runs in its own fresh subprocess so memory numbers do not
leak between cases. Output: one JSON line per case on stdout:

    {"model", "mode", "device", "batch", "image", "threads", "iters", "params",
     "peak_rss_bytes" | "peak_cuda_bytes", "median_s", "min_s", "times_s"}

- CPU: `peak_rss_bytes` = growth of `resource.getrusage(RUSAGE_SELF).ru_maxrss` over the baseline
  taken after model, optimizer and batch creation (so it counts activations, gradients, optimizer
  state and allocator workspaces, like the Rust engine's peak minus its parameters);
- CUDA (`--device cuda`): `peak_cuda_bytes` = `torch.cuda.max_memory_allocated()` over the steps
  minus the memory allocated before the first step, and `peak_cuda_abs_bytes` =
  `max_memory_allocated()` itself (parameters, input, optimizer state, activations, gradients and
  the workspaces PyTorch allocates: the counterpart of the Rust engine's peak); TF32 is disabled
  (strict fp32), cuDNN benchmark off; time is measured with `torch.cuda.synchronize()` around
  each step. `--in-process` runs every case in this one process (peak statistics reset and the
  cache emptied between cases), which saves a CUDA start-up per case.

Models: `bc40`, `bc100`, `bc190` (k=40), `bc250` (k=24), any CIFAR DenseNet-BC as `bc-DEPTH-kGROWTH`
(e.g. `bc-190-k12`), `densenet121` (ImageNet stem, 1000 classes; use `--image 224`), and `resnet18`:
torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first convolution, no max pool, 10
classes), the network of the Rust `resnet` crate, trained with its recipe (SGD, momentum 0.9, weight
decay 5e-4, no Nesterov); naive mode only.

Examples:

    python3 scripts/torch_benchmark.py --quick                    # < 2 minutes on 2 CPU cores
    python3 scripts/torch_benchmark.py --threads 16 --batch 64 --iters 10
    python3 scripts/torch_benchmark.py --sweep --batch 16 --iters 3
    python3 scripts/torch_benchmark.py --device cuda --batch 64 --iters 20 --warmup 5
    python3 scripts/torch_benchmark.py --models bc100 bc190 --modes efficient
    python3 scripts/torch_benchmark.py --device cuda --in-process --models densenet121 --image 224
    python3 scripts/torch_benchmark.py --models resnet18 --modes naive --precision bf16
"""

import argparse
import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

# DenseNet-BC for CIFAR: depth 6n+4, three blocks of n layers, 2k initial features.
MODELS = {
    "bc40": dict(depth=40, growth_rate=12),
    "bc100": dict(depth=100, growth_rate=12),
    "bc190": dict(depth=190, growth_rate=40),
    "bc250": dict(depth=250, growth_rate=24),
}
SWEEP = ["bc40", "bc100", "bc190", "bc250"]
MODES = ["naive", "efficient"]
# ImageNet DenseNets (torchvision's): growth rate, layers per block, stem width.
IMAGENET = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
}


def model_spec(name):
    """The spec of a model name, or None: MODELS, IMAGENET, `bc-DEPTH-kGROWTH` or `resnet18`."""
    if name == "resnet18":
        return dict(resnet=True)
    if name in MODELS:
        return dict(MODELS[name])
    if name in IMAGENET:
        return dict(IMAGENET[name], imagenet=True)
    m = re.fullmatch(r"bc-(\d+)-k(\d+)", name)
    if m and (int(m.group(1)) - 4) % 6 == 0 and int(m.group(1)) >= 10:
        return dict(depth=int(m.group(1)), growth_rate=int(m.group(2)))
    return None


def num_classes(name):
    return 1000 if model_spec(name).get("imagenet") else 10


def build_model(name):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.utils.checkpoint as cp

    class DenseLayer(nn.Module):
        def __init__(self, cin, k, bn_size, efficient):
            super().__init__()
            self.norm1 = nn.BatchNorm2d(cin)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(cin, bn_size * k, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * k)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * k, k, kernel_size=3, stride=1, padding=1, bias=False)
            self.efficient = efficient

        def bottleneck(self, *prev):
            return self.conv1(self.relu1(self.norm1(torch.cat(prev, 1))))

        def forward(self, *prev):
            if self.efficient and any(p.requires_grad for p in prev):
                b = cp.checkpoint(self.bottleneck, *prev, use_reentrant=False)
            else:
                b = self.bottleneck(*prev)
            return self.conv2(self.relu2(self.norm2(b)))

    class DenseBlock(nn.Module):
        def __init__(self, n, cin, k, bn_size, efficient):
            super().__init__()
            for i in range(n):
                self.add_module("denselayer%d" % (i + 1), DenseLayer(cin + i * k, k, bn_size, efficient))

        def forward(self, x):
            feats = [x]
            for layer in self.children():
                feats.append(layer(*feats))
            return torch.cat(feats, 1)

    class Transition(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__()
            self.add_module("norm", nn.BatchNorm2d(cin))
            self.add_module("relu", nn.ReLU(inplace=True))
            self.add_module("conv", nn.Conv2d(cin, cout, kernel_size=1, stride=1, bias=False))
            self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))

    class DenseNet(nn.Module):
        def __init__(self, growth_rate, block_config, num_init_features, small_inputs, num_classes,
                     efficient, compression=0.5, bn_size=4):
            super().__init__()
            c = num_init_features
            if small_inputs:
                self.features = nn.Sequential(OrderedDict([
                    ("conv0", nn.Conv2d(3, c, kernel_size=3, stride=1, padding=1, bias=False)),
                ]))
            else:
                self.features = nn.Sequential(OrderedDict([
                    ("conv0", nn.Conv2d(3, c, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(c)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)),
                ]))
            last = len(block_config) - 1
            for i, n in enumerate(block_config):
                self.features.add_module("denseblock%d" % (i + 1), DenseBlock(n, c, growth_rate, bn_size, efficient))
                c += n * growth_rate
                if i != last:
                    out = int(math.floor(c * compression))
                    self.features.add_module("transition%d" % (i + 1), Transition(c, out))
                    c = out
            self.features.add_module("norm5", nn.BatchNorm2d(c))
            self.classifier = nn.Linear(c, num_classes)
            for pname, p in self.named_parameters():
                if "conv" in pname and "weight" in pname:
                    fan = p.size(0) * p.size(2) * p.size(3)
                    p.data.normal_().mul_(math.sqrt(2.0 / fan))
                elif "norm" in pname and "weight" in pname:
                    p.data.fill_(1)
                elif "norm" in pname and "bias" in pname:
                    p.data.fill_(0)
                elif "classifier" in pname and "bias" in pname:
                    p.data.fill_(0)

        def forward(self, x):
            out = F.relu(self.features(x), inplace=True)
            out = F.adaptive_avg_pool2d(out, (1, 1))
            return self.classifier(torch.flatten(out, 1))

    spec = model_spec(name)
    if spec.get("resnet"):
        return resnet18_cifar
    k = spec["growth_rate"]
    if spec.get("imagenet"):
        return lambda efficient: DenseNet(k, spec["block_config"], spec["num_init_features"], False, 1000,
                                          efficient)
    n = (spec["depth"] - 4) // 6
    return lambda efficient: DenseNet(k, (n, n, n), 2 * k, True, 10, efficient)


def resnet18_cifar(efficient):
    """torchvision's ResNet-18 with the CIFAR stem (as the Rust `resnet` crate builds it)."""
    import torch.nn as nn
    import torchvision

    if efficient:
        raise ValueError("resnet18 runs in naive mode only")
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def run_case(args):
    """Runs one (model, mode) case in this process and prints its JSON line."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
    model = build_model(args.model)(args.mode == "efficient").to(dev).train()
    if model_spec(args.model).get("resnet"):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.image, args.image, device=dev)
    y = torch.randint(0, num_classes(args.model), (args.batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        if args.precision == "bf16":
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    times = []
    for i in range(args.warmup + args.iters):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    assert math.isfinite(loss.item()), "loss is not finite"
    rec = dict(
        model=args.model, mode=args.mode, precision=args.precision, device=args.device,
        batch=args.batch, image=args.image,
        threads=args.threads, iters=args.iters, params=sum(p.numel() for p in model.parameters()),
    )
    if dev.type == "cuda":
        rec["peak_cuda_bytes"] = torch.cuda.max_memory_allocated() - base
        rec["peak_cuda_abs_bytes"] = torch.cuda.max_memory_allocated()
        rec["gpu"] = torch.cuda.get_device_name(dev)
    else:
        rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    rec.update(median_s=statistics.median(times), min_s=min(times), times_s=[round(t, 6) for t in times],
               torch=torch.__version__)
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser(description="PyTorch DenseNet-BC benchmark: naive vs checkpointed bottleneck",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=None,
                    help="models to run: %s, bc-DEPTH-kGROWTH, resnet18 or %s (default: bc100; with --sweep: "
                         "bc40 bc100 bc190 bc250)" % (" ".join(sorted(MODELS)), " ".join(sorted(IMAGENET))))
    ap.add_argument("--in-process", action="store_true",
                    help="run every case in this process (GPU: peak statistics reset between cases) "
                         "instead of one subprocess per case")
    ap.add_argument("--sweep", action="store_true", help="depth sweep: BC-40/100/190/250")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: forward and loss under torch.autocast (bfloat16)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=32, help="square image side")
    ap.add_argument("--iters", type=int, default=5, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--quick", action="store_true",
                    help="small run (< 2 min on 2 cores): BC-40 and BC-100, batch 8, 1 warmup + 2 iters "
                         "(explicit --models/--batch/--iters still win)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case subprocess")
    ap.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # internal: run one case
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.case:
        run_case(args)
        return
    if args.threads < 1 or args.batch < 1 or args.iters < 1 or args.warmup < 0 or args.image < 4:
        ap.error("--threads, --batch and --iters must be >= 1, --warmup >= 0, --image >= 4")
    given = set(a.split("=")[0] for a in argv)
    if args.quick:
        if "--models" not in given and not args.sweep:
            args.models = ["bc40", "bc100"]
        if "--batch" not in given:
            args.batch = 8
        if "--iters" not in given:
            args.iters = 2
        if "--warmup" not in given:
            args.warmup = 1
    models = args.models or (SWEEP if args.sweep else ["bc100"])
    unknown = [m for m in models if model_spec(m) is None]
    if unknown:
        ap.error("unknown model(s) %s: use %s, bc-DEPTH-kGROWTH or %s"
                 % (" ".join(unknown), " ".join(sorted(MODELS)), " ".join(sorted(IMAGENET))))
    failed = 0
    if args.in_process:
        for model in models:
            for mode in args.modes:
                case = argparse.Namespace(**vars(args))
                case.model, case.mode = model, mode
                try:
                    run_case(case)
                except Exception as e:  # one failing case (e.g. out of memory) does not stop the rest
                    print(json.dumps(dict(model=model, mode=mode, device=args.device, batch=args.batch,
                                          image=args.image, error="%s: %s" % (type(e).__name__, e))), flush=True)
                    failed += 1
                gc.collect()
                if args.device.startswith("cuda"):
                    import torch
                    torch.cuda.empty_cache()
        sys.exit(1 if failed else 0)
    for model in models:
        for mode in args.modes:
            cmd = [sys.executable, os.path.abspath(__file__), "--case", "--model", model, "--mode", mode,
                   "--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch),
                   "--image", str(args.image), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--precision", args.precision]
            try:
                r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(json.dumps(dict(model=model, mode=mode, device=args.device, batch=args.batch,
                                      image=args.image, error="timeout after %gs" % args.timeout)), flush=True)
                failed += 1
                continue
            lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
            if r.returncode != 0 or not lines:
                err = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
                print(json.dumps(dict(model=model, mode=mode, device=args.device, batch=args.batch,
                                      image=args.image, error=err)), flush=True)
                failed += 1
                continue
            print(lines[-1], flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One comparison table of the GPU benchmark: this project vs PyTorch, peak GB and ms per step.

    python3 scripts/gpu_compare.py OURS.jsonl TORCH.jsonl [TORCH2.jsonl ...]

OURS.jsonl: `benchmark --device cuda --json` lines; TORCH*.jsonl: `torch_benchmark.py --device cuda`
lines. Cases are matched by model, batch and image size; our `naive` mode is compared with
PyTorch's naive step, every memory-efficient mode with PyTorch's torch.utils.checkpoint step.

Peaks: ours is the engine's exact accounting (parameters, optimizer state, input, activations,
gradients, cuDNN workspaces), beside the GPU's used bytes from cuMemGetInfo; PyTorch's is
torch.cuda.max_memory_allocated() (the same things, through its caching allocator).
"""
import json
import re
import sys


def load(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError as e:
        print("gpu_compare: %s" % e, file=sys.stderr)
    return out


TORCH_NAMES = {"bc40": "bc-40-k12", "bc100": "bc-100-k12", "bc190": "bc-190-k40", "bc250": "bc-250-k24"}


def canon(model):
    m = re.fullmatch(r"densenet_bc_(\d+)_k(\d+)", model)
    if m:
        return "bc-%s-k%s" % m.groups()
    return TORCH_NAMES.get(model, model)


def gb(b):
    return "%.3f" % (b / 1e9) if isinstance(b, (int, float)) else "-"


def ms(s):
    return "%.1f" % (s * 1e3) if isinstance(s, (int, float)) else "-"


def ratio(a, b):
    return "%.2f" % (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ours = [r for r in load(sys.argv[1]) if "model" in r and "mode" in r]
    torch = [r for p in sys.argv[2:] for r in load(p) if "model" in r and "mode" in r]
    tmap = {}
    for t in torch:
        tmap[(canon(t["model"]), t.get("batch"), t.get("image"), t["mode"])] = t
    gpu = next((t.get("gpu") for t in torch if t.get("gpu")), None)
    head = ("case", "mode", "ours GB", "GPU used", "ours ms", "torch", "torch GB", "torch ms", "GB o/t", "ms o/t")
    fmt = "%-26s %-12s %8s %9s %8s  %-10s %8s %8s %7s %7s"
    print("GPU benchmark: this project vs PyTorch%s (fp32, TF32 off, one SGD step)" % (" on " + gpu if gpu else ""))
    print(fmt % head)
    print("-" * 112)
    errors = []
    seen = set()
    for o in ours:
        if "error" in o:
            errors.append(("ours", o))
            continue
        key = (canon(o["model"]), o.get("batch"), o.get("image"))
        case = "%s b%s %spx" % key
        tmode = "naive" if o["mode"] == "naive" else "efficient"
        t = tmap.get(key + (tmode,))
        seen.add(key + (tmode,))
        tpeak = t.get("peak_cuda_abs_bytes", t.get("peak_cuda_bytes")) if t and "error" not in t else None
        tmed = t.get("median_s") if t and "error" not in t else None
        print(fmt % (case, o["mode"], gb(o.get("peak_bytes")), gb(o.get("device_used_bytes")), ms(o.get("median_s")),
                     ("torch " + ("ckpt" if tmode == "efficient" else "naive")) if t else "-",
                     gb(tpeak), ms(tmed), ratio(o.get("peak_bytes"), tpeak), ratio(o.get("median_s"), tmed)))
    for k, t in tmap.items():
        if "error" in t:
            errors.append(("torch", t))
        elif k not in seen:
            case = "%s b%s %spx" % k[:3]
            print(fmt % (case, "-", "-", "-", "-", "torch " + ("ckpt" if t["mode"] == "efficient" else "naive"),
                         gb(t.get("peak_cuda_abs_bytes", t.get("peak_cuda_bytes"))), ms(t.get("median_s")), "-", "-"))
    for who, e in errors:
        print("%s %s %s failed: %s" % (who, e.get("model"), e.get("mode"), e.get("error")))
    print("ours GB: the engine's peak (parameters, optimizer state, input, activations, gradients, cuDNN")
    print("workspaces); GPU used: cuMemGetInfo total - free after the steps (context, libraries, pool cache);")
    print("torch GB: torch.cuda.max_memory_allocated(); ckpt: torch.utils.checkpoint per dense layer bottleneck.")


if __name__ == "__main__":
    main()

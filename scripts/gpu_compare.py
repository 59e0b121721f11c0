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
    head = ("case", "mode", "ours GB", "GPU used", "ours ms", "torch", "torch GB", "torch ms", "GB o/t", "ms o/t",
            "launches", "syncs")
    fmt = "%-26s %-12s %8s %9s %8s  %-10s %8s %8s %7s %7s %8s %5s"
    print("GPU benchmark: this project vs PyTorch%s (fp32, TF32 off, one SGD step)" % (" on " + gpu if gpu else ""))
    print(fmt % head)
    print("-" * 127)
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
                     gb(tpeak), ms(tmed), ratio(o.get("peak_bytes"), tpeak), ratio(o.get("median_s"), tmed),
                     o.get("launches", "-"), o.get("syncs", "-")))
    for k, t in tmap.items():
        if "error" in t:
            errors.append(("torch", t))
        elif k not in seen:
            case = "%s b%s %spx" % k[:3]
            print(fmt % (case, "-", "-", "-", "-", "torch " + ("ckpt" if t["mode"] == "efficient" else "naive"),
                         gb(t.get("peak_cuda_abs_bytes", t.get("peak_cuda_bytes"))), ms(t.get("median_s")), "-", "-",
                         "-", "-"))
    for who, e in errors:
        print("%s %s %s failed: %s" % (who, e.get("model"), e.get("mode"), e.get("error")))
    print("ours GB: the engine's peak (parameters, optimizer state, input, activations, gradients, cuDNN")
    print("workspaces); GPU used: cuMemGetInfo total - free after the steps (context, libraries, pool cache);")
    print("torch GB: torch.cuda.max_memory_allocated(); ckpt: torch.utils.checkpoint per dense layer bottleneck.")
    print("launches, syncs: ours per training step (engine kernel calls; reads back to the host).")
    print()
    for line in verdicts(ours):
        print(line)


# The targets, for DenseNet-BC-100 (k=12), batch 64, 32px, fp32.
TARGET_GB, TARGET_MS, TARGET_RATIO = 0.30, 26.0, 1.10


def verdicts(ours):
    """One line per target: PASS, FAIL or NO DATA, with the figure that decides it."""
    bc100 = [o for o in ours if "error" not in o and canon(o["model"]) == "bc-100-k12"
             and o.get("batch") == 64 and o.get("image") == 32
             and isinstance(o.get("peak_bytes"), (int, float)) and isinstance(o.get("median_s"), (int, float))]
    naive = next((o for o in bc100 if o["mode"] == "naive"), None)
    eff = [o for o in bc100 if o["mode"] != "naive"]
    out = []
    if not eff:
        return ["verdict: NO DATA for every target (no DenseNet-BC-100 batch-64 efficient row)"]
    small = min(eff, key=lambda o: o["peak_bytes"])
    ok = small["peak_bytes"] / 1e9 <= TARGET_GB
    out.append("verdict efficient peak <= %.2f GB: %s (smallest: %s %.3f GB)"
               % (TARGET_GB, "PASS" if ok else "FAIL", small["mode"], small["peak_bytes"] / 1e9))
    fitting = [o for o in eff if o["peak_bytes"] / 1e9 <= TARGET_GB] or [small]
    fast = min(fitting, key=lambda o: o["median_s"])
    ok = fast["median_s"] * 1e3 <= TARGET_MS
    out.append("verdict efficient step <= %.0f ms (within the memory target): %s (%s %.1f ms)"
               % (TARGET_MS, "PASS" if ok else "FAIL", fast["mode"], fast["median_s"] * 1e3))
    if naive:
        r = fast["median_s"] / naive["median_s"]
        out.append("verdict efficient/naive time <= %.2f: %s (%s %.2f; naive %.1f ms, %.3f GB)"
                   % (TARGET_RATIO, "PASS" if r <= TARGET_RATIO else "FAIL", fast["mode"], r,
                      naive["median_s"] * 1e3, naive["peak_bytes"] / 1e9))
    else:
        out.append("verdict efficient/naive time <= %.2f: NO DATA (no naive row)" % TARGET_RATIO)
    return out


if __name__ == "__main__":
    main()

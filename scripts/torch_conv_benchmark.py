#!/usr/bin/env python3
"""PyTorch's side of the per-op convolution benchmark (examples/conv_benchmark.rs).

Reads the JSON rows the Rust example printed (`conv_benchmark --json`), times the same shapes
and passes with PyTorch on the CPU, and prints one JSON row per (shape, pass) with the same keys,
plus a row for a square sgemm (`torch.mm`) measured in the same run:

- forward: `torch.nn.functional.conv2d(x, w, stride, padding)`;
- input_grad / weight_grad: `torch.ops.aten.convolution_backward` with an output mask asking for
  that gradient alone (what autograd calls for a convolution);

each the median of `--iters` calls after one warm-up, in fp32 under `torch.no_grad()`, on
`--threads` intra-op threads.

    python3 scripts/torch_conv_benchmark.py --shapes ours.jsonl --threads 2
"""

import argparse
import json
import statistics
import sys
import time

import torch


def median_seconds(fn, iters):
    """Median wall seconds of `fn()` over `iters` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(max(iters, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pass_fn(row, pass_name):
    """A closure running one pass of the row's convolution."""
    n, cin, cout, h, k = row["n"], row["cin"], row["cout"], row["h"], row["k"]
    stride, pad = row["stride"], row["pad"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, h, generator=g)
    w = torch.randn(cout, cin, k, k, generator=g)
    if pass_name == "forward":
        return lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    ho = (h + 2 * pad - k) // stride + 1
    gout = torch.randn(n, cout, ho, ho, generator=g)
    mask = [pass_name == "input_grad", pass_name == "weight_grad", False]
    return lambda: torch.ops.aten.convolution_backward(
        gout, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", required=True, help="JSON rows of conv_benchmark --json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in open(args.shapes) if line.strip().startswith("{")]
    with torch.no_grad():
        for row in rows:
            if row["name"] == "sgemm":
                m = row["m"]
                a, b = torch.randn(m, m), torch.randn(m, m)
                s = median_seconds(lambda: torch.mm(a, b), args.iters)
                out = dict(name="sgemm", m=m, median_s=s, gflops=2 * m**3 / s / 1e9)
                sgemm = out["gflops"]
            else:
                s = median_seconds(pass_fn(row, row["pass"]), args.iters)
                ho = (row["h"] + 2 * row["pad"] - row["k"]) // row["stride"] + 1
                flops = 2 * row["n"] * row["cout"] * row["cin"] * row["k"] ** 2 * ho * ho
                out = {key: row[key] for key in ("name", "n", "cin", "cout", "h", "k")}
                out.update(stride=row["stride"], pad=row["pad"], count=row["count"])
                out.update(pass_=row["pass"], median_s=s, gflops=flops / s / 1e9)
                out["frac_sgemm"] = out["gflops"] / sgemm
                out["pass"] = out.pop("pass_")
            out["threads"] = args.threads
            out["torch"] = torch.__version__
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())

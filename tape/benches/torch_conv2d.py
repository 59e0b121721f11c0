"""PyTorch CPU reference for benches/conv2d.rs: conv2d forward + backward (grads of input and
weight) on DenseNet-BC-100 shapes at batch 64, f32, 32x32, with 2 threads.

FLOPs are counted as 3 * 2*N*Cout*Cin*kh*kw*Hout*Wout, as in the Rust bench.
Run: python3 tape/benches/torch_conv2d.py
"""

import time

import torch

torch.set_num_threads(2)
BATCH, HW = 64, 32
SHAPES = [("1x1_216_to_48", 216, 48, 1, 0), ("3x3_48_to_12_pad1", 48, 12, 3, 1)]


def main():
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}")
    for name, cin, cout, k, pad in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(BATCH, cin, HW, HW, generator=g, requires_grad=True)
        w = torch.randn(cout, cin, k, k, generator=g, requires_grad=True)
        gy = torch.randn(BATCH, cout, HW, HW, generator=g)
        flops = 3 * 2 * BATCH * cout * cin * k * k * HW * HW

        def step():
            y = torch.nn.functional.conv2d(x, w, None, 1, pad)
            return torch.autograd.grad(y, (x, w), gy)

        for _ in range(3):
            step()
        times = []
        for _ in range(10):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        times.sort()
        med = times[len(times) // 2]
        print(f"{name}: {med * 1e3:.1f} ms per fwd+bwd (median of 10), "
              f"{flops / med / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()

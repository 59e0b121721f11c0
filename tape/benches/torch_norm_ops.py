"""PyTorch CPU reference for benches/norm_ops.rs: the memory-bound ops of a DenseNet step,
forward + backward, at batch 64, f32, 2 threads, on DenseNet-BC-100's largest block-1 layer input
(204 channels at 32x32; 24 + 15 x 12 channels for the concat -> batch norm -> ReLU).
Run: python3 tape/benches/torch_norm_ops.py
"""

import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
B, C, HW = 64, 204, 32


def median_ms(step, reps=10):
    for _ in range(2):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, HW, HW, generator=g, requires_grad=True)
    parts = [torch.randn(B, 24, HW, HW, generator=g, requires_grad=True)]
    parts += [torch.randn(B, 12, HW, HW, generator=g, requires_grad=True) for _ in range(15)]
    w = torch.randn(C, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    rm, rv = torch.zeros(C), torch.ones(C)
    gy = torch.randn(B, C, HW, HW, generator=g)
    gp = torch.randn(B, C, HW // 2, HW // 2, generator=g)

    def bn(inp):
        return F.batch_norm(inp, rm, rv, w, b, training=True)

    cases = {
        "batch_norm_204x32x32": (lambda: bn(x), gy, x),
        "relu_204x32x32": (lambda: F.relu(x), gy, x),
        "batch_norm_relu_204x32x32": (lambda: F.relu(bn(x)), gy, x),
        "fused_concat_bn_relu_16_parts (cat+bn+relu)": (lambda: F.relu(bn(torch.cat(parts, 1))), gy, parts[0]),
        "avg_pool_2x2_204x32x32": (lambda: F.avg_pool2d(x, 2, 2), gp, x),
    }
    for name, (fwd, grad, wrt) in cases.items():
        def step():
            y = fwd()
            return torch.autograd.grad(y, (wrt,), grad)
        print(f"{name}: {median_ms(step):.1f} ms per fwd+bwd (median of 10)")


if __name__ == "__main__":
    main()

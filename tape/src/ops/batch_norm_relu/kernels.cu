// CUDA kernels of the fused batch norm + ReLU (the masked gradient of one part) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// The ReLU backward of one part of the fused concat -> batch norm -> ReLU, written packed: with
// at = o * total + offset + j, out[o * width + j] = y[at] > 0 ? g[at] : 0 (o < outer, j < width).
template <typename T> __device__ void relu_mask_part_impl(T* out, const T* g, const T* y, u64 outer, u64 width,
                                                          u64 total, u64 offset) {
    GRID_STRIDE(i, outer * width) {
        u64 o = i / width, j = i - o * width;
        u64 at = o * total + offset + j;
        out[i] = ld(y[at]) > 0.0f ? g[at] : st<T>(0.0f);
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void relu_mask_part_##S(T* out, const T* g, const T* y, u64 outer, u64 width,     \
                                              u64 total, u64 offset) {                                  \
    relu_mask_part_impl<T>(out, g, y, outer, width, total, offset); }

FOR_EACH_DTYPE(KERNELS)

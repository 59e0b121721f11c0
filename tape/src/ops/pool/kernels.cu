// CUDA kernels of global average pooling (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Global average pooling: one thread per plane, summed in T in order (like the CPU kernel).
template <typename T> __device__ void gap_fwd_impl(const T* x, T* out, u64 planes, u64 hw) {
    GRID_STRIDE(p, planes) {
        const T* src = x + p * hw;
        T s = (T)-0.0;
        for (u64 k = 0; k < hw; ++k) s += src[k];
        out[p] = s / (T)hw;
    }
}

template <typename T> __device__ void gap_bwd_impl(const T* g, T* gx, u64 planes, u64 hw) {
    GRID_STRIDE(i, planes * hw) gx[i] = g[i / hw] / (T)hw;
}

#define KERNELS(T, S) \
extern "C" __global__ void gap_fwd_##S(const T* x, T* out, u64 planes, u64 hw) {                        \
    gap_fwd_impl<T>(x, out, planes, hw); }                                                              \
extern "C" __global__ void gap_bwd_##S(const T* g, T* gx, u64 planes, u64 hw) {                         \
    gap_bwd_impl<T>(g, gx, planes, hw); }

KERNELS(float, f32)
KERNELS(double, f64)

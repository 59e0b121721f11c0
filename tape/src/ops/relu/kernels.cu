// CUDA kernels of ReLU (NVRTC; after tape/src/device/cuda/prelude.cuh).

template <typename T> __device__ void relu_fwd_impl(T* y, const T* x, u64 n) {
    GRID_STRIDE(i, n) { T v = x[i]; y[i] = ld(v) <= 0.0f ? st<T>(0.0f) : v; }  // NaN passes, as in PyTorch
}

template <typename T> __device__ void relu_bwd_impl(T* gx, const T* g, const T* y, u64 n) {
    GRID_STRIDE(i, n) gx[i] = ld(y[i]) > 0.0f ? g[i] : st<T>(0.0f);
}

#define KERNELS(T, S) \
extern "C" __global__ void relu_fwd_##S(T* y, const T* x, u64 n) { relu_fwd_impl<T>(y, x, n); }         \
extern "C" __global__ void relu_bwd_##S(T* gx, const T* g, const T* y, u64 n) {                         \
    relu_bwd_impl<T>(gx, g, y, n); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of ReLU (NVRTC; after tape/src/device/cuda/prelude.cuh).

template <typename T> __device__ void relu_fwd_impl(T* y, const T* x, u64 n) {
    GRID_STRIDE(i, n) { T v = x[i]; y[i] = v <= (T)0 ? (T)0 : v; }  // NaN passes, as in PyTorch
}

template <typename T> __device__ void relu_bwd_impl(T* gx, const T* g, const T* y, u64 n) {
    GRID_STRIDE(i, n) gx[i] = y[i] > (T)0 ? g[i] : (T)0;
}

#define KERNELS(T, S) \
extern "C" __global__ void relu_fwd_##S(T* y, const T* x, u64 n) { relu_fwd_impl<T>(y, x, n); }         \
extern "C" __global__ void relu_bwd_##S(T* gx, const T* g, const T* y, u64 n) {                         \
    relu_bwd_impl<T>(gx, g, y, n); }

KERNELS(float, f32)
KERNELS(double, f64)

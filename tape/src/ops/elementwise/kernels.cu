// CUDA kernels of the element-wise ops (NVRTC; after tape/src/device/cuda/prelude.cuh).

template <typename T> __device__ void add_impl(T* out, const T* a, const T* b, u64 n) {
    GRID_STRIDE(i, n) out[i] = st<T>(ld(a[i]) + ld(b[i]));
}

template <typename T> __device__ void mul_impl(T* out, const T* a, const T* b, u64 n) {
    GRID_STRIDE(i, n) out[i] = st<T>(ld(a[i]) * ld(b[i]));
}

template <typename T> __device__ void scale_impl(T* out, const T* x, T s, u64 n) {
    GRID_STRIDE(i, n) out[i] = st<T>(ld(x[i]) * ld(s));
}

#define KERNELS(T, S) \
extern "C" __global__ void add_##S(T* out, const T* a, const T* b, u64 n) { add_impl<T>(out, a, b, n); } \
extern "C" __global__ void mul_##S(T* out, const T* a, const T* b, u64 n) { mul_impl<T>(out, a, b, n); } \
extern "C" __global__ void scale_##S(T* out, const T* x, T s, u64 n) { scale_impl<T>(out, x, s, n); }

FOR_EACH_DTYPE(KERNELS)

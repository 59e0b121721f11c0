// CUDA kernels of the tensor primitives (fills, gradient accumulation) (NVRTC; after tape/src/device/cuda/prelude.cuh).

template <typename T> __device__ void fill_impl(T* out, T v, u64 n) {
    GRID_STRIDE(i, n) out[i] = v;
}

template <typename T> __device__ void add_assign_impl(T* acc, const T* g, u64 n) {
    GRID_STRIDE(i, n) acc[i] = st<T>(ld(acc[i]) + ld(g[i]));
}

#define KERNELS(T, S) \
extern "C" __global__ void fill_##S(T* out, T v, u64 n) { fill_impl<T>(out, v, n); }                    \
extern "C" __global__ void add_assign_##S(T* acc, const T* g, u64 n) { add_assign_impl<T>(acc, g, n); }

FOR_EACH_DTYPE(KERNELS)

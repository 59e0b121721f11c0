// CUDA kernels of the linear layer (bias rows, bias gradient) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// out[r * o + j] = b[j] for n rows (a linear layer's bias, before the GEMM accumulates).
template <typename T> __device__ void bias_rows_impl(T* out, const T* b, u64 n, u64 o) {
    GRID_STRIDE(i, n * o) out[i] = b[i % o];
}

// gb[j] = sum over the n rows of g[r * o + j], in row order (like the CPU kernel).
template <typename T> __device__ void col_sum_impl(const T* g, T* gb, u64 n, u64 o) {
    GRID_STRIDE(j, o) {
        typename Arith<T>::type acc = 0;
        for (u64 r = 0; r < n; ++r) acc += ld(g[r * o + j]);
        gb[j] = st<T>(acc);
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void bias_rows_##S(T* out, const T* b, u64 n, u64 o) {                            \
    bias_rows_impl<T>(out, b, n, o); }                                                                  \
extern "C" __global__ void col_sum_##S(const T* g, T* gb, u64 n, u64 o) { col_sum_impl<T>(g, gb, n, o); }

FOR_EACH_DTYPE(KERNELS)

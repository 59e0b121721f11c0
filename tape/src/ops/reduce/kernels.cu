// CUDA kernels of the reductions (NVRTC; after tape/src/device/cuda/prelude.cuh).

// out[i] = st<T>((double)s[0] * mul / div): a gradient that is a scalar times a constant.
template <typename T> __device__ void fill_scalar_impl(T* out, const T* s, double mul, double div, u64 n) {
    T v = st<T>((double)ld(s[0]) * mul / div);
    GRID_STRIDE(i, n) out[i] = v;
}

// First stage of a full sum: partials[blockIdx.x] = sum of this block's grid-stride share.
template <typename T> __device__ void sum_partial_impl(const T* x, u64 n, double* partials) {
    __shared__ double sh[RBLOCK];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)ld(x[i]);
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Second stage (one block): out[0] = st<T>(sum(partials) * mul / div).
template <typename T> __device__ void sum_final_impl(const double* partials, u64 count, double mul, double div, T* out) {
    __shared__ double sh[RBLOCK];
    double acc = 0.0;
    for (u64 i = threadIdx.x; i < count; i += RBLOCK) acc += partials[i];
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = st<T>(s * mul / div);
}

#define KERNELS(T, S) \
extern "C" __global__ void fill_scalar_##S(T* out, const T* s, double mul, double div, u64 n) {          \
    fill_scalar_impl<T>(out, s, mul, div, n); }                                                         \
extern "C" __global__ void sum_partial_##S(const T* x, u64 n, double* partials) {                       \
    sum_partial_impl<T>(x, n, partials); }                                                              \
extern "C" __global__ void sum_final_##S(const double* partials, u64 count, double mul, double div,     \
                                         T* out) { sum_final_impl<T>(partials, count, mul, div, out); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of GELU (NVRTC; after tape/src/device/cuda/prelude.cuh).

// GELU in double (the CPU's formulas): exact x Phi(x) with erf, or the tanh form (th != 0).
__device__ __forceinline__ double gelu_value(double x, int th) {
    if (th) return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
}

// The slope of gelu_value at x.
__device__ __forceinline__ double gelu_slope(double x, int th) {
    if (th) {
        double t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    double cdf = 0.5 * (1.0 + erf(x * 0.7071067811865476));
    double pdf = exp(-0.5 * x * x) * 0.3989422804014327;
    return cdf + x * pdf;
}

template <typename T> __device__ void gelu_fwd_impl(T* y, const T* x, u64 n, int th) {
    GRID_STRIDE(i, n) y[i] = st<T>(gelu_value((double)ld(x[i]), th));
}

template <typename T> __device__ void gelu_bwd_impl(T* gx, const T* g, const T* x, u64 n, int th) {
    GRID_STRIDE(i, n) gx[i] = st<T>((double)ld(g[i]) * gelu_slope((double)ld(x[i]), th));
}

#define KERNELS(T, S) \
extern "C" __global__ void gelu_fwd_##S(T* y, const T* x, u64 n, int th) { gelu_fwd_impl<T>(y, x, n, th); } \
extern "C" __global__ void gelu_bwd_##S(T* gx, const T* g, const T* x, u64 n, int th) {                 \
    gelu_bwd_impl<T>(gx, g, x, n, th); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of the cast between any two dtypes (NVRTC; after tape/src/device/cuda/prelude.cuh).
// The suffix names the source type; the kernel name the destination.

// out[i] = x[i] in D: through double (exact from every type), then rounded once to nearest even
// (Round<D>::once: a 16-bit destination through float rounded to odd), as the CPU's
// conversions do.
template <typename D, typename S> __device__ void cast_impl(D* out, const S* x, u64 n) {
    GRID_STRIDE(i, n) out[i] = Round<D>::once((double)ld(x[i]));
}

#define KERNELS(T, S) \
extern "C" __global__ void cast_to_f32_##S(float* out, const T* x, u64 n) { cast_impl<float, T>(out, x, n); } \
extern "C" __global__ void cast_to_f64_##S(double* out, const T* x, u64 n) { cast_impl<double, T>(out, x, n); } \
extern "C" __global__ void cast_to_bf16_##S(bf16_t* out, const T* x, u64 n) { cast_impl<bf16_t, T>(out, x, n); } \
extern "C" __global__ void cast_to_f16_##S(f16_t* out, const T* x, u64 n) { cast_impl<f16_t, T>(out, x, n); }

FOR_EACH_DTYPE(KERNELS)

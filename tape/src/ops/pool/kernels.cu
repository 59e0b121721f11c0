// CUDA kernels of global average pooling (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Global average pooling: one thread per plane, summed in order in T's arithmetic type (like the
// CPU kernel).
template <typename T> __device__ void gap_fwd_impl(const T* x, T* out, u64 planes, u64 hw) {
    GRID_STRIDE(p, planes) {
        const T* src = x + p * hw;
        typedef typename Arith<T>::type A;
        A s = (A)-0.0;
        for (u64 k = 0; k < hw; ++k) s += ld(src[k]);
        out[p] = st<T>(s / (A)hw);
    }
}

template <typename T> __device__ void gap_bwd_impl(const T* g, T* gx, u64 planes, u64 hw) {
    typedef typename Arith<T>::type A;
    GRID_STRIDE(i, planes * hw) gx[i] = st<T>(ld(g[i / hw]) / (A)hw);
}

#define KERNELS(T, S) \
extern "C" __global__ void gap_fwd_##S(const T* x, T* out, u64 planes, u64 hw) {                        \
    gap_fwd_impl<T>(x, out, planes, hw); }                                                              \
extern "C" __global__ void gap_bwd_##S(const T* g, T* gx, u64 planes, u64 hw) {                         \
    gap_bwd_impl<T>(g, gx, planes, hw); }

FOR_EACH_DTYPE(KERNELS)

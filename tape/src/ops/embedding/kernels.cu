// CUDA kernels of the embedding lookup (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Embedding gather: out[p * d + j] = w[idx[p] * d + j] for n positions.
template <typename T> __device__ void embedding_fwd_impl(T* out, const T* w, const u64* idx, u64 n, u64 d) {
    GRID_STRIDE(i, n * d) {
        u64 p = i / d, j = i - p * d;
        out[i] = w[idx[p] * d + j];
    }
}

// Embedding scatter-add, one thread per weight-gradient element: gw[v * d + j] is the sum, in
// double and in order, of g[p * d + j] over the positions p = positions[q] of group v
// (offsets[v] <= q < offsets[v + 1]); like the CPU kernel, no atomics.
template <typename T> __device__ void embedding_bwd_impl(T* gw, const T* g, const u64* offsets, const u64* positions,
                                                         u64 vocab, u64 d) {
    GRID_STRIDE(i, vocab * d) {
        u64 v = i / d, j = i - v * d;
        double acc = 0.0;
        for (u64 q = offsets[v]; q < offsets[v + 1]; ++q) acc += (double)ld(g[positions[q] * d + j]);
        gw[i] = st<T>(acc);
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void embedding_fwd_##S(T* out, const T* w, const u64* idx, u64 n, u64 d) {        \
    embedding_fwd_impl<T>(out, w, idx, n, d); }                                                         \
extern "C" __global__ void embedding_bwd_##S(T* gw, const T* g, const u64* offsets, const u64* positions, \
                                             u64 vocab, u64 d) {                                        \
    embedding_bwd_impl<T>(gw, g, offsets, positions, vocab, d); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of dropout (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Counter-based random numbers: a port of tape/src/rng.rs (SplitMix64 finaliser), bit for bit.

__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// rng::uniform(seed, counter, index): a double in [0, 1) with 53 random bits.
__device__ __forceinline__ double uniform01(u64 seed, u64 counter, u64 index) {
    u64 key = mix64(seed ^ mix64(counter + 0x632BE59BD9B4E019ULL));
    u64 bits = mix64(key ^ (index * 0xD6E8FEB86659FD93ULL));
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}


// Dropout: keep element i iff uniform(seed, counter, i) >= p; kept ones are scaled.
template <typename T> __device__ void dropout_impl(T* out, const T* x, u64 n, u64 seed, u64 counter, double p, T scale) {
    GRID_STRIDE(i, n) out[i] = uniform01(seed, counter, i) >= p ? st<T>(ld(x[i]) * ld(scale)) : st<T>(0.0f);
}

#define KERNELS(T, S) \
extern "C" __global__ void dropout_##S(T* out, const T* x, u64 n, u64 seed, u64 counter, double p,      \
                                       T scale) { dropout_impl<T>(out, x, n, seed, counter, p, scale); }

FOR_EACH_DTYPE(KERNELS)

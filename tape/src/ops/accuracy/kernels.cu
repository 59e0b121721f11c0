// CUDA kernels of the accuracy count (NVRTC; after tape/src/device/cuda/prelude.cuh).

// The key of f64::total_cmp: integer order of the keys is the total order of the doubles
// (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN).
__device__ __forceinline__ long long total_key(double x) {
    long long b = __double_as_longlong(x);
    return b ^ (long long)(((unsigned long long)(b >> 63)) >> 1);
}

// One block: out[0] = how many of the n rows have their top-1 class (the last maximum in
// total_cmp order, as Rust's Iterator::max_by picks it) equal to their label.
template <typename T> __device__ void correct_count_impl(const T* logits, const int* labels, u64 n, u64 classes, T* out) {
    __shared__ double sh[RBLOCK];
    double hits = 0.0;
    for (u64 r = threadIdx.x; r < n; r += RBLOCK) {
        const T* row = logits + r * classes;
        long long best_key = 0;
        u64 best = 0;
        for (u64 j = 0; j < classes; ++j) {
            long long k = total_key((double)ld(row[j]));
            if (j == 0 || k >= best_key) {
                best_key = k;
                best = j;
            }
        }
        if (classes > 0 && labels[r] >= 0 && best == (u64)labels[r]) hits += 1.0;
    }
    double total = block_sum(hits, sh);
    if (threadIdx.x == 0) out[0] = st<T>(total);
}

#define KERNELS(T, S) \
extern "C" __global__ void correct_count_##S(const T* logits, const int* labels, u64 n, u64 classes,    \
                                             T* out) {                                                  \
    correct_count_impl<T>(logits, labels, n, classes, out); }

FOR_EACH_DTYPE(KERNELS)

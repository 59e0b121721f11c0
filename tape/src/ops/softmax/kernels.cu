// CUDA kernels of softmax and log-softmax (NVRTC; after tape/src/device/cuda/prelude.cuh).

// One block per row of d elements, rows with causal > 0 keeping their first
// min(row % causal + 1, d) (a causal mask): softmax (lg == 0) or log-softmax in double, masked
// entries 0 (or -inf).
template <typename T> __device__ void softmax_fwd_impl(const T* x, T* y, u64 d, u64 causal, int lg) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    u64 valid = d;
    if (causal && row % causal + 1 < d) valid = row % causal + 1;
    const T* r = x + row * d;
    T* o = y + row * d;
    double ninf = __longlong_as_double(0xFFF0000000000000LL);
    double m = ninf;
    for (u64 j = threadIdx.x; j < valid; j += RBLOCK) m = fmax(m, (double)ld(r[j]));
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < valid; j += RBLOCK) acc += exp((double)ld(r[j]) - mx);
    double sum = block_sum(acc, sh);
    double lse = log(sum);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double s = (double)ld(r[j]) - mx;
        if (j < valid) o[j] = st<T>(lg ? s - lse : exp(s) / sum);
        else o[j] = st<T>(lg ? ninf : 0.0);
    }
}

// The input gradient of softmax_fwd from the output gradient g and the saved output y, one block
// per row: y (g - sum(g y)), or g - exp(y) sum(g) for log-softmax; 0 at masked entries.
template <typename T> __device__ void softmax_bwd_impl(const T* g, const T* y, T* gx, u64 d, u64 causal, int lg) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    u64 valid = d;
    if (causal && row % causal + 1 < d) valid = row % causal + 1;
    const T* gr = g + row * d;
    const T* yr = y + row * d;
    T* o = gx + row * d;
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < valid; j += RBLOCK)
        acc += lg ? (double)ld(gr[j]) : (double)ld(gr[j]) * (double)ld(yr[j]);
    double s = block_sum(acc, sh);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        if (j < valid) {
            double gv = (double)ld(gr[j]), yv = (double)ld(yr[j]);
            o[j] = st<T>(lg ? gv - exp(yv) * s : yv * (gv - s));
        } else {
            o[j] = st<T>(0.0);
        }
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void softmax_fwd_##S(const T* x, T* y, u64 d, u64 causal, int lg) {               \
    softmax_fwd_impl<T>(x, y, d, causal, lg); }                                                         \
extern "C" __global__ void softmax_bwd_##S(const T* g, const T* y, T* gx, u64 d, u64 causal, int lg) {  \
    softmax_bwd_impl<T>(g, y, gx, d, causal, lg); }

FOR_EACH_DTYPE(KERNELS)

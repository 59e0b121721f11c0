// CUDA kernels of cross-entropy (NVRTC; after tape/src/device/cuda/prelude.cuh).

// One block per row: row_loss[row] = logsumexp(row) - row[label].
template <typename T> __device__ void ce_loss_rows_impl(const T* logits, const int* labels, u64 classes, double* row_loss) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = logits + row * classes;
    double m = __longlong_as_double(0xFFF0000000000000LL);
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) m = fmax(m, (double)ld(r[j]));
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) acc += exp((double)ld(r[j]) - mx);
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) row_loss[row] = mx + log(sum) - (double)ld(r[labels[row]]);
}

// One block per row: out = (g[0] / n) * (softmax(row) - onehot(label)).
template <typename T> __device__ void ce_grad_impl(const T* logits, const int* labels, const T* g, u64 classes, double n, T* out) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = logits + row * classes;
    T* o = out + row * classes;
    double factor = (double)ld(g[0]) / n;
    double m = __longlong_as_double(0xFFF0000000000000LL);
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) m = fmax(m, (double)ld(r[j]));
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) acc += exp((double)ld(r[j]) - mx);
    double lse = log(block_sum(acc, sh));
    int y = labels[row];
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) {
        double p = exp((double)ld(r[j]) - mx - lse);
        o[j] = st<T>(factor * (p - ((u64)y == j ? 1.0 : 0.0)));
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void ce_loss_rows_##S(const T* logits, const int* labels, u64 classes,            \
                                            double* row_loss) {                                         \
    ce_loss_rows_impl<T>(logits, labels, classes, row_loss); }                                          \
extern "C" __global__ void ce_grad_##S(const T* logits, const int* labels, const T* g, u64 classes,     \
                                       double n, T* out) {                                              \
    ce_grad_impl<T>(logits, labels, g, classes, n, out); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of layer norm (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Layer norm, one block per row of d elements: mean and invstd = 1 / sqrt(var + eps) (biased
// variance) in double, y = (x - mean) invstd [* w] [+ b]; w and b may be null.
template <typename T> __device__ void ln_fwd_impl(const T* x, const T* w, const T* b, T* y, T* mean, T* invstd,
                                                  u64 d, double eps) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = x + row * d;
    T* o = y + row * d;
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) acc += (double)ld(r[j]);
    double mu = block_sum(acc, sh) / (double)d;
    acc = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) { double c = (double)ld(r[j]) - mu; acc += c * c; }
    double var = block_sum(acc, sh) / (double)d;
    double is = 1.0 / sqrt(var + eps);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double h = ((double)ld(r[j]) - mu) * is;
        if (w) h *= (double)ld(w[j]);
        if (b) h += (double)ld(b[j]);
        o[j] = st<T>(h);
    }
    if (threadIdx.x == 0) { mean[row] = st<T>(mu); invstd[row] = st<T>(is); }
}

// Layer norm's input gradient, one block per row: gh = g [* w], xhat = (x - mean) invstd,
// gx = invstd (gh - mean(gh) - xhat mean(gh xhat)); w may be null.
template <typename T> __device__ void ln_bwd_input_impl(const T* g, const T* x, const T* mean, const T* invstd,
                                                        const T* w, T* gx, u64 d) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* gr = g + row * d;
    const T* xr = x + row * d;
    T* o = gx + row * d;
    double mu = (double)ld(mean[row]), is = (double)ld(invstd[row]);
    double a1 = 0.0, a2 = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double gh = w ? (double)ld(gr[j]) * (double)ld(w[j]) : (double)ld(gr[j]);
        a1 += gh;
        a2 += gh * (((double)ld(xr[j]) - mu) * is);
    }
    double a = block_sum(a1, sh) / (double)d;
    double c = block_sum(a2, sh) / (double)d;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double gh = w ? (double)ld(gr[j]) * (double)ld(w[j]) : (double)ld(gr[j]);
        double xh = ((double)ld(xr[j]) - mu) * is;
        o[j] = st<T>(is * (gh - a - xh * c));
    }
}

// Layer norm's weight and bias gradients, one thread per column, summed over the rows in order
// (like the CPU kernel): gw[j] = sum g xhat (gw null: skipped, and x, mean, invstd may be null),
// gb[j] = sum g (gb null: skipped).
template <typename T> __device__ void ln_bwd_affine_impl(const T* g, const T* x, const T* mean, const T* invstd,
                                                         T* gw, T* gb, u64 rows, u64 d) {
    GRID_STRIDE(j, d) {
        double aw = 0.0, ab = 0.0;
        for (u64 r = 0; r < rows; ++r) {
            double gv = (double)ld(g[r * d + j]);
            if (gw) aw += gv * (((double)ld(x[r * d + j]) - (double)ld(mean[r])) * (double)ld(invstd[r]));
            ab += gv;
        }
        if (gw) gw[j] = st<T>(aw);
        if (gb) gb[j] = st<T>(ab);
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void ln_fwd_##S(const T* x, const T* w, const T* b, T* y, T* mean, T* invstd,     \
                                      u64 d, double eps) {                                              \
    ln_fwd_impl<T>(x, w, b, y, mean, invstd, d, eps); }                                                 \
extern "C" __global__ void ln_bwd_input_##S(const T* g, const T* x, const T* mean, const T* invstd,     \
                                            const T* w, T* gx, u64 d) {                                 \
    ln_bwd_input_impl<T>(g, x, mean, invstd, w, gx, d); }                                               \
extern "C" __global__ void ln_bwd_affine_##S(const T* g, const T* x, const T* mean, const T* invstd,    \
                                             T* gw, T* gb, u64 rows, u64 d) {                           \
    ln_bwd_affine_impl<T>(g, x, mean, invstd, gw, gb, rows, d); }

FOR_EACH_DTYPE(KERNELS)

// CUDA kernels of batch norm (eval-mode gradients and statistics) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// One block per channel of an NCHW tensor (n images, c channels, hw per plane):
// sum_g[ch] = sum g, sum_gx[ch] = sum g * (x - mean[ch]) * invstd[ch]. Null pointers skip a sum
// (x null: sum_gx is not computed).
template <typename T> __device__ void bn_sums_impl(const T* g, const T* x, const T* mean, const T* invstd,
                                                   u64 n, u64 c, u64 hw, T* sum_g, T* sum_gx) {
    __shared__ double sh[RBLOCK];
    u64 ch = blockIdx.x;
    double mu = x ? (double)ld(mean[ch]) : 0.0, is = x ? (double)ld(invstd[ch]) : 0.0;
    double ag = 0.0, agx = 0.0;
    for (u64 k = threadIdx.x; k < n * hw; k += RBLOCK) {
        u64 img = k / hw, pos = k - img * hw;
        u64 idx = (img * c + ch) * hw + pos;
        double gv = (double)ld(g[idx]);
        ag += gv;
        if (x) agx += gv * (((double)ld(x[idx]) - mu) * is);
    }
    double sg = block_sum(ag, sh);
    double sgx = block_sum(agx, sh);
    if (threadIdx.x == 0) {
        if (sum_g) sum_g[ch] = st<T>(sg);
        if (sum_gx) sum_gx[ch] = st<T>(sgx);
    }
}

// Eval-mode input gradient of batch norm: gx = g * (weight[ch] * invstd[ch]).
template <typename T> __device__ void bn_scale_grad_impl(T* gx, const T* g, const T* weight, const T* invstd,
                                                         u64 c, u64 hw, u64 n) {
    GRID_STRIDE(i, n) {
        u64 ch = (i / hw) % c;
        double a = (double)ld(weight[ch]) * (double)ld(invstd[ch]);
        gx[i] = st<T>((double)ld(g[i]) * a + 0.0);
    }
}

// invstd = 1 / sqrt(var + eps), per channel.
template <typename T> __device__ void bn_invstd_impl(const T* var, double eps, u64 c, T* out) {
    GRID_STRIDE(i, c) out[i] = st<T>(1.0 / sqrt((double)ld(var[i]) + eps));
}

#define KERNELS(T, S) \
extern "C" __global__ void bn_sums_##S(const T* g, const T* x, const T* mean, const T* invstd, u64 n,   \
                                       u64 c, u64 hw, T* sum_g, T* sum_gx) {                            \
    bn_sums_impl<T>(g, x, mean, invstd, n, c, hw, sum_g, sum_gx); }                                     \
extern "C" __global__ void bn_scale_grad_##S(T* gx, const T* g, const T* weight, const T* invstd,       \
                                             u64 c, u64 hw, u64 n) {                                    \
    bn_scale_grad_impl<T>(gx, g, weight, invstd, c, hw, n); }                                           \
extern "C" __global__ void bn_invstd_##S(const T* var, double eps, u64 c, T* out) {                     \
    bn_invstd_impl<T>(var, eps, c, out); }

FOR_EACH_DTYPE(KERNELS)

// The engine's own CUDA kernels, compiled at run time by NVRTC (once per GPU) with --fmad=false,
// so that element-wise arithmetic rounds exactly like the CPU kernels (no fused multiply-adds).
// Every kernel exists for float (suffix _f32) and double (_f64); the Rust side (kernels.rs) lists
// them by name and launches them with the argument lists documented here.
//
// Element counts are unsigned 64-bit; loops are grid-stride, so any grid size covers any n.
// Reductions accumulate in double in a fixed order (deterministic from run to run).

typedef unsigned long long u64;

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// Threads per block of every reduction kernel (a power of two).
#define RBLOCK 256

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// Block-wide sum of one double per thread (blockDim.x == RBLOCK); the result is valid in thread 0.

__device__ __forceinline__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = RBLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();
    return r;
}

// Block-wide max (NaN-ignoring like f64::max); valid in every thread.
__device__ __forceinline__ double block_max(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = RBLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmax(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();
    return r;
}

// Up to 32 tensors of a concatenation along dim 1: device addresses, row widths (elements per
// outer index) and column offsets in the concatenated rows. Mirrors `PartList` in kernels.rs.
#define MAX_PARTS 32
struct PartList {
    u64 ptr[MAX_PARTS];
    u64 width[MAX_PARTS];
    u64 offset[MAX_PARTS];
};

// ---------------------------------------------------------------------------------------------
// Template bodies.

template <typename T> __device__ void fill_impl(T* out, T v, u64 n) {
    GRID_STRIDE(i, n) out[i] = v;
}

// out[i] = (T)((double)s[0] * mul / div): a gradient that is a scalar times a constant.
template <typename T> __device__ void fill_scalar_impl(T* out, const T* s, double mul, double div, u64 n) {
    double v = (double)s[0] * mul / div;
    GRID_STRIDE(i, n) out[i] = (T)v;
}

template <typename T> __device__ void relu_fwd_impl(T* y, const T* x, u64 n) {
    GRID_STRIDE(i, n) { T v = x[i]; y[i] = v <= (T)0 ? (T)0 : v; }  // NaN passes, as in PyTorch
}

template <typename T> __device__ void relu_bwd_impl(T* gx, const T* g, const T* y, u64 n) {
    GRID_STRIDE(i, n) gx[i] = y[i] > (T)0 ? g[i] : (T)0;
}

template <typename T> __device__ void add_impl(T* out, const T* a, const T* b, u64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

template <typename T> __device__ void mul_impl(T* out, const T* a, const T* b, u64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

template <typename T> __device__ void scale_impl(T* out, const T* x, T s, u64 n) {
    GRID_STRIDE(i, n) out[i] = x[i] * s;
}

template <typename T> __device__ void add_assign_impl(T* acc, const T* g, u64 n) {
    GRID_STRIDE(i, n) acc[i] += g[i];
}

// blockIdx.y picks the part: out[o * total + offset + j] = part[o * width + j] (ADD: +=, the
// gradient of a block storage's channels).
template <typename T, bool ADD> __device__ void concat_impl(T* out, PartList parts, u64 outer, u64 total) {
    unsigned p = blockIdx.y;
    const T* src = (const T*)parts.ptr[p];
    u64 w = parts.width[p], off = parts.offset[p];
    if (w == 0) return;
    GRID_STRIDE(i, outer * w) {
        u64 o = i / w, j = i - o * w;
        if (ADD) out[o * total + off + j] += src[i]; else out[o * total + off + j] = src[i];
    }
}

// The inverse: part[o * width + j] = g[o * total + offset + j] (ADD: += into the part's
// existing gradient).
template <typename T, bool ADD> __device__ void split_impl(const T* g, PartList parts, u64 outer, u64 total) {
    unsigned p = blockIdx.y;
    T* dst = (T*)parts.ptr[p];
    u64 w = parts.width[p], off = parts.offset[p];
    if (w == 0) return;
    GRID_STRIDE(i, outer * w) {
        u64 o = i / w, j = i - o * w;
        T v = g[o * total + off + j];
        if (ADD) dst[i] += v; else dst[i] = v;
    }
}

// The ReLU backward of one part of the fused concat -> batch norm -> ReLU, written packed: with
// at = o * total + offset + j, out[o * width + j] = y[at] > 0 ? g[at] : 0 (o < outer, j < width).
template <typename T> __device__ void relu_mask_part_impl(T* out, const T* g, const T* y, u64 outer, u64 width,
                                                          u64 total, u64 offset) {
    GRID_STRIDE(i, outer * width) {
        u64 o = i / width, j = i - o * width;
        u64 at = o * total + offset + j;
        out[i] = y[at] > (T)0 ? g[at] : (T)0;
    }
}

// First stage of a full sum: partials[blockIdx.x] = sum of this block's grid-stride share.
template <typename T> __device__ void sum_partial_impl(const T* x, u64 n, double* partials) {
    __shared__ double sh[RBLOCK];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)x[i];
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Second stage (one block): out[0] = (T)(sum(partials) * mul / div).
template <typename T> __device__ void sum_final_impl(const double* partials, u64 count, double mul, double div, T* out) {
    __shared__ double sh[RBLOCK];
    double acc = 0.0;
    for (u64 i = threadIdx.x; i < count; i += RBLOCK) acc += partials[i];
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = (T)(s * mul / div);
}

// Dropout: keep element i iff uniform(seed, counter, i) >= p; kept ones are scaled.
template <typename T> __device__ void dropout_impl(T* out, const T* x, u64 n, u64 seed, u64 counter, double p, T scale) {
    GRID_STRIDE(i, n) out[i] = uniform01(seed, counter, i) >= p ? x[i] * scale : (T)0;
}

// One block per row: row_loss[row] = logsumexp(row) - row[label].
template <typename T> __device__ void ce_loss_rows_impl(const T* logits, const int* labels, u64 classes, double* row_loss) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = logits + row * classes;
    double m = __longlong_as_double(0xFFF0000000000000LL);
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) m = fmax(m, (double)r[j]);
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) acc += exp((double)r[j] - mx);
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) row_loss[row] = mx + log(sum) - (double)r[labels[row]];
}

// One block per row: out = (g[0] / n) * (softmax(row) - onehot(label)).
template <typename T> __device__ void ce_grad_impl(const T* logits, const int* labels, const T* g, u64 classes, double n, T* out) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = logits + row * classes;
    T* o = out + row * classes;
    double factor = (double)g[0] / n;
    double m = __longlong_as_double(0xFFF0000000000000LL);
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) m = fmax(m, (double)r[j]);
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) acc += exp((double)r[j] - mx);
    double lse = log(block_sum(acc, sh));
    int y = labels[row];
    for (u64 j = threadIdx.x; j < classes; j += RBLOCK) {
        double p = exp((double)r[j] - mx - lse);
        o[j] = (T)(factor * (p - ((u64)y == j ? 1.0 : 0.0)));
    }
}

// One block per channel of an NCHW tensor (n images, c channels, hw per plane):
// sum_g[ch] = sum g, sum_gx[ch] = sum g * (x - mean[ch]) * invstd[ch]. Null pointers skip a sum
// (x null: sum_gx is not computed).
template <typename T> __device__ void bn_sums_impl(const T* g, const T* x, const T* mean, const T* invstd,
                                                   u64 n, u64 c, u64 hw, T* sum_g, T* sum_gx) {
    __shared__ double sh[RBLOCK];
    u64 ch = blockIdx.x;
    double mu = x ? (double)mean[ch] : 0.0, is = x ? (double)invstd[ch] : 0.0;
    double ag = 0.0, agx = 0.0;
    for (u64 k = threadIdx.x; k < n * hw; k += RBLOCK) {
        u64 img = k / hw, pos = k - img * hw;
        u64 idx = (img * c + ch) * hw + pos;
        double gv = (double)g[idx];
        ag += gv;
        if (x) agx += gv * (((double)x[idx] - mu) * is);
    }
    double sg = block_sum(ag, sh);
    double sgx = block_sum(agx, sh);
    if (threadIdx.x == 0) {
        if (sum_g) sum_g[ch] = (T)sg;
        if (sum_gx) sum_gx[ch] = (T)sgx;
    }
}

// Eval-mode input gradient of batch norm: gx = g * (weight[ch] * invstd[ch]).
template <typename T> __device__ void bn_scale_grad_impl(T* gx, const T* g, const T* weight, const T* invstd,
                                                         u64 c, u64 hw, u64 n) {
    GRID_STRIDE(i, n) {
        u64 ch = (i / hw) % c;
        double a = (double)weight[ch] * (double)invstd[ch];
        gx[i] = (T)((double)g[i] * a + 0.0);
    }
}

// invstd = 1 / sqrt(var + eps), per channel.
template <typename T> __device__ void bn_invstd_impl(const T* var, double eps, u64 c, T* out) {
    GRID_STRIDE(i, c) out[i] = (T)(1.0 / sqrt((double)var[i] + eps));
}

// Global average pooling: one thread per plane, summed in T in order (like the CPU kernel).
template <typename T> __device__ void gap_fwd_impl(const T* x, T* out, u64 planes, u64 hw) {
    GRID_STRIDE(p, planes) {
        const T* src = x + p * hw;
        T s = (T)-0.0;
        for (u64 k = 0; k < hw; ++k) s += src[k];
        out[p] = s / (T)hw;
    }
}

template <typename T> __device__ void gap_bwd_impl(const T* g, T* gx, u64 planes, u64 hw) {
    GRID_STRIDE(i, planes * hw) gx[i] = g[i / hw] / (T)hw;
}

// out[r * o + j] = b[j] for n rows (a linear layer's bias, before the GEMM accumulates).
template <typename T> __device__ void bias_rows_impl(T* out, const T* b, u64 n, u64 o) {
    GRID_STRIDE(i, n * o) out[i] = b[i % o];
}

// gb[j] = sum over the n rows of g[r * o + j], in row order (like the CPU kernel).
template <typename T> __device__ void col_sum_impl(const T* g, T* gb, u64 n, u64 o) {
    GRID_STRIDE(j, o) {
        T acc = (T)0;
        for (u64 r = 0; r < n; ++r) acc += g[r * o + j];
        gb[j] = acc;
    }
}

// torch.optim.SGD, step for step (see optim/sgd.rs), over one tensor (the body of sgd_multi);
// buf is null without momentum.
template <typename T> __device__ void sgd_impl(T* p, const T* g, T* buf, u64 n, double lr, double momentum,
                                               double dampening, double wd, int nesterov, int first) {
    GRID_STRIDE(i, n) {
        double d = (double)g[i];
        if (wd != 0.0) d += wd * (double)p[i];
        if (buf) {
            double b = first ? d : momentum * (double)buf[i] + (1.0 - dampening) * d;
            buf[i] = (T)b;
            b = (double)buf[i];
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = (T)((double)p[i] - lr * d);
    }
}

// torch.optim.Adam, step for step (see optim/adam.rs), over one tensor (the body of adam_multi).
template <typename T> __device__ void adam_impl(T* p, const T* g, T* m, T* v, u64 n, double beta1, double beta2,
                                                double eps, double wd, double step_size, double bc2_sqrt) {
    GRID_STRIDE(i, n) {
        double gd = (double)g[i];
        if (wd != 0.0) gd += wd * (double)p[i];
        m[i] = (T)(beta1 * (double)m[i] + (1.0 - beta1) * gd);
        v[i] = (T)(beta2 * (double)v[i] + (1.0 - beta2) * gd * gd);
        double denom = sqrt((double)v[i]) / bc2_sqrt + eps;
        p[i] = (T)((double)p[i] - step_size * ((double)m[i] / denom));
    }
}

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
    for (u64 j = threadIdx.x; j < valid; j += RBLOCK) m = fmax(m, (double)r[j]);
    double mx = block_max(m, sh);
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < valid; j += RBLOCK) acc += exp((double)r[j] - mx);
    double sum = block_sum(acc, sh);
    double lse = log(sum);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double s = (double)r[j] - mx;
        if (j < valid) o[j] = (T)(lg ? s - lse : exp(s) / sum);
        else o[j] = lg ? (T)ninf : (T)0;
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
        acc += lg ? (double)gr[j] : (double)gr[j] * (double)yr[j];
    double s = block_sum(acc, sh);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        if (j < valid) {
            double gv = (double)gr[j], yv = (double)yr[j];
            o[j] = (T)(lg ? gv - exp(yv) * s : yv * (gv - s));
        } else {
            o[j] = (T)0;
        }
    }
}

// Layer norm, one block per row of d elements: mean and invstd = 1 / sqrt(var + eps) (biased
// variance) in double, y = (x - mean) invstd [* w] [+ b]; w and b may be null.
template <typename T> __device__ void ln_fwd_impl(const T* x, const T* w, const T* b, T* y, T* mean, T* invstd,
                                                  u64 d, double eps) {
    __shared__ double sh[RBLOCK];
    u64 row = blockIdx.x;
    const T* r = x + row * d;
    T* o = y + row * d;
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) acc += (double)r[j];
    double mu = block_sum(acc, sh) / (double)d;
    acc = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) { double c = (double)r[j] - mu; acc += c * c; }
    double var = block_sum(acc, sh) / (double)d;
    double is = 1.0 / sqrt(var + eps);
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double h = ((double)r[j] - mu) * is;
        if (w) h *= (double)w[j];
        if (b) h += (double)b[j];
        o[j] = (T)h;
    }
    if (threadIdx.x == 0) { mean[row] = (T)mu; invstd[row] = (T)is; }
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
    double mu = (double)mean[row], is = (double)invstd[row];
    double a1 = 0.0, a2 = 0.0;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double gh = w ? (double)gr[j] * (double)w[j] : (double)gr[j];
        a1 += gh;
        a2 += gh * (((double)xr[j] - mu) * is);
    }
    double a = block_sum(a1, sh) / (double)d;
    double c = block_sum(a2, sh) / (double)d;
    for (u64 j = threadIdx.x; j < d; j += RBLOCK) {
        double gh = w ? (double)gr[j] * (double)w[j] : (double)gr[j];
        double xh = ((double)xr[j] - mu) * is;
        o[j] = (T)(is * (gh - a - xh * c));
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
            double gv = (double)g[r * d + j];
            if (gw) aw += gv * (((double)x[r * d + j] - (double)mean[r]) * (double)invstd[r]);
            ab += gv;
        }
        if (gw) gw[j] = (T)aw;
        if (gb) gb[j] = (T)ab;
    }
}

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
    GRID_STRIDE(i, n) y[i] = (T)gelu_value((double)x[i], th);
}

template <typename T> __device__ void gelu_bwd_impl(T* gx, const T* g, const T* x, u64 n, int th) {
    GRID_STRIDE(i, n) gx[i] = (T)((double)g[i] * gelu_slope((double)x[i], th));
}

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
        for (u64 q = offsets[v]; q < offsets[v + 1]; ++q) acc += (double)g[positions[q] * d + j];
        gw[i] = (T)acc;
    }
}

// The output shape of a permute and the input stride of each output dimension, up to 8
// dimensions. Mirrors `PermDims` in ops/permute/cuda.rs.
#define MAX_PERM_DIMS 8
struct PermDims {
    u64 shape[MAX_PERM_DIMS];
    u64 stride[MAX_PERM_DIMS];
};

// out[i] = x[sum over k of idx_k * stride[k]], idx the row-major multi-index of i in the output
// shape (rank dimensions).
template <typename T> __device__ void permute_impl(T* out, const T* x, PermDims dims, u64 rank, u64 n) {
    GRID_STRIDE(i, n) {
        u64 rem = i, src = 0;
        for (u64 k = rank; k-- > 0;) {
            u64 s = dims.shape[k], q = rem / s;
            src += (rem - q * s) * dims.stride[k];
            rem = q;
        }
        out[i] = x[src];
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor kernels (PyTorch's foreach / fused optimizers): one launch over a list of tensors
// described by one device array `list` of `count` entries per field (addresses, lengths, per-
// tensor values), laid out field after field as the Rust side (optim/cuda.rs, ops/finite/cuda.rs)
// writes it. Blocks with blockIdx.y = t, t + gridDim.y, ... work on tensor t; within a tensor
// the blockIdx.x blocks stride over its elements (GRID_STRIDE).

#define TENSOR_STRIDE(t, count) for (u64 t = blockIdx.y; t < (count); t += gridDim.y)

// Whether a skip flag is set: `flag` is null (no flag) or one float (is_f64 == 0) or double.
// NaN counts as set.
__device__ __forceinline__ bool flag_set(const void* flag, int is_f64) {
    if (!flag) return false;
    return is_f64 ? !(((const double*)flag)[0] == 0.0) : !(((const float*)flag)[0] == 0.0f);
}

// SGD over `count` tensors; list = [param ptrs, grad ptrs, momentum buffer ptrs (0: none),
// lengths, buffer-is-new flags]. Nothing is written when the flag is set.
template <typename T> __device__ void sgd_multi_impl(const u64* list, u64 count, const void* found_inf, int found_inf_f64,
                                                     double lr, double momentum, double dampening, double wd,
                                                     int nesterov) {
    if (flag_set(found_inf, found_inf_f64)) return;
    TENSOR_STRIDE(t, count) {
        sgd_impl<T>((T*)list[t], (const T*)list[count + t], (T*)list[2 * count + t], list[3 * count + t], lr,
                    momentum, dampening, wd, nesterov, (int)list[4 * count + t]);
    }
}

// Adam over `count` tensors; list = [param, grad, exp_avg, exp_avg_sq ptrs, lengths, step sizes
// (double bits), sqrt(1 - beta2^t) (double bits)]. Nothing is written when the flag is set.
template <typename T> __device__ void adam_multi_impl(const u64* list, u64 count, const void* found_inf, int found_inf_f64,
                                                      double beta1, double beta2, double eps, double wd) {
    if (flag_set(found_inf, found_inf_f64)) return;
    const double* step_size = (const double*)(list + 5 * count);
    const double* bc2_sqrt = (const double*)(list + 6 * count);
    TENSOR_STRIDE(t, count) {
        adam_impl<T>((T*)list[t], (const T*)list[count + t], (T*)list[2 * count + t], (T*)list[3 * count + t],
                     list[4 * count + t], beta1, beta2, eps, wd, step_size[t], bc2_sqrt[t]);
    }
}

// flag[0] = 1 if any element of the `count` tensors list = [ptrs, lengths] is NaN or infinite
// (flag is zeroed before the launch; every writer writes the same value).
template <typename T> __device__ void non_finite_multi_impl(const u64* list, u64 count, T* flag) {
    TENSOR_STRIDE(t, count) {
        const T* x = (const T*)list[t];
        u64 n = list[count + t];
        GRID_STRIDE(i, n) {
            if (!isfinite((double)x[i])) flag[0] = (T)1;
        }
    }
}

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
            long long k = total_key((double)row[j]);
            if (j == 0 || k >= best_key) {
                best_key = k;
                best = j;
            }
        }
        if (classes > 0 && labels[r] >= 0 && best == (u64)labels[r]) hits += 1.0;
    }
    double total = block_sum(hits, sh);
    if (threadIdx.x == 0) out[0] = (T)total;
}

// ---------------------------------------------------------------------------------------------
// extern "C" entry points, one per (kernel, type).

#define KERNELS(T, S)                                                                                   \
extern "C" __global__ void fill_##S(T* out, T v, u64 n) { fill_impl<T>(out, v, n); }                    \
extern "C" __global__ void fill_scalar_##S(T* out, const T* s, double mul, double div, u64 n) {          \
    fill_scalar_impl<T>(out, s, mul, div, n); }                                                         \
extern "C" __global__ void relu_fwd_##S(T* y, const T* x, u64 n) { relu_fwd_impl<T>(y, x, n); }         \
extern "C" __global__ void relu_bwd_##S(T* gx, const T* g, const T* y, u64 n) {                         \
    relu_bwd_impl<T>(gx, g, y, n); }                                                                    \
extern "C" __global__ void add_##S(T* out, const T* a, const T* b, u64 n) { add_impl<T>(out, a, b, n); } \
extern "C" __global__ void mul_##S(T* out, const T* a, const T* b, u64 n) { mul_impl<T>(out, a, b, n); } \
extern "C" __global__ void scale_##S(T* out, const T* x, T s, u64 n) { scale_impl<T>(out, x, s, n); }   \
extern "C" __global__ void add_assign_##S(T* acc, const T* g, u64 n) { add_assign_impl<T>(acc, g, n); } \
extern "C" __global__ void concat_##S(T* out, PartList parts, u64 outer, u64 total) {                   \
    concat_impl<T, false>(out, parts, outer, total); }                                                  \
extern "C" __global__ void concat_add_##S(T* out, PartList parts, u64 outer, u64 total) {               \
    concat_impl<T, true>(out, parts, outer, total); }                                                   \
extern "C" __global__ void split_##S(const T* g, PartList parts, u64 outer, u64 total) {                \
    split_impl<T, false>(g, parts, outer, total); }                                                     \
extern "C" __global__ void split_add_##S(const T* g, PartList parts, u64 outer, u64 total) {            \
    split_impl<T, true>(g, parts, outer, total); }                                                      \
extern "C" __global__ void relu_mask_part_##S(T* out, const T* g, const T* y, u64 outer, u64 width,     \
                                              u64 total, u64 offset) {                                  \
    relu_mask_part_impl<T>(out, g, y, outer, width, total, offset); }                                   \
extern "C" __global__ void sum_partial_##S(const T* x, u64 n, double* partials) {                       \
    sum_partial_impl<T>(x, n, partials); }                                                              \
extern "C" __global__ void sum_final_##S(const double* partials, u64 count, double mul, double div,     \
                                         T* out) { sum_final_impl<T>(partials, count, mul, div, out); } \
extern "C" __global__ void dropout_##S(T* out, const T* x, u64 n, u64 seed, u64 counter, double p,      \
                                       T scale) { dropout_impl<T>(out, x, n, seed, counter, p, scale); } \
extern "C" __global__ void ce_loss_rows_##S(const T* logits, const int* labels, u64 classes,            \
                                            double* row_loss) {                                         \
    ce_loss_rows_impl<T>(logits, labels, classes, row_loss); }                                          \
extern "C" __global__ void ce_grad_##S(const T* logits, const int* labels, const T* g, u64 classes,     \
                                       double n, T* out) {                                              \
    ce_grad_impl<T>(logits, labels, g, classes, n, out); }                                              \
extern "C" __global__ void bn_sums_##S(const T* g, const T* x, const T* mean, const T* invstd, u64 n,   \
                                       u64 c, u64 hw, T* sum_g, T* sum_gx) {                            \
    bn_sums_impl<T>(g, x, mean, invstd, n, c, hw, sum_g, sum_gx); }                                     \
extern "C" __global__ void bn_scale_grad_##S(T* gx, const T* g, const T* weight, const T* invstd,       \
                                             u64 c, u64 hw, u64 n) {                                    \
    bn_scale_grad_impl<T>(gx, g, weight, invstd, c, hw, n); }                                           \
extern "C" __global__ void bn_invstd_##S(const T* var, double eps, u64 c, T* out) {                     \
    bn_invstd_impl<T>(var, eps, c, out); }                                                              \
extern "C" __global__ void gap_fwd_##S(const T* x, T* out, u64 planes, u64 hw) {                        \
    gap_fwd_impl<T>(x, out, planes, hw); }                                                              \
extern "C" __global__ void gap_bwd_##S(const T* g, T* gx, u64 planes, u64 hw) {                         \
    gap_bwd_impl<T>(g, gx, planes, hw); }                                                               \
extern "C" __global__ void bias_rows_##S(T* out, const T* b, u64 n, u64 o) {                            \
    bias_rows_impl<T>(out, b, n, o); }                                                                  \
extern "C" __global__ void col_sum_##S(const T* g, T* gb, u64 n, u64 o) { col_sum_impl<T>(g, gb, n, o); } \
extern "C" __global__ void sgd_multi_##S(const u64* list, u64 count, const void* found_inf,            \
                                         int found_inf_f64, double lr, double momentum, double dampening, \
                                         double wd, int nesterov) {                                     \
    sgd_multi_impl<T>(list, count, found_inf, found_inf_f64, lr, momentum, dampening, wd, nesterov); }  \
extern "C" __global__ void adam_multi_##S(const u64* list, u64 count, const void* found_inf,           \
                                          int found_inf_f64, double beta1, double beta2, double eps,    \
                                          double wd) {                                                  \
    adam_multi_impl<T>(list, count, found_inf, found_inf_f64, beta1, beta2, eps, wd); }                 \
extern "C" __global__ void non_finite_multi_##S(const u64* list, u64 count, T* flag) {                  \
    non_finite_multi_impl<T>(list, count, flag); }                                                      \
extern "C" __global__ void correct_count_##S(const T* logits, const int* labels, u64 n, u64 classes,    \
                                             T* out) {                                                  \
    correct_count_impl<T>(logits, labels, n, classes, out); }                                           \
extern "C" __global__ void softmax_fwd_##S(const T* x, T* y, u64 d, u64 causal, int lg) {               \
    softmax_fwd_impl<T>(x, y, d, causal, lg); }                                                         \
extern "C" __global__ void softmax_bwd_##S(const T* g, const T* y, T* gx, u64 d, u64 causal, int lg) {  \
    softmax_bwd_impl<T>(g, y, gx, d, causal, lg); }                                                     \
extern "C" __global__ void ln_fwd_##S(const T* x, const T* w, const T* b, T* y, T* mean, T* invstd,     \
                                      u64 d, double eps) {                                              \
    ln_fwd_impl<T>(x, w, b, y, mean, invstd, d, eps); }                                                 \
extern "C" __global__ void ln_bwd_input_##S(const T* g, const T* x, const T* mean, const T* invstd,     \
                                            const T* w, T* gx, u64 d) {                                 \
    ln_bwd_input_impl<T>(g, x, mean, invstd, w, gx, d); }                                               \
extern "C" __global__ void ln_bwd_affine_##S(const T* g, const T* x, const T* mean, const T* invstd,    \
                                             T* gw, T* gb, u64 rows, u64 d) {                           \
    ln_bwd_affine_impl<T>(g, x, mean, invstd, gw, gb, rows, d); }                                       \
extern "C" __global__ void gelu_fwd_##S(T* y, const T* x, u64 n, int th) { gelu_fwd_impl<T>(y, x, n, th); } \
extern "C" __global__ void gelu_bwd_##S(T* gx, const T* g, const T* x, u64 n, int th) {                 \
    gelu_bwd_impl<T>(gx, g, x, n, th); }                                                                \
extern "C" __global__ void embedding_fwd_##S(T* out, const T* w, const u64* idx, u64 n, u64 d) {        \
    embedding_fwd_impl<T>(out, w, idx, n, d); }                                                         \
extern "C" __global__ void embedding_bwd_##S(T* gw, const T* g, const u64* offsets, const u64* positions, \
                                             u64 vocab, u64 d) {                                        \
    embedding_bwd_impl<T>(gw, g, offsets, positions, vocab, d); }                                       \
extern "C" __global__ void permute_##S(T* out, const T* x, PermDims dims, u64 rank, u64 n) {            \
    permute_impl<T>(out, x, dims, rank, n); }

KERNELS(float, f32)
KERNELS(double, f64)

// CUDA kernels of the fused optimizers (one launch over every parameter) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// Whether a skip flag is set: `flag` is null (no flag) or one float (is_f64 == 0) or double.
// NaN counts as set.
__device__ __forceinline__ bool flag_set(const void* flag, int is_f64) {
    if (!flag) return false;
    return is_f64 ? !(((const double*)flag)[0] == 0.0) : !(((const float*)flag)[0] == 0.0f);
}

// torch.optim.SGD, step for step (see optim/sgd.rs), over one tensor (the body of sgd_multi);
// buf is null without momentum.
template <typename T> __device__ void sgd_impl(T* p, const T* g, T* buf, u64 n, double lr, double momentum,
                                               double dampening, double wd, int nesterov, int first) {
    GRID_STRIDE(i, n) {
        double d = (double)ld(g[i]);
        if (wd != 0.0) d += wd * (double)ld(p[i]);
        if (buf) {
            double b = first ? d : momentum * (double)ld(buf[i]) + (1.0 - dampening) * d;
            buf[i] = st<T>(b);
            b = (double)ld(buf[i]);
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = st<T>((double)ld(p[i]) - lr * d);
    }
}

// torch.optim.Adam, step for step (see optim/adam.rs), over one tensor (the body of adam_multi).
template <typename T> __device__ void adam_impl(T* p, const T* g, T* m, T* v, u64 n, double beta1, double beta2,
                                                double eps, double wd, double step_size, double bc2_sqrt) {
    GRID_STRIDE(i, n) {
        double gd = (double)ld(g[i]);
        if (wd != 0.0) gd += wd * (double)ld(p[i]);
        m[i] = st<T>(beta1 * (double)ld(m[i]) + (1.0 - beta1) * gd);
        v[i] = st<T>(beta2 * (double)ld(v[i]) + (1.0 - beta2) * gd * gd);
        double denom = sqrt((double)ld(v[i])) / bc2_sqrt + eps;
        p[i] = st<T>((double)ld(p[i]) - step_size * ((double)ld(m[i]) / denom));
    }
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

#define KERNELS(T, S) \
extern "C" __global__ void sgd_multi_##S(const u64* list, u64 count, const void* found_inf,            \
                                         int found_inf_f64, double lr, double momentum, double dampening, \
                                         double wd, int nesterov) {                                     \
    sgd_multi_impl<T>(list, count, found_inf, found_inf_f64, lr, momentum, dampening, wd, nesterov); }  \
extern "C" __global__ void adam_multi_##S(const u64* list, u64 count, const void* found_inf,           \
                                          int found_inf_f64, double beta1, double beta2, double eps,    \
                                          double wd) {                                                  \
    adam_multi_impl<T>(list, count, found_inf, found_inf_f64, beta1, beta2, eps, wd); }

FOR_EACH_DTYPE(KERNELS)

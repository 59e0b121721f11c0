// CUDA kernels of the finiteness check (one launch over every tensor) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// flag[0] = 1 if any element of the `count` tensors list = [ptrs, lengths] is NaN or infinite
// (flag is zeroed before the launch; every writer writes the same value).
template <typename T> __device__ void non_finite_multi_impl(const u64* list, u64 count, T* flag) {
    TENSOR_STRIDE(t, count) {
        const T* x = (const T*)list[t];
        u64 n = list[count + t];
        GRID_STRIDE(i, n) {
            if (!isfinite((double)ld(x[i]))) flag[0] = st<T>(1.0f);
        }
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void non_finite_multi_##S(const u64* list, u64 count, T* flag) {                  \
    non_finite_multi_impl<T>(list, count, flag); }

FOR_EACH_DTYPE(KERNELS)

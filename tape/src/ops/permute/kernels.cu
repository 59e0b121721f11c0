// CUDA kernels of permute (NVRTC; after tape/src/device/cuda/prelude.cuh).

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

#define KERNELS(T, S) \
extern "C" __global__ void permute_##S(T* out, const T* x, PermDims dims, u64 rank, u64 n) {            \
    permute_impl<T>(out, x, dims, rank, n); }

FOR_EACH_DTYPE(KERNELS)

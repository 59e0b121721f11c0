// The prelude of every NVRTC program of the engine, put before each op's kernels.cu when the
// program is compiled (once per GPU, at its first launch) with --fmad=false, so that
// element-wise arithmetic rounds exactly like the CPU kernels (no fused multiply-adds). Every
// kernel exists for float (suffix _f32) and double (_f64); each op's cuda.rs names its kernels
// and launches them with the argument lists documented in its kernels.cu.
//
// Element counts are unsigned 64-bit; loops are grid-stride, so any grid size covers any n.
// Reductions accumulate in double in a fixed order (deterministic from run to run).

typedef unsigned long long u64;

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// Threads per block of every reduction kernel (a power of two).
#define RBLOCK 256

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
// outer index) and column offsets in the concatenated rows. Mirrors `PartList` in launch.rs.
#define MAX_PARTS 32
struct PartList {
    u64 ptr[MAX_PARTS];
    u64 width[MAX_PARTS];
    u64 offset[MAX_PARTS];
};


// ---------------------------------------------------------------------------------------------
// Multi-tensor kernels (PyTorch's foreach / fused optimizers): one launch over a list of tensors
// described by one device array `list` of `count` entries per field (addresses, lengths, per-
// tensor values), laid out field after field as the Rust side (optim/cuda.rs, ops/finite/cuda.rs)
// writes it. Blocks with blockIdx.y = t, t + gridDim.y, ... work on tensor t; within a tensor
// the blockIdx.x blocks stride over its elements (GRID_STRIDE).

#define TENSOR_STRIDE(t, count) for (u64 t = blockIdx.y; t < (count); t += gridDim.y)

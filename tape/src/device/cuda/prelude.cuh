// The prelude of every NVRTC program of the engine, put before each op's kernels.cu when the
// program is compiled (once per GPU, at its first launch) with --fmad=false, so that
// element-wise arithmetic rounds exactly like the CPU kernels (no fused multiply-adds). Every
// kernel exists for each dtype: float (suffix _f32), double (_f64), bf16 (_bf16) and f16 (_f16),
// instantiated by FOR_EACH_DTYPE below from one template; each op's cuda.rs names its kernels
// and launches them with the argument lists documented in its kernels.cu.
//
// Element counts are unsigned 64-bit; loops are grid-stride, so any grid size covers any n.
// Reductions accumulate in double in a fixed order (deterministic from run to run).

typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// Element types. The 16-bit types are their bits (NVRTC is given no CUDA headers, so no
// __half / __nv_bfloat16): a kernel loads every element to its arithmetic type with ld()
// (exact: float for the 16-bit types) and rounds on store with st<T>() (to nearest, ties to
// even), as the CPU computes a 16-bit op: in f32, its result rounded once (Round below).

struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

// The type a kernel computes an element of T in: T itself for float and double, float for the
// 16-bit types.
template <typename T> struct Arith { typedef T type; };
template <> struct Arith<bf16_t> { typedef float type; };
template <> struct Arith<f16_t> { typedef float type; };

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(bf16_t v) { return __uint_as_float((unsigned)v.bits << 16); }
__device__ __forceinline__ float ld(f16_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

// x rounded to float toward zero, its last bit set when inexact (round to odd): rounding that to
// a 16-bit type rounds x once (dtype.rs, round_to_odd_f32).
__device__ __forceinline__ float round_to_odd(double x) {
    float f = (float)x;
    if ((double)f == x || isnan(x)) return f;
    unsigned b = __float_as_uint(f);
    if (fabs((double)f) > fabs(x)) b -= 1;
    return __uint_as_float(b | 1u);
}

// float to bf16, to nearest even; a NaN stays a (quiet) NaN (the half crate's f32_to_bf16).
__device__ __forceinline__ bf16_t bf16_of(float v) {
    unsigned x = __float_as_uint(v);
    bf16_t r;
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) { r.bits = (unsigned short)((x >> 16) | 0x0040u); return r; }
    unsigned up = (x & 0x8000u) && (x & 0x17FFFu) ? 1u : 0u;
    r.bits = (unsigned short)((x >> 16) + up);
    return r;
}

// float to f16, to nearest even (subnormals and overflow to infinity included).
__device__ __forceinline__ f16_t f16_of(float v) {
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}

// Rounding to T. st<T>(v) stores a kernel's result as the CPU computes a 16-bit op: a float
// result rounded once; a double result (the f32 / f64 kernels compute some values in double)
// rounded to float first, as the f32 kernel stores it, then to T (the CPU's f32 kernel and
// narrowing). Round<T>::once(d) rounds a double to T once (a cast from f64: through float
// rounded to odd, as the CPU's `Scalar::of`).
template <typename T> struct Round;
template <> struct Round<float> {
    static __device__ __forceinline__ float of(float v) { return v; }
    static __device__ __forceinline__ float of(double v) { return (float)v; }
    static __device__ __forceinline__ float once(double v) { return (float)v; }
};
template <> struct Round<double> {
    static __device__ __forceinline__ double of(float v) { return (double)v; }
    static __device__ __forceinline__ double of(double v) { return v; }
    static __device__ __forceinline__ double once(double v) { return v; }
};
template <> struct Round<bf16_t> {
    static __device__ __forceinline__ bf16_t of(float v) { return bf16_of(v); }
    static __device__ __forceinline__ bf16_t of(double v) { return bf16_of((float)v); }
    static __device__ __forceinline__ bf16_t once(double v) { return bf16_of(round_to_odd(v)); }
};
template <> struct Round<f16_t> {
    static __device__ __forceinline__ f16_t of(float v) { return f16_of(v); }
    static __device__ __forceinline__ f16_t of(double v) { return f16_of((float)v); }
    static __device__ __forceinline__ f16_t once(double v) { return f16_of(round_to_odd(v)); }
};
template <typename T, typename V> __device__ __forceinline__ T st(V v) { return Round<T>::of(v); }

// Instantiates a program's KERNELS(T, S) macro for every dtype, in the order of SUFFIXES in
// nvrtc.rs.
#define FOR_EACH_DTYPE(KERNELS) KERNELS(float, f32) KERNELS(double, f64) KERNELS(bf16_t, bf16) KERNELS(f16_t, f16)

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

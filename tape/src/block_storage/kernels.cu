// CUDA kernels of channel copies: concatenation and its inverse, plain or adding into the destination (block storage, concat, narrow) (NVRTC; after tape/src/device/cuda/prelude.cuh).

// blockIdx.y picks the part: out[o * total + offset + j] = part[o * width + j] (ADD: +=, the
// gradient of a block storage's channels).
template <typename T, bool ADD> __device__ void concat_impl(T* out, PartList parts, u64 outer, u64 total) {
    unsigned p = blockIdx.y;
    const T* src = (const T*)parts.ptr[p];
    u64 w = parts.width[p], off = parts.offset[p];
    if (w == 0) return;
    GRID_STRIDE(i, outer * w) {
        u64 o = i / w, j = i - o * w;
        T* at = out + o * total + off + j;
        *at = ADD ? st<T>(ld(*at) + ld(src[i])) : src[i];
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
        dst[i] = ADD ? st<T>(ld(dst[i]) + ld(v)) : v;
    }
}

#define KERNELS(T, S) \
extern "C" __global__ void concat_##S(T* out, PartList parts, u64 outer, u64 total) {                   \
    concat_impl<T, false>(out, parts, outer, total); }                                                  \
extern "C" __global__ void concat_add_##S(T* out, PartList parts, u64 outer, u64 total) {               \
    concat_impl<T, true>(out, parts, outer, total); }                                                   \
extern "C" __global__ void split_##S(const T* g, PartList parts, u64 outer, u64 total) {                \
    split_impl<T, false>(g, parts, outer, total); }                                                     \
extern "C" __global__ void split_add_##S(const T* g, PartList parts, u64 outer, u64 total) {            \
    split_impl<T, true>(g, parts, outer, total); }

FOR_EACH_DTYPE(KERNELS)

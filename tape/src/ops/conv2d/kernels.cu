// CUDA kernels of conv2d's bias for 16-bit tensors (NVRTC; after tape/src/device/cuda/prelude.cuh).
// cuDNN adds the bias of f32 / f64 convolutions; these keep the 16-bit ones off cuDNN's tensor
// ops, whose bf16 support varies by version.

// y[i] += b[channel of i] for an NCHW y of n elements, c channels, hw per plane: the sum in T's
// arithmetic type, rounded once.
template <typename T> __device__ void conv_bias_add_impl(T* y, const T* b, u64 c, u64 hw, u64 n) {
    GRID_STRIDE(i, n) {
        u64 ch = (i / hw) % c;
        y[i] = st<T>(ld(y[i]) + ld(b[ch]));
    }
}

// One block per channel: gb[ch] = the sum over images and positions of g (NCHW, n images, c
// channels, hw per plane), in double in a fixed order, rounded once.
template <typename T> __device__ void conv_bias_grad_impl(const T* g, T* gb, u64 n, u64 c, u64 hw) {
    __shared__ double sh[RBLOCK];
    u64 ch = blockIdx.x;
    double acc = 0.0;
    for (u64 k = threadIdx.x; k < n * hw; k += RBLOCK) {
        u64 img = k / hw, pos = k - img * hw;
        acc += (double)ld(g[(img * c + ch) * hw + pos]);
    }
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) gb[ch] = st<T>(s);
}

#define KERNELS(T, S) \
extern "C" __global__ void conv_bias_add_##S(T* y, const T* b, u64 c, u64 hw, u64 n) {                 \
    conv_bias_add_impl<T>(y, b, c, hw, n); }                                                            \
extern "C" __global__ void conv_bias_grad_##S(const T* g, T* gb, u64 n, u64 c, u64 hw) {               \
    conv_bias_grad_impl<T>(g, gb, n, c, hw); }

FOR_EACH_DTYPE(KERNELS)

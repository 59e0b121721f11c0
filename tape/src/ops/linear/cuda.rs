//! CUDA path of `linear`: cuBLAS GEMMs (row-major operands seen as their column-major
//! transposes), the bias rows and the bias gradient (column sums in row order, as on the CPU)
//! with NVRTC kernels. Strict fp32 by default (cuBLAS default math); TF32 only when the device
//! was opened with `CudaOptions { tf32: true, .. }`.

use super::{Dims, LinearKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{cublas_err, grid, launch, set_gemm_math, CudaHandle, CudaScalar};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        BiasRows = "bias_rows",
        ColSum = "col_sum",
    }
}

const OP: &str = "linear";

fn int(v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::invalid(OP, format!("dimension {v} exceeds cuBLAS's int range")))
}

/// `C (m x n, column-major) = alpha * op(A) * op(B) + beta * C` on the device's stream.
#[allow(clippy::too_many_arguments)]
fn gemm<T: CudaScalar>(
    cu: &CudaHandle,
    (ta, tb): (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: &CudaSlice<T>,
    lda: usize,
    b: &CudaSlice<T>,
    ldb: usize,
    beta: T,
    c: &mut CudaSlice<T>,
    ldc: usize,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(ta),
        transb: op(tb),
        m: int(m)?,
        n: int(n)?,
        k: int(k)?,
        alpha: T::of(1.0),
        lda: int(lda)?,
        ldb: int(ldb)?,
        beta,
        ldc: int(ldc)?,
    };
    cu.backend.bind()?;
    let blas = cu.backend.blas();
    set_gemm_math(&blas, cu.options.tf32, T::DTYPE)?;
    // SAFETY: the callers size every operand from checked shapes so that, with the leading
    // dimensions given, op(A) is m x k, op(B) is k x n and C is m x n inside their buffers.
    unsafe { blas.gemm(cfg, a, b, c) }.map_err(|e| cublas_err("gemm", e))
}

impl LinearKernels for CudaKernels {
    fn linear_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        dims: Dims,
    ) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward_t::<T>(x, w, bias, dims))
    }

    fn linear_grad_input(&self, g: &Tensor, w: &Tensor, dims: Dims) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => grad_input_t::<T>(g, w, dims))
    }

    fn linear_grad_weight(&self, g: &Tensor, x: &Tensor, dims: Dims) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => grad_weight_t::<T>(g, x, dims))
    }

    fn linear_grad_bias(&self, g: &Tensor, (n, _, o): Dims) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => grad_bias_t::<T>(g, n, o))
    }
}

/// `x w^T + bias` for `x` `[n, i]`, `w` `[o, i]`.
fn forward_t<T: CudaScalar>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    (n, i, o): (usize, usize, usize),
) -> Result<Tensor>
where
    CudaBlas: Gemm<T>,
{
    let dev = x.device();
    let cu = dev.cuda_handle(OP)?;
    if n * o == 0 || (i == 0 && bias.is_none()) {
        return Tensor::zeros(&[n, o], T::DTYPE, dev);
    }
    let mut out = Tensor::cuda_uninit::<T>(&[n, o], dev)?;
    let (nu, ou) = (n as u64, o as u64);
    if let Some(b) = bias {
        let bs = b.cuda_slice::<T>()?;
        let os = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::BiasRows, T::DTYPE, grid(n * o); os, bs, &nu, &ou)?;
    }
    if i > 0 {
        let beta = T::of(if bias.is_some() { 1.0 } else { 0.0 });
        let (xs, ws) = (x.cuda_slice::<T>()?, w.cuda_slice::<T>()?);
        // y^T (o x n) = w (o x i) * x^T (i x n); w's buffer is w^T column-major.
        gemm(
            cu,
            (true, false),
            (o, n, i),
            ws,
            i,
            xs,
            i,
            beta,
            out.cuda_slice_mut::<T>()?,
            o,
        )?;
    }
    Ok(out)
}

/// `g w`: the input gradient `[n, i]`.
fn grad_input_t<T: CudaScalar>(
    g: &Tensor,
    w: &Tensor,
    (n, i, o): (usize, usize, usize),
) -> Result<Tensor>
where
    CudaBlas: Gemm<T>,
{
    let dev = g.device();
    let cu = dev.cuda_handle(OP)?;
    if n * i == 0 || o == 0 {
        return Tensor::zeros(&[n, i], T::DTYPE, dev);
    }
    let mut gx = Tensor::cuda_uninit::<T>(&[n, i], dev)?;
    let (gs, ws) = (g.cuda_slice::<T>()?, w.cuda_slice::<T>()?);
    // gx^T (i x n) = w^T (i x o) * g^T (o x n).
    gemm(
        cu,
        (false, false),
        (i, n, o),
        ws,
        i,
        gs,
        o,
        T::of(0.0),
        gx.cuda_slice_mut::<T>()?,
        i,
    )?;
    Ok(gx)
}

/// `g^T x`: the weight gradient `[o, i]`.
fn grad_weight_t<T: CudaScalar>(
    g: &Tensor,
    x: &Tensor,
    (n, i, o): (usize, usize, usize),
) -> Result<Tensor>
where
    CudaBlas: Gemm<T>,
{
    let dev = g.device();
    let cu = dev.cuda_handle(OP)?;
    if o * i == 0 || n == 0 {
        return Tensor::zeros(&[o, i], T::DTYPE, dev);
    }
    let mut gw = Tensor::cuda_uninit::<T>(&[o, i], dev)?;
    let (gs, xs) = (g.cuda_slice::<T>()?, x.cuda_slice::<T>()?);
    // gw^T (i x o) = x^T (i x n) * g (n x o); g's buffer is g^T column-major (o x n).
    gemm(
        cu,
        (false, true),
        (i, o, n),
        xs,
        i,
        gs,
        o,
        T::of(0.0),
        gw.cuda_slice_mut::<T>()?,
        i,
    )?;
    Ok(gw)
}

/// The bias gradient `[o]`: column sums of `g` in row order.
fn grad_bias_t<T: CudaScalar>(g: &Tensor, n: usize, o: usize) -> Result<Tensor> {
    let dev = g.device();
    let cu = dev.cuda_handle(OP)?;
    let mut gb = Tensor::cuda_uninit::<T>(&[o], dev)?;
    if o == 0 {
        return Ok(gb);
    }
    let (nu, ou) = (n as u64, o as u64);
    let gs = g.cuda_slice::<T>()?;
    let b = gb.cuda_slice_mut::<T>()?;
    launch!(&cu.backend, K::ColSum, T::DTYPE, grid(o); gs, b, &nu, &ou)?;
    Ok(gb)
}

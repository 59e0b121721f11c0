//! CUDA path of `matmul`: one cuBLAS strided-batched GEMM (row-major operands seen as their
//! column-major transposes, so `C^T = op(B)^T op(A)^T` is computed with the operands swapped and
//! no copies). Strict fp32 by default (cuBLAS default math); TF32 only when the device was
//! opened with `CudaOptions { tf32: true, .. }`.
//!
//! Not yet run on a GPU: written against cudarc's API and checked to compile only.

use super::{MatmulDims, MatmulKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::{cublas_err, set_gemm_math, CudaScalar};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};

const OP: &str = "matmul";

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(OP, format!("size {v} exceeds cuBLAS's int range")))
}

fn long(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(OP, format!("stride {v} exceeds cuBLAS's range")))
}

fn op(transposed: bool) -> cublasOperation_t {
    if transposed {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl MatmulKernels for CudaKernels {
    fn matmul_batched(
        &self,
        a: &Tensor,
        b: &Tensor,
        dims: MatmulDims,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_scalar!(a.dtype(), T => batched_t::<T>(a, b, dims, out_shape))
    }
}

fn batched_t<T: CudaScalar>(
    a: &Tensor,
    b: &Tensor,
    d: MatmulDims,
    out_shape: &[usize],
) -> Result<Tensor>
where
    CudaBlas: Gemm<T>,
{
    let dev = a.device();
    let cu = dev.cuda_handle(OP)?;
    let MatmulDims {
        batch,
        m,
        n,
        k,
        ta,
        tb,
    } = d;
    if batch * m * n == 0 || k == 0 {
        return Tensor::zeros(out_shape, T::DTYPE, dev);
    }
    let mut out = Tensor::cuda_uninit::<T>(out_shape, dev)?;
    // Column-major, C^T (n x m, ld n) = op(B)^T (n x k) * op(A)^T (k x m). B's buffer read
    // column-major is B^T (n x k, ld n) when B is stored [k, n], or B itself (k x n, ld k) when
    // stored [n, k]; likewise A's is A^T (k x m, ld k) or A (m x k, ld m).
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: T::of(1.0),
            lda: int(if tb { k } else { n })?,
            ldb: int(if ta { m } else { k })?,
            beta: T::of(0.0),
            ldc: int(n)?,
        },
        batch_size: int(batch)?,
        stride_a: long(k * n)?,
        stride_b: long(m * k)?,
        stride_c: long(m * n)?,
    };
    cu.backend.bind()?;
    let (bs, as_) = (b.cuda_slice::<T>()?, a.cuda_slice::<T>()?);
    let os = out.cuda_slice_mut::<T>()?;
    let blas = cu.backend.blas();
    set_gemm_math(&blas, cu.options.tf32, T::DTYPE)?;
    // SAFETY: the operands hold `batch` items of `k * n` (B), `m * k` (A) and `m * n` (C)
    // elements back to back, sized from checked shapes; with the leading dimensions above each
    // item's op(B)^T is n x k, op(A)^T k x m and C^T n x m inside its item.
    unsafe { blas.gemm_strided_batched(cfg, bs, as_, os) }
        .map_err(|e| cublas_err("gemm_strided_batched", e))?;
    Ok(out)
}

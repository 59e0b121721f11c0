//! CPU kernels of `matmul`: one GEMM per batch item through [`crate::backend::cpu::gemm`], the
//! items spread over threads when there are several of them and enough work (each GEMM then
//! runs on one thread), else each GEMM split over threads on its own.

use super::{MatmulDims, MatmulKernels};
use crate::backend::cpu::gemm::{gemm_ld_uninit, worth_parallel, Mat, Run};
use crate::backend::cpu::map::written_vec;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Item `i` of a batch of operands of `len` elements each, stored as is or transposed.
fn operand<T>(data: &[T], i: usize, len: usize, transposed: bool) -> Mat<'_, T> {
    let s = &data[i * len..(i + 1) * len];
    if transposed {
        Mat::t(s)
    } else {
        Mat::n(s)
    }
}

/// `batch` products `op(a_i) op(b_i)`, row-major, back to back.
fn batched<T: Elem>(a: &[T], b: &[T], d: MatmulDims) -> Vec<T> {
    let MatmulDims {
        batch,
        m,
        n,
        k,
        ta,
        tb,
    } = d;
    let (a_len, b_len, c_len) = (m * k, k * n, m * n);
    let len = batch * c_len;
    let one = |i: usize, dst: &mut [MaybeUninit<T>], parallel: bool| {
        let (ai, bi) = (operand(a, i, a_len, ta), operand(b, i, b_len, tb));
        gemm_ld_uninit(dst, n, ai, bi, (m, n, k), Run::new(parallel));
    };
    // Items over threads when there are enough of them to keep the threads busy and the whole
    // is worth it; otherwise each GEMM decides for itself.
    let items_in_parallel = batch > 1
        && worth_parallel(batch * m, n, k)
        && (batch >= rayon::current_num_threads() || !worth_parallel(m, n, k));
    // SAFETY: the chunks of `c_len` elements cover all `len` slots, and each GEMM writes every
    // element of its `m x n` chunk (with `k == 0` it writes zeros).
    unsafe {
        written_vec(len, |out| {
            if c_len == 0 {
                return;
            }
            if items_in_parallel {
                out.par_chunks_mut(c_len)
                    .enumerate()
                    .for_each(|(i, dst)| one(i, dst, false));
            } else {
                out.chunks_mut(c_len)
                    .enumerate()
                    .for_each(|(i, dst)| one(i, dst, true));
            }
        })
    }
}

impl MatmulKernels for Cpu {
    fn matmul_batched(
        &self,
        a: &Tensor,
        b: &Tensor,
        dims: MatmulDims,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_float!(a.dtype(), T => Tensor::from_vec(
            batched::<T>(a.as_slice::<T>()?, b.as_slice::<T>()?, dims),
            out_shape,
            a.device(),
        ))
    }
}

//! CPU kernels of `linear`: GEMMs through [`crate::backend::cpu::gemm`].

use super::{Dims, LinearKernels};
use crate::backend::cpu::gemm::{gemm, Mat, Run};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;

/// `out (n x o) = x (n x i) * w^T + bias`, `w` being `o x i`.
fn forward<T: Elem>(
    out: &mut [T],
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    (n, i, o): (usize, usize, usize),
) {
    let accumulate = match bias {
        Some(b) => {
            for row in out.chunks_exact_mut(o.max(1)).take(n) {
                row.copy_from_slice(&b[..o]);
            }
            true
        }
        None => false,
    };
    gemm(
        out,
        Mat::n(x),
        Mat::t(w),
        (n, o, i),
        accumulate,
        Run::new(true),
    );
}

/// `gx (n x i) = g (n x o) * w`.
fn grad_input<T: Elem>(gx: &mut [T], g: &[T], w: &[T], (n, i, o): (usize, usize, usize)) {
    gemm(gx, Mat::n(g), Mat::n(w), (n, i, o), false, Run::new(true));
}

/// `gw (o x i) = g^T (o x n) * x (n x i)`.
fn grad_weight<T: Elem>(gw: &mut [T], g: &[T], x: &[T], (n, i, o): (usize, usize, usize)) {
    gemm(gw, Mat::t(g), Mat::n(x), (o, i, n), false, Run::new(true));
}

/// `gb[j] = sum over rows of g[., j]`.
fn grad_bias<T: Elem>(gb: &mut [T], g: &[T], o: usize) {
    if o == 0 {
        return;
    }
    for row in g.chunks_exact(o) {
        gb.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
    }
}

impl LinearKernels for Cpu {
    fn linear_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        dims: Dims,
    ) -> Result<Tensor> {
        let mut out = Tensor::zeros(&[dims.0, dims.2], x.dtype(), x.device())?;
        dispatch_float!(x.dtype(), T => forward::<T>(
            out.make_mut::<T>()?,
            x.as_slice::<T>()?,
            w.as_slice::<T>()?,
            bias.map(|b| b.as_slice::<T>()).transpose()?,
            dims,
        ));
        Ok(out)
    }

    fn linear_grad_input(&self, g: &Tensor, w: &Tensor, dims: Dims) -> Result<Tensor> {
        let mut gx = Tensor::zeros(&[dims.0, dims.1], g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => grad_input::<T>(gx.make_mut::<T>()?, g.as_slice::<T>()?, w.as_slice::<T>()?, dims));
        Ok(gx)
    }

    fn linear_grad_weight(&self, g: &Tensor, x: &Tensor, dims: Dims) -> Result<Tensor> {
        let mut gw = Tensor::zeros(&[dims.2, dims.1], g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => grad_weight::<T>(gw.make_mut::<T>()?, g.as_slice::<T>()?, x.as_slice::<T>()?, dims));
        Ok(gw)
    }

    fn linear_grad_bias(&self, g: &Tensor, dims: Dims) -> Result<Tensor> {
        let mut gb = Tensor::zeros(&[dims.2], g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => grad_bias::<T>(gb.make_mut::<T>()?, g.as_slice::<T>()?, dims.2));
        Ok(gb)
    }
}

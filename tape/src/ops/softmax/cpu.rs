//! CPU kernels of softmax and log-softmax: row by row in `f64` (rows over threads for large
//! tensors), each row's result rounded once.

use super::{Rows, SoftmaxKernels};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// A zeroed buffer of `len` elements whose rows of `d` elements `f(row index, row)` fills, rows in
/// parallel when large.
fn by_rows<T: Elem>(len: usize, d: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    if d == 0 {
        return out;
    }
    if len >= PAR_MIN {
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    }
    out
}

fn forward<T: Elem>(x: &[T], rows: Rows) -> Vec<T> {
    let d = rows.d;
    by_rows(x.len(), d, |r, o| {
        let valid = rows.valid(r);
        let row = &x[r * d..r * d + valid];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
        let sum: f64 = row.iter().map(|v| (v.f64() - max).exp()).sum();
        let lse = sum.ln();
        for (oj, v) in o.iter_mut().zip(row) {
            let s = v.f64() - max;
            *oj = T::of(if rows.log { s - lse } else { s.exp() / sum });
        }
        let masked = if rows.log {
            T::neg_infinity()
        } else {
            T::zero()
        };
        o[valid..].iter_mut().for_each(|v| *v = masked);
    })
}

fn backward<T: Elem>(g: &[T], y: &[T], rows: Rows) -> Vec<T> {
    let d = rows.d;
    by_rows(g.len(), d, |r, o| {
        let valid = rows.valid(r);
        let (gr, yr) = (&g[r * d..r * d + valid], &y[r * d..r * d + valid]);
        if rows.log {
            let s: f64 = gr.iter().map(|v| v.f64()).sum();
            for ((oj, gv), yv) in o.iter_mut().zip(gr).zip(yr) {
                *oj = T::of(gv.f64() - yv.f64().exp() * s);
            }
        } else {
            let dot: f64 = gr.iter().zip(yr).map(|(a, b)| a.f64() * b.f64()).sum();
            for ((oj, gv), yv) in o.iter_mut().zip(gr).zip(yr) {
                *oj = T::of(yv.f64() * (gv.f64() - dot));
            }
        }
        // Masked entries keep their zero.
    })
}

impl SoftmaxKernels for Cpu {
    fn softmax_forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => Tensor::from_vec(forward::<T>(x.as_slice::<T>()?, rows), x.shape(), x.device()))
    }

    fn softmax_backward(&self, g: &Tensor, y: &Tensor, rows: Rows) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => Tensor::from_vec(
            backward::<T>(g.as_slice::<T>()?, y.as_slice::<T>()?, rows),
            g.shape(),
            g.device(),
        ))
    }
}

//! CPU kernels of `layer_norm`: row statistics and the input gradient row by row in `f64` (rows
//! over threads for large tensors); the weight and bias gradients column block by column block
//! (blocks over threads), each column summed over rows in row order, so the result does not
//! depend on the thread count.

use super::{LayerNormKernels, LnDims, RowStats};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::device::Device;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Columns per block of the weight and bias gradients.
const COLS: usize = 64;

/// `(mean, invstd)` of one row, in `f64`.
fn row_stats<T: Elem>(row: &[T], eps: f64) -> (f64, f64) {
    let d = row.len() as f64;
    let mean = row.iter().map(|v| v.f64()).sum::<f64>() / d;
    let var = row.iter().map(|v| (v.f64() - mean).powi(2)).sum::<f64>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Runs `f(row, out row)` over the rows of `out` (`d` elements each), in parallel when large.
fn rows_mut<T: Send>(out: &mut [T], d: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(d).enumerate().for_each(|(r, o)| f(r, o));
    }
}

/// `(y, mean, invstd)` of every row.
fn forward<T: Elem>(
    x: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
    LnDims { rows, d, eps }: LnDims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut y = vec![T::zero(); rows * d];
    let mut stats = vec![(T::zero(), T::zero()); rows];
    if d == 0 {
        return (y, Vec::new(), Vec::new());
    }
    let body = |r: usize, (o, st): (&mut [T], &mut (T, T))| {
        let row = &x[r * d..(r + 1) * d];
        let (mean, invstd) = row_stats(row, eps);
        for (j, (oj, v)) in o.iter_mut().zip(row).enumerate() {
            let mut h = (v.f64() - mean) * invstd;
            if let Some(w) = w {
                h *= w[j].f64();
            }
            if let Some(b) = b {
                h += b[j].f64();
            }
            *oj = T::of(h);
        }
        *st = (T::of(mean), T::of(invstd));
    };
    if y.len() >= PAR_MIN {
        y.par_chunks_mut(d)
            .zip(stats.par_iter_mut())
            .enumerate()
            .for_each(|(r, p)| body(r, p));
    } else {
        y.chunks_mut(d)
            .zip(stats.iter_mut())
            .enumerate()
            .for_each(|(r, p)| body(r, p));
    }
    let (mean, invstd) = stats.into_iter().unzip();
    (y, mean, invstd)
}

fn grad_input<T: Elem>(
    g: &[T],
    x: &[T],
    (mean, invstd): (&[T], &[T]),
    w: Option<&[T]>,
    LnDims { rows, d, .. }: LnDims,
) -> Vec<T> {
    let mut gx = vec![T::zero(); rows * d];
    if d == 0 {
        return gx;
    }
    rows_mut(&mut gx, d, |r, o| {
        let (gr, xr) = (&g[r * d..(r + 1) * d], &x[r * d..(r + 1) * d]);
        let (mu, is) = (mean[r].f64(), invstd[r].f64());
        let gh = |j: usize| match w {
            Some(w) => gr[j].f64() * w[j].f64(),
            None => gr[j].f64(),
        };
        let xhat = |j: usize| (xr[j].f64() - mu) * is;
        let (mut sum_gh, mut sum_ghx) = (0.0, 0.0);
        for j in 0..d {
            sum_gh += gh(j);
            sum_ghx += gh(j) * xhat(j);
        }
        let (a, b) = (sum_gh / d as f64, sum_ghx / d as f64);
        for (j, oj) in o.iter_mut().enumerate() {
            *oj = T::of(is * (gh(j) - a - xhat(j) * b));
        }
    });
    gx
}

/// `v` in `blocks` blocks of [`COLS`] columns (the last one shorter), or `blocks` absent blocks.
fn column_blocks<T>(v: Option<&mut Vec<T>>, blocks: usize) -> Vec<Option<&mut [T]>> {
    match v {
        Some(v) => v.chunks_mut(COLS).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    }
}

/// `(sum over rows of g xhat, sum over rows of g)`, each when asked for.
fn grad_affine<T: Elem>(
    g: &[T],
    x: Option<(&[T], &[T], &[T])>,
    want_bias: bool,
    LnDims { rows, d, .. }: LnDims,
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let mut gw = x.map(|_| vec![T::zero(); d]);
    let mut gb = want_bias.then(|| vec![T::zero(); d]);
    // Columns j0..j0 + width of each gradient, every column summed over rows in order.
    let block = |j0: usize, gw: Option<&mut [T]>, gb: Option<&mut [T]>| {
        let width = gw
            .as_ref()
            .map_or_else(|| gb.as_ref().map_or(0, |b| b.len()), |w| w.len());
        let mut acc_w = vec![0.0f64; width];
        let mut acc_b = vec![0.0f64; width];
        for r in 0..rows {
            let gr = &g[r * d + j0..r * d + j0 + width];
            if let Some((x, mean, invstd)) = x {
                let (mu, is) = (mean[r].f64(), invstd[r].f64());
                let xr = &x[r * d + j0..r * d + j0 + width];
                for ((a, gv), xv) in acc_w.iter_mut().zip(gr).zip(xr) {
                    *a += gv.f64() * ((xv.f64() - mu) * is);
                }
            }
            if gb.is_some() {
                acc_b.iter_mut().zip(gr).for_each(|(a, gv)| *a += gv.f64());
            }
        }
        if let Some(gw) = gw {
            gw.iter_mut().zip(&acc_w).for_each(|(o, &a)| *o = T::of(a));
        }
        if let Some(gb) = gb {
            gb.iter_mut().zip(&acc_b).for_each(|(o, &a)| *o = T::of(a));
        }
    };
    let blocks = d.div_ceil(COLS);
    let run = |i: usize, gw: Option<&mut [T]>, gb: Option<&mut [T]>| block(i * COLS, gw, gb);
    let parts: Vec<_> = column_blocks(gw.as_mut(), blocks)
        .into_iter()
        .zip(column_blocks(gb.as_mut(), blocks))
        .collect();
    if rows * d >= PAR_MIN {
        parts
            .into_par_iter()
            .enumerate()
            .for_each(|(i, (w, b))| run(i, w, b));
    } else {
        parts
            .into_iter()
            .enumerate()
            .for_each(|(i, (w, b))| run(i, w, b));
    }
    (gw, gb)
}

fn tensor<T: Elem>(v: Vec<T>, shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::from_vec(v, shape, device)
}

impl LayerNormKernels for Cpu {
    fn layer_norm_forward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        dims: LnDims,
    ) -> Result<(Tensor, RowStats)> {
        let dev = x.device();
        dispatch_float!(x.dtype(), T => {
            let (y, mean, invstd) = forward::<T>(
                x.as_slice::<T>()?,
                weight.map(|w| w.as_slice::<T>()).transpose()?,
                bias.map(|b| b.as_slice::<T>()).transpose()?,
                dims,
            );
            let rows = mean.len();
            Ok((
                tensor(y, x.shape(), dev)?,
                RowStats {
                    mean: tensor(mean, &[rows], dev)?,
                    invstd: tensor(invstd, &[rows], dev)?,
                },
            ))
        })
    }

    fn layer_norm_grad_input(
        &self,
        g: &Tensor,
        x: &Tensor,
        stats: &RowStats,
        weight: Option<&Tensor>,
        dims: LnDims,
    ) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => tensor(
            grad_input::<T>(
                g.as_slice::<T>()?,
                x.as_slice::<T>()?,
                (stats.mean.as_slice::<T>()?, stats.invstd.as_slice::<T>()?),
                weight.map(|w| w.as_slice::<T>()).transpose()?,
                dims,
            ),
            g.shape(),
            g.device(),
        ))
    }

    fn layer_norm_grad_affine(
        &self,
        g: &Tensor,
        x: Option<(&Tensor, &RowStats)>,
        want_bias: bool,
        dims: LnDims,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = g.device();
        dispatch_float!(g.dtype(), T => {
            let xs = match x {
                Some((x, s)) => Some((
                    x.as_slice::<T>()?,
                    s.mean.as_slice::<T>()?,
                    s.invstd.as_slice::<T>()?,
                )),
                None => None,
            };
            let (gw, gb) = grad_affine::<T>(g.as_slice::<T>()?, xs, want_bias, dims);
            Ok((
                gw.map(|v| tensor(v, &[dims.d], dev)).transpose()?,
                gb.map(|v| tensor(v, &[dims.d], dev)).transpose()?,
            ))
        })
    }
}

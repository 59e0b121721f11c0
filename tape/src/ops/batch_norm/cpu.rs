//! CPU kernels of batch normalisation over NCHW tensors. Per-channel sums are accumulated in `f64`
//! (statistics in two passes), so `f32` inputs get accurate means and variances.

use super::super::cpu_lanes::{lane_sum, lane_sum2};
use super::super::cpu_map::PAR_MIN;
use super::{normalization, BatchNormKernels, BnBackward, BnForward, BnGrads, BnStats, OP};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// An NCHW tensor as the kernels see it: `n` planes of `hw` elements for each of `c` channels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) hw: usize,
}

impl Layout {
    /// Elements per channel (`N*H*W`).
    pub(crate) fn count(&self) -> usize {
        self.n * self.hw
    }

    fn total(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Whether kernels over this layout are worth running on several threads.
    fn parallel(&self) -> bool {
        self.total() >= PAR_MIN
    }

    /// The `n` contiguous planes of channel `ch`.
    fn planes<'s, T>(&self, xs: &'s [T], ch: usize) -> impl Iterator<Item = &'s [T]> + 's {
        let (c, hw) = (self.c, self.hw);
        (0..self.n).map(move |i| {
            let start = (i * c + ch) * hw;
            &xs[start..start + hw]
        })
    }
}

/// `f(ch)` for every channel, in parallel for large tensors.
fn per_channel<R: Send>(l: Layout, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if l.parallel() {
        (0..l.c).into_par_iter().map(f).collect()
    } else {
        (0..l.c).map(f).collect()
    }
}

/// One output plane with the matching planes of the two inputs, numbered.
type PlaneTriple<'s, T> = (usize, ((&'s mut [T], &'s [T]), &'s [T]));

/// `out[plane] = f(channel, plane of a, plane of b)` over all planes, in parallel when large.
fn map_planes<T: Elem>(
    l: Layout,
    a: &[T],
    b: &[T],
    f: impl Fn(usize, &mut [T], &[T], &[T]) + Sync + Send,
) -> Vec<T> {
    let mut out = vec![T::zero(); l.total()];
    if l.hw == 0 {
        return out;
    }
    let body = |(p, ((o, a), b)): PlaneTriple<'_, T>| f(p % l.c, o, a, b);
    if l.parallel() {
        out.par_chunks_mut(l.hw)
            .zip(a.par_chunks(l.hw))
            .zip(b.par_chunks(l.hw))
            .enumerate()
            .for_each(body);
    } else {
        out.chunks_mut(l.hw)
            .zip(a.chunks(l.hw))
            .zip(b.chunks(l.hw))
            .enumerate()
            .for_each(body);
    }
    out
}

/// Per channel `(mean, biased variance)` of `xs` (two passes in `f64`).
pub(crate) fn channel_stats<T: Elem>(xs: &[T], l: Layout) -> Vec<(f64, f64)> {
    let m = l.count().max(1) as f64;
    per_channel(l, |ch| {
        let sum: f64 = l.planes(xs, ch).map(|p| lane_sum(p, |v| v)).sum();
        let mean = sum / m;
        let sq: f64 = l
            .planes(xs, ch)
            .map(|p| lane_sum(p, |v| (v - mean) * (v - mean)))
            .sum();
        (mean, sq / m)
    })
}

/// `out = xs * scale[ch] + shift[ch]` per channel, in the tensor's precision.
fn affine<T: Elem>(xs: &[T], l: Layout, scale: &[f64], shift: &[f64]) -> Vec<T> {
    map_planes(l, xs, xs, |ch, o, x, _| {
        let (a, b) = (T::of(scale[ch]), T::of(shift[ch]));
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * a + b;
        }
    })
}

/// Per channel `(sum g, sum g * xhat)` with `xhat = (x - mean) * invstd`; without `xs` only the
/// first sum is computed (the second is 0).
fn grad_sums<T: Elem>(
    g: &[T],
    xs: Option<&[T]>,
    l: Layout,
    mean: &[f64],
    invstd: &[f64],
) -> Vec<(f64, f64)> {
    per_channel(l, |ch| {
        let sum_g: f64 = l.planes(g, ch).map(|p| lane_sum(p, |v| v)).sum();
        let sum_gx = match xs {
            Some(xs) => {
                let (m, k) = (mean[ch], invstd[ch]);
                l.planes(g, ch)
                    .zip(l.planes(xs, ch))
                    .map(|(gp, xp)| lane_sum2(gp, xp, |g, x| g * (x - m)))
                    .sum::<f64>()
                    * k
            }
            None => 0.0,
        };
        (sum_g, sum_gx)
    })
}

/// Per-channel coefficients of the training-mode input gradient.
#[derive(Clone, Copy, Debug)]
pub(super) struct InputGradCoef {
    /// `weight * invstd`.
    pub(super) scale: f64,
    /// The batch mean.
    pub(super) mean: f64,
    /// The batch `1 / sqrt(var + eps)`.
    pub(super) invstd: f64,
    /// `sum(g) / m`.
    pub(super) mean_g: f64,
    /// `sum(g * xhat) / m`.
    pub(super) mean_gx: f64,
}

/// Training-mode input gradient: `scale * (g - mean_g - xhat * mean_gx)`, evaluated in the
/// tensor's precision as `scale * g - scale * mean_g - (scale * invstd * mean_gx) * (x - mean)`.
fn train_grad_input<T: Elem>(g: &[T], xs: &[T], l: Layout, coef: &[InputGradCoef]) -> Vec<T> {
    map_planes(l, g, xs, |ch, o, g, x| {
        let k = coef[ch];
        let a = T::of(k.scale);
        let c = T::of(-k.scale * k.mean_g);
        let b = T::of(-k.scale * k.invstd * k.mean_gx);
        let mean = T::of(k.mean);
        for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
            *o = a * g + c + b * (x - mean);
        }
    })
}

impl BatchNormKernels for Cpu {
    fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let x = a.x;
        let [n, c, h, w] = x.dims4(OP)?;
        let l = Layout { n, c, hw: h * w };
        let norm = normalization(
            OP,
            a.training,
            l.count(),
            a.running,
            a.weight,
            a.bias,
            a.opts.eps,
            || Ok(dispatch_float!(x.dtype(), T => channel_stats::<T>(x.as_slice::<T>()?, l))),
        )?;
        let out = dispatch_float!(x.dtype(), T => Tensor::from_vec(affine::<T>(x.as_slice::<T>()?, l, &norm.scale, &norm.shift), x.shape(), x.device()))?;
        let stats = norm.conclude(
            a.running,
            a.update_running,
            a.opts.momentum,
            a.want_stats,
            x.device(),
        )?;
        Ok((out, stats))
    }

    fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads> {
        let g = a.g;
        let [n, c, h, w] = g.dims4(OP)?;
        let l = Layout { n, c, hw: h * w };
        let [want_x, want_w, want_b] = a.want;
        let (mean, invstd) = (a.stats.mean.to_f64_vec(), a.stats.invstd.to_f64_vec());
        let need_sums = want_w || want_b || (a.training && want_x);
        let sums = if !need_sums {
            Vec::new()
        } else {
            dispatch_float!(g.dtype(), T => {
                let xs = a.x.map(|x| x.as_slice::<T>()).transpose()?;
                grad_sums::<T>(g.as_slice::<T>()?, xs, l, &mean, &invstd)
            })
        };
        let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let vector = |v: &[f64]| Tensor::from_f64(v, &[c], g.dtype(), g.device());
        let gw = want_w.then(|| vector(&sum_gx)).transpose()?;
        let gb = want_b.then(|| vector(&sum_g)).transpose()?;
        if !want_x {
            return Ok((None, gw, gb));
        }
        let missing =
            || Error::Backward("batch_norm2d: the input gradient needs the weight".into());
        let weight = a.weight.ok_or_else(missing)?.try_to_f64_vec()?;
        let scale: Vec<f64> = weight.iter().zip(&invstd).map(|(w, s)| w * s).collect();
        let gx = match (a.training, a.x) {
            (true, Some(x)) => {
                let m = l.count() as f64;
                let coef: Vec<InputGradCoef> = (0..l.c)
                    .map(|ch| InputGradCoef {
                        scale: scale[ch],
                        mean: mean[ch],
                        invstd: invstd[ch],
                        mean_g: sum_g[ch] / m,
                        mean_gx: sum_gx[ch] / m,
                    })
                    .collect();
                dispatch_float!(g.dtype(), T => {
                    let v = train_grad_input::<T>(g.as_slice::<T>()?, x.as_slice::<T>()?, l, &coef);
                    Tensor::from_vec(v, g.shape(), g.device())
                })?
            }
            (true, None) => return Err(missing()),
            (false, _) => {
                let zero = vec![0.0; l.c];
                dispatch_float!(g.dtype(), T => Tensor::from_vec(affine::<T>(g.as_slice::<T>()?, l, &scale, &zero), g.shape(), g.device()))?
            }
        };
        Ok((Some(gx), gw, gb))
    }
}

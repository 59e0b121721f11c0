//! CPU kernels of batch normalisation over NCHW tensors. Per-channel sums are accumulated in `f64`
//! (statistics in two passes), so `f32` inputs get accurate means and variances.

use super::super::lanes::{lane_sum, lane_sum2};
use super::super::PAR_MIN;
use crate::dtype::Elem;
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
pub(super) fn affine<T: Elem>(xs: &[T], l: Layout, scale: &[f64], shift: &[f64]) -> Vec<T> {
    map_planes(l, xs, xs, |ch, o, x, _| {
        let (a, b) = (T::of(scale[ch]), T::of(shift[ch]));
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * a + b;
        }
    })
}

/// Per channel `(sum g, sum g * xhat)` with `xhat = (x - mean) * invstd`; without `xs` only the
/// first sum is computed (the second is 0).
pub(super) fn grad_sums<T: Elem>(
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
pub(super) fn train_grad_input<T: Elem>(
    g: &[T],
    xs: &[T],
    l: Layout,
    coef: &[InputGradCoef],
) -> Vec<T> {
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

//! CPU kernels of batch normalisation over NCHW tensors. Per-channel sums are accumulated in `f64`
//! (statistics in two passes), so `f32` inputs get accurate means and variances.

use super::sync::global_grad_sums;
use super::{
    channel_affine, host_forward, BatchNormKernels, BnBackward, BnForward, BnGrads, BnStats,
    HostNorm, OP,
};
use crate::backend::cpu::convert::convert_into;
use crate::backend::cpu::lanes::{grad_sums, lane_sum};
use crate::backend::cpu::map::by_channel;
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::{Elem, Scalar};
use crate::error::{Error, Result};
use crate::simd::widest_simd;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
    fn planes<'s, T>(&self, xs: &'s [T], ch: usize) -> impl Iterator<Item = &'s [T]> + Clone + 's {
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

/// The sum of the values in `planes` (`center`: `None`) or of their squared deviations from
/// `center`, exactly as [`moments`] takes each pass: a synchronised batch norm's local sums.
pub(crate) fn channel_sum<'s, T: Elem, P>(planes: P, center: Option<f64>) -> f64
where
    P: Iterator<Item = &'s [T]>,
{
    match center {
        None => planes.map(|p| lane_sum(p, |v| v)).sum(),
        Some(mean) => planes
            .map(|p| lane_sum(p, |v| (v - mean) * (v - mean)))
            .sum(),
    }
}

/// `(mean, biased variance)` of the values in `planes` (`m` in all), in two passes in `f64`.
fn moments<'s, T: Elem, P>(planes: P, m: usize) -> (f64, f64)
where
    P: Iterator<Item = &'s [T]> + Clone,
{
    let m = m.max(1) as f64;
    let mean = planes.clone().map(|p| lane_sum(p, |v| v)).sum::<f64>() / m;
    let sq: f64 = planes
        .map(|p| lane_sum(p, |v| (v - mean) * (v - mean)))
        .sum();
    (mean, sq / m)
}

widest_simd!(
    /// Writes `out = x * scale + shift` (and with `relu`, `max(., 0)`, NaN passing) plane by
    /// plane, in the tensor's precision.
    fn write_affine<'s, T>(
        xs: impl Iterator<Item = &'s [T]>,
        out: Vec<&mut [MaybeUninit<T>]>,
        scale: f64,
        shift: f64,
        relu: bool,
    ) = write_affine_body;
);

#[inline(always)]
fn write_affine_body<'s, T: Elem>(
    xs: impl Iterator<Item = &'s [T]>,
    out: Vec<&mut [MaybeUninit<T>]>,
    scale: f64,
    shift: f64,
    relu: bool,
) {
    let (a, b) = (T::of(scale), T::of(shift));
    for (o, x) in out.into_iter().zip(xs) {
        for (o, &x) in o.iter_mut().zip(x) {
            let v = x * a + b;
            o.write(if relu && v <= T::zero() { T::zero() } else { v });
        }
    }
}

/// Batch norm (with `relu`, followed by ReLU) channel by channel over `n x c x hw` values whose
/// channel `ch` is the `n` planes `planes(ch)`: in training each channel's statistics and then
/// its output while the channel is in cache; in eval with the running statistics' scale and
/// shift. Returns the output (NCHW) and, in training, each channel's `(mean, biased variance)`.
/// The plain batch norm and the fused concat -> batch norm -> ReLU differ only in `planes`.
pub(crate) fn normalize_by_channel<'s, T: Elem, P>(
    (n, c, hw): (usize, usize, usize),
    parallel: bool,
    planes: impl Fn(usize) -> P + Sync,
    how: &HostNorm<'_>,
    relu: bool,
) -> (Vec<T>, Vec<(f64, f64)>)
where
    P: Iterator<Item = &'s [T]> + Clone,
{
    let f = |ch: usize, out: Vec<&mut [MaybeUninit<T>]>| match *how {
        HostNorm::Batch(w, b, eps) => {
            let (mean, var) = moments(planes(ch), n * hw);
            let [_, scale, shift] = channel_affine(mean, var, w[ch], b[ch], eps);
            write_affine(planes(ch), out, scale, shift, relu);
            Some((mean, var))
        }
        HostNorm::Running(norm) => {
            write_affine(planes(ch), out, norm.scale[ch], norm.shift[ch], relu);
            None
        }
    };
    // SAFETY: `write_affine` writes every element of the `n` planes of `hw` elements it gets
    // (each input plane of channel `ch` is `hw` long, as is each output plane).
    let (v, stats) = unsafe { by_channel((n, c, hw), parallel, f) };
    (v, stats.into_iter().flatten().collect())
}

/// `planes` (`n` planes of `hw` 16-bit values, one channel's) converted to `f32` in one buffer.
pub(crate) fn staged<'s, S: Scalar + 's>(
    planes: impl Iterator<Item = &'s [S]>,
    len: usize,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    for p in planes {
        v.reserve(p.len());
        convert_into(&mut v.spare_capacity_mut()[..p.len()], p);
        // SAFETY: `convert_into` wrote the `p.len()` slots after the old length.
        unsafe { v.set_len(v.len() + p.len()) };
    }
    v
}

/// [`normalize_by_channel`] over 16-bit planes: each channel's planes converted to `f32` in a
/// buffer of the channel's own (the task's, `n * hw` values), normalised exactly as `f32`
/// planes are, and rounded once into the 16-bit output. No `f32` copy of the tensor.
pub(crate) fn normalize_by_channel_half<'s, S: Scalar + 's, P>(
    (n, c, hw): (usize, usize, usize),
    parallel: bool,
    planes: impl Fn(usize) -> P + Sync,
    how: &HostNorm<'_>,
    relu: bool,
) -> (Vec<S>, Vec<(f64, f64)>)
where
    P: Iterator<Item = &'s [S]>,
{
    let f = |ch: usize, out: Vec<&mut [MaybeUninit<S>]>| {
        let x = staged(planes(ch), n * hw);
        let xs = || x.chunks(hw.max(1));
        let mut y: Vec<f32> = Vec::with_capacity(n * hw);
        let y_planes: Vec<_> = y.spare_capacity_mut()[..n * hw]
            .chunks_mut(hw.max(1))
            .collect();
        let stats = match *how {
            HostNorm::Batch(w, b, eps) => {
                let (mean, var) = moments(xs(), n * hw);
                let [_, scale, shift] = channel_affine(mean, var, w[ch], b[ch], eps);
                write_affine(xs(), y_planes, scale, shift, relu);
                Some((mean, var))
            }
            HostNorm::Running(norm) => {
                write_affine(xs(), y_planes, norm.scale[ch], norm.shift[ch], relu);
                None
            }
        };
        // SAFETY: `write_affine` wrote every one of the `n * hw` values (as in
        // `normalize_by_channel`).
        unsafe { y.set_len(n * hw) };
        for (o, v) in out.into_iter().zip(y.chunks(hw.max(1))) {
            convert_into(o, v);
        }
        stats
    };
    // SAFETY: every output plane gets its `hw` values above.
    let (v, stats) = unsafe { by_channel((n, c, hw), parallel, f) };
    (v, stats.into_iter().flatten().collect())
}

/// `out = xs * scale[ch] + shift[ch]` per channel, in the tensor's precision.
fn affine<T: Elem>(xs: &[T], l: Layout, scale: &[f64], shift: &[f64]) -> Vec<T> {
    map_planes(l, xs, xs, |ch, o, x, _| {
        affine_plane(o, x, T::of(scale[ch]), T::of(shift[ch]))
    })
}

widest_simd!(
    /// `out = x * a + b`: the expression of the forward's [`write_affine`], so the same values.
    pub(crate) fn affine_plane<T>(out: &mut [T], x: &[T], a: T, b: T) = affine_plane_body;
);

#[inline(always)]
fn affine_plane_body<T: Elem>(out: &mut [T], x: &[T], a: T, b: T) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = x * a + b;
    }
}

/// Channel `ch`'s `(sum g, sum g * xhat)` with `xhat = (x - mean) * invstd`; without `xs` only
/// the first sum is computed (the second is 0).
fn channel_grad_sums<T: Elem>(
    g: &[T],
    xs: Option<&[T]>,
    l: Layout,
    ch: usize,
    mean: f64,
    invstd: f64,
) -> (f64, f64) {
    match xs {
        Some(xs) => {
            // Both sums in one pass over the planes (the same bits as two).
            let sums: Vec<(f64, f64)> = l
                .planes(g, ch)
                .zip(l.planes(xs, ch))
                .map(|(gp, xp)| grad_sums(gp, xp, mean))
                .collect();
            let sum_g: f64 = sums.iter().map(|s| s.0).sum();
            (sum_g, sums.iter().map(|s| s.1).sum::<f64>() * invstd)
        }
        None => (l.planes(g, ch).map(|p| lane_sum(p, |v| v)).sum(), 0.0),
    }
}

/// Per-channel coefficients of the training-mode input gradient.
#[derive(Clone, Copy, Debug)]
struct InputGradCoef {
    /// `weight * invstd`.
    scale: f64,
    /// The batch mean.
    mean: f64,
    /// The batch `1 / sqrt(var + eps)`.
    invstd: f64,
    /// `sum(g) / m`.
    mean_g: f64,
    /// `sum(g * xhat) / m`.
    mean_gx: f64,
}

widest_simd!(
    /// Writes channel planes of the training-mode input gradient: `scale * (g - mean_g - xhat *
    /// mean_gx)`, evaluated in the tensor's precision as
    /// `scale * g - scale * mean_g - (scale * invstd * mean_gx) * (x - mean)`.
    fn write_train_grad<'s, T>(
        g: impl Iterator<Item = &'s [T]>,
        xs: impl Iterator<Item = &'s [T]>,
        out: Vec<&mut [MaybeUninit<T>]>,
        k: InputGradCoef,
    ) = write_train_grad_body;
);

#[inline(always)]
fn write_train_grad_body<'s, T: Elem>(
    g: impl Iterator<Item = &'s [T]>,
    xs: impl Iterator<Item = &'s [T]>,
    out: Vec<&mut [MaybeUninit<T>]>,
    k: InputGradCoef,
) {
    let a = T::of(k.scale);
    let c = T::of(-k.scale * k.mean_g);
    let b = T::of(-k.scale * k.invstd * k.mean_gx);
    let mean = T::of(k.mean);
    for ((o, g), x) in out.into_iter().zip(g).zip(xs) {
        for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
            o.write(a * g + c + b * (x - mean));
        }
    }
}

impl BatchNormKernels for Cpu {
    fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let x = a.x;
        let [n, c, h, w] = x.dims4(OP)?;
        let l = Layout { n, c, hw: h * w };
        let step = (a.training, a.update_running, a.want_stats);
        host_forward(
            a.weight,
            a.bias,
            a.running,
            a.opts,
            step,
            a.given,
            l.count(),
            x.device(),
            |center| {
                Ok(dispatch_float!(x.dtype(), T => {
                    let xs = x.as_slice::<T>()?;
                    per_channel(l, |ch| channel_sum(l.planes(xs, ch), center.map(|c| c[ch])))
                }))
            },
            |how| {
                Ok(dispatch_float!(x.dtype(), T => {
                    let xs = x.as_slice::<T>()?;
                    let planes = |ch| l.planes(xs, ch);
                    let (v, stats) =
                        normalize_by_channel((n, c, l.hw), l.parallel(), planes, &how, false);
                    (Tensor::from_vec(v, x.shape(), x.device())?, stats)
                }))
            },
        )
    }

    /// Channel by channel: the sums, then (training) the channel's input gradient while its
    /// planes are in cache.
    fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads> {
        let g = a.g;
        let [n, c, h, w] = g.dims4(OP)?;
        let l = Layout { n, c, hw: h * w };
        let [want_x, want_w, want_b] = a.want;
        let (mean, invstd) = a.stats.values()?;
        let missing =
            || Error::Backward("batch_norm2d: the input gradient needs the weight".into());
        let weight = match want_x {
            true => a.weight.ok_or_else(missing)?.try_to_f64_vec()?,
            false => Vec::new(),
        };
        let train_x = match (want_x && a.training, a.x) {
            (true, None) => return Err(missing()),
            (t, x) => x.filter(|_| t),
        };
        let need_sums = want_w || want_b || train_x.is_some();
        let m = l.count() as f64;
        let (gx, sums) = dispatch_float!(g.dtype(), T => {
            let gs = g.as_slice::<T>()?;
            let xs = a.x.map(|x| x.as_slice::<T>()).transpose()?;
            match (train_x, a.sync) {
                (Some(x), Some(sync)) => {
                    // Synchronised: the sums of every channel first, summed over the group,
                    // then the input gradient from the global sums; the weight's and bias's
                    // gradients stay local.
                    let x = x.as_slice::<T>()?;
                    let local = per_channel(l, |ch| channel_grad_sums(gs, xs, l, ch, mean[ch], invstd[ch]));
                    let (global, total) = global_grad_sums(sync, &local, l.count())?;
                    let f = |ch: usize, out: Vec<&mut [MaybeUninit<T>]>| {
                        let k = InputGradCoef {
                            scale: weight[ch] * invstd[ch],
                            mean: mean[ch],
                            invstd: invstd[ch],
                            mean_g: global[ch] / total,
                            mean_gx: global[c + ch] / total,
                        };
                        write_train_grad(l.planes(gs, ch), l.planes(x, ch), out, k);
                    };
                    // SAFETY: `write_train_grad` writes every element of the `n` planes of `hw`
                    // elements it gets (the gradient's and the input's planes are `hw` long).
                    let (v, _) = unsafe { by_channel((n, c, l.hw), l.parallel(), f) };
                    (Some(Tensor::from_vec(v, g.shape(), g.device())?), local)
                }
                (Some(x), None) => {
                    let x = x.as_slice::<T>()?;
                    let f = |ch: usize, out: Vec<&mut [MaybeUninit<T>]>| {
                        let (sg, sgx) = channel_grad_sums(gs, xs, l, ch, mean[ch], invstd[ch]);
                        let k = InputGradCoef {
                            scale: weight[ch] * invstd[ch],
                            mean: mean[ch],
                            invstd: invstd[ch],
                            mean_g: sg / m,
                            mean_gx: sgx / m,
                        };
                        write_train_grad(l.planes(gs, ch), l.planes(x, ch), out, k);
                        (sg, sgx)
                    };
                    // SAFETY: `write_train_grad` writes every element of the `n` planes of `hw`
                    // elements it gets (the gradient's and the input's planes are `hw` long).
                    let (v, sums) = unsafe { by_channel((n, c, l.hw), l.parallel(), f) };
                    (Some(Tensor::from_vec(v, g.shape(), g.device())?), sums)
                }
                (None, _) => {
                    let sums = match need_sums {
                        true => per_channel(l, |ch| channel_grad_sums(gs, xs, l, ch, mean[ch], invstd[ch])),
                        false => Vec::new(),
                    };
                    let gx = match want_x {
                        // Eval mode: the running statistics are constants, gx = g * weight * invstd.
                        true => {
                            let scale: Vec<f64> = weight.iter().zip(&invstd).map(|(w, s)| w * s).collect();
                            Some(Tensor::from_vec(affine::<T>(gs, l, &scale, &vec![0.0; c]), g.shape(), g.device())?)
                        }
                        false => None,
                    };
                    (gx, sums)
                }
            }
        });
        let vector = |v: Vec<f64>| Tensor::from_f64(&v, &[c], g.dtype(), g.device());
        let gw = want_w
            .then(|| vector(sums.iter().map(|s| s.1).collect()))
            .transpose()?;
        let gb = want_b
            .then(|| vector(sums.iter().map(|s| s.0).collect()))
            .transpose()?;
        Ok((gx, gw, gb))
    }
}

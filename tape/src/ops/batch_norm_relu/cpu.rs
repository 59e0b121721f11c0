//! CPU kernels of the fused concat -> batch norm -> ReLU. Every output plane `(image, channel)`
//! is computed straight from the part that holds the channel; gradients are written per part.

use super::super::batch_norm::cpu::{channel_stats, Layout};
use super::super::batch_norm::{normalization, BnStats};
use super::super::cpu_lanes::{lane_sum2, masked_sums};
use super::super::cpu_map::PAR_MIN;
use super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads, OP};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The parts as the kernels see them: each part's data and channel count; planes are `hw` long
/// and there are `n` images.
struct Parts<'a, T> {
    data: Vec<&'a [T]>,
    channels: Vec<usize>,
    n: usize,
    hw: usize,
    /// For each output channel: (part, channel within the part).
    owner: Vec<(usize, usize)>,
}

impl<'a, T: Elem> Parts<'a, T> {
    fn new(data: Vec<&'a [T]>, channels: Vec<usize>, n: usize, hw: usize) -> Self {
        let owner = channels
            .iter()
            .enumerate()
            .flat_map(|(p, &c)| (0..c).map(move |lc| (p, lc)))
            .collect();
        Parts {
            data,
            channels,
            n,
            hw,
            owner,
        }
    }

    /// Total channels.
    fn c(&self) -> usize {
        self.owner.len()
    }

    /// The input plane of output channel `ch` in image `i`.
    fn plane(&self, i: usize, ch: usize) -> &'a [T] {
        let (p, lc) = self.owner[ch];
        let start = (i * self.channels[p] + lc) * self.hw;
        &self.data[p][start..start + self.hw]
    }

    fn parallel(&self) -> bool {
        self.n * self.c() * self.hw >= PAR_MIN
    }
}

/// Per output channel `(mean, biased variance)`, part by part.
fn channel_stats_parts<T: Elem>(parts: &Parts<'_, T>) -> Vec<(f64, f64)> {
    parts
        .data
        .iter()
        .zip(&parts.channels)
        .flat_map(|(xs, &c)| {
            let l = Layout {
                n: parts.n,
                c,
                hw: parts.hw,
            };
            channel_stats(xs, l)
        })
        .collect()
}

/// `out[i, ch] = max(x[i, ch] * scale[ch] + shift[ch], 0)` in the tensor's precision (NaN passes).
fn forward<T: Elem>(parts: &Parts<'_, T>, scale: &[f64], shift: &[f64]) -> Vec<T> {
    let (c, hw) = (parts.c(), parts.hw);
    let mut out = vec![T::zero(); parts.n * c * hw];
    if hw == 0 {
        return out;
    }
    let body = |(p, o): (usize, &mut [T])| {
        let (i, ch) = (p / c, p % c);
        let (a, b) = (T::of(scale[ch]), T::of(shift[ch]));
        for (o, &x) in o.iter_mut().zip(parts.plane(i, ch)) {
            let v = x * a + b;
            *o = if v <= T::zero() { T::zero() } else { v }; // NaN passes, as in PyTorch
        }
    };
    if parts.parallel() {
        out.par_chunks_mut(hw).enumerate().for_each(body);
    } else {
        out.chunks_mut(hw).enumerate().for_each(body);
    }
    out
}

/// Per output channel `(sum g', sum g' * (x - mean))` with `g' = g` where the output is positive
/// and 0 elsewhere; `(x - mean)` sums only when `with_x`.
fn grad_sums<T: Elem>(
    parts: &Parts<'_, T>,
    g: &[T],
    y: &[T],
    mean: &[f64],
    with_x: bool,
) -> Vec<(f64, f64)> {
    let (c, hw) = (parts.c(), parts.hw);
    let per = |ch: usize| {
        let m = mean[ch];
        let (mut sg, mut sgx) = (0.0, 0.0);
        for i in 0..parts.n {
            let at = (i * c + ch) * hw;
            let (gp, yp) = (&g[at..at + hw], &y[at..at + hw]);
            if with_x {
                let (a, b) = masked_sums(gp, yp, parts.plane(i, ch), m);
                sg += a;
                sgx += b;
            } else {
                sg += lane_sum2(gp, yp, |g, y| if y > 0.0 { g } else { 0.0 });
            }
        }
        (sg, sgx)
    };
    if parts.parallel() {
        (0..c).into_par_iter().map(per).collect()
    } else {
        (0..c).map(per).collect()
    }
}

/// Per output channel: the input gradient is `a * g' + b * (x - mean) + k` with `g'` the masked
/// output gradient (`b = k = 0` in eval mode).
#[derive(Clone, Copy, Debug)]
pub(super) struct InputCoef {
    pub(super) a: f64,
    pub(super) b: f64,
    pub(super) k: f64,
    pub(super) mean: f64,
}

/// The input gradient of part `p`, shaped like the part.
fn grad_part<T: Elem>(
    parts: &Parts<'_, T>,
    p: usize,
    g: &[T],
    y: &[T],
    coef: &[InputCoef],
) -> Vec<T> {
    let (c, hw, cp) = (parts.c(), parts.hw, parts.channels[p]);
    let offset: usize = parts.channels[..p].iter().sum();
    let mut out = vec![T::zero(); parts.n * cp * hw];
    if hw == 0 {
        return out;
    }
    let body = |(q, o): (usize, &mut [T])| {
        let (i, lc) = (q / cp, q % cp);
        let ch = offset + lc;
        let at = (i * c + ch) * hw;
        let (gp, yp, xp) = (&g[at..at + hw], &y[at..at + hw], parts.plane(i, ch));
        let k = coef[ch];
        let (a, b, kk, mean) = (T::of(k.a), T::of(k.b), T::of(k.k), T::of(k.mean));
        for (((o, &g), &y), &x) in o.iter_mut().zip(gp).zip(yp).zip(xp) {
            let gm = if y > T::zero() { g } else { T::zero() };
            *o = a * gm + kk + b * (x - mean);
        }
    };
    if parts.n * cp * hw >= PAR_MIN {
        out.par_chunks_mut(hw).enumerate().for_each(body);
    } else {
        out.chunks_mut(hw).enumerate().for_each(body);
    }
    out
}

impl BatchNormReluKernels for Cpu {
    fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let x0 = a.parts[0];
        let [n, _, h, w] = x0.dims4(OP)?;
        let (hw, c) = (h * w, a.channels.iter().sum::<usize>());
        let norm = normalization(
            OP,
            a.training,
            n * hw,
            a.running,
            a.weight,
            a.bias,
            a.opts.eps,
            || {
                Ok(dispatch_float!(x0.dtype(), T => {
                    let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
                    channel_stats_parts(&Parts::new(data, a.channels.to_vec(), n, hw))
                }))
            },
        )?;
        let out = dispatch_float!(x0.dtype(), T => {
            let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            let v = forward(&Parts::new(data, a.channels.to_vec(), n, hw), &norm.scale, &norm.shift);
            Tensor::from_vec(v, &[n, c, h, w], x0.device())
        })?;
        let stats = norm.conclude(
            a.running,
            a.update_running,
            a.opts.momentum,
            a.want_stats,
            x0.device(),
        )?;
        Ok((out, stats))
    }

    fn bn_relu_backward(&self, a: &BnReluBackward<'_>) -> Result<BnReluGrads> {
        let g = a.g;
        let [n, c, h, w] = g.dims4(OP)?;
        let hw = h * w;
        let (mean, invstd) = (
            a.stats.mean.try_to_f64_vec()?,
            a.stats.invstd.try_to_f64_vec()?,
        );
        let weight = a.weight.try_to_f64_vec()?;
        let any_x = a.want_parts.iter().any(|&b| b);
        let mut gparts: Vec<Option<Tensor>> = vec![None; a.parts.len()];
        let (mut gw, mut gb) = (None, None);
        dispatch_float!(g.dtype(), T => {
            let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            let parts = Parts::new(data, a.channels.to_vec(), n, hw);
            let (gs, ys) = (g.as_slice::<T>()?, a.out.as_slice::<T>()?);
            let with_x = a.want_weight || (a.training && any_x);
            let sums = grad_sums(&parts, gs, ys, &mean, with_x);
            let sum_g: Vec<f64> = sums.iter().map(|s| s.0).collect();
            let sum_gx: Vec<f64> = sums.iter().zip(&invstd).map(|(s, k)| s.1 * k).collect();
            if a.want_weight {
                gw = Some(Tensor::from_f64(&sum_gx, &[c], g.dtype(), g.device())?);
            }
            if a.want_bias {
                gb = Some(Tensor::from_f64(&sum_g, &[c], g.dtype(), g.device())?);
            }
            if any_x {
                let m = (n * hw) as f64;
                let coef: Vec<InputCoef> = (0..c)
                    .map(|ch| {
                        let a_ = weight[ch] * invstd[ch];
                        if a.training {
                            InputCoef {
                                a: a_,
                                b: -a_ * invstd[ch] * sum_gx[ch] / m,
                                k: -a_ * sum_g[ch] / m,
                                mean: mean[ch],
                            }
                        } else {
                            InputCoef { a: a_, b: 0.0, k: 0.0, mean: 0.0 }
                        }
                    })
                    .collect();
                for (p, want) in a.want_parts.iter().enumerate() {
                    if *want {
                        let v = grad_part(&parts, p, gs, ys, &coef);
                        gparts[p] = Some(Tensor::from_vec(v, a.parts[p].shape(), g.device())?);
                    }
                }
            }
        });
        Ok((gparts, gw, gb))
    }
}

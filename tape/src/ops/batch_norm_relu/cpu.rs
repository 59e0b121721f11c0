//! CPU kernels of the fused concat -> batch norm -> ReLU. Every output plane `(image, channel)`
//! is computed straight from the part that holds the channel; gradients are written per part.

use super::super::batch_norm::cpu::{channel_sum, normalize_by_channel};
use super::super::batch_norm::sync::global_grad_sums;
use super::super::batch_norm::{host_forward, BnStats};
use super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads, OP};
use crate::backend::cpu::lanes::{lane_sum2, masked_sums};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::simd::widest_simd;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The parts as the kernels see them: each part's data, channel count and width (channels per
/// image in its buffer: more than its channel count for a channel prefix of a wider buffer);
/// planes are `hw` long and there are `n` images.
struct Parts<'a, T> {
    data: Vec<&'a [T]>,
    channels: Vec<usize>,
    widths: Vec<usize>,
    n: usize,
    hw: usize,
    /// For each output channel: (part, channel within the part).
    owner: Vec<(usize, usize)>,
}

impl<'a, T: Elem> Parts<'a, T> {
    fn new(
        data: Vec<&'a [T]>,
        (channels, widths): (Vec<usize>, Vec<usize>),
        n: usize,
        hw: usize,
    ) -> Self {
        let owner = channels
            .iter()
            .enumerate()
            .flat_map(|(p, &c)| (0..c).map(move |lc| (p, lc)))
            .collect();
        Parts {
            data,
            channels,
            widths,
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
        let start = (i * self.widths[p] + lc) * self.hw;
        &self.data[p][start..start + self.hw]
    }

    /// The `n` input planes of output channel `ch`, in image order.
    fn planes(&self, ch: usize) -> impl Iterator<Item = &'a [T]> + Clone + '_ {
        (0..self.n).map(move |i| self.plane(i, ch))
    }

    fn parallel(&self) -> bool {
        self.n * self.c() * self.hw >= PAR_MIN
    }
}

/// Per output channel: the input gradient is `a * g' + b * (x - mean) + k` with `g'` the masked
/// output gradient (`b = k = 0` in eval mode).
#[derive(Clone, Copy, Debug)]
struct InputCoef {
    a: f64,
    b: f64,
    k: f64,
    mean: f64,
}

/// Per output channel `(sum g', sum g' * (x - mean))`, and each part's new input gradient (for
/// the parts that want one and had none to add into).
type ChannelBackward<T> = (Vec<(f64, f64)>, Vec<Option<Vec<T>>>);

/// One plane of a part's input gradient: written fresh, or added into an existing gradient.
enum PlaneOut<'a, T> {
    Fresh(&'a mut [MaybeUninit<T>]),
    Add(&'a mut [T]),
}

/// [`InputCoef`] in the tensor's precision, for one plane.
#[derive(Clone, Copy)]
struct PlaneCoef<T> {
    a: T,
    k: T,
    b: T,
    mean: T,
}

/// One element of the input gradient: `a * g' + k + b * (x - mean)`, `g' = g` where `y > 0`.
#[inline(always)]
fn input_grad<T: Elem>(c: PlaneCoef<T>, g: T, y: T, x: T) -> T {
    let gm = if y > T::zero() { g } else { T::zero() };
    c.a * gm + c.k + c.b * (x - c.mean)
}

/// A plane's `(g, y, x)`.
type GradPlanes<'a, T> = (&'a [T], &'a [T], &'a [T]);

widest_simd!(
    /// Writes one plane of a new input gradient.
    fn write_input_grad<T>(o: &mut [MaybeUninit<T>], p: GradPlanes<'_, T>, c: PlaneCoef<T>) =
        write_input_grad_body;
);

#[inline(always)]
fn write_input_grad_body<T: Elem>(
    o: &mut [MaybeUninit<T>],
    (g, y, x): GradPlanes<'_, T>,
    c: PlaneCoef<T>,
) {
    for (((o, &g), &y), &x) in o.iter_mut().zip(g).zip(y).zip(x) {
        o.write(input_grad(c, g, y, x));
    }
}

widest_simd!(
    /// Adds one plane of the input gradient into an existing gradient.
    fn add_input_grad<T>(o: &mut [T], p: GradPlanes<'_, T>, c: PlaneCoef<T>) =
        add_input_grad_body;
);

#[inline(always)]
fn add_input_grad_body<T: Elem>(o: &mut [T], (g, y, x): GradPlanes<'_, T>, c: PlaneCoef<T>) {
    for (((o, &g), &y), &x) in o.iter_mut().zip(g).zip(y).zip(x) {
        *o += input_grad(c, g, y, x);
    }
}

/// The backward pass, channel by channel: for each output channel, the sums
/// `(sum g', sum g' * (x - mean))` over its planes (`g' = g` where the output is positive, else 0;
/// the second sum only when `with_x`) and then, while the channel's planes are still in cache,
/// the input gradient of that channel for the parts that `want` one, with the coefficients
/// `coef(channel, sums)`: added in place into the part's existing gradient in `adds` where there
/// is one (`add_widths` channels per image, the part's first; no new buffer, no separate add
/// pass), written into a new buffer otherwise. Reading
/// `g`, the output `y` and `x` once from memory instead of twice is what makes it faster than
/// sums-then-gradients (the pass is memory-bound). Each channel is one task, so the sums do not
/// depend on the thread count.
fn backward_by_channel<T: Elem>(
    parts: &Parts<'_, T>,
    (g, y): (&[T], &[T]),
    mean: &[f64],
    with_x: bool,
    want: &[bool],
    (adds, add_widths): (&mut [Option<&mut [T]>], &[usize]),
    coef: impl Fn(usize, (f64, f64)) -> InputCoef + Sync,
) -> ChannelBackward<T> {
    let (c, hw, n) = (parts.c(), parts.hw, parts.n);
    let lens: Vec<usize> = parts.channels.iter().map(|&cp| n * cp * hw).collect();
    let mut bufs: Vec<Option<Vec<T>>> = want
        .iter()
        .zip(&lens)
        .zip(adds.iter())
        .map(|((&w, &len), add)| (w && add.is_none()).then(|| Vec::with_capacity(len)))
        .collect();
    // Each wanted part's planes, by output channel (image order within a channel).
    let mut planes: Vec<Vec<PlaneOut<'_, T>>> = (0..c).map(|_| Vec::new()).collect();
    let mut first = 0;
    let targets = bufs.iter_mut().zip(adds.iter_mut()).zip(want);
    let shapes = parts.channels.iter().zip(add_widths).zip(&lens);
    for (((buf, add), &w), ((&cp, &width), &len)) in targets.zip(shapes) {
        if hw > 0 {
            // A new gradient is packed (`cp` planes per image); an existing one has `width`
            // planes per image, the first `cp` of them the part's channels.
            let (outs, per_image): (Box<dyn Iterator<Item = PlaneOut<'_, T>>>, usize) =
                match (buf, add, w) {
                    (Some(buf), _, _) => {
                        let fresh = buf.spare_capacity_mut()[..len].chunks_mut(hw);
                        (Box::new(fresh.map(PlaneOut::Fresh)), cp)
                    }
                    (None, Some(add), true) => {
                        let planes = add.chunks_mut(hw).take(n * width);
                        (Box::new(planes.map(PlaneOut::Add)), width)
                    }
                    _ => (Box::new(std::iter::empty()), cp.max(1)),
                };
            for (q, plane) in outs.enumerate() {
                let ch = q % per_image;
                if ch < cp {
                    planes[first + ch].push(plane);
                }
            }
        }
        first += cp;
    }
    let per = |(ch, outs): (usize, Vec<PlaneOut<'_, T>>)| -> (f64, f64) {
        let m = mean[ch];
        let (mut sg, mut sgx) = (0.0, 0.0);
        for i in 0..n {
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
        if !outs.is_empty() {
            let k = coef(ch, (sg, sgx));
            let (a, b, kk, mean) = (T::of(k.a), T::of(k.b), T::of(k.k), T::of(k.mean));
            for (i, o) in outs.into_iter().enumerate() {
                let at = (i * c + ch) * hw;
                let (gp, yp, xp) = (&g[at..at + hw], &y[at..at + hw], parts.plane(i, ch));
                let coef = PlaneCoef { a, k: kk, b, mean };
                match o {
                    PlaneOut::Fresh(o) => write_input_grad(o, (gp, yp, xp), coef),
                    PlaneOut::Add(o) => add_input_grad(o, (gp, yp, xp), coef),
                }
            }
        }
        (sg, sgx)
    };
    let sums: Vec<(f64, f64)> = if parts.parallel() {
        planes.into_par_iter().enumerate().map(per).collect()
    } else {
        planes.into_iter().enumerate().map(per).collect()
    };
    for (buf, &len) in bufs.iter_mut().zip(&lens) {
        if let Some(buf) = buf.as_mut() {
            // SAFETY: every plane of a wanted part belongs to exactly one output channel, and the
            // channel's task wrote each of its elements (`len` = planes * hw; with hw = 0 there
            // are no elements).
            unsafe { buf.set_len(len) };
        }
    }
    (sums, bufs)
}

impl BatchNormReluKernels for Cpu {
    fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let x0 = a.parts[0];
        let [n, _, h, w] = x0.dims4(OP)?;
        let (hw, c) = (h * w, a.channels.iter().sum::<usize>());
        let step = (a.training, a.update_running, a.want_stats);
        host_forward(
            a.weight,
            a.bias,
            a.running,
            a.opts,
            step,
            a.given,
            n * hw,
            x0.device(),
            |center| {
                Ok(dispatch_float!(x0.dtype(), T => {
                    let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
                    let parts = Parts::new(data, (a.channels.to_vec(), a.widths.to_vec()), n, hw);
                    let sum = |ch: usize| channel_sum(parts.planes(ch), center.map(|c| c[ch]));
                    if parts.parallel() {
                        (0..c).into_par_iter().map(sum).collect::<Vec<f64>>()
                    } else {
                        (0..c).map(sum).collect::<Vec<f64>>()
                    }
                }))
            },
            |how| {
                Ok(dispatch_float!(x0.dtype(), T => {
                    let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
                    let parts = Parts::new(data, (a.channels.to_vec(), a.widths.to_vec()), n, hw);
                    let dims = (n, parts.c(), hw);
                let planes = |ch| parts.planes(ch);
                let (v, stats) = normalize_by_channel(dims, parts.parallel(), planes, &how, true);
                    (Tensor::from_vec(v, &[n, c, h, w], x0.device())?, stats)
                }))
            },
        )
    }

    fn bn_relu_backward(
        &self,
        a: &BnReluBackward<'_>,
        mut into: Vec<Option<Tensor>>,
    ) -> Result<BnReluGrads> {
        let g = a.g;
        let [n, c, h, w] = g.dims4(OP)?;
        let hw = h * w;
        let (mean, invstd) = a.stats.values()?;
        let weight = a.weight.try_to_f64_vec()?;
        let any_x = a.want_parts.iter().any(|&b| b);
        let with_x = a.want_weight || (a.training && any_x);
        let m = (n * hw) as f64;
        // A synchronised layer's input gradient takes the group's sums (`global`).
        let (wr, ir, mr) = (&weight, &invstd, &mean);
        let coef_with = |global: Option<(Vec<f64>, f64)>| {
            move |ch: usize, (sg, sgx): (f64, f64)| {
                let (sg, sgx, m) = match &global {
                    Some((sums, total)) => (sums[ch], sums[c + ch], *total),
                    None => (sg, sgx, m),
                };
                let a_ = wr[ch] * ir[ch];
                if a.training {
                    InputCoef {
                        a: a_,
                        b: -a_ * ir[ch] * (sgx * ir[ch]) / m,
                        k: -a_ * sg / m,
                        mean: mr[ch],
                    }
                } else {
                    InputCoef {
                        a: a_,
                        b: 0.0,
                        k: 0.0,
                        mean: 0.0,
                    }
                }
            }
        };
        let (mut gparts, mut gw, mut gb) = (Vec::new(), None, None);
        dispatch_float!(g.dtype(), T => {
            let data = a.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            let parts = Parts::new(data, (a.channels.to_vec(), a.widths.to_vec()), n, hw);
            let (gs, ys) = (g.as_slice::<T>()?, a.out.as_slice::<T>()?);
            let mut adds = into
                .iter_mut()
                .map(|t| t.as_mut().map(|t| t.make_mut::<T>()).transpose())
                .collect::<Result<Vec<_>>>()?;
            let mut global = None;
            if let (Some(sync), true) = (a.sync, a.training && any_x) {
                // The sums of every channel first (no gradient written), summed over the group.
                let none = vec![false; a.parts.len()];
                let mut no_adds: Vec<Option<&mut [T]>> = (0..a.parts.len()).map(|_| None).collect();
                let adds = (&mut no_adds[..], a.into_widths);
                let (local, _) =
                    backward_by_channel(&parts, (gs, ys), &mean, true, &none, adds, coef_with(None));
                global = Some(global_grad_sums(sync, &local, n * hw)?);
            }
            let coef = coef_with(global);
            let adds = (&mut adds[..], a.into_widths);
            let (sums, bufs) =
                backward_by_channel(&parts, (gs, ys), &mean, with_x, a.want_parts, adds, coef);
            if a.want_weight {
                let sum_gx: Vec<f64> = sums.iter().zip(&invstd).map(|(s, k)| s.1 * k).collect();
                gw = Some(Tensor::from_f64(&sum_gx, &[c], g.dtype(), g.device())?);
            }
            if a.want_bias {
                let sum_g: Vec<f64> = sums.iter().map(|s| s.0).collect();
                gb = Some(Tensor::from_f64(&sum_g, &[c], g.dtype(), g.device())?);
            }
            for ((buf, part), added) in bufs.into_iter().zip(a.parts).zip(into) {
                gparts.push(match buf {
                    Some(v) => Some(Tensor::from_vec(v, part.shape(), g.device())?),
                    None => added,
                });
            }
        });
        Ok((gparts, gw, gb))
    }
}

//! CPU kernels of the fused concat -> batch norm -> ReLU. Every output plane `(image, channel)`
//! is computed straight from the part that holds the channel; gradients are written per part.

use super::super::batch_norm::cpu::{
    affine_plane, channel_sum, normalize_by_channel, normalize_by_channel_half, staged,
};
use super::super::batch_norm::sync::global_grad_sums;
use super::super::batch_norm::{host_forward, BnStats, Normalization};
use super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads, OP};
use crate::backend::cpu::convert::{add_rounded, convert_into};
use crate::backend::cpu::lanes::{lane_sum2, masked_sums};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::{DType, Elem, Scalar};
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

impl<'a, T: Copy> Parts<'a, T> {
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

/// A new gradient buffer for each part that wants one and has none to add into.
fn new_grads<T>(want: &[bool], lens: &[usize], adds: &[Option<&mut [T]>]) -> Vec<Option<Vec<T>>> {
    want.iter()
        .zip(lens)
        .zip(adds)
        .map(|((&w, &len), add)| (w && add.is_none()).then(|| Vec::with_capacity(len)))
        .collect()
}

/// Where the part gradients go: new buffers, existing gradients and their widths.
type GradTargets<'b, 'w, 'x, T> = (
    &'b mut [Option<Vec<T>>],
    &'b mut [Option<&'w mut [T]>],
    &'x [usize],
);

/// Each wanted part's gradient planes (new in `bufs`, or existing in `adds` with `add_widths`
/// planes per image, the part's first), by output channel, image order within a channel.
fn output_planes<'b, T: Copy>(
    parts: &Parts<'_, T>,
    lens: &[usize],
    (bufs, adds, add_widths): GradTargets<'b, '_, '_, T>,
    want: &[bool],
) -> Vec<Vec<PlaneOut<'b, T>>> {
    let (c, hw, n) = (parts.c(), parts.hw, parts.n);
    let mut planes: Vec<Vec<PlaneOut<'b, T>>> = (0..c).map(|_| Vec::new()).collect();
    let mut first = 0;
    let targets = bufs.iter_mut().zip(adds.iter_mut()).zip(want);
    let shapes = parts.channels.iter().zip(add_widths).zip(lens);
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
    planes
}

/// The input-gradient coefficients of every channel (see [`InputCoef`]) from the forward's
/// statistics and the channel's sums `(sum g', sum g' * (x - mean))`; a synchronised layer's
/// input gradient takes the group's sums (`global`) instead of the local ones.
struct CoefRule {
    weight: Vec<f64>,
    invstd: Vec<f64>,
    mean: Vec<f64>,
    training: bool,
    /// Values per channel (`n * h * w`).
    m: f64,
    global: Option<(Vec<f64>, f64)>,
    /// Per channel, the forward's `(scale, shift)` when the ReLU mask is recomputed from the
    /// input ([`mask_plane`]) instead of read from the output.
    affine: Option<(Vec<f64>, Vec<f64>)>,
}

impl CoefRule {
    /// The rule of channel `ch` alone, as channel 0.
    fn for_channel(&self, ch: usize) -> CoefRule {
        let c = self.weight.len();
        CoefRule {
            weight: vec![self.weight[ch]],
            invstd: vec![self.invstd[ch]],
            mean: vec![self.mean[ch]],
            training: self.training,
            m: self.m,
            global: self
                .global
                .as_ref()
                .map(|(sums, total)| (vec![sums[ch], sums[c + ch]], *total)),
            affine: self
                .affine
                .as_ref()
                .map(|(scale, shift)| (vec![scale[ch]], vec![shift[ch]])),
        }
    }

    /// Channel `ch`'s forward `(scale, shift)` in `T`, when the mask is recomputed.
    fn affine_at<T: Elem>(&self, ch: usize) -> Option<(T, T)> {
        let (scale, shift) = self.affine.as_ref()?;
        Some((T::of(scale[ch]), T::of(shift[ch])))
    }

    fn at(&self, ch: usize, (sg, sgx): (f64, f64)) -> InputCoef {
        let c = self.weight.len();
        let (sg, sgx, m) = match &self.global {
            Some((sums, total)) => (sums[ch], sums[c + ch], *total),
            None => (sg, sgx, self.m),
        };
        let (ir, a) = (self.invstd[ch], self.weight[ch] * self.invstd[ch]);
        match self.training {
            true => InputCoef {
                a,
                b: -a * ir * (sgx * ir) / m,
                k: -a * sg / m,
                mean: self.mean[ch],
            },
            false => InputCoef {
                a,
                b: 0.0,
                k: 0.0,
                mean: 0.0,
            },
        }
    }
}

/// What one channel's task reads: the parts, the output gradient `g` and output `y` (NCHW,
/// packed), the channel, and whether the sums need `x`.
struct ChannelIn<'t, 'd, T> {
    parts: &'t Parts<'d, T>,
    g: &'t [T],
    y: &'t [T],
    ch: usize,
    with_x: bool,
}

impl<'t, T: Copy> ChannelIn<'t, '_, T> {
    /// Image `i`'s planes of `g`, `y` and `x`.
    fn planes(&self, i: usize) -> GradPlanes<'t, T> {
        (
            self.g_plane(i),
            self.y_plane(i),
            self.parts.plane(i, self.ch),
        )
    }

    /// Image `i`'s plane of the output gradient.
    fn g_plane(&self, i: usize) -> &'t [T] {
        &self.g[self.at(i)..][..self.parts.hw]
    }

    /// Image `i`'s plane of the output.
    fn y_plane(&self, i: usize) -> &'t [T] {
        &self.y[self.at(i)..][..self.parts.hw]
    }

    /// Where image `i`'s plane of this channel starts in `g` and `y` (NCHW, packed).
    fn at(&self, i: usize) -> usize {
        (i * self.parts.c() + self.ch) * self.parts.hw
    }
}

/// A plane whose positive elements are the ReLU mask: the output's own `y`, or with the
/// forward's `(scale, shift)`, `x * scale + shift` written into `buf` (the forward's expression
/// in the same precision: positive exactly where the output is, NaN where it is NaN). The
/// recomputed plane sits in the core's cache; the output is not read from memory at all.
fn mask_plane<'p, T: Elem>(
    y: impl FnOnce() -> &'p [T],
    x: &[T],
    affine: Option<(T, T)>,
    buf: &'p mut Vec<T>,
) -> &'p [T] {
    match affine {
        None => y(),
        Some((scale, shift)) => {
            buf.resize(x.len(), T::zero());
            affine_plane(buf, x, scale, shift);
            buf
        }
    }
}

/// One channel's backward in the tensor's own precision: the sums over its planes, then its
/// input gradient planes `outs` (written or added into) with the coefficients `rule` gives.
fn native_channel<T: Elem>(
    a: ChannelIn<'_, '_, T>,
    outs: Vec<PlaneOut<'_, T>>,
    rule: &CoefRule,
) -> (f64, f64) {
    let m = rule.mean[a.ch];
    let affine = rule.affine_at::<T>(a.ch);
    let mut buf = Vec::new();
    let (mut sg, mut sgx) = (0.0, 0.0);
    for i in 0..a.parts.n {
        let (gp, xp) = (a.g_plane(i), a.parts.plane(i, a.ch));
        let yp = mask_plane(|| a.y_plane(i), xp, affine, &mut buf);
        if a.with_x {
            let (s, t) = masked_sums(gp, yp, xp, m);
            sg += s;
            sgx += t;
        } else {
            sg += lane_sum2(gp, yp, |g, y| if y > 0.0 { g } else { 0.0 });
        }
    }
    if !outs.is_empty() {
        let k = rule.at(a.ch, (sg, sgx));
        let (ka, kb, kk, km) = (T::of(k.a), T::of(k.b), T::of(k.k), T::of(k.mean));
        let coef = PlaneCoef {
            a: ka,
            k: kk,
            b: kb,
            mean: km,
        };
        for (i, o) in outs.into_iter().enumerate() {
            let (gp, xp) = (a.g_plane(i), a.parts.plane(i, a.ch));
            let planes = (gp, mask_plane(|| a.y_plane(i), xp, affine, &mut buf), xp);
            match o {
                PlaneOut::Fresh(o) => write_input_grad(o, planes, coef),
                PlaneOut::Add(o) => add_input_grad(o, planes, coef),
            }
        }
    }
    (sg, sgx)
}

/// [`native_channel`] for 16-bit tensors: the channel's planes of `g`, `y` and `x` converted to
/// `f32` in buffers of the task's own, the `f32` pass run on them (the same sums and gradients
/// as on `f32` copies of the tensors, bit for bit), each gradient element rounded once to the
/// 16-bit dtype and, where added into an existing gradient, summed in `f32` and rounded again
/// (as adding a rounded `f32` gradient does).
fn staged_channel<S: Scalar>(
    a: ChannelIn<'_, '_, S>,
    outs: Vec<PlaneOut<'_, S>>,
    rule: &CoefRule,
) -> (f64, f64) {
    let (n, hw) = (a.parts.n, a.parts.hw);
    let g = staged((0..n).map(|i| a.planes(i).0), n * hw);
    let y = staged((0..n).map(|i| a.planes(i).1), n * hw);
    let x = staged((0..n).map(|i| a.planes(i).2), n * hw);
    let data = vec![x.as_slice()];
    let (chans, widths) = (vec![1], vec![1]);
    let one = Parts::new(data, (chans, widths), n, hw);
    let mut wide: Vec<Vec<f32>> = outs.iter().map(|_| Vec::with_capacity(hw)).collect();
    let wide_outs = wide
        .iter_mut()
        .map(|v| PlaneOut::Fresh(&mut v.spare_capacity_mut()[..hw]))
        .collect();
    let f32_in = ChannelIn {
        parts: &one,
        g: &g,
        y: &y,
        ch: 0,
        with_x: a.with_x,
    };
    let channel_rule = rule.for_channel(a.ch);
    let sums = native_channel(f32_in, wide_outs, &channel_rule);
    for (o, mut v) in outs.into_iter().zip(wide) {
        // SAFETY: `native_channel` wrote every element of each fresh plane it was given.
        unsafe { v.set_len(hw) };
        match o {
            PlaneOut::Fresh(o) => convert_into(o, &v),
            PlaneOut::Add(o) => add_rounded(o, &v),
        }
    }
    sums
}

/// The backward pass, channel by channel: for each output channel, the sums
/// `(sum g', sum g' * (x - mean))` over its planes (`g' = g` where the output is positive, else 0;
/// the second sum only when `with_x`) and then, while the channel's planes are still in cache,
/// the input gradient of that channel for the parts that `want` one, with the coefficients
/// `rule` gives: added in place into the part's existing gradient in `adds` where there
/// is one (`add_widths` channels per image, the part's first; no new buffer, no separate add
/// pass), written into a new buffer otherwise. Reading
/// `g` and `x` (and for 16-bit tensors the output `y`; `f32`/`f64` recompute the mask from `x`,
/// [`mask_plane`]) once from memory instead of twice is what makes it faster than
/// sums-then-gradients (the pass is memory-bound). Not reading `y`, measured at DenseNet-BC-100
/// batch 64 (naive, f32, 2 threads): the op's backward 341 / 352 -> 295 / 301 ms a step, two
/// alternating runs. Each channel is one task (`pass`: in the
/// tensor's precision, or staged in `f32` for 16-bit tensors), so the sums do not depend on the
/// thread count.
#[allow(clippy::too_many_arguments)]
fn backward_by_channel<T: Copy + Send + Sync>(
    parts: &Parts<'_, T>,
    (g, y): (&[T], &[T]),
    with_x: bool,
    want: &[bool],
    (adds, add_widths): (&mut [Option<&mut [T]>], &[usize]),
    rule: &CoefRule,
    pass: ChannelPass<T>,
) -> ChannelBackward<T> {
    let (hw, n) = (parts.hw, parts.n);
    let lens: Vec<usize> = parts.channels.iter().map(|&cp| n * cp * hw).collect();
    let mut bufs = new_grads(want, &lens, adds);
    let planes = output_planes(parts, &lens, (&mut bufs, adds, add_widths), want);
    let per = |(ch, outs): (usize, Vec<PlaneOut<'_, T>>)| -> (f64, f64) {
        let input = ChannelIn {
            parts,
            g,
            y,
            ch,
            with_x,
        };
        pass(input, outs, rule)
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

/// One channel's backward task: [`native_channel`] or [`staged_channel`].
type ChannelPass<T> =
    for<'t, 'd, 'o> fn(ChannelIn<'t, 'd, T>, Vec<PlaneOut<'o, T>>, &CoefRule) -> (f64, f64);

/// The parts of a forward as slices of `T`.
fn forward_parts<'a, T: Scalar>(
    a: &BnReluForward<'a>,
    (n, hw): (usize, usize),
) -> Result<Parts<'a, T>> {
    let data = a
        .parts
        .iter()
        .map(|p| p.as_slice::<T>())
        .collect::<Result<Vec<_>>>()?;
    Ok(Parts::new(
        data,
        (a.channels.to_vec(), a.widths.to_vec()),
        n,
        hw,
    ))
}

/// Each channel's sum by `sum(parts, channel)` (a synchronised layer's statistics pass).
fn forward_sums<T: Scalar>(
    a: &BnReluForward<'_>,
    dims: (usize, usize),
    sum: impl Fn(&Parts<'_, T>, usize) -> f64 + Sync,
) -> Result<Vec<f64>> {
    let parts = forward_parts::<T>(a, dims)?;
    let one = |ch: usize| sum(&parts, ch);
    Ok(match parts.parallel() {
        true => (0..parts.c()).into_par_iter().map(one).collect(),
        false => (0..parts.c()).map(one).collect(),
    })
}

/// The normalised output of shape `shape` by `normalize(parts)`, with its statistics.
fn forward_normalize<T: Scalar>(
    a: &BnReluForward<'_>,
    shape: [usize; 4],
    normalize: impl FnOnce(&Parts<'_, T>) -> (Vec<T>, Vec<(f64, f64)>),
) -> Result<(Tensor, Vec<(f64, f64)>)> {
    let [n, _, h, w] = shape;
    let parts = forward_parts::<T>(a, (n, h * w))?;
    let (v, stats) = normalize(&parts);
    Ok((Tensor::from_vec(v, &shape, a.parts[0].device())?, stats))
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
                let at = |ch: usize| center.map(|c| c[ch]);
                dispatch_split!(x0.dtype(),
                    half S => forward_sums::<S>(a, (n, hw), |p, ch| {
                        channel_sum(staged(p.planes(ch), n * hw).chunks(hw.max(1)), at(ch))
                    }),
                    float T => forward_sums::<T>(a, (n, hw), |p, ch| channel_sum(p.planes(ch), at(ch))))
            },
            |how| {
                let shape = [n, c, h, w];
                dispatch_split!(x0.dtype(),
                half S => forward_normalize::<S>(a, shape, |p| {
                    normalize_by_channel_half((n, c, hw), p.parallel(), |ch| p.planes(ch), &how, true)
                }),
                float T => forward_normalize::<T>(a, shape, |p| {
                    normalize_by_channel((n, c, hw), p.parallel(), |ch| p.planes(ch), &how, true)
                }))
            },
        )
    }

    fn bn_relu_backward(
        &self,
        a: &BnReluBackward<'_>,
        into: Vec<Option<Tensor>>,
    ) -> Result<BnReluGrads> {
        dispatch_split!(a.g.dtype(),
            half S => backward_t::<S>(a, into, staged_channel::<S>),
            float T => backward_t::<T>(a, into, native_channel::<T>))
    }
}

/// The fused backward over tensors of element type `T`, each channel's task run by `pass`.
fn backward_t<T: Scalar>(
    a: &BnReluBackward<'_>,
    mut into: Vec<Option<Tensor>>,
    pass: ChannelPass<T>,
) -> Result<BnReluGrads> {
    let g = a.g;
    let [n, c, h, w] = g.dims4(OP)?;
    let hw = h * w;
    let (mean, invstd) = a.stats.values()?;
    let any_x = a.want_parts.iter().any(|&b| b);
    let with_x = a.want_weight || (a.training && any_x);
    let weight = a.weight.try_to_f64_vec()?;
    // `f32`/`f64` outputs are `relu(x * scale + shift)` in their own precision: the mask comes
    // from `x` and the forward's scale and shift (as a recompute takes them, from the same
    // statistics: the same values), and `y` is never read. 16-bit outputs were rounded after the
    // ReLU (a tiny positive value may round to zero), so their mask is read from `y`.
    let affine = match T::DTYPE {
        DType::F32 | DType::F64 => {
            let norm = Normalization::from_saved(a.stats, &weight, &a.bias.try_to_f64_vec()?)?;
            Some((norm.scale, norm.shift))
        }
        _ => None,
    };
    let mut rule = CoefRule {
        weight,
        invstd,
        mean,
        training: a.training,
        m: (n * hw) as f64,
        global: None,
        affine,
    };
    let data = a
        .parts
        .iter()
        .map(|p| p.as_slice::<T>())
        .collect::<Result<Vec<_>>>()?;
    let parts = Parts::new(data, (a.channels.to_vec(), a.widths.to_vec()), n, hw);
    let (gs, ys) = (g.as_slice::<T>()?, a.out.as_slice::<T>()?);
    let mut adds = into
        .iter_mut()
        .map(|t| t.as_mut().map(|t| t.make_mut::<T>()).transpose())
        .collect::<Result<Vec<_>>>()?;
    if let (Some(sync), true) = (a.sync, a.training && any_x) {
        // The sums of every channel first (no gradient written), summed over the group.
        let none = vec![false; a.parts.len()];
        let mut no_adds: Vec<Option<&mut [T]>> = (0..a.parts.len()).map(|_| None).collect();
        let adds = (&mut no_adds[..], a.into_widths);
        let (local, _) = backward_by_channel(&parts, (gs, ys), true, &none, adds, &rule, pass);
        rule.global = Some(global_grad_sums(sync, &local, n * hw)?);
    }
    let adds = (&mut adds[..], a.into_widths);
    let (sums, bufs) =
        backward_by_channel(&parts, (gs, ys), with_x, a.want_parts, adds, &rule, pass);
    // The parameters' gradients in the parameters' dtype (f32 beside 16-bit activations).
    let wdtype = a.weight.dtype();
    let gw = match a.want_weight {
        true => {
            let sum_gx: Vec<f64> = sums
                .iter()
                .zip(&rule.invstd)
                .map(|(s, k)| s.1 * k)
                .collect();
            Some(Tensor::from_f64(&sum_gx, &[c], wdtype, g.device())?)
        }
        false => None,
    };
    let gb = match a.want_bias {
        true => {
            let sum_g: Vec<f64> = sums.iter().map(|s| s.0).collect();
            Some(Tensor::from_f64(&sum_g, &[c], wdtype, g.device())?)
        }
        false => None,
    };
    let mut gparts = Vec::new();
    for ((buf, part), added) in bufs.into_iter().zip(a.parts).zip(into) {
        gparts.push(match buf {
            Some(v) => Some(Tensor::from_vec(v, part.shape(), g.device())?),
            None => added,
        });
    }
    Ok((gparts, gw, gb))
}

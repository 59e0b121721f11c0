//! CPU kernels of `conv2d`. Forward splits the batch into one contiguous group of images per
//! thread; a thread runs run-threaded GEMMs image by image with its own column buffer.
//! Backward cuts the batch into work chunks of a fixed number of images (set by the geometry
//! alone, [`chunk_images`]) and runs them in waves of one chunk per thread group; each chunk sums
//! its weight gradient over its images into a partial, and the partials are added in chunk order,
//! so every gradient is the same, bit for bit, whatever the thread count. Columns are built a
//! block of output rows at a time, sized to stay in a core's L2 cache, so the im2col workspace is
//! one block per thread group, whatever the batch and image size.
//!
//! Per image, with `K = cin*kh*kw` and `P = hout*wout` (the big, contiguous dimension):
//! - forward: `out (cout x P) = W (cout x K) * col(x) (K x P)`; a pointwise conv uses `x` itself;
//! - grad weight: `gW^T (K x cout) += col(x) * gout^T` per chunk (`gW += gout * col(x)^T` for
//!   512 output channels and more), the chunks' partials summed in chunk order;
//! - grad input, stride 1: `gx (cin x HW) = W' (cin x cout*kh*kw) * col(gout)` with `W'` the
//!   flipped, transposed kernel, when that column matrix is the smaller one; otherwise
//!   `gcol (K x P) = W^T * gout` scattered back by col2im.

use super::direct::Direct;
#[cfg(target_arch = "x86_64")]
use super::tiles;
use super::tiles::on_tiles;
use super::winograd::Winograd;
use super::{Conv2dGrads, Conv2dKernels, Conv2dPass, Geometry};
use crate::backend::cpu::gemm::{gemm, gemm_ld, gemm_ld_uninit, Dst, Mat, Run};
use crate::backend::cpu::map::{
    as_dtype, as_dtype_mut, as_dtype_slots, as_slots, assume_init_mut, write_fill, written_vec,
    PAR_MIN,
};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Target size of one column block: well inside a core's L2 cache, next to the GEMM's packing.
const BLOCK_BYTES: usize = 256 << 10;

/// Columns (output positions) one GEMM covers at least: narrower products run the GEMM kernel's
/// edge cases and pack the weight for little work, so a block holds several whole images when
/// two or more fit in it.
const MIN_COLS: usize = 256;

/// Output positions (images times `hout * wout`) one backward work chunk covers at least, so
/// that adding a chunk's partial weight gradient costs little next to computing it.
const CHUNK_POSITIONS: usize = 256;

/// Output channels from which a weight gradient is summed as itself rather than transposed
/// ([`transposed_grad`]). Measured at ResNet-18's 256 -> 512 3x3 stride-2 convolution (8x8
/// images, batch 64): 30.8 -> 21.9 ms, fastest of four rounds on a loaded 2-core machine; at
/// 128 and 256 output channels neither way was faster beyond the noise.
const WIDE_OUT: usize = 512;

/// Elements of a summed buffer each task of [`add_partials`] takes.
const ADD_CHUNK: usize = 4096;

/// Ranges of a row or column: `(in_len, out_len, stride, pad)`; `pad` may be negative (a crop).
#[derive(Clone, Copy)]
struct Axis {
    input: usize,
    output: usize,
    stride: usize,
    pad: isize,
}

impl Axis {
    /// The outputs `o` in `[lo, hi)` whose tap at kernel offset `k` reads an input inside
    /// `[0, input)`, i.e. `0 <= o*stride - pad + k < input`.
    fn valid(&self, k: usize) -> (usize, usize) {
        let (s, off) = (self.stride as isize, k as isize - self.pad);
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let hi = if (self.input as isize) <= off {
            0
        } else {
            (self.input as isize - off + s - 1) / s
        };
        let hi = (hi.max(0) as usize).min(self.output);
        ((lo.max(0) as usize).min(hi), hi)
    }

    /// The input index read by output `o` at kernel offset `k` (only for `o` in `valid(k)`).
    fn input_of(&self, o: usize, k: usize) -> usize {
        (o as isize * self.stride as isize - self.pad + k as isize) as usize
    }
}

/// A `[lo, hi)` range of output positions.
type Range = (usize, usize);

/// One block of columns: output rows `[y0, y1)` of `images` consecutive images from `first`
/// (several images only whole ones), side by side.
#[derive(Clone, Copy)]
struct Block {
    first: usize,
    images: usize,
    y0: usize,
    y1: usize,
}

impl Block {
    /// Columns of one image in the block.
    fn image_cols(&self, wo: usize) -> usize {
        (self.y1 - self.y0) * wo
    }

    /// Columns of the block.
    fn cols(&self, wo: usize) -> usize {
        self.images * self.image_cols(wo)
    }

    /// The images of the block, in order.
    fn range(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.images
    }
}

/// The geometry of one im2col: `c` channels of `rows x cols` planes, a `kh x kw` kernel.
#[derive(Clone, Copy)]
struct Cols {
    c: usize,
    kh: usize,
    kw: usize,
    y: Axis,
    x: Axis,
    /// The most images one block may hold: the batch, or a backward work chunk.
    images: usize,
}

impl Cols {
    /// The same columns in blocks of at most `images` images.
    fn within(self, images: usize) -> Self {
        Cols { images, ..self }
    }

    fn from_geo(g: &Geometry) -> Self {
        let ax = |input, output| Axis {
            input,
            output,
            stride: g.stride,
            pad: g.padding as isize,
        };
        Cols {
            c: g.cin,
            kh: g.kh,
            kw: g.kw,
            y: ax(g.h, g.hout),
            x: ax(g.w, g.wout),
            images: g.n,
        }
    }

    /// Columns of the gradient of the output, for grad input as a stride-1 correlation with the
    /// flipped kernel: `gx = corr(gout, W', pad = k-1-p)`.
    fn of_output_grad(g: &Geometry) -> Self {
        let ax = |input, output, k: usize| Axis {
            input,
            output,
            stride: 1,
            pad: k as isize - 1 - g.padding as isize,
        };
        Cols {
            c: g.cout,
            kh: g.kh,
            kw: g.kw,
            y: ax(g.hout, g.h, g.kh),
            x: ax(g.wout, g.w, g.kw),
            images: g.n,
        }
    }

    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions of one image.
    fn positions(&self) -> usize {
        self.y.output * self.x.output
    }

    /// `(output rows, images)` of a full column block: whole output rows of one image, at least
    /// [`MIN_COLS`] columns and more when [`BLOCK_BYTES`] holds more; or, when two whole images
    /// fit in [`MIN_COLS`] columns, as many whole images as reach it (at most `images`).
    fn block_shape(&self, elem: usize) -> (usize, usize) {
        let p = self.positions().max(1);
        if 2 * p <= MIN_COLS {
            return (
                self.y.output,
                MIN_COLS.div_ceil(p).clamp(1, self.images.max(1)),
            );
        }
        let target = (BLOCK_BYTES / (self.rows() * elem).max(1)).max(MIN_COLS);
        let rows = target.div_ceil(self.x.output.max(1));
        (rows.clamp(1, self.y.output.max(1)), 1)
    }

    /// Columns of a full block.
    fn block_cols(&self, elem: usize) -> usize {
        let (rows, images) = self.block_shape(elem);
        rows * self.x.output * images
    }

    /// Elements of one column block.
    fn block_len(&self, elem: usize) -> usize {
        self.rows() * self.block_cols(elem)
    }

    /// Elements of the output block that a block of several images computes before its
    /// images are copied out (none when blocks hold one image, whose rows are computed in
    /// place): `channels` rows of a block's columns.
    fn staging_len(&self, elem: usize, channels: usize) -> usize {
        match self.block_shape(elem).1 {
            1 => 0,
            _ => channels * self.block_cols(elem),
        }
    }

    /// The blocks covering images `[first, first + count)`, in order.
    fn blocks(&self, elem: usize, (first, count): (usize, usize)) -> Vec<Block> {
        let (rows, per) = self.block_shape(elem);
        let (end, yo) = (first + count, self.y.output);
        if per > 1 {
            let block = |f: usize| Block {
                first: f,
                images: per.min(end - f),
                y0: 0,
                y1: yo,
            };
            return (first..end).step_by(per).map(block).collect();
        }
        (first..end)
            .flat_map(|i| {
                (0..yo).step_by(rows.max(1)).map(move |y0| Block {
                    first: i,
                    images: 1,
                    y0,
                    y1: (y0 + rows).min(yo),
                })
            })
            .collect()
    }

    /// The valid output ranges of every kernel row and column offset ([`Axis::valid`]), computed
    /// once per call rather than once per channel.
    fn valid_ranges(&self) -> (Vec<Range>, Vec<Range>) {
        (
            (0..self.kh).map(|i| self.y.valid(i)).collect(),
            (0..self.kw).map(|j| self.x.valid(j)).collect(),
        )
    }

    /// Fills columns `off ..` of `col` (`rows()` rows, `ld` apart) with the columns of output
    /// rows `[y0, y1)` of one image `src` (`c x input_y x input_x`).
    fn im2col<T: Elem>(
        &self,
        src: &[T],
        col: &mut [T],
        (ld, off): (usize, usize),
        (y0, y1): Range,
    ) {
        let (wi, wo, plane) = (self.x.input, self.x.output, self.y.input * self.x.input);
        let len = (y1 - y0) * wo;
        let mut rows = col.chunks_mut(ld.max(1)).map(|r| &mut r[off..off + len]);
        let (ys, xs) = self.valid_ranges();
        for ci in 0..self.c {
            let img = &src[ci * plane..(ci + 1) * plane];
            for (i, &(ylo, yhi)) in ys.iter().enumerate() {
                for (j, &(xlo, xhi)) in xs.iter().enumerate() {
                    let Some(row) = rows.next() else { return };
                    for (oy, out) in (y0..y1).zip(row.chunks_exact_mut(wo.max(1))) {
                        if oy < ylo || oy >= yhi || xlo >= xhi {
                            out.fill(T::zero());
                            continue;
                        }
                        let line = &img[self.y.input_of(oy, i) * wi..][..wi];
                        out[..xlo].fill(T::zero());
                        out[xhi..].fill(T::zero());
                        let x0 = self.x.input_of(xlo, j);
                        if self.x.stride == 1 {
                            out[xlo..xhi].copy_from_slice(&line[x0..x0 + (xhi - xlo)]);
                        } else {
                            let src = line[x0..].iter().step_by(self.x.stride);
                            out[xlo..xhi].iter_mut().zip(src).for_each(|(o, &v)| *o = v);
                        }
                    }
                }
            }
        }
    }

    /// Adds columns `off ..` of `col` (rows `ld` apart), output rows `[y0, y1)`, back into one
    /// image `dst` (the adjoint of `im2col`).
    fn col2im<T: Elem>(
        &self,
        col: &[T],
        dst: &mut [T],
        (ld, off): (usize, usize),
        (y0, y1): Range,
    ) {
        let (wi, wo, plane) = (self.x.input, self.x.output, self.y.input * self.x.input);
        let len = (y1 - y0) * wo;
        let mut rows = col.chunks(ld.max(1)).map(|r| &r[off..off + len]);
        let (ys, xs) = self.valid_ranges();
        for ci in 0..self.c {
            let img = &mut dst[ci * plane..(ci + 1) * plane];
            for (i, &(ylo, yhi)) in ys.iter().enumerate() {
                for (j, &(xlo, xhi)) in xs.iter().enumerate() {
                    let Some(row) = rows.next() else { return };
                    if xlo >= xhi {
                        continue;
                    }
                    let x0 = self.x.input_of(xlo, j);
                    for oy in ylo.max(y0)..yhi.min(y1) {
                        let line = &mut img[self.y.input_of(oy, i) * wi..][..wi];
                        let src = &row[(oy - y0) * wo..][xlo..xhi];
                        let dst = line[x0..].iter_mut().step_by(self.x.stride);
                        dst.zip(src).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    }
}

/// Number of thread groups (and so of per-thread workspaces) for `jobs` independent jobs (the
/// images of a forward, the work chunks of a backward): at most one per rayon thread and one per
/// job, and no more than the fewest rounds of one job per thread need. Callers size the
/// workspaces and run the kernel with one value.
pub(super) fn groups(jobs: usize) -> usize {
    let rounds = jobs.div_ceil(rayon::current_num_threads().clamp(1, jobs.max(1)));
    jobs.div_ceil(rounds.max(1))
}

/// Images per backward work chunk: enough for [`CHUNK_POSITIONS`] output positions, at most the
/// batch. It depends on the geometry alone, never on the thread count.
fn chunk_images(g: &Geometry) -> usize {
    CHUNK_POSITIONS.div_ceil(g.p().max(1)).clamp(1, g.n.max(1))
}

/// `(first image, image count)` of each backward work chunk, in batch order.
fn chunk_ranges(g: &Geometry) -> Vec<(usize, usize)> {
    image_runs(g.n, chunk_images(g))
}

/// `(first image, image count)` of `n` images cut into runs of `size` (the last one shorter),
/// in batch order.
pub(super) fn image_runs(n: usize, size: usize) -> Vec<(usize, usize)> {
    let size = size.max(1);
    (0..n)
        .step_by(size)
        .map(|first| (first, size.min(n - first)))
        .collect()
}

/// `acc += parts[0]`, then `+= parts[1]`, ...: every element sums the parts in their order
/// (split over threads by element when large, which leaves each element's sum unchanged).
pub(super) fn add_partials<T: Elem>(acc: &mut [T], parts: &[&[T]]) {
    let body = |(i, a): (usize, &mut [T])| {
        for part in parts {
            let p = &part[i * ADD_CHUNK..];
            a.iter_mut().zip(p).for_each(|(a, &b)| *a += b);
        }
    };
    if acc.len().saturating_mul(parts.len()) >= PAR_MIN {
        acc.par_chunks_mut(ADD_CHUNK).enumerate().for_each(body);
    } else {
        acc.chunks_mut(ADD_CHUNK).enumerate().for_each(body);
    }
}

/// Which gradients a backward computes.
#[derive(Clone, Copy)]
struct Needs {
    /// Grad input (needs the weight).
    pub(crate) x: bool,
    /// Grad weight (needs the input).
    pub(crate) w: bool,
}

/// Elements of forward workspace per thread group, for elements of `elem` bytes: a column
/// block and, when blocks hold several images, their output block.
fn forward_workspace(g: &Geometry, elem: usize) -> usize {
    if let Some(d) = Direct::forward(g, elem) {
        d.workspace_len() + d.packed_len()
    } else if g.pointwise() {
        0
    } else {
        let cols = Cols::from_geo(g);
        cols.block_len(elem) + cols.staging_len(elem, g.cout)
    }
}

/// `(first image, image count)` of each forward job, in batch order: one image for a pointwise
/// conv or when a column block holds part of one image, else the images of one block. Thread
/// groups take whole jobs, so the blocks are the same whatever the thread count.
fn forward_units(g: &Geometry, elem: usize) -> Vec<(usize, usize)> {
    let per = match g.pointwise() || Direct::forward(g, elem).is_some() {
        true => 1,
        false => Cols::from_geo(g).block_shape(elem).1,
    };
    (0..g.n)
        .step_by(per.max(1))
        .map(|f| (f, per.min(g.n - f)))
        .collect()
}

/// Elements of one thread group's backward workspace, for elements of `elem` bytes: (column
/// block, staged output gradient or input gradient of a block of several images, partial grad
/// weight of one work chunk).
fn backward_parts(g: &Geometry, needs: Needs, elem: usize) -> (usize, usize, usize) {
    let chunk = chunk_images(g);
    let (xc, gc) = (
        Cols::from_geo(g).within(chunk),
        Cols::of_output_grad(g).within(chunk),
    );
    let (mut cols, mut staging) = (0, 0);
    if let (true, Some(d)) = (needs.w, Direct::forward(g, elem)) {
        cols = d.weight_grad_workspace_len();
    } else if needs.w && !g.pointwise() {
        cols = xc.block_len(elem);
        staging = xc.staging_len(elem, g.cout);
    }
    if needs.x && !g.pointwise() {
        let (c, s) = match Direct::input_grad(g, elem) {
            Some(d) => (d.workspace_len(), 0),
            None if flipped_path(g) => (gc.block_len(elem), gc.staging_len(elem, g.cin)),
            None => (xc.block_len(elem), xc.staging_len(elem, g.cout)),
        };
        cols = cols.max(c);
        staging = staging.max(s);
    }
    let partial = if needs.w { g.cout * g.k() } else { 0 };
    (cols, staging, partial)
}

/// Elements of backward workspace, for elements of `elem` bytes: (per thread group:
/// [`backward_parts`]; shared: the flipped kernel).
fn backward_workspace(g: &Geometry, needs: Needs, elem: usize) -> (usize, usize) {
    let (cols, staging, partial) = backward_parts(g, needs, elem);
    let flipped = if let (true, Some(d)) = (needs.x, Direct::input_grad(g, elem)) {
        d.packed_len()
    } else if needs.x && !g.pointwise() && flipped_path(g) {
        g.cin * g.cout * g.kh * g.kw
    } else {
        0
    };
    (cols + staging + partial, flipped)
}

/// Whether grad input goes through the output gradient's columns (fewer rows when cout < cin).
fn flipped_path(g: &Geometry) -> bool {
    g.stride == 1 && g.cout < g.cin
}

/// Cuts `buf` into consecutive pieces of the given lengths (`buf` must hold them all).
fn split<T>(mut buf: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    lens.map(|len| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        buf = tail;
        head
    })
    .collect()
}

/// A convolution's output gradient as backward reads it: image `i`'s `cout` planes start at
/// `i * stride + offset` of `data` (packed: `stride` = the planes of one image, `offset` 0; or
/// a channel window of a wider buffer, such as a block storage's gradient).
#[derive(Clone, Copy)]
struct GradOut<'a, T> {
    data: &'a [T],
    stride: usize,
    offset: usize,
}

impl<'a, T> GradOut<'a, T> {
    /// Image `i`'s `len` elements.
    fn image(&self, i: usize, len: usize) -> &'a [T] {
        &self.data[i * self.stride + self.offset..][..len]
    }
}

/// Why [`as_f32`] and its variants cannot fail: [`Direct`] takes only `f32` convolutions.
const F32_ONLY: &str = "the direct convolution runs in f32";

/// `s` as `f32`s: the direct kernel's operands.
fn as_f32<T: Elem>(s: &[T]) -> &[f32] {
    as_dtype(s).expect(F32_ONLY)
}

/// [`as_f32`] of a mutable slice.
fn as_f32_mut<T: Elem>(s: &mut [T]) -> &mut [f32] {
    as_dtype_mut(s).expect(F32_ONLY)
}

/// [`as_f32`] of output slots.
fn as_f32_out<T: Elem>(s: &mut [MaybeUninit<T>]) -> &mut [MaybeUninit<f32>] {
    as_dtype_slots(s).expect(F32_ONLY)
}

/// `n` consecutive slices of `len` elements of `out` (empty ones when `len` is 0).
fn image_slices<T>(out: &mut [T], len: usize, n: usize) -> Vec<&mut [T]> {
    match len {
        0 => (0..n).map(|_| Default::default()).collect(),
        _ => out.chunks_exact_mut(len).take(n).collect(),
    }
}

/// `(first image, image count)` of each of `groups` thread groups, splitting the batch evenly.
fn group_ranges(n: usize, groups: usize) -> Vec<(usize, usize)> {
    let gs = n.div_ceil(groups.max(1));
    (0..groups)
        .map(|i| (i * gs, gs.min(n.saturating_sub(i * gs))))
        .collect()
}

/// A convolution's operands: input, weight and optional bias.
type Operands<'a, T> = (&'a [T], &'a [T], Option<&'a [T]>);

/// `out = conv(x, w) + bias` for the whole batch, every element of `out` written (no zero fill
/// needed); `ws` holds `groups` forward workspaces.
fn forward<T: Elem>(
    g: &Geometry,
    groups: usize,
    ops: Operands<'_, T>,
    out: Vec<&mut [MaybeUninit<T>]>,
    ws: &mut [T],
) {
    let elem = std::mem::size_of::<T>();
    if let Some(wg) = Winograd::of(g, elem) {
        let (x, w, bias) = (as_f32(ops.0), as_f32(ops.1), ops.2.map(as_f32));
        let out = out.into_iter().map(as_f32_out).collect();
        return wg.forward(x, w, bias, out, as_f32_mut(ws));
    }
    let units = forward_units(g, elem);
    let run = Run {
        parallel: groups <= 1,
        bf16: g.bf16_values,
    };
    let cols = Cols::from_geo(g);
    let direct = Direct::forward(g, elem);
    let col_len = if g.pointwise() || direct.is_some() {
        0
    } else {
        cols.block_len(elem)
    };
    let ranges: Vec<(usize, usize)> = group_ranges(units.len(), groups)
        .into_iter()
        .map(|(u, c)| {
            let mine = &units[u.min(units.len())..(u + c).min(units.len())];
            let first = mine.first().map_or(g.n, |u| u.0);
            (first, mine.iter().map(|u| u.1).sum())
        })
        .collect();
    let mut images = out.into_iter();
    let outs: Vec<Vec<_>> = ranges
        .iter()
        .map(|r| images.by_ref().take(r.1).collect())
        .collect();
    let wss = split(ws, ranges.iter().map(|_| forward_workspace(g, elem)));
    let jobs: Vec<_> = ranges.into_iter().zip(outs).zip(wss).collect();
    jobs.into_par_iter()
        .for_each(|(((first, count), mut out), ws)| {
            if let Some(d) = direct {
                let (x, w, bias) = (as_f32(ops.0), as_f32(ops.1), ops.2.map(as_f32));
                let xs = g.cin * g.h * g.w;
                let (packed, ws) = as_f32_mut(ws).split_at_mut(d.packed_len());
                d.pack(w, packed);
                for (i, o) in (first..first + count).zip(out) {
                    d.image(&x[i * xs..][..xs], packed, bias, as_f32_out(o), ws);
                }
                return;
            }
            if g.pointwise() {
                for (i, o) in (first..first + count).zip(out) {
                    forward_pointwise(g, ops, i, o, run);
                }
                return;
            }
            let (col, staging) = ws.split_at_mut(col_len);
            for blk in cols.blocks(elem, (first, count)) {
                let out = &mut out[blk.first - first..];
                forward_block(g, &cols, blk, ops, out, (col, &mut *staging), run);
            }
        });
}

/// Image `i` of a pointwise forward: one GEMM on the image itself.
fn forward_pointwise<T: Elem>(
    g: &Geometry,
    (x, w, bias): Operands<'_, T>,
    i: usize,
    o: &mut [MaybeUninit<T>],
    run: Run,
) {
    let (xs, p) = (g.cin * g.h * g.w, g.p());
    let xi = &x[i * xs..(i + 1) * xs];
    let mut o = match bias {
        Some(b) => {
            for (row, &bv) in o.chunks_exact_mut(p.max(1)).zip(b) {
                write_fill(row, bv);
            }
            // SAFETY: every row (one per output channel) was just filled.
            Dst::Add(unsafe { assume_init_mut(o) })
        }
        None => Dst::Write(o),
    };
    o.gemm_at(0, p, Mat::n(w), Mat::n(xi), (g.cout, p, g.k()), run);
}

/// One column block of the forward into `out` (the images from the block's first): rows of one
/// image computed in place, or several whole images computed into `staging` and copied out.
fn forward_block<T: Elem>(
    g: &Geometry,
    cols: &Cols,
    blk: Block,
    (x, w, bias): Operands<'_, T>,
    out: &mut [&mut [MaybeUninit<T>]],
    (col, staging): (&mut [T], &mut [T]),
    run: Run,
) {
    let (xs, p, k, wo) = (g.cin * g.h * g.w, g.p(), g.k(), g.wout);
    let (nb, per) = (blk.cols(wo), blk.image_cols(wo));
    for (j, i) in blk.range().enumerate() {
        let xi = &x[i * xs..(i + 1) * xs];
        cols.im2col(xi, col, (nb, j * per), (blk.y0, blk.y1));
    }
    let (a, b, dims) = (Mat::n(w), Mat::n(&col[..k * nb]), (g.cout, nb, k));
    if blk.images == 1 {
        let (o, at) = (&mut *out[0], blk.y0 * wo);
        let Some(bias) = bias else {
            return gemm_ld_uninit(&mut o[at..], p, a, b, dims, run);
        };
        if blk.y0 == 0 {
            for (row, &bv) in o.chunks_exact_mut(p.max(1)).zip(bias) {
                write_fill(row, bv);
            }
        }
        // SAFETY: every row was filled with the bias at the image's first block (y0 = 0), which
        // this job ran before this one.
        let o = unsafe { assume_init_mut(o) };
        return gemm_ld(&mut o[at..], p, a, b, dims, true, run);
    }
    gemm(staging, a, b, dims, false, run);
    for (j, o) in out[..blk.images].iter_mut().enumerate() {
        for (co, row) in o.chunks_exact_mut(p.max(1)).enumerate() {
            let src = &staging[co * nb + j * p..][..p];
            match bias {
                Some(bias) => row
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &s)| _ = d.write(bias[co] + s)),
                None => row.iter_mut().zip(src).for_each(|(d, &s)| _ = d.write(s)),
            }
        }
    }
}

/// Copies the output gradient of a block of whole images into `staging` (`cout x cols`, the
/// images side by side).
fn gather<T: Elem>(g: &Geometry, gout: GradOut<'_, T>, blk: Block, staging: &mut [T]) {
    let (p, nb) = (g.p(), blk.cols(g.wout));
    for (j, i) in blk.range().enumerate() {
        let img = gout.image(i, g.cout * p);
        for (co, src) in img.chunks_exact(p.max(1)).enumerate() {
            staging[co * nb + j * p..][..p].copy_from_slice(src);
        }
    }
}

/// Whether a backward sums the weight gradient transposed, as gW^T (K x cout), and transposes
/// it at the end: when the direct kernel computes it (it writes that layout), for a pointwise
/// convolution, or below [`WIDE_OUT`] output channels (the long dimension first runs the GEMM
/// kernel at nearly twice the speed when cout is small); else as gW (cout x K) itself.
fn transposed_grad(g: &Geometry, elem: usize) -> bool {
    g.cout < WIDE_OUT || g.pointwise() || Direct::forward(g, elem).is_some()
}

/// The per-group buffers of a backward: a column block, a staging block, a partial gW^T.
type Buffers<'b, T> = (&'b mut [T], &'b mut [T], &'b mut [T]);

/// The weight gradient of the images of one work chunk, summed as gW^T (K x cout) into
/// `partial`: `col (K x P) * gout^T` block by block, the long output dimension first (it runs
/// the GEMM kernel at nearly twice the speed when cout is small).
fn weight_grad_chunk<T: Elem>(
    g: &Geometry,
    (first, count): (usize, usize),
    gout: GradOut<'_, T>,
    x: &[T],
    (col, staging, partial): Buffers<'_, T>,
    run: Run,
) {
    let (xs, os, p, k, wo) = (g.cin * g.h * g.w, g.cout * g.p(), g.p(), g.k(), g.wout);
    if g.pointwise() {
        for (idx, i) in (first..first + count).enumerate() {
            let (xi, go) = (&x[i * xs..(i + 1) * xs], gout.image(i, os));
            gemm(
                partial,
                Mat::n(xi),
                Mat::t(go),
                (k, g.cout, p),
                idx > 0,
                run,
            );
        }
        return;
    }
    let elem = std::mem::size_of::<T>();
    if let Some(d) = Direct::forward(g, elem) {
        for (idx, i) in (first..first + count).enumerate() {
            let (xi, go) = (as_f32(&x[i * xs..(i + 1) * xs]), as_f32(gout.image(i, os)));
            d.weight_grad_image(xi, go, as_f32_mut(partial), idx == 0, as_f32_mut(col));
        }
        return;
    }
    let cols = Cols::from_geo(g).within(chunk_images(g));
    for (b, blk) in cols.blocks(elem, (first, count)).into_iter().enumerate() {
        let (nb, per) = (blk.cols(wo), blk.image_cols(wo));
        for (j, i) in blk.range().enumerate() {
            let xi = &x[i * xs..(i + 1) * xs];
            cols.im2col(xi, col, (nb, j * per), (blk.y0, blk.y1));
        }
        let go = if blk.images == 1 {
            Mat::n(&gout.image(blk.first, os)[blk.y0 * wo..]).ld(p)
        } else {
            gather(g, gout, blk, staging);
            Mat::n(&staging[..g.cout * nb])
        };
        let c = &col[..k * nb];
        if transposed_grad(g, elem) {
            gemm(
                partial,
                Mat::n(c),
                go.transpose(),
                (k, g.cout, nb),
                b > 0,
                run,
            );
        } else {
            gemm(partial, go, Mat::t(c), (g.cout, k, nb), b > 0, run);
        }
    }
}

/// The input gradient of the images of one work chunk into `gx` (theirs, every element
/// written). `flip` is the flipped kernel on the flipped path.
#[allow(clippy::too_many_arguments)]
fn input_grad_chunk<T: Elem>(
    g: &Geometry,
    (first, count): (usize, usize),
    gout: GradOut<'_, T>,
    w: &[T],
    flip: &[T],
    gx: &mut [MaybeUninit<T>],
    (col, staging): (&mut [T], &mut [T]),
    run: Run,
) {
    let (xs, os, p, hw) = (g.cin * g.h * g.w, g.cout * g.p(), g.p(), g.h * g.w);
    let elem = std::mem::size_of::<T>();
    if g.pointwise() {
        for (idx, i) in (first..first + count).enumerate() {
            let (gxi, dims) = (&mut gx[idx * xs..(idx + 1) * xs], (g.cin, p, g.cout));
            gemm_ld_uninit(gxi, p, Mat::t(w), Mat::n(gout.image(i, os)), dims, run);
        }
        return;
    }
    if let Some(d) = Direct::input_grad(g, elem) {
        for (idx, i) in (first..first + count).enumerate() {
            let gxi = as_f32_out(&mut gx[idx * xs..(idx + 1) * xs]);
            d.image(
                as_f32(gout.image(i, os)),
                as_f32(flip),
                None,
                gxi,
                as_f32_mut(col),
            );
        }
        return;
    }
    if flipped_path(g) {
        let gc = Cols::of_output_grad(g).within(chunk_images(g));
        for blk in gc.blocks(elem, (first, count)) {
            let (nb, per) = (blk.cols(g.w), blk.image_cols(g.w));
            for (j, i) in blk.range().enumerate() {
                gc.im2col(gout.image(i, os), col, (nb, j * per), (blk.y0, blk.y1));
            }
            let (a, b) = (Mat::n(flip), Mat::n(&col[..gc.rows() * nb]));
            let dims = (g.cin, nb, gc.rows());
            let at = (blk.first - first) * xs;
            if blk.images == 1 {
                let gxi = &mut gx[at + blk.y0 * g.w..at + xs];
                gemm_ld_uninit(gxi, hw, a, b, dims, run);
                continue;
            }
            gemm(staging, a, b, dims, false, run);
            for (j, gxi) in gx[at..at + blk.images * xs]
                .chunks_exact_mut(xs)
                .enumerate()
            {
                for (ci, row) in gxi.chunks_exact_mut(hw.max(1)).enumerate() {
                    let src = &staging[ci * nb + j * hw..][..hw];
                    row.iter_mut().zip(src).for_each(|(d, &s)| _ = d.write(s));
                }
            }
        }
        return;
    }
    let xc = Cols::from_geo(g).within(chunk_images(g));
    for blk in xc.blocks(elem, (first, count)) {
        let (nb, per, k) = (blk.cols(g.wout), blk.image_cols(g.wout), g.k());
        let go = if blk.images == 1 {
            Mat::n(&gout.image(blk.first, os)[blk.y0 * g.wout..]).ld(p)
        } else {
            gather(g, gout, blk, staging);
            Mat::n(&staging[..g.cout * nb])
        };
        gemm(
            &mut col[..k * nb],
            Mat::t(w),
            go,
            (k, nb, g.cout),
            false,
            run,
        );
        for (j, i) in blk.range().enumerate() {
            let gxi = &mut gx[(i - first) * xs..][..xs];
            // col2im adds into the image: it starts from zeros, filled at its first block.
            if blk.y0 == 0 {
                write_fill(gxi, T::zero());
            }
            // SAFETY: the image was zero-filled at its first block (y0 = 0), which this chunk
            // ran before this one.
            let gxi = unsafe { assume_init_mut(gxi) };
            xc.col2im(col, gxi, (nb, j * per), (blk.y0, blk.y1));
        }
    }
}

/// The gradients of a conv whose output gradient is `gout`: grad input into `gx` (needs `w`;
/// every element written), grad weight into `gw` (needs `x`), each if `needs` says so. `ws` holds
/// `groups` backward workspaces and `flip` the flipped kernel (sizes from [`backward_workspace`]).
#[allow(clippy::too_many_arguments)]
fn backward<T: Elem>(
    g: &Geometry,
    groups: usize,
    needs: Needs,
    gout: GradOut<'_, T>,
    x: &[T],
    w: &[T],
    gx: &mut [MaybeUninit<T>],
    gw: &mut [T],
    ws: &mut [T],
    flip: &mut [T],
) {
    let (xs, k) = (g.cin * g.h * g.w, g.k());
    let elem = std::mem::size_of::<T>();
    if let Some(wg) = Winograd::of(g, elem) {
        let os = g.cout * g.p();
        let go = |i: usize| as_f32(gout.image(i, os));
        if needs.w {
            wg.weight_grad(as_f32(x), &go, as_f32_mut(gw), as_f32_mut(ws));
        }
        if needs.x {
            let gx = image_slices(gx, xs, g.n)
                .into_iter()
                .map(as_f32_out)
                .collect();
            wg.input_grad(&go, as_f32(w), gx, as_f32_mut(ws));
        }
        return;
    }
    let chunks = chunk_ranges(g);
    let run = Run {
        parallel: groups <= 1,
        bf16: g.bf16_values,
    };
    if let (true, Some(d)) = (needs.x, Direct::input_grad(g, elem)) {
        d.pack_flipped(as_f32(w), as_f32_mut(flip));
    } else if needs.x && flipped_path(g) && !g.pointwise() {
        // W'[ci][co][i][j] = W[co][ci][kh-1-i][kw-1-j]
        let kk = g.kh * g.kw;
        for (ci, dst) in flip.chunks_exact_mut((g.cout * kk).max(1)).enumerate() {
            for (co, d) in dst.chunks_exact_mut(kk).enumerate() {
                let src = &w[(co * g.cin + ci) * kk..][..kk];
                d.iter_mut()
                    .zip(src.iter().rev())
                    .for_each(|(d, &s)| *d = s);
            }
        }
    }
    let flip = &*flip;
    let (cols_len, staging_len, partial_len) = backward_parts(g, needs, elem);
    let per = cols_len + staging_len + partial_len;
    let gx_lens = chunks.iter().map(|r| if needs.x { r.1 * xs } else { 0 });
    let mut gxs = split(gx, gx_lens);
    let mut wss = split(&mut *ws, (0..groups).map(|_| per));
    // The weight gradient is summed as gW^T (K x cout) in `gw`'s own buffer, transposed at the end.
    gw.fill(T::zero());
    let waves = chunks
        .chunks(groups.max(1))
        .zip(gxs.chunks_mut(groups.max(1)));
    // The waves run from a pool thread: a caller outside the pool would hand each wave to the
    // pool and sleep until it ends, paying a wake-up per wave.
    rayon::scope(|_| {
        for (wave, wave_gx) in waves {
            let jobs: Vec<_> = wave.iter().zip(wave_gx).zip(wss.iter_mut()).collect();
            jobs.into_par_iter().for_each(|((&chunk, gx), ws)| {
                let (col, rest) = ws.split_at_mut(cols_len);
                let (staging, partial) = rest.split_at_mut(staging_len);
                if needs.w {
                    let bufs = (&mut *col, &mut *staging, partial);
                    weight_grad_chunk(g, chunk, gout, x, bufs, run);
                }
                if needs.x {
                    input_grad_chunk(g, chunk, gout, w, flip, gx, (col, staging), run);
                }
            });
            if needs.w {
                let parts: Vec<&[T]> = wss[..wave.len()]
                    .iter()
                    .map(|ws| &ws[per - partial_len..])
                    .collect();
                add_partials(gw, &parts);
            }
        }
    });
    // gW (cout x K) from gW^T, through the first group's partial, free by now.
    if let (true, true, Some(first)) = (needs.w, transposed_grad(g, elem), wss.first_mut()) {
        let scratch = &mut first[per - partial_len..];
        scratch.copy_from_slice(gw);
        for (co, row) in gw.chunks_exact_mut(k.max(1)).enumerate() {
            let column = scratch[co..].iter().step_by(g.cout);
            row.iter_mut().zip(column).for_each(|(a, &b)| *a = b);
        }
    }
}

/// `gb[co] = sum over images and positions of gout[., co, ., .]`.
fn grad_bias<T: Elem>(g: &Geometry, gout: GradOut<'_, T>, gb: &mut [T]) {
    let p = g.p().max(1);
    gb.fill(T::zero());
    for i in 0..g.n {
        let img = gout.image(i, g.cout * g.p());
        for (b, plane) in gb.iter_mut().zip(img.chunks_exact(p)) {
            *b += plane.iter().copied().sum::<T>();
        }
    }
}

/// The workspace bytes of one pass over `geo` with elements of `elem` bytes.
pub(super) fn pass_workspace_bytes(geo: &Geometry, elem: usize, pass: Conv2dPass) -> usize {
    let elems = match pass {
        Conv2dPass::Forward => forward_workspace_elems(geo, elem),
        Conv2dPass::Backward { input_grad: x } => {
            let (cols, flipped) = backward_workspace_elems(geo, x, true, elem);
            cols + flipped
        }
    };
    elems * elem
}

/// Elements of the forward kernel's workspace (one column block per thread group).
pub(super) fn forward_workspace_elems(geo: &Geometry, elem: usize) -> usize {
    if let Some(wg) = Winograd::of(geo, elem) {
        return wg.workspace_len();
    }
    groups(forward_units(geo, elem).len()) * forward_workspace(geo, elem)
}

/// Elements of the backward kernel's two workspaces when it computes the input gradient (`x`)
/// and the weight gradient (`w`): the thread groups' column blocks and partial weight
/// gradients, and the flipped kernel.
pub(super) fn backward_workspace_elems(
    geo: &Geometry,
    x: bool,
    w: bool,
    elem: usize,
) -> (usize, usize) {
    if let (true, Some(wg)) = (x || w, Winograd::of(geo, elem)) {
        return (wg.workspace_len(), 0);
    }
    let (per, flipped) = backward_workspace(geo, Needs { x, w }, elem);
    (groups(chunk_ranges(geo).len()) * per, flipped)
}

/// Zero-filled `len` elements of workspace, charged to `x`'s device while the reservation lives.
fn workspace<T: Elem>(x: &Tensor, len: usize) -> Result<(Vec<T>, crate::Reservation)> {
    let r = x.device().reserve(len * std::mem::size_of::<T>())?;
    Ok((vec![T::zero(); len], r))
}

/// One forward call's operands as host slices and its workspace, charged to the device while
/// the call lives (across the output's allocation, as the meta kernel charges it).
struct ForwardCall<'a, T> {
    xs: &'a [T],
    w: &'a [T],
    b: Option<&'a [T]>,
    ws: Vec<T>,
    _reserved: crate::Reservation,
}

impl<'a, T: Elem> ForwardCall<'a, T> {
    fn new(
        geo: &Geometry,
        x: &'a Tensor,
        weight: &'a Tensor,
        bias: Option<&'a Tensor>,
    ) -> Result<Self> {
        let (ws, _reserved) =
            workspace::<T>(x, forward_workspace_elems(geo, std::mem::size_of::<T>()))?;
        Ok(ForwardCall {
            xs: x.as_slice::<T>()?,
            w: weight.as_slice::<T>()?,
            b: bias.map(|b| b.as_slice::<T>()).transpose()?,
            ws,
            _reserved,
        })
    }

    /// The convolution into `images` (each image's `cout` output planes).
    fn run(&mut self, geo: &Geometry, images: Vec<&mut [MaybeUninit<T>]>) {
        let groups = groups(forward_units(geo, std::mem::size_of::<T>()).len());
        forward::<T>(geo, groups, (self.xs, self.w, self.b), images, &mut self.ws);
    }
}

impl Conv2dKernels for Cpu {
    fn conv2d_forward(
        &self,
        geo: &Geometry,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if on_tiles(geo, x.dtype()) {
            return tiles::forward(geo, x, weight, bias);
        }
        let shape = [geo.n, geo.cout, geo.hout, geo.wout];
        let os = geo.cout * geo.p();
        dispatch_float!(x.dtype(), T => {
            let mut call = ForwardCall::<T>::new(geo, x, weight, bias)?;
            // SAFETY: `forward` writes every output element (each image's `os`).
            let out = unsafe {
                written_vec(shape.iter().product(), |o| call.run(geo, image_slices(o, os, geo.n)))
            };
            Tensor::from_vec(out, &shape, x.device())
        })
    }

    fn conv2d_forward_into(
        &self,
        geo: &Geometry,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        dst: &mut Tensor,
        c0: usize,
    ) -> Result<()> {
        let (wide, os) = (dst.shape()[1] * geo.p(), geo.cout * geo.p());
        let at = c0 * geo.p();
        dispatch_float!(x.dtype(), T => {
            let mut call = ForwardCall::<T>::new(geo, x, weight, bias)?;
            let images = dst
                .make_mut::<T>()?
                .chunks_exact_mut(wide.max(1))
                .map(|image| as_slots(&mut image[at..at + os]))
                .collect();
            call.run(geo, images);
        });
        Ok(())
    }

    fn conv2d_backward(
        &self,
        geo: &Geometry,
        g: &Tensor,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        #[cfg(target_arch = "x86_64")]
        if on_tiles(geo, g.dtype()) {
            return tiles::backward(geo, g, x, w, want_bias);
        }
        backward_from(geo, (g, 0), x, w, want_bias)
    }

    fn conv2d_backward_window(
        &self,
        geo: &Geometry,
        g: &Tensor,
        c0: usize,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        backward_from(geo, (g, c0), x, w, want_bias)
    }
}

/// The backward of a convolution from its output gradient: channels `c0 .. c0 + cout` of
/// `g` (all of it when it has `cout` channels).
fn backward_from(
    geo: &Geometry,
    (g, c0): (&Tensor, usize),
    x: Option<&Tensor>,
    w: Option<&Tensor>,
    want_bias: bool,
) -> Result<Conv2dGrads> {
    let (dtype, dev) = (g.dtype(), g.device());
    let stride = g.shape().get(1).copied().unwrap_or(geo.cout) * geo.p();
    let offset = c0 * geo.p();
    let gb = if want_bias {
        let mut gb = Tensor::zeros(&[geo.cout], dtype, dev)?;
        dispatch_float!(dtype, T => grad_bias::<T>(geo, GradOut { data: g.as_slice::<T>()?, stride, offset }, gb.make_mut::<T>()?));
        Some(gb)
    } else {
        None
    };
    let needs = Needs {
        x: w.is_some(),
        w: x.is_some(),
    };
    let mut gw = match needs.w {
        true => Some(Tensor::zeros(
            &[geo.cout, geo.cin, geo.kh, geo.kw],
            dtype,
            dev,
        )?),
        false => None,
    };
    dispatch_float!(dtype, T => {
        let (cols, flip_len) = backward_workspace_elems(geo, needs.x, needs.w, std::mem::size_of::<T>());
        let groups = groups(chunk_ranges(geo).len());
        let (mut ws, _r1) = workspace::<T>(g, cols)?;
        let (mut flip, _r2) = workspace::<T>(g, flip_len)?;
        let xs = match x { Some(x) => x.as_slice::<T>()?, None => &[] };
        let ws_ = match w { Some(w) => w.as_slice::<T>()?, None => &[] };
        let gws = match gw.as_mut() { Some(t) => t.make_mut::<T>()?, None => &mut [] };
        let gs = GradOut { data: g.as_slice::<T>()?, stride, offset };
        let x_shape = [geo.n, geo.cin, geo.h, geo.w];
        let len = if needs.x { x_shape.iter().product() } else { 0 };
        // SAFETY: `backward` writes every element of the input gradient when it computes one.
        let gx = unsafe { written_vec(len, |gxs| backward::<T>(geo, groups, needs, gs, xs, ws_, gxs, gws, &mut ws, &mut flip)) };
        let gx = needs.x.then(|| Tensor::from_vec(gx, &x_shape, dev)).transpose()?;
        Ok((gx, gw, gb))
    })
}

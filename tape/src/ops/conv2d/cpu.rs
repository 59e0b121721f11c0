//! CPU kernels of `conv2d`. The batch is split into one contiguous group of images per thread; a
//! thread runs single-threaded GEMMs image by image with its own column buffer, so the im2col
//! workspace is one image's columns per thread, whatever the batch size.
//!
//! Per image, with `K = cin*kh*kw` and `P = hout*wout` (the big, contiguous dimension):
//! - forward: `out (cout x P) = W (cout x K) * col(x) (K x P)`; a pointwise conv uses `x` itself;
//! - grad weight: `gW (cout x K) += gout (cout x P) * col(x)^T`;
//! - grad input, stride 1: `gx (cin x HW) = W' (cin x cout*kh*kw) * col(gout)` with `W'` the
//!   flipped, transposed kernel, when that column matrix is the smaller one; otherwise
//!   `gcol (K x P) = W^T * gout` scattered back by col2im.

use super::Geometry;
use crate::dtype::Elem;
use crate::ops::linear::cpu::{gemm, Mat};
use rayon::prelude::*;

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

/// The geometry of one im2col: `c` channels of `rows x cols` planes, a `kh x kw` kernel.
#[derive(Clone, Copy)]
struct Cols {
    c: usize,
    kh: usize,
    kw: usize,
    y: Axis,
    x: Axis,
}

impl Cols {
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
        }
    }

    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn p(&self) -> usize {
        self.y.output * self.x.output
    }

    /// Fills `col` (`rows() x p()`) from one image `src` (`c x input_y x input_x`).
    fn im2col<T: Elem>(&self, src: &[T], col: &mut [T]) {
        let (wi, wo, plane) = (self.x.input, self.x.output, self.y.input * self.x.input);
        let mut rows = col.chunks_exact_mut(self.p().max(1));
        for ci in 0..self.c {
            let img = &src[ci * plane..(ci + 1) * plane];
            for i in 0..self.kh {
                let (ylo, yhi) = self.y.valid(i);
                for j in 0..self.kw {
                    let Some(row) = rows.next() else { return };
                    let (xlo, xhi) = self.x.valid(j);
                    for (oy, out) in row.chunks_exact_mut(wo.max(1)).enumerate() {
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

    /// Adds the columns `col` back into one image `dst` (the adjoint of `im2col`).
    fn col2im<T: Elem>(&self, col: &[T], dst: &mut [T]) {
        let (wi, wo, plane) = (self.x.input, self.x.output, self.y.input * self.x.input);
        let mut rows = col.chunks_exact(self.p().max(1));
        for ci in 0..self.c {
            let img = &mut dst[ci * plane..(ci + 1) * plane];
            for i in 0..self.kh {
                let (ylo, yhi) = self.y.valid(i);
                for j in 0..self.kw {
                    let Some(row) = rows.next() else { return };
                    let (xlo, xhi) = self.x.valid(j);
                    if xlo >= xhi {
                        continue;
                    }
                    let x0 = self.x.input_of(xlo, j);
                    for oy in ylo..yhi {
                        let line = &mut img[self.y.input_of(oy, i) * wi..][..wi];
                        let src = &row[oy * wo + xlo..oy * wo + xhi];
                        let dst = line[x0..].iter_mut().step_by(self.x.stride);
                        dst.zip(src).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    }
}

/// Images per thread group: the batch split evenly over rayon's threads.
fn group_size(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().clamp(1, n.max(1)))
        .max(1)
}

/// Number of thread groups (and so of per-thread workspaces) for a batch of `n`.
pub(crate) fn groups(n: usize) -> usize {
    n.div_ceil(group_size(n))
}

/// Which gradients a backward computes.
#[derive(Clone, Copy)]
pub(crate) struct Needs {
    /// Grad input (needs the weight).
    pub(crate) x: bool,
    /// Grad weight (needs the input).
    pub(crate) w: bool,
}

/// Elements of forward workspace per thread group.
pub(crate) fn forward_workspace(g: &Geometry) -> usize {
    if g.pointwise() {
        0
    } else {
        g.k() * g.p()
    }
}

/// Elements of backward workspace: (per thread group: columns and a partial grad weight, shared:
/// the flipped kernel).
pub(crate) fn backward_workspace(g: &Geometry, needs: Needs) -> (usize, usize) {
    let wcols = if needs.w { forward_workspace(g) } else { 0 };
    let xcols = match (needs.x && !g.pointwise(), flipped_path(g)) {
        (false, _) => 0,
        (true, true) => Cols::of_output_grad(g).rows() * g.h * g.w,
        (true, false) => g.k() * g.p(),
    };
    let partial = if needs.w { g.cout * g.k() } else { 0 };
    let flipped = if needs.x && !g.pointwise() && flipped_path(g) {
        g.cin * g.cout * g.kh * g.kw
    } else {
        0
    };
    (wcols.max(xcols) + partial, flipped)
}

/// Whether grad input goes through the output gradient's columns (fewer rows when cout < cin).
fn flipped_path(g: &Geometry) -> bool {
    g.stride == 1 && g.cout < g.cin
}

/// Cuts `buf` into consecutive pieces of the given lengths (`buf` must hold them all).
fn split<'a, T>(mut buf: &'a mut [T], lens: impl Iterator<Item = usize>) -> Vec<&'a mut [T]> {
    lens.map(|len| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        buf = tail;
        head
    })
    .collect()
}

/// `(first image, image count)` of each thread group.
fn group_ranges(n: usize) -> Vec<(usize, usize)> {
    let gs = group_size(n);
    (0..groups(n))
        .map(|i| (i * gs, gs.min(n - i * gs)))
        .collect()
}

/// `out = conv(x, w) + bias` for the whole batch; `ws` holds `groups(n)` forward workspaces.
pub(crate) fn forward<T: Elem>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    out: &mut [T],
    ws: &mut [T],
) {
    let (xs, os, p) = (g.cin * g.h * g.w, g.cout * g.p(), g.p());
    let ranges = group_ranges(g.n);
    let single = ranges.len() == 1;
    let cols = Cols::from_geo(g);
    let outs = split(out, ranges.iter().map(|r| r.1 * os));
    let wss = split(ws, ranges.iter().map(|_| forward_workspace(g)));
    let jobs: Vec<_> = ranges.into_iter().zip(outs).zip(wss).collect();
    jobs.into_par_iter()
        .for_each(|(((first, count), out), col)| {
            for (i, o) in (first..first + count).zip(out.chunks_exact_mut(os.max(1))) {
                let xi = &x[i * xs..(i + 1) * xs];
                if let Some(b) = bias {
                    for (row, &bv) in o.chunks_exact_mut(p.max(1)).zip(b) {
                        row.fill(bv);
                    }
                }
                let rhs = if g.pointwise() {
                    xi
                } else {
                    cols.im2col(xi, col);
                    &*col
                };
                let dims = (g.cout, p, g.k());
                gemm(o, Mat::n(w), Mat::n(rhs), dims, bias.is_some(), single);
            }
        });
}

/// The gradients of a conv whose output gradient is `gout`: grad input into `gx` (needs `w`),
/// grad weight into `gw` (needs `x`), each if `needs` says so. `ws` holds `groups(n)` backward
/// workspaces and `flip` the flipped kernel (sizes from [`backward_workspace`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Elem>(
    g: &Geometry,
    needs: Needs,
    gout: &[T],
    x: &[T],
    w: &[T],
    gx: &mut [T],
    gw: &mut [T],
    ws: &mut [T],
    flip: &mut [T],
) {
    let (xs, os, k, p) = (g.cin * g.h * g.w, g.cout * g.p(), g.k(), g.p());
    let ranges = group_ranges(g.n);
    let single = ranges.len() == 1;
    let (xcols, gcols, flipped) = (Cols::from_geo(g), Cols::of_output_grad(g), flipped_path(g));
    if needs.x && flipped && !g.pointwise() {
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
    let (per, _) = backward_workspace(g, needs);
    let partial_len = if needs.w { g.cout * k } else { 0 };
    let gxs = split(
        gx,
        ranges.iter().map(|r| if needs.x { r.1 * xs } else { 0 }),
    );
    let wss = split(&mut *ws, ranges.iter().map(|_| per));
    let jobs: Vec<_> = ranges.into_iter().zip(gxs).zip(wss).collect();
    jobs.into_par_iter().for_each(|(((first, count), gx), ws)| {
        let (col, partial) = ws.split_at_mut(per - partial_len);
        for (idx, i) in (first..first + count).enumerate() {
            let go = &gout[i * os..(i + 1) * os];
            if needs.w {
                let xi = &x[i * xs..(i + 1) * xs];
                let rhs = if g.pointwise() {
                    xi
                } else {
                    xcols.im2col(xi, col);
                    &*col
                };
                let dims = (g.cout, k, p);
                gemm(partial, Mat::n(go), Mat::t(rhs), dims, idx > 0, single);
            }
            if needs.x {
                let gxi = &mut gx[idx * xs..(idx + 1) * xs];
                if g.pointwise() {
                    gemm(
                        gxi,
                        Mat::t(w),
                        Mat::n(go),
                        (g.cin, p, g.cout),
                        false,
                        single,
                    );
                } else if flipped {
                    gcols.im2col(go, col);
                    let dims = (g.cin, g.h * g.w, gcols.rows());
                    gemm(gxi, Mat::n(flip), Mat::n(col), dims, false, single);
                } else {
                    gemm(col, Mat::t(w), Mat::n(go), (k, p, g.cout), false, single);
                    gxi.fill(T::zero());
                    xcols.col2im(col, gxi);
                }
            }
        }
    });
    if needs.w {
        gw.fill(T::zero());
        for part in ws.chunks_exact(per.max(1)) {
            let part = &part[per - partial_len..];
            gw.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
        }
    }
}

/// `gb[co] = sum over images and positions of gout[., co, ., .]`.
pub(crate) fn grad_bias<T: Elem>(g: &Geometry, gout: &[T], gb: &mut [T]) {
    let p = g.p().max(1);
    gb.fill(T::zero());
    for img in gout.chunks_exact((g.cout * g.p()).max(1)) {
        for (b, plane) in gb.iter_mut().zip(img.chunks_exact(p)) {
            *b += plane.iter().copied().sum::<T>();
        }
    }
}

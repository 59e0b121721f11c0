//! bf16 convolutions on the CPU's bf16 matrix units (`backend::cpu::amx`), for stride 1 and
//! "same" padding (`k = 2 * padding + 1`: pointwise, 3x3 with padding 1, ...): the products
//! read the bf16 input, weight and output gradient (no `f32` copies), sum in `f32`, and each
//! image's result is rounded into bf16 once. A bf16 policy's convolutions of that shape run
//! here on a CPU with the units ([`on_tiles`]); others run on `f32` copies, a chunk of images
//! at a time. The meta device charges the workspaces sized here.
//!
//! No im2col: each image is copied once into a zero-padded grid (planes of `(h + 2p) x
//! (w + 2p)`, a few zeros after each) in which every tap `(ky, kx)` of an output position `n`
//! reads element `n + ky * (w + 2p) + kx` of its channel's plane. So the GEMM's rows are plain
//! runs of the grid, one per (tap, channel), and its columns are the output positions on the
//! grid's width (`h x (w + 2p)`; the `2p` extra columns of each row are computed and dropped).
//! Per image `i`, with `T = kh * kw` taps and `K = T * cin`:
//! - forward: `y_i (cout x grid) = W (cout x K) * rows(x_i)`, `W` arranged tap-major;
//! - input gradient: the same product with `W` flipped and transposed (`cin x T * cout`) over
//!   the padded output gradient;
//! - weight gradient: `gW^T (K x cout) += rows(x_i) * g_i^T` (`g_i` spread on the grid, zero in
//!   the dropped columns), summed over the images in batch order (each product split over
//!   threads by its rows, which leaves every sum's order as it is): the same bits at every
//!   thread count.

use super::cpu::groups;
use super::Geometry;
use crate::dtype::DType;

/// Whether a convolution of `geo` on `dtype` operands runs on the tiles.
pub(super) fn on_tiles(geo: &Geometry, dtype: DType) -> bool {
    let same = |k: usize| k == 2 * geo.padding + 1;
    dtype == DType::BF16
        && geo.stride == 1
        && same(geo.kh)
        && same(geo.kw)
        && crate::simd::bf16_matrix_units()
}

/// The zero-padded grid of one image (see the module's docs).
#[derive(Clone, Copy)]
struct Grid {
    pad: usize,
    h: usize,
    w: usize,
    /// Grid width: `w + 2 * pad`.
    wp: usize,
    kh: usize,
    kw: usize,
    /// Output columns of the products (`h` rows of the grid's width) rounded up to a whole
    /// tile block (32).
    cols_pad: usize,
    /// Elements of one channel's plane: the padded image, then zeros as far as the last tap of
    /// the last column block reads.
    plane: usize,
}

impl Grid {
    fn of(geo: &Geometry) -> Self {
        let (wp, hp) = (geo.w + 2 * geo.padding, geo.h + 2 * geo.padding);
        let cols = geo.h * wp;
        let cols_pad = cols.next_multiple_of(32);
        let reach = (geo.kh - 1) * wp + geo.kw - 1;
        Grid {
            pad: geo.padding,
            h: geo.h,
            w: geo.w,
            wp,
            kh: geo.kh,
            kw: geo.kw,
            cols_pad,
            plane: (hp * wp).max(cols_pad + reach).next_multiple_of(2),
        }
    }

    /// Taps per kernel.
    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// How far tap `t` (row-major in the kernel) reads past an output column on the grid.
    fn offset(&self, t: usize) -> usize {
        (t / self.kw) * self.wp + t % self.kw
    }
}

/// `c` rounded up to a whole tile step or block (32).
fn whole(c: usize) -> usize {
    c.next_multiple_of(32)
}

/// Bytes of a same-size convolution's products from `c_in` to `c_out` channels: the packed
/// weight, and per thread group an image as channel pairs on the grid.
fn same_conv_bytes(geo: &Geometry, (c_in, c_out): (usize, usize)) -> usize {
    let g = Grid::of(geo);
    let per_group = whole(c_in) / 2 * g.plane * 4;
    whole(c_out) * g.taps() * whole(c_in) * 2 + groups(geo.n) * per_group
}

/// Workspace bytes of a forward on the tiles.
pub(super) fn forward_workspace_bytes(geo: &Geometry) -> usize {
    same_conv_bytes(geo, (geo.cin, geo.cout))
}

/// Images per chunk of a weight gradient on the tiles: a chunk sums its images' products
/// into a partial of its own, and the partials are added in chunk order. Fixed, so the sums'
/// order depends on the geometry alone, never on the thread count.
const CHUNK_IMAGES: usize = 4;

/// `(first image, count)` of each weight-gradient chunk, in batch order.
fn chunks(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .step_by(CHUNK_IMAGES)
        .map(|i| (i, CHUNK_IMAGES.min(n - i)))
        .collect()
}

/// Workspace bytes of a backward on the tiles computing the input gradient (`x`: the forward's
/// products the other way) and the weight gradient (`w`: per thread group an image on the grid,
/// the output gradient spread on its columns and packed, and a partial `f32` transpose of the
/// weight gradient; their sum).
pub(super) fn backward_workspace_bytes(geo: &Geometry, x: bool, w: bool) -> usize {
    let g = Grid::of(geo);
    let gx = same_conv_bytes(geo, (geo.cout, geo.cin));
    let part = g.taps() * whole(geo.cin) * whole(geo.cout) * 4;
    let per_group =
        whole(geo.cin) * g.plane * 2 + (geo.cout + whole(geo.cout)) * g.cols_pad * 2 + part;
    let gw = groups(chunks(geo.n).len()) * per_group + part;
    (if x { gx } else { 0 }) + if w { gw } else { 0 }
}

#[cfg(target_arch = "x86_64")]
pub(super) use cpu::{backward, forward};

#[cfg(target_arch = "x86_64")]
mod cpu {
    use super::super::{Conv2dGrads, Geometry};
    use super::{backward_workspace_bytes, forward_workspace_bytes, groups, whole, Grid};
    use crate::backend::cpu::amx::{self, block_of, with_tiles, Strided, TileStep};
    use crate::backend::cpu::convert::convert_into;
    use crate::backend::cpu::map::written_vec;
    use crate::device::Device;
    use crate::dtype::bf16;
    use crate::error::Result;
    use crate::tensor::Tensor;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// Two bf16 as one tile pair (`lo` in the low half).
    fn pair(lo: bf16, hi: bf16) -> u32 {
        ((hi.to_bits() as u32) << 16) | lo.to_bits() as u32
    }

    /// Words of one step of a packed slab.
    const STEP_WORDS: usize = amx::SLAB_STEP_BYTES / 4;

    impl Grid {
        /// `channels` planes of `src` (`h x w` each) on the grid as pairs of neighbouring
        /// channels: word `j` of pair plane `q` holds channels `2q, 2q + 1` at grid element
        /// `j`; zeros elsewhere (`dst`: `whole(channels) / 2` planes).
        fn pairs(&self, src: &[bf16], channels: usize, dst: &mut [u32]) {
            dst.fill(0);
            let hw = self.h * self.w;
            for (q, plane) in dst
                .chunks_exact_mut(self.plane)
                .take(channels.div_ceil(2))
                .enumerate()
            {
                let lo = &src[2 * q * hw..][..hw];
                let hi = (2 * q + 1 < channels).then(|| &src[(2 * q + 1) * hw..][..hw]);
                for y in 0..self.h {
                    let d = &mut plane[(y + self.pad) * self.wp + self.pad..][..self.w];
                    let l = &lo[y * self.w..][..self.w];
                    match hi {
                        Some(hi) => d
                            .iter_mut()
                            .zip(l.iter().zip(&hi[y * self.w..][..self.w]))
                            .for_each(|(d, (&l, &h))| *d = pair(l, h)),
                        None => d
                            .iter_mut()
                            .zip(l)
                            .for_each(|(d, &l)| *d = pair(l, bf16::ZERO)),
                    }
                }
            }
        }

        /// `channels` planes of `src` on the grid as they are (`dst`: `whole(channels)`
        /// planes, zeros elsewhere).
        fn plain(&self, src: &[bf16], channels: usize, dst: &mut [bf16]) {
            dst.fill(bf16::ZERO);
            let hw = self.h * self.w;
            for (c, plane) in dst.chunks_exact_mut(self.plane).take(channels).enumerate() {
                for (y, row) in src[c * hw..][..hw].chunks_exact(self.w).enumerate() {
                    let at = (y + self.pad) * self.wp + self.pad;
                    plane[at..at + self.w].copy_from_slice(row);
                }
            }
        }

        /// `rows` planes of `g` (`h x w`) spread on the columns of the products (`dst`: `rows
        /// x cols_pad`, zeros in the dropped columns).
        fn spread(&self, g: &[bf16], rows: usize, dst: &mut [bf16]) {
            dst.fill(bf16::ZERO);
            let hw = self.h * self.w;
            for (src, d) in g[..rows * hw]
                .chunks_exact(hw)
                .zip(dst.chunks_exact_mut(self.cols_pad))
            {
                for (s, d) in src.chunks_exact(self.w).zip(d.chunks_exact_mut(self.wp)) {
                    d[..self.w].copy_from_slice(s);
                }
            }
        }

        /// Rows `r0 ..+rows` of a `32 x 32` block of products at grid columns `n0 ..+32`
        /// (`blk`, rows 32 apart): their valid columns rounded into `out` (planes of `h x w`).
        fn emit(
            &self,
            blk: &[f32],
            (r0, rows): (usize, usize),
            n0: usize,
            out: &mut [MaybeUninit<bf16>],
        ) {
            let hw = self.h * self.w;
            for (r, src) in blk.chunks_exact(32).take(rows).enumerate() {
                let plane = &mut out[(r0 + r) * hw..][..hw];
                let mut n = n0;
                while n < n0 + 32 {
                    let (y, x) = (n / self.wp, n % self.wp);
                    if y >= self.h {
                        break;
                    }
                    if x >= self.w {
                        n = (y + 1) * self.wp;
                        continue;
                    }
                    let run = (self.w - x).min(n0 + 32 - n);
                    convert_into(&mut plane[y * self.w + x..][..run], &src[n - n0..][..run]);
                    n += run;
                }
            }
        }
    }

    /// A kernel packed as the products' `a` slabs: row `r` of `rows` (padded to 32), step
    /// `t * whole(channels) / 32 + c / 32` holding channels `c ..+32` (zeros past `channels`)
    /// of tap `t`, each value `at(r, t, c)`.
    fn packed_weights(
        (rows, channels, taps): (usize, usize, usize),
        at: impl Fn(usize, usize, usize) -> bf16,
    ) -> Vec<u32> {
        let steps = taps * whole(channels) / 32;
        let mut out = vec![0u32; whole(rows) / 32 * steps * STEP_WORDS];
        for r in 0..rows {
            for t in 0..taps {
                for c in (0..channels).step_by(2) {
                    let s = t * whole(channels) / 32 + c / 32;
                    let hi = if c + 1 < channels {
                        at(r, t, c + 1)
                    } else {
                        bf16::ZERO
                    };
                    out[((r / 32) * steps + s) * STEP_WORDS + (r % 32) * 16 + (c % 32) / 2] =
                        pair(at(r, t, c), hi);
                }
            }
        }
        out
    }

    /// `out (c_out planes of h x w) = weights * image [+ bias]` on the grid, a `32 x 32` block
    /// at a time, each rounded into `out` while it is in cache: `weights` from
    /// [`packed_weights`] (`c_out` rows, `c_in` channels), `image` from [`Grid::pairs`].
    fn same_conv_image(
        grid: &Grid,
        (c_in, c_out): (usize, usize),
        (weights, image, bias): (&[u32], &[u32], Option<&[bf16]>),
        out: &mut [MaybeUninit<bf16>],
    ) {
        let csteps = whole(c_in) / 32;
        let steps = grid.taps() * csteps;
        assert!(
            weights.len() >= whole(c_out) / 32 * steps * STEP_WORDS
                && image.len() >= csteps * 16 * grid.plane
        );
        with_tiles(|| {
            let mut blk = [0f32; 32 * 32];
            for mb in 0..c_out.div_ceil(32) {
                let rows = (c_out - mb * 32).min(32);
                let a0 = weights[mb * steps * STEP_WORDS..].as_ptr();
                for n0 in (0..grid.cols_pad).step_by(32) {
                    if let Some(b) = bias {
                        for (row, &bv) in blk.chunks_exact_mut(32).zip(&b[mb * 32..mb * 32 + rows])
                        {
                            row.fill(bv.to_f32());
                        }
                    }
                    let step = |s: usize| {
                        let (t, cs) = (s / csteps, s % csteps);
                        TileStep {
                            a: a0.wrapping_add(s * STEP_WORDS).cast(),
                            a_half: amx::SLAB_STEP_BYTES / 2,
                            a_stride: 64,
                            b: image
                                .as_ptr()
                                .wrapping_add(cs * 16 * grid.plane + n0 + grid.offset(t))
                                .cast(),
                            b_half: 64,
                            b_stride: grid.plane * 4,
                        }
                    };
                    // SAFETY: the tiles are loaded (`with_tiles`); `a` reads step `s` of slab
                    // `mb` of `weights`, `b` 16 pair planes of `image` (both inside, asserted)
                    // at columns `n0 + offset(t) ..+32`, inside a plane (`Grid::plane`); the
                    // block is `blk`.
                    unsafe {
                        block_of(
                            (rows, 32),
                            steps,
                            step,
                            blk.as_mut_ptr(),
                            32,
                            bias.is_some(),
                        )
                    };
                    grid.emit(&blk, (mb * 32, rows), n0, out);
                }
            }
        })
    }

    /// `f(i, out_i, image)` for every image `i` of `n`, each output `len` elements, the images
    /// split into thread groups with one `image` buffer of `image_len` words each; returns the
    /// output.
    fn per_image(
        n: usize,
        len: usize,
        image_len: usize,
        f: impl Fn(usize, &mut [MaybeUninit<bf16>], &mut [u32]) + Sync,
    ) -> Vec<bf16> {
        let per = n.div_ceil(groups(n).max(1)).max(1);
        // SAFETY: every image's `len` elements are written by `f` (each caller's contract).
        unsafe {
            written_vec(n * len, |out| {
                out.par_chunks_mut((per * len).max(1))
                    .enumerate()
                    .for_each(|(gi, images)| {
                        let mut image = vec![0u32; image_len];
                        for (j, o) in images.chunks_mut(len.max(1)).enumerate() {
                            f(gi * per + j, o, &mut image);
                        }
                    })
            })
        }
    }

    /// Every image of `src` (`n` images of `c_in` planes) through `weights` on the grid,
    /// rounded into bf16 (`n` images of `c_out` planes); `bias` starts each row's sums.
    fn same_conv(
        grid: &Grid,
        (n, c_in, c_out): (usize, usize, usize),
        src: &[bf16],
        weights: &[u32],
        bias: Option<&[bf16]>,
    ) -> Vec<bf16> {
        let hw = grid.h * grid.w;
        per_image(
            n,
            c_out * hw,
            whole(c_in) / 2 * grid.plane,
            |i, o, image| {
                grid.pairs(&src[i * c_in * hw..][..c_in * hw], c_in, image);
                same_conv_image(grid, (c_in, c_out), (weights, image, bias), o);
            },
        )
    }

    /// The forward: `y = conv(x, w) + bias`, bf16 `[n, cout, h, w]`.
    pub(crate) fn forward(
        geo: &Geometry,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (xs, ws) = (x.as_slice::<bf16>()?, w.as_slice::<bf16>()?);
        let bias = bias.map(|b| b.as_slice::<bf16>()).transpose()?;
        let _workspace = x.device().reserve(forward_workspace_bytes(geo))?;
        let grid = Grid::of(geo);
        let taps = grid.taps();
        let weights = packed_weights((geo.cout, geo.cin, taps), |co, t, ci| {
            ws[(co * geo.cin + ci) * taps + t]
        });
        let out = same_conv(&grid, (geo.n, geo.cin, geo.cout), xs, &weights, bias);
        Tensor::from_vec(out, &geo.out_shape(), x.device())
    }

    /// The gradients from the output gradient `g`: the input's (bf16) when `w` is given, the
    /// weight's (`f32`) when `x` is, the bias's (`f32`) when `want_bias`.
    pub(crate) fn backward(
        geo: &Geometry,
        g: &Tensor,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        let dev = g.device();
        let gs = g.as_slice::<bf16>()?;
        let _workspace = dev.reserve(backward_workspace_bytes(geo, w.is_some(), x.is_some()))?;
        let grid = Grid::of(geo);
        let (hw, os) = (geo.h * geo.w, geo.cout * geo.h * geo.w);
        let gb = match want_bias {
            true => {
                let mut gb = vec![0f32; geo.cout];
                for image in gs.chunks_exact(os.max(1)) {
                    for (b, plane) in gb.iter_mut().zip(image.chunks_exact(hw.max(1))) {
                        *b += plane.iter().map(|v| v.to_f32()).sum::<f32>();
                    }
                }
                Some(Tensor::from_vec(gb, &[geo.cout], dev)?)
            }
            false => None,
        };
        let gw = match x {
            Some(x) => Some(weight_grad(geo, &grid, gs, x.as_slice::<bf16>()?, dev)?),
            None => None,
        };
        let gx = match w {
            Some(w) => {
                let (ws, taps) = (w.as_slice::<bf16>()?, grid.taps());
                // The input gradient's kernel: transposed and flipped.
                let weights = packed_weights((geo.cin, geo.cout, taps), |ci, t, co| {
                    ws[(co * geo.cin + ci) * taps + taps - 1 - t]
                });
                let gx = same_conv(&grid, (geo.n, geo.cout, geo.cin), gs, &weights, None);
                Some(Tensor::from_vec(gx, &[geo.n, geo.cin, geo.h, geo.w], dev)?)
            }
            None => None,
        };
        Ok((gx, gw, gb))
    }

    /// `gW` (`f32`, `[cout, cin, kh, kw]`): per tap `t`, `gW_t^T (cin x cout) += rows(x_i) *
    /// g_i^T`, the rows of `x_i` read from its plain grid at the tap's offset; summed over each
    /// chunk's images in order into its partial, the partials added in chunk order.
    fn weight_grad(
        geo: &Geometry,
        grid: &Grid,
        gs: &[bf16],
        xs: &[bf16],
        dev: &Device,
    ) -> Result<Tensor> {
        let (taps, ld) = (grid.taps(), whole(geo.cout));
        let part_len = taps * whole(geo.cin) * ld;
        let chunks = super::chunks(geo.n);
        let groups = groups(chunks.len()).max(1);
        let mut parts = vec![0f32; groups * part_len];
        let mut total = vec![0f32; part_len];
        for wave in chunks.chunks(groups) {
            parts
                .par_chunks_mut(part_len)
                .zip(wave)
                .for_each(|(part, &images)| {
                    weight_grad_chunk(geo, grid, (gs, xs), images, part);
                });
            for part in parts.chunks_exact(part_len).take(wave.len()) {
                total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
            }
        }
        let gw: Vec<f32> = (0..geo.cout * geo.cin * taps)
            .map(|e| {
                let (co, ci, t) = (e / (geo.cin * taps), e / taps % geo.cin, e % taps);
                total[(t * whole(geo.cin) + ci) * ld + co]
            })
            .collect();
        Tensor::from_vec(gw, &[geo.cout, geo.cin, geo.kh, geo.kw], dev)
    }

    /// The weight gradient's transpose summed over images `first ..+count` into `part`
    /// (`(tap, whole(cin)) x whole(cout)`, every element it keeps written).
    fn weight_grad_chunk(
        geo: &Geometry,
        grid: &Grid,
        (gs, xs): (&[bf16], &[bf16]),
        (first, count): (usize, usize),
        part: &mut [f32],
    ) {
        let (hw, taps, ld) = (geo.h * geo.w, grid.taps(), whole(geo.cout));
        let steps = grid.cols_pad / 32;
        let mut image = vec![bf16::ZERO; whole(geo.cin) * grid.plane];
        let mut spread = vec![bf16::ZERO; geo.cout * grid.cols_pad];
        let mut packed = vec![0u32; amx::packed_len(grid.cols_pad, geo.cout)];
        with_tiles(|| {
            for (j, i) in (first..first + count).enumerate() {
                grid.plain(&xs[i * geo.cin * hw..][..geo.cin * hw], geo.cin, &mut image);
                grid.spread(
                    &gs[i * geo.cout * hw..][..geo.cout * hw],
                    geo.cout,
                    &mut spread,
                );
                let g = Strided::new(&spread[..], 1, grid.cols_pad);
                amx::pack_whole_cols(g, (grid.cols_pad, geo.cout), &mut packed);
                for t in 0..taps {
                    for cb in 0..geo.cin.div_ceil(32) {
                        for ob in 0..geo.cout.div_ceil(32) {
                            let step = |s: usize| TileStep {
                                a: image
                                    .as_ptr()
                                    .wrapping_add(cb * 32 * grid.plane + s * 32 + grid.offset(t))
                                    .cast(),
                                a_half: 16 * grid.plane * 2,
                                a_stride: grid.plane * 2,
                                b: packed
                                    .as_ptr()
                                    .wrapping_add((ob * steps + s) * STEP_WORDS)
                                    .cast(),
                                b_half: amx::SLAB_STEP_BYTES / 2,
                                b_stride: 64,
                            };
                            let (h, w) =
                                ((geo.cin - cb * 32).min(32), (geo.cout - ob * 32).min(32));
                            let at = (t * whole(geo.cin) + cb * 32) * ld + ob * 32;
                            assert!(at + (h.max(16) - 1) * ld + w.max(16) <= part.len());
                            // SAFETY: the tiles are loaded; `a` reads rows `32 cb ..+32` of the
                            // image's grid (`whole(cin)` planes) at columns `32 s + offset(t)
                            // ..+32`, inside a plane (`Grid::plane`); `b` step `s` of slab `ob`
                            // of `packed`; the block lies inside `part` (asserted).
                            unsafe {
                                block_of((h, w), steps, step, part.as_mut_ptr().add(at), ld, j > 0)
                            };
                        }
                    }
                }
            }
        })
    }
}

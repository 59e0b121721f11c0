//! bf16 convolutions on the CPU's bf16 matrix units (`backend::cpu::amx`), for stride 1 and
//! "same" padding (`k = 2 * padding + 1`: pointwise, 3x3 with padding 1, ...): the products
//! read the bf16 input, weight and output gradient (no `f32` copies), sum in `f32`, and each
//! image's result is rounded into bf16 once. A bf16 policy's convolutions of that shape run
//! here on a CPU with the units ([`on_tiles`]); others run on `f32` copies, a chunk of images
//! at a time. The meta device charges the workspaces sized here.
//!
//! No im2col: each image is copied once into a zero-padded grid (planes of `(h + 2p) x
//! (w + 2p)`, zeros after each) in which every tap `(ky, kx)` of an output position `n` reads
//! element `n + ky * (w + 2p) + kx` of its channel's plane. So a tap's operand is a strided
//! tile load from that one copy at the tap's offset, and the products' columns are the output
//! positions on the grid's width (`h x (w + 2p)`; the `2p` extra columns of each row are
//! computed and dropped). Per image `i`, with `T = kh * kw` taps:
//! - forward: `y_i (cout x grid) = sum over taps t of W_t (cout x cin) * x_i moved by t`, the
//!   grid holding pairs of neighbouring channels (the tiles' `b` layout), the kernel packed
//!   tap-major; each `32 x 32` block rounded into the output while in cache;
//! - input gradient: the same over the output gradient with the kernel flipped and transposed;
//! - weight gradient: `gW_t^T (cin x cout) += x_i moved by t * g_i^T`, `x_i` on a plain grid
//!   (the tiles' `a` layout), `g_i` spread on the grid's columns (zero in the dropped ones) and
//!   packed once; summed in the tiles over the images of a chunk (a fixed count), chunk after
//!   chunk, the blocks split over threads: the same bits at every thread count.

use super::cpu::{groups, image_runs};
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

    /// Words of an image of `channels` as channel pairs on the grid ([`whole`] of them).
    fn pairs_len(&self, channels: usize) -> usize {
        whole(channels) / 2 * self.plane
    }

    /// Elements of an image of `channels` as they are on the grid ([`tile_rows`] of them).
    fn plain_len(&self, channels: usize) -> usize {
        tile_rows(channels) * self.plane
    }

    /// Words of `rows` output-gradient planes spread on the grid's columns and packed as the
    /// tiles' `b` operand (slabs of 32 rows).
    fn packed_grad_len(&self, rows: usize) -> usize {
        whole(rows) * self.cols_pad / 2
    }
}

/// Images of `n` each thread group takes (one contiguous share per group).
fn share(n: usize) -> usize {
    n.div_ceil(groups(n).max(1)).max(1)
}

/// `c` rounded up to a whole tile step or block (32).
fn whole(c: usize) -> usize {
    c.next_multiple_of(32)
}

/// Channels of an image's plain grid for the weight gradient: rows are read 16 at a time
/// (a block's last 16 only where it has more than 16).
fn tile_rows(c: usize) -> usize {
    c.next_multiple_of(16)
}

/// Bytes of a same-size convolution's products from `c_in` to `c_out` channels: the packed
/// weight, and per thread group a batch of images as channel pairs on the grid.
fn same_conv_bytes(geo: &Geometry, (c_in, c_out): (usize, usize)) -> usize {
    let g = Grid::of(geo);
    let per_group = batch_images(geo, c_in) * g.pairs_len(c_in) * 4;
    whole(c_out) * g.taps() * whole(c_in) * 2 + groups(geo.n) * per_group
}

/// Bytes of channel-pair grids a thread holds at a time in a same-size convolution.
const BATCH_BYTES: usize = 1 << 20;

/// Images a thread takes at a time through a same-size convolution from `c_in` channels: as
/// many as fit their channel-pair grids in [`BATCH_BYTES`] (at least one, at most its share of
/// the batch), so that each block of the kernel is read once for all of them.
fn batch_images(geo: &Geometry, c_in: usize) -> usize {
    let image = Grid::of(geo).pairs_len(c_in) * 4;
    (BATCH_BYTES / image.max(1)).clamp(1, share(geo.n))
}

/// Workspace bytes of a forward on the tiles.
pub(super) fn forward_workspace_bytes(geo: &Geometry) -> usize {
    same_conv_bytes(geo, (geo.cin, geo.cout))
}

/// Output columns (images times the grid's columns) a weight-gradient chunk covers at least.
const CHUNK_COLS: usize = 4096;

/// Images per chunk of a weight gradient on the tiles: each block of the sums adds a chunk's
/// images' products in the tiles (loaded and stored once a chunk), chunk after chunk. Set by
/// the geometry alone (at least 4 images, more when they are small), so the sums' order never
/// depends on the thread count.
fn chunk_images(geo: &Geometry) -> usize {
    CHUNK_COLS.div_ceil(Grid::of(geo).cols_pad).max(4)
}

/// `(first image, count)` of each weight-gradient chunk, in batch order.
fn chunks(geo: &Geometry) -> Vec<(usize, usize)> {
    image_runs(geo.n, chunk_images(geo))
}

/// Workspace bytes of a backward on the tiles computing the input gradient (`x`: the flipped,
/// transposed kernel and the forward's products the other way) and the weight gradient (`w`:
/// a chunk's images on the grid and their output gradients packed, one output gradient spread
/// on the grid's columns per thread group preparing them, and the `f32` sums of the weight
/// gradient's transpose).
pub(super) fn backward_workspace_bytes(geo: &Geometry, x: bool, w: bool) -> usize {
    let g = Grid::of(geo);
    let flipped = geo.cout * geo.cin * g.taps() * 2;
    let gx = flipped + same_conv_bytes(geo, (geo.cout, geo.cin));
    let images = chunk_images(geo).min(geo.n);
    let gw = images * (g.plain_len(geo.cin) * 2 + g.packed_grad_len(geo.cout) * 4)
        + groups(images) * geo.cout * g.cols_pad * 2
        + g.taps() * tile_rows(geo.cin) * whole(geo.cout) * 4;
    (if x { gx } else { 0 }) + if w { gw } else { 0 }
}

#[cfg(target_arch = "x86_64")]
pub(super) use cpu::{backward, forward};

#[cfg(target_arch = "x86_64")]
mod cpu {
    use super::super::{Conv2dGrads, Geometry};
    use super::{
        backward_workspace_bytes, chunk_images, chunks, forward_workspace_bytes, share, tile_rows,
        whole, Grid,
    };
    use crate::backend::cpu::amx::{self, block_of, pair, with_tiles, Strided, TileStep};
    use crate::backend::cpu::convert::convert_into;
    use crate::backend::cpu::map::written_vec;
    use crate::device::Device;
    use crate::dtype::bf16;
    use crate::error::Result;
    use crate::tensor::Tensor;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// Words of one step of a packed slab.
    const STEP_WORDS: usize = amx::SLAB_STEP_BYTES / 4;

    impl Grid {
        /// `channels` planes of `src` (`h x w` each) on the grid as pairs of neighbouring
        /// channels: word `j` of pair plane `q` holds channels `2q, 2q + 1` at grid element
        /// `j`; zeros elsewhere (`dst`: [`Grid::pairs_len`] words).
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

        /// `channels` planes of `src` on the grid as they are (`dst`: [`Grid::plain_len`]
        /// elements, zeros elsewhere).
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

    /// A kernel `w` (`[rows, channels, taps]`) packed as the products' `a` slabs: row `r`
    /// (`rows` padded to 32), step `t * whole(channels) / 32 + c / 32` holding channels
    /// `c ..+32` of tap `t` (zeros past `channels`).
    fn packed_weights(w: &[bf16], (rows, channels, taps): (usize, usize, usize)) -> Vec<u32> {
        let csteps = whole(channels) / 32;
        let steps = taps * csteps;
        let mut out = vec![0u32; whole(rows) / 32 * steps * STEP_WORDS];
        for (r, wr) in w
            .chunks_exact((channels * taps).max(1))
            .take(rows)
            .enumerate()
        {
            let row = &mut out[(r / 32) * steps * STEP_WORDS + (r % 32) * 16..];
            for t in 0..taps {
                for cs in 0..csteps {
                    let dst = &mut row[(t * csteps + cs) * STEP_WORDS..][..16];
                    for (q, d) in dst.iter_mut().enumerate() {
                        let c = cs * 32 + 2 * q;
                        let at = |c: usize| {
                            if c < channels {
                                wr[c * taps + t]
                            } else {
                                bf16::ZERO
                            }
                        };
                        *d = pair(at(c), at(c + 1));
                    }
                }
            }
        }
        out
    }

    /// The input gradient's kernel from `w` (`[cout, cin, taps]`): `[cin, cout, taps]`, each
    /// kernel flipped.
    fn flipped_transpose(w: &[bf16], (cout, cin, taps): (usize, usize, usize)) -> Vec<bf16> {
        let mut out = vec![bf16::ZERO; w.len()];
        for (co, wo) in w.chunks_exact((cin * taps).max(1)).enumerate() {
            for (ci, k) in wo.chunks_exact(taps.max(1)).enumerate() {
                let dst = &mut out[(ci * cout + co) * taps..][..taps];
                dst.iter_mut()
                    .zip(k.iter().rev())
                    .for_each(|(d, &v)| *d = v);
            }
        }
        out
    }

    /// `out_j (c_out planes of h x w) = weights * image_j [+ bias]` on the grid for each image
    /// `j` of `images` (`image_len` words each, from [`Grid::pairs`]), a `32 x 32` block at a
    /// time, each rounded into its output while it is in cache; each block row of `weights`
    /// (from [`packed_weights`]: `c_out` rows, `c_in` channels) runs through all the images.
    fn same_conv_images(
        grid: &Grid,
        (c_in, c_out): (usize, usize),
        (weights, images, bias): (&[u32], &[u32], Option<&[bf16]>),
        outs: &mut [MaybeUninit<bf16>],
    ) {
        let csteps = whole(c_in) / 32;
        let steps = grid.taps() * csteps;
        let (image_len, out_len) = (grid.pairs_len(c_in), c_out * grid.h * grid.w);
        assert!(
            weights.len() >= whole(c_out) / 32 * steps * STEP_WORDS
                && images.len() >= outs.len() / out_len.max(1) * image_len
        );
        with_tiles(|| {
            let mut blk = [0f32; 32 * 32];
            for mb in 0..c_out.div_ceil(32) {
                let rows = (c_out - mb * 32).min(32);
                let a0 = weights[mb * steps * STEP_WORDS..].as_ptr();
                for (image, out) in images
                    .chunks_exact(image_len)
                    .zip(outs.chunks_exact_mut(out_len))
                {
                    for n0 in (0..grid.cols_pad).step_by(32) {
                        if let Some(b) = bias {
                            for (row, &bv) in
                                blk.chunks_exact_mut(32).zip(&b[mb * 32..mb * 32 + rows])
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
                        // SAFETY: the tiles are loaded (`with_tiles`); `a` reads step `s` of
                        // slab `mb` of `weights`, `b` 16 pair planes of `image` (both inside,
                        // asserted) at columns `n0 + offset(t) ..+32`, inside a plane
                        // (`Grid::plane`); the block is `blk`.
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
            }
        })
    }

    /// Every image of `src` (`n` images of `c_in` planes) through `weights` on the grid,
    /// rounded into bf16 (`n` images of `c_out` planes); `bias` starts each row's sums. One
    /// contiguous share of the images per thread group, [`batch_images`] at a time.
    fn same_conv(
        geo: &Geometry,
        (c_in, c_out): (usize, usize),
        src: &[bf16],
        weights: &[u32],
        bias: Option<&[bf16]>,
    ) -> Vec<bf16> {
        let (grid, n, hw) = (Grid::of(geo), geo.n, geo.h * geo.w);
        let (len, image_len, per) = (c_out * hw, grid.pairs_len(c_in), share(n));
        let batch = super::batch_images(geo, c_in);
        // SAFETY: every image's `len` elements are written by `same_conv_images`.
        unsafe {
            written_vec(n * len, |out| {
                out.par_chunks_mut((per * len).max(1))
                    .enumerate()
                    .for_each(|(gi, outs)| {
                        let mut images = vec![0u32; batch * image_len];
                        for (bi, outs) in outs.chunks_mut((batch * len).max(1)).enumerate() {
                            let (first, count) = (gi * per + bi * batch, outs.len() / len.max(1));
                            for (j, image) in
                                images.chunks_exact_mut(image_len).take(count).enumerate()
                            {
                                let i = first + j;
                                grid.pairs(&src[i * c_in * hw..][..c_in * hw], c_in, image);
                            }
                            let images = &images[..count * image_len];
                            same_conv_images(&grid, (c_in, c_out), (weights, images, bias), outs);
                        }
                    })
            })
        }
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
        let weights = packed_weights(ws, (geo.cout, geo.cin, taps));
        let out = same_conv(geo, (geo.cin, geo.cout), xs, &weights, bias);
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
                let flipped = flipped_transpose(ws, (geo.cout, geo.cin, taps));
                let weights = packed_weights(&flipped, (geo.cin, geo.cout, taps));
                let gx = same_conv(geo, (geo.cout, geo.cin), gs, &weights, None);
                Some(Tensor::from_vec(gx, &[geo.n, geo.cin, geo.h, geo.w], dev)?)
            }
            None => None,
        };
        Ok((gx, gw, gb))
    }

    /// `gW` (`f32`, `[cout, cin, kh, kw]`): per tap `t`, `gW_t^T (cin x cout) += rows(x_i) *
    /// g_i^T`, the rows of `x_i` read from its plain grid at the tap's offset. The chunks run in
    /// batch order, each adding into the sums its images' products in order (in the tiles:
    /// each block loaded and stored once a chunk); a chunk's blocks are split over threads.
    fn weight_grad(
        geo: &Geometry,
        grid: &Grid,
        gs: &[bf16],
        xs: &[bf16],
        dev: &Device,
    ) -> Result<Tensor> {
        let (taps, ld) = (grid.taps(), whole(geo.cout));
        let mut total = vec![0f32; taps * tile_rows(geo.cin) * ld];
        let images = chunk_images(geo).min(geo.n);
        let (image_len, packed_len) = (grid.plain_len(geo.cin), grid.packed_grad_len(geo.cout));
        let mut grids = vec![bf16::ZERO; images * image_len];
        let mut packed = vec![0u32; images * packed_len];
        for (c, &(first, count)) in chunks(geo).iter().enumerate() {
            let operands = (
                &mut grids[..count * image_len],
                &mut packed[..count * packed_len],
            );
            prepare_chunk(geo, grid, (gs, xs), first, operands);
            let operands = (&grids[..count * image_len], &packed[..count * packed_len]);
            weight_grad_blocks(geo, grid, operands, c > 0, &mut total);
        }
        // gW[co][ci][t] from the sums' rows (t, ci), 16 output channels (a cache line of a
        // row) at a time, so reads and writes both run along cache lines.
        let mut gw = vec![0f32; geo.cout * geo.cin * taps];
        for co0 in (0..geo.cout).step_by(16) {
            let cos = 16.min(geo.cout - co0);
            for ci in 0..geo.cin {
                for t in 0..taps {
                    let src = &total[(t * tile_rows(geo.cin) + ci) * ld + co0..][..cos];
                    for (j, &v) in src.iter().enumerate() {
                        gw[((co0 + j) * geo.cin + ci) * taps + t] = v;
                    }
                }
            }
        }
        Tensor::from_vec(gw, &[geo.cout, geo.cin, geo.kh, geo.kw], dev)
    }

    /// The operands of a chunk of images from `first`, one image per task: each image's plain
    /// grid into `grids`, its output gradient spread on the grid's columns and packed into
    /// `packed`.
    fn prepare_chunk(
        geo: &Geometry,
        grid: &Grid,
        (gs, xs): (&[bf16], &[bf16]),
        first: usize,
        (grids, packed): (&mut [bf16], &mut [u32]),
    ) {
        let hw = geo.h * geo.w;
        let (image_len, packed_len) = (grid.plain_len(geo.cin), grid.packed_grad_len(geo.cout));
        let count = grids.len() / image_len.max(1);
        let per = share(count);
        grids
            .par_chunks_mut(per * image_len)
            .zip(packed.par_chunks_mut(per * packed_len))
            .enumerate()
            .for_each(|(task, (grids, packed))| {
                let mut spread = vec![bf16::ZERO; geo.cout * grid.cols_pad];
                let images = grids.chunks_exact_mut(image_len);
                let packs = packed.chunks_exact_mut(packed_len);
                for (j, (image, pack)) in images.zip(packs).enumerate() {
                    let i = first + task * per + j;
                    grid.plain(&xs[i * geo.cin * hw..][..geo.cin * hw], geo.cin, image);
                    grid.spread(
                        &gs[i * geo.cout * hw..][..geo.cout * hw],
                        geo.cout,
                        &mut spread,
                    );
                    let g = Strided::new(&spread[..], 1, grid.cols_pad);
                    amx::pack_whole_cols(g, (grid.cols_pad, geo.cout), pack);
                }
            });
    }

    /// Every `32 x 32` block of the weight gradient's transpose `total` (`(tap, tile_rows(cin))
    /// x whole(cout)`): `[total +]` the chunk's images' products, image by image; the blocks
    /// split over threads.
    fn weight_grad_blocks(
        geo: &Geometry,
        grid: &Grid,
        (grids, packed): (&[bf16], &[u32]),
        load: bool,
        total: &mut [f32],
    ) {
        let (ld, steps) = (whole(geo.cout), grid.cols_pad / 32);
        let (image_len, packed_len) = (grid.plain_len(geo.cin), grid.packed_grad_len(geo.cout));
        let count = grids.len() / image_len.max(1);
        let (cin_blocks, out_blocks) = (geo.cin.div_ceil(32), geo.cout.div_ceil(32));
        let rows_per_tap = tile_rows(geo.cin);
        let out = Out(total.as_mut_ptr(), total.len());
        // Blocks in groups of `OUT_GROUP` output blocks (their packed gradients stay in cache),
        // all taps and input blocks through each group.
        let (groups_out, rows) = (out_blocks.div_ceil(OUT_GROUP), grid.taps() * cin_blocks);
        let blocks = groups_out * rows * OUT_GROUP;
        let tasks = (rayon::current_num_threads() * 4).min(blocks).max(1);
        (0..tasks).into_par_iter().for_each(|task| {
            with_tiles(|| {
                for b in task * blocks / tasks..(task + 1) * blocks / tasks {
                    let (og, r, o) = (b / (rows * OUT_GROUP), b / OUT_GROUP % rows, b % OUT_GROUP);
                    let (t, cb, ob) = (r / cin_blocks, r % cin_blocks, og * OUT_GROUP + o);
                    if ob >= out_blocks {
                        continue;
                    }
                    let step = |s: usize| {
                        let (j, s) = (s / steps, s % steps);
                        let a = j * image_len + cb * 32 * grid.plane + s * 32 + grid.offset(t);
                        let b = j * packed_len + (ob * steps + s) * STEP_WORDS;
                        TileStep {
                            a: grids.as_ptr().wrapping_add(a).cast(),
                            a_half: 16 * grid.plane * 2,
                            a_stride: grid.plane * 2,
                            b: packed.as_ptr().wrapping_add(b).cast(),
                            b_half: amx::SLAB_STEP_BYTES / 2,
                            b_stride: 64,
                        }
                    };
                    let (h, w) = ((geo.cin - cb * 32).min(32), (geo.cout - ob * 32).min(32));
                    let at = (t * rows_per_tap + cb * 32) * ld + ob * 32;
                    let tiles = |v: usize| if v > 16 { 32 } else { 16 };
                    assert!(at + (tiles(h) - 1) * ld + tiles(w) <= out.len());
                    // SAFETY: the tiles are loaded; `a` reads 16 or 32 rows from `32 cb` of
                    // image `j`'s grid (`tile_rows(cin)` planes) at columns `32 s + offset(t)
                    // ..+32`, inside a plane (`Grid::plane`); `b` step `s` of slab `ob` of image
                    // `j`'s packed gradient; the block lies inside `total` (asserted) and is
                    // this task's alone.
                    unsafe { block_of((h, w), count * steps, step, out.at(at), ld, load) };
                }
            })
        });
    }

    /// Output blocks (of 32 columns) of the weight gradient whose packed output gradients a
    /// thread keeps in cache while it runs all taps and input blocks through them.
    const OUT_GROUP: usize = 8;

    /// The weight gradient's sums, written by tasks in disjoint blocks.
    #[derive(Clone, Copy)]
    struct Out(*mut f32, usize);
    // SAFETY: the tasks given an `Out` write disjoint blocks of it.
    unsafe impl Send for Out {}
    // SAFETY: as above.
    unsafe impl Sync for Out {}

    impl Out {
        fn len(&self) -> usize {
            self.1
        }

        /// Element `i` (`i < len`).
        fn at(&self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }
}

//! Winograd's minimal filtering F(2x2, 3x3) on the CPU, for `f32` 3x3 convolutions with stride 1
//! and padding 1 and many channels on both sides (ResNet's stages): each 2x2 tile of outputs
//! costs 16 multiplies per channel pair instead of 36, so the GEMMs do 2.25x less work than
//! im2col's.
//!
//! With `d` a 4x4 input tile (zero past the image), `g` a 3x3 kernel and `dY` a 2x2 tile of the
//! output gradient (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks"):
//! - forward: `Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A`: the sum over input channels is, for each
//!   of the 16 transformed positions `ξ`, one GEMM `M[ξ] (cout x tiles) = U[ξ] (cout x cin) ·
//!   V[ξ] (cin x tiles)`;
//! - input gradient: the same convolution of the output gradient with the flipped, transposed
//!   kernel (stride 1, padding 1 again);
//! - weight gradient: `dU[ξ] (cout x cin) = Σ_tiles (A dY Aᵀ)[ξ] · V[ξ]ᵀ`, 16 GEMMs over the
//!   tiles, then `dg = Gᵀ dU G`.
//!
//! Where a block of whole images of 128 tiles ([`Winograd::block`]) fits in about a core's L2
//! cache with its transformed tiles and products (few channels, large images: ResNet-18's
//! 64- and 128-channel stages), each thread takes blocks from sources to outputs on its own:
//! transforms, 16 GEMMs, the transform back, all in cache; the weight gradient sums runs of
//! blocks ([`PARTIAL_TILES`]) into one partial each, added in batch order. Measured at 64
//! channels 32x32, batch 64, 2 threads, fastest of 5 alternating runs against the chunked path:
//! forward 20.5 -> 17.5 ms, input gradient 20.8 -> 17.8, weight gradient 24.3 -> 20.4 (one
//! partial per block; runs of blocks then took it 22.9 -> 21.9 in a slower sitting, and 19.0 ->
//! 17.1 at 128 channels 16x16, whose forward and input gradient went 14.4 -> 13.4 and 15.4 ->
//! 13.4; blocks of 64 tiles at 256 channels were slower, 14.1 -> 15.5).
//! Otherwise the batch runs in chunks of whole images ([`Winograd::chunk`]) one after the
//! other; inside a chunk the transforms split over channels and the 16 GEMMs over threads,
//! each GEMM on one thread, and the weight gradient adds chunk after chunk. Blocks and chunks
//! are set by the geometry alone, so every element is computed by the same operations in the
//! same order whatever the thread count: the same bits. The transforms add and subtract (and
//! halve, exactly) only; their rounding bound is derived in the tests
//! (`tape/tests/conv2d_winograd.rs`).
//!
//! Each channel's 16 transformed rows end in a cache line of padding ([`PAD`]): the GEMMs read
//! 64 or more rows a power of two apart otherwise, all in one cache set (weight gradient at 64
//! channels 32x32: 27.8 -> 23.8 ms).

use super::cpu::image_runs;
use super::Geometry;
use crate::backend::cpu::gemm::{gemm, Mat, Run};
use crate::simd::widest_simd;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Transformed positions of a tile (4 x 4), and so GEMMs per chunk.
const XI: usize = 16;

/// Tiles (GEMM columns) one chunk of images covers at least.
const CHUNK_TILES: usize = 64;

/// Bytes of transformed tiles (inputs and products) one chunk aims at: wide GEMMs where the
/// channels are few (64 channels: 1024 tiles), no more where they are many (512 channels: 128
/// tiles, which keeps the whole workspace under glibc's 32 MiB mmap threshold, see
/// `host_cache`: above it every call would map fresh pages and fault them in).
const CHUNK_BYTES: usize = 8 << 20;

/// Tiles one block of the per-thread path covers at least ([`Winograd::block`]): GEMMs this
/// wide run at the kernel's full speed when their operands sit in L2; narrower ones pack the
/// transformed kernel for too little work.
const BLOCK_TILES: usize = 128;

/// Tiles one partial weight gradient of the per-thread path sums at least (whole blocks, one
/// after another on one thread), so that adding the partials costs little next to computing
/// them.
const PARTIAL_TILES: usize = 512;

/// Most bytes of one block's transformed tiles and products for the per-thread path: about a
/// core's L2 cache, so that a block's tiles are transformed, multiplied and transformed back
/// without leaving it.
const BLOCK_BYTES: usize = 3 << 20;

/// Fewest input and output channels Winograd takes: below, the transforms cost more than the
/// GEMM work they save.
const MIN_CHANNELS: usize = 32;

/// Elements after each channel's (or kernel row's) 16 transformed rows before the next one's:
/// one cache line, so that the GEMMs' operand rows, which are a power of two apart at the usual
/// sizes, do not all fall into the same cache set.
const PAD: usize = 16;

/// Each GEMM runs on the thread that takes its position `ξ`.
const ONE_THREAD: Run = Run {
    parallel: false,
    bf16: false,
};

/// The sizes of one Winograd convolution: `n` images of `cin` planes of `h x w` to `cout`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Winograd {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

/// A transform of one plane's tiles into 16 rows `ld` apart, with scratch rows
/// ([`Winograd::scratch_len`]).
type TileRows = fn(&Winograd, &[f32], &mut [f32], usize, &mut [f32]);

/// One transformed convolution of a chunk: source channels to destination channels.
struct Pass<'a> {
    /// Channels read.
    src: usize,
    /// Channels written.
    dst: usize,
    /// The transformed kernel, `[dst][ξ][src]`.
    u: &'a [f32],
    /// Added to each destination channel.
    bias: Option<&'a [f32]>,
}

impl Pass<'_> {
    /// `m[ξ] (dst x cols) = u[ξ] · v[ξ]`, the sources' transformed tiles `v` (`[src][ξ][cols]`)
    /// summed over the source channels, on this thread.
    fn gemm(&self, m: &mut [f32], v: &[f32], xi: usize, cols: usize) {
        let a = Mat::n(&self.u[xi * self.src..]).ld(stride(self.src));
        let b = Mat::n(&v[xi * cols..]).ld(stride(cols));
        gemm(m, a, b, (self.dst, cols, self.src), false, ONE_THREAD);
    }
}

impl Winograd {
    /// The Winograd convolution of `g`, if it takes it: 3x3, stride 1, padding 1, at least
    /// [`MIN_CHANNELS`] channels on both sides, `f32` (`elem` 4 bytes; also the `f32` copies of
    /// a 16-bit convolution, which reach here when the bf16 matrix units do not take it).
    pub(super) fn of(g: &Geometry, elem: usize) -> Option<Winograd> {
        let fits = elem == 4 && (g.kh, g.kw, g.stride, g.padding) == (3, 3, 1, 1);
        (fits && g.cin.min(g.cout) >= MIN_CHANNELS).then_some(Winograd {
            n: g.n,
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
        })
    }

    /// Tile rows and tile columns of an image.
    fn grid(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    /// Tiles of one image.
    fn tiles(&self) -> usize {
        let (th, tw) = self.grid();
        th * tw
    }

    /// Images per chunk: enough for [`CHUNK_BYTES`] of transformed tiles and at least
    /// [`CHUNK_TILES`] tiles, at most the batch.
    fn chunk(&self) -> usize {
        let per_tile = XI * (self.cin + self.cout) * 4;
        let tiles = (CHUNK_BYTES / per_tile.max(1)).max(CHUNK_TILES);
        tiles.div_ceil(self.tiles().max(1)).clamp(1, self.n.max(1))
    }

    /// Elements of the transformed kernels of a pass (`[row][ξ][col]`, rows [`stride`] apart): the
    /// larger channel count's rows of the smaller's columns.
    fn kernels_len(&self) -> usize {
        self.cout.max(self.cin) * stride(self.cin.min(self.cout))
    }

    /// `(first image, image count)` of each chunk, in batch order.
    fn chunks(&self) -> Vec<(usize, usize)> {
        image_runs(self.n, self.chunk())
    }

    /// Workspace elements of any pass: a transformed kernel (or its gradient), then either one
    /// chunk's transformed input and its GEMM products, or, per thread group of the blocks,
    /// one block's and a partial weight gradient (the weight gradient's runs of blocks are
    /// fewer jobs, so take no more groups).
    pub(super) fn workspace_len(&self) -> usize {
        let cols = self.chunk() * self.tiles();
        let chunked = (self.cin + self.cout) * stride(cols);
        let blocks = self.block().map_or(0, |per| {
            let runs = image_runs(self.n, per).len();
            super::cpu::groups(runs) * (self.block_len(per) + XI * self.cin * self.cout)
        });
        self.kernels_len() + chunked.max(blocks)
    }

    /// Images per block of the per-thread path ([`Winograd::convolve_blocks`]), if it takes
    /// these sizes: enough images for [`BLOCK_TILES`] tiles (at most the batch), if their
    /// transformed tiles and products fit in [`BLOCK_BYTES`].
    fn block(&self) -> Option<usize> {
        let per = BLOCK_TILES
            .div_ceil(self.tiles().max(1))
            .clamp(1, self.n.max(1));
        (self.block_len(per) * 4 <= BLOCK_BYTES).then_some(per)
    }

    /// Workspace elements of one block of `per` images: its transformed sources and products.
    fn block_len(&self, per: usize) -> usize {
        (self.cin + self.cout) * stride(per * self.tiles())
    }

    /// `out[i] (cout x h x w) = conv(x[i], weight) + bias` for every image, every element
    /// written; `ws` holds [`Winograd::workspace_len`] elements.
    pub(super) fn forward(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        out: Vec<&mut [MaybeUninit<f32>]>,
        ws: &mut [f32],
    ) {
        let (u, ws) = ws.split_at_mut(self.kernels_len());
        transform_kernels(u, (self.cout, self.cin), |co, ci| {
            taps(weight, co * self.cin + ci)
        });
        let xs = self.cin * self.h * self.w;
        let pass = Pass {
            src: self.cin,
            dst: self.cout,
            u,
            bias,
        };
        self.convolve(&pass, &|i| &x[i * xs..][..xs], out, ws);
    }

    /// `gx[i] (cin x h x w)`, the input gradient from the output gradients `g(i)` (`cout x h x
    /// w` each), every element written; `ws` holds [`Winograd::workspace_len`] elements.
    pub(super) fn input_grad<'g>(
        &self,
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        weight: &[f32],
        gx: Vec<&mut [MaybeUninit<f32>]>,
        ws: &mut [f32],
    ) {
        let (u, ws) = ws.split_at_mut(self.kernels_len());
        // The flipped kernel W'[ci][co] = W[co][ci] rotated by 180 degrees.
        transform_kernels(u, (self.cin, self.cout), |ci, co| {
            let mut k = taps(weight, co * self.cin + ci);
            k.reverse();
            k
        });
        let pass = Pass {
            src: self.cout,
            dst: self.cin,
            u,
            bias: None,
        };
        self.convolve(&pass, g, gx, ws);
    }

    /// `gw (cout x cin x 3 x 3)`, the weight gradient summed over the batch, from the inputs
    /// `x` and the output gradients `g(i)`; `ws` holds [`Winograd::workspace_len`] elements.
    pub(super) fn weight_grad<'g>(
        &self,
        x: &[f32],
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        gw: &mut [f32],
        ws: &mut [f32],
    ) {
        let (du, ws) = ws.split_at_mut(self.kernels_len());
        let du = &mut du[..XI * self.cin * self.cout];
        match self.block() {
            Some(per) => self.weight_grad_blocks(x, g, du, ws, per),
            None => self.weight_grad_chunks(x, g, du, ws),
        }
        let du = &*du;
        let pairs = self.cout * self.cin;
        gw.par_chunks_mut(self.cin * 9)
            .enumerate()
            .for_each(|(co, dst)| {
                for (ci, gk) in dst.chunks_exact_mut(9).enumerate() {
                    let mut t = [0.0; XI];
                    for (xi, v) in t.iter_mut().enumerate() {
                        *v = du[xi * pairs + co * self.cin + ci];
                    }
                    gk.copy_from_slice(&kernel_grad(&t));
                }
            });
    }

    /// `du` (`[ξ][cout][cin]`), the transformed weight gradient, chunk after chunk: 16 GEMMs
    /// a chunk, each on one thread, adding into `du`.
    fn weight_grad_chunks<'g>(
        &self,
        x: &[f32],
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        du: &mut [f32],
        ws: &mut [f32],
    ) {
        let tiles = self.tiles();
        for (c, &(first, count)) in self.chunks().iter().enumerate() {
            let cols = count * tiles;
            let (v, rest) = ws.split_at_mut(self.cin * stride(cols));
            let dy = &mut rest[..self.cout * stride(cols)];
            self.transform(v, cols, |ch, j| self.x_plane(x, first + j, ch), input_tiles);
            self.transform(
                dy,
                cols,
                |ch, j| self.source_plane(g, first + j, ch),
                grad_tiles,
            );
            let (v, dy) = (&*v, &*dy);
            du.par_chunks_mut(self.cout * self.cin)
                .enumerate()
                .for_each(|(xi, du)| self.weight_gemm(du, (dy, v), xi, cols, c > 0));
        }
    }

    /// `du` as [`Winograd::weight_grad_chunks`] has it, in blocks of `per` images: runs of
    /// blocks ([`Winograd::partial_images`]) each on one thread, block after block
    /// (transforms and 16 GEMMs in its own workspace) into a partial of its own; the partials
    /// of each wave of runs are added to `du` in batch order, so that every element is the same
    /// sum whatever the thread count.
    fn weight_grad_blocks<'g>(
        &self,
        x: &[f32],
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        du: &mut [f32],
        ws: &mut [f32],
        per: usize,
    ) {
        let runs = image_runs(self.n, self.partial_images(per));
        let groups = super::cpu::groups(runs.len()).max(1);
        let pairs = self.cin * self.cout;
        let (block, each) = (self.block_len(per), self.block_len(per) + XI * pairs);
        let mut wss: Vec<&mut [f32]> = ws.chunks_mut(each.max(1)).take(groups).collect();
        du.fill(0.0);
        // The waves run from a pool thread, as `cpu::backward`'s do.
        rayon::scope(|_| {
            for wave in runs.chunks(groups) {
                let jobs: Vec<_> = wave.iter().zip(wss.iter_mut()).collect();
                jobs.into_par_iter().for_each(|(&(first, count), ws)| {
                    let (vdy, partial) = ws.split_at_mut(block);
                    for (b, &(at, images)) in image_runs(count, per).iter().enumerate() {
                        let images = (first + at, images);
                        self.weight_block(x, g, images, vdy, &mut partial[..XI * pairs], b > 0);
                    }
                });
                let parts: Vec<&[f32]> = wss[..wave.len()]
                    .iter()
                    .map(|ws| &ws[block..][..XI * pairs])
                    .collect();
                super::cpu::add_partials(du, &parts);
            }
        });
    }

    /// Images whose blocks one partial weight gradient sums ([`Winograd::weight_grad_blocks`]):
    /// whole blocks of `per` images for at least [`PARTIAL_TILES`] tiles, at most the batch.
    fn partial_images(&self, per: usize) -> usize {
        let blocks = PARTIAL_TILES.div_ceil((per * self.tiles()).max(1));
        (blocks * per).clamp(1, self.n.max(1))
    }

    /// One block's transformed weight gradient, images `first .. first + count`, into
    /// `partial` (`[ξ][cout][cin]`; added to it with `add`), through the block's workspace
    /// `vdy`.
    fn weight_block<'g>(
        &self,
        x: &[f32],
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        (first, count): (usize, usize),
        vdy: &mut [f32],
        partial: &mut [f32],
        add: bool,
    ) {
        let cols = count * self.tiles();
        let (v, dy) = vdy.split_at_mut(self.cin * stride(cols));
        let dy = &mut dy[..self.cout * stride(cols)];
        let mut scratch = vec![0.0; self.scratch_len()];
        let xp = |ch, j| self.x_plane(x, first + j, ch);
        self.transform_here(v, (cols, count), xp, input_tiles, &mut scratch);
        let gp = |ch, j| self.source_plane(g, first + j, ch);
        self.transform_here(dy, (cols, count), gp, grad_tiles, &mut scratch);
        let pairs = self.cin * self.cout;
        for (xi, part) in partial.chunks_mut(pairs).enumerate() {
            self.weight_gemm(part, (dy, v), xi, cols, add);
        }
    }

    /// `du[ξ] (cout x cin) [+]= dy[ξ] · v[ξ]ᵀ` over `cols` tiles, on this thread.
    fn weight_gemm(
        &self,
        du: &mut [f32],
        (dy, v): (&[f32], &[f32]),
        xi: usize,
        cols: usize,
        add: bool,
    ) {
        let a = Mat::n(&dy[xi * cols..]).ld(stride(cols));
        let b = Mat::t(&v[xi * cols..]).ld(stride(cols));
        gemm(du, a, b, (self.cout, self.cin, cols), add, ONE_THREAD);
    }

    /// Channel `ch` of image `i` of the input `x`.
    fn x_plane<'x>(&self, x: &'x [f32], i: usize, ch: usize) -> &'x [f32] {
        let plane = self.h * self.w;
        &x[(i * self.cin + ch) * plane..][..plane]
    }

    /// Channel `ch` of image `i` of a source given image by image (an output gradient).
    fn source_plane<'g>(
        &self,
        g: &(dyn Fn(usize) -> &'g [f32] + Sync),
        i: usize,
        ch: usize,
    ) -> &'g [f32] {
        let plane = self.h * self.w;
        &g(i)[ch * plane..][..plane]
    }

    /// `pass` over the batch, chunk by chunk: the sources' tiles transformed, 16 GEMMs, the
    /// products transformed back into `out` (one slice per image).
    fn convolve<'s>(
        &self,
        pass: &Pass<'_>,
        src: &(dyn Fn(usize) -> &'s [f32] + Sync),
        out: Vec<&mut [MaybeUninit<f32>]>,
        ws: &mut [f32],
    ) {
        if let Some(per) = self.block() {
            return self.convolve_blocks(pass, src, out, ws, per);
        }
        let plane = self.h * self.w;
        let mut images = out.into_iter();
        for (first, count) in self.chunks() {
            let cols = count * self.tiles();
            let (v, rest) = ws.split_at_mut(pass.src * stride(cols));
            let m = &mut rest[..XI * pass.dst * cols];
            let sp = |ch, j| self.source_plane(src, first + j, ch);
            self.transform(v, cols, sp, input_tiles);
            let v = &*v;
            m.par_chunks_mut(pass.dst * cols)
                .enumerate()
                .for_each(|(xi, m)| pass.gemm(m, v, xi, cols));
            // The chunk's output planes, channel by channel: [channel][image].
            let mut planes: Vec<Vec<&mut [MaybeUninit<f32>]>> =
                (0..pass.dst).map(|_| Vec::new()).collect();
            for img in images.by_ref().take(count) {
                for (ch, p) in img
                    .chunks_exact_mut(plane.max(1))
                    .take(pass.dst)
                    .enumerate()
                {
                    planes[ch].push(p);
                }
            }
            let m = &*m;
            planes.into_par_iter().enumerate().for_each(|(ch, outs)| {
                let mut scratch = vec![0.0; self.scratch_len()];
                for (j, o) in outs.into_iter().enumerate() {
                    self.output_plane(pass, (m, cols), (ch, j), o, &mut scratch);
                }
            });
        }
    }

    /// `pass` over the batch in blocks of `per` images, each block on one thread from its
    /// sources to its outputs (transform, 16 GEMMs, transform back) inside its own workspace,
    /// which stays in the core's cache; thread groups take runs of whole blocks. Each image's
    /// output is computed by the same operations whichever thread takes it.
    fn convolve_blocks<'s>(
        &self,
        pass: &Pass<'_>,
        src: &(dyn Fn(usize) -> &'s [f32] + Sync),
        out: Vec<&mut [MaybeUninit<f32>]>,
        ws: &mut [f32],
        per: usize,
    ) {
        let blocks = image_runs(self.n, per);
        let groups = super::cpu::groups(blocks.len());
        let each = blocks.len().div_ceil(groups.max(1)).max(1);
        let mut images = out.into_iter();
        let jobs: Vec<_> = blocks
            .chunks(each)
            .map(|run| {
                let count = run.iter().map(|b| b.1).sum();
                (run, images.by_ref().take(count).collect::<Vec<_>>())
            })
            .zip(ws.chunks_mut(self.block_len(per).max(1)))
            .collect();
        jobs.into_par_iter().for_each(|((run, mut outs), ws)| {
            let mut scratch = Scratch::new(self);
            for (k, &(first, count)) in run.iter().enumerate() {
                let outs = &mut outs[k * per..][..count];
                self.block_pass(pass, src, (first, count), outs, ws, &mut scratch);
            }
        });
    }

    /// One block of [`Winograd::convolve_blocks`]: images `first .. first + count` on this
    /// thread.
    fn block_pass<'s>(
        &self,
        pass: &Pass<'_>,
        src: &(dyn Fn(usize) -> &'s [f32] + Sync),
        (first, count): (usize, usize),
        outs: &mut [&mut [MaybeUninit<f32>]],
        ws: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let plane = self.h * self.w;
        let cols = count * self.tiles();
        let (v, rest) = ws.split_at_mut(pass.src * stride(cols));
        let m = &mut rest[..XI * pass.dst * cols];
        let sp = |ch, j| self.source_plane(src, first + j, ch);
        self.transform_here(v, (cols, count), sp, input_tiles, &mut scratch.input);
        for (xi, m) in m.chunks_mut(pass.dst * cols).enumerate() {
            pass.gemm(m, v, xi, cols);
        }
        for (j, o) in outs.iter_mut().enumerate() {
            for (ch, p) in o.chunks_exact_mut(plane.max(1)).take(pass.dst).enumerate() {
                self.output_plane(pass, (m, cols), (ch, j), p, &mut scratch.output);
            }
        }
    }

    /// Output channel `ch` of the `j`-th image of a chunk or block from its products `m`
    /// (`[ξ][dst][cols]`), plus the channel's bias: `Aᵀ m A` per tile.
    fn output_plane(
        &self,
        pass: &Pass<'_>,
        (m, cols): (&[f32], usize),
        (ch, j): (usize, usize),
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let products = Products {
            data: m,
            stride: pass.dst * cols,
            at: ch * cols + j * self.tiles(),
        };
        let b = pass.bias.map_or(0.0, |b| b[ch]);
        output_tiles(self, products, b, out, scratch);
    }

    /// Fills `dst` (`[channel][ξ][cols]`) with the tiles of each channel's plane of each image
    /// of the chunk (`plane(channel, image)`), through `tile_rows` (whose scratch starts zeroed
    /// for each channel and serves all its planes).
    fn transform<'p>(
        &self,
        dst: &mut [f32],
        cols: usize,
        plane: impl Fn(usize, usize) -> &'p [f32] + Sync,
        tile_rows: TileRows,
    ) {
        let images = cols / self.tiles().max(1);
        dst.par_chunks_mut(stride(cols))
            .enumerate()
            .for_each(|(ch, d)| {
                let mut scratch = vec![0.0; self.scratch_len()];
                let one = |_, j| plane(ch, j);
                self.transform_here(d, (cols, images), one, tile_rows, &mut scratch);
            });
    }

    /// [`Winograd::transform`] on this thread, every channel of `dst` (`count` images of
    /// `cols` tiles) through one `scratch` (zeroed before the first plane: the input
    /// transform's padding stays so).
    fn transform_here<'p>(
        &self,
        dst: &mut [f32],
        (cols, count): (usize, usize),
        plane: impl Fn(usize, usize) -> &'p [f32],
        tile_rows: TileRows,
        scratch: &mut [f32],
    ) {
        let tiles = self.tiles();
        for (ch, d) in dst.chunks_mut(stride(cols)).enumerate() {
            for j in 0..count {
                tile_rows(self, plane(ch, j), &mut d[j * tiles..], cols, scratch);
            }
        }
    }

    /// Elements of the scratch rows a transform of one plane works in: the input's padded rows
    /// split in two and four rows after `Bᵀ`, each split in two ([`input_tiles`]), the most.
    fn scratch_len(&self) -> usize {
        let (th, tw) = self.grid();
        (2 * (2 * th + 2) + 8) * (tw + 1)
    }
}

/// One thread's scratch rows for the per-thread path: the input transform's (whose padding
/// stays zero from here on, see [`input_tiles`]) and the output transform's.
struct Scratch {
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Scratch {
    fn new(wg: &Winograd) -> Self {
        Scratch {
            input: vec![0.0; wg.scratch_len()],
            output: vec![0.0; wg.scratch_len()],
        }
    }
}

/// Elements from one channel's (or kernel row's) 16 transformed rows of `cols` to the next's.
fn stride(cols: usize) -> usize {
    XI * cols + PAD
}

/// Where one plane's 16 rows of GEMM products lie: row `ξ` at `data[ξ * stride + at ..]`, one
/// element per tile.
#[derive(Clone, Copy)]
struct Products<'m> {
    data: &'m [f32],
    stride: usize,
    at: usize,
}

widest_simd!(
    /// One output plane (`h x w`) plus `bias` from its products: `Y = Aᵀ m A` per tile, cut at
    /// the plane's edges; every element of `out` written.
    fn output_tiles(
        wg: &Winograd,
        m: Products<'_>,
        bias: f32,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) = output_tiles_body;
);

#[inline(always)]
fn output_tiles_body(
    wg: &Winograd,
    m: Products<'_>,
    bias: f32,
    out: &mut [MaybeUninit<f32>],
    scratch: &mut [f32],
) {
    let ((th, tw), w) = (wg.grid(), wg.w);
    let (s, rest) = scratch.split_at_mut(8 * tw);
    let (even, rest) = rest.split_at_mut(tw);
    let odd = &mut rest[..tw];
    for ty in 0..th {
        let row = |i: usize, j: usize| &m.data[(4 * i + j) * m.stride + m.at + ty * tw..][..tw];
        // Aᵀ over the tile's rows: s[a][j] for output row a and transformed column j.
        let (s0, s1) = s.split_at_mut(4 * tw);
        for (j, (s0, s1)) in s0
            .chunks_exact_mut(tw)
            .zip(s1.chunks_exact_mut(tw))
            .enumerate()
        {
            let (m0, m1, m2, m3) = (row(0, j), row(1, j), row(2, j), row(3, j));
            zip3(s0, m0, m1, m2, |a, b, c| a + b + c);
            zip3(s1, m1, m2, m3, |a, b, c| a - b - c);
        }
        for a in 0..2 {
            let y = 2 * ty + a;
            if y >= wg.h {
                break;
            }
            let c = |j: usize| &s[(4 * a + j) * tw..][..tw];
            zip3(even, c(0), c(1), c(2), |a, b, c| a + b + c + bias);
            zip3(odd, c(1), c(2), c(3), |a, b, c| a - b - c + bias);
            let mut pairs = out[y * w..][..w].chunks_exact_mut(2);
            for ((pair, &e), &o) in (&mut pairs).zip(even.iter()).zip(odd.iter()) {
                pair[0].write(e);
                pair[1].write(o);
            }
            if let [last] = pairs.into_remainder() {
                last.write(even[tw - 1]);
            }
        }
    }
}

widest_simd!(
    /// The 16 transformed rows of one plane's tiles, `Bᵀ d B` for each 4x4 input tile `d`
    /// (rows and columns `2t - 1 .. 2t + 3`, zeros past the plane): row `ξ` at `out[ξ * ld
    /// ..]`, one element per tile. `scratch` holds zeros where the padded plane's padding goes:
    /// zeroed before the first plane, left so by every call.
    fn input_tiles(wg: &Winograd, plane: &[f32], out: &mut [f32], ld: usize, scratch: &mut [f32]) =
        input_tiles_body;
);

#[inline(always)]
fn input_tiles_body(wg: &Winograd, plane: &[f32], out: &mut [f32], ld: usize, scratch: &mut [f32]) {
    let ((th, tw), w) = (wg.grid(), wg.w);
    let len = tw + 1;
    // The zero-padded plane's rows (row r = input row r - 1), each split into its columns
    // 2t - 1 (`e[t]`) and 2t (`o[t]`), t = 0..=tw; `be` and `bo` one tile row after Bᵀ. Every
    // plane writes the same positions of `e` and `o`: the padding, never written, stays zero
    // from the scratch's start.
    let rows = 2 * th + 2;
    let (e, rest) = scratch.split_at_mut(rows * len);
    let (o, rest) = rest.split_at_mut(rows * len);
    let (be, rest) = rest.split_at_mut(4 * len);
    let bo = &mut rest[..4 * len];
    for (y, src) in plane.chunks_exact(w).take(wg.h).enumerate() {
        let r = (y + 1) * len;
        split_columns(src, &mut o[r..r + len], &mut e[r + 1..r + len]);
    }
    for ty in 0..th {
        let rows = 2 * ty * len..(2 * ty + 4) * len;
        rows_bt(&e[rows.clone()], be, len);
        rows_bt(&o[rows], bo, len);
        for (i, (e, o)) in be.chunks_exact(len).zip(bo.chunks_exact(len)).enumerate() {
            let at = |j: usize| (4 * i + j) * ld + ty * tw;
            let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
            zip2(&mut out[at(0)..][..tw], e0, e1, |a, b| a - b);
            zip2(&mut out[at(1)..][..tw], o0, e1, |a, b| a + b);
            zip2(&mut out[at(2)..][..tw], e1, o0, |a, b| a - b);
            zip2(&mut out[at(3)..][..tw], o0, o1, |a, b| a - b);
        }
    }
}

/// `Bᵀ` over four rows of `len` (`d`, row `k` at `k * len`) into `out`: `d0 - d2`, `d1 + d2`,
/// `d2 - d1`, `d1 - d3`.
#[inline(always)]
fn rows_bt(d: &[f32], out: &mut [f32], len: usize) {
    let r = |k: usize| &d[k * len..][..len];
    let (d0, d1, d2, d3) = (r(0), r(1), r(2), r(3));
    let mut rows = out.chunks_exact_mut(len);
    let mut next = || rows.next().unwrap_or_default();
    zip2(next(), d0, d2, |a, b| a - b);
    zip2(next(), d1, d2, |a, b| a + b);
    zip2(next(), d2, d1, |a, b| a - b);
    zip2(next(), d1, d3, |a, b| a - b);
}

widest_simd!(
    /// The 16 transformed rows of one output-gradient plane's tiles, `A dY Aᵀ` for each 2x2
    /// tile `dY` (zeros past the plane): row `ξ` at `out[ξ * ld ..]`, one element per tile.
    fn grad_tiles(wg: &Winograd, plane: &[f32], out: &mut [f32], ld: usize, scratch: &mut [f32]) =
        grad_tiles_body;
);

#[inline(always)]
fn grad_tiles_body(wg: &Winograd, plane: &[f32], out: &mut [f32], ld: usize, scratch: &mut [f32]) {
    let ((th, tw), (h, w)) = (wg.grid(), (wg.h, wg.w));
    // Rows 2t and 2t + 1 split into their even (`e`) and odd (`o`) columns; `qe`, `qo` one row
    // of A over them.
    let (e, rest) = scratch.split_at_mut(2 * tw);
    let (o, rest) = rest.split_at_mut(2 * tw);
    let (qe, rest) = rest.split_at_mut(tw);
    let qo = &mut rest[..tw];
    for ty in 0..th {
        for a in 0..2 {
            let (ea, oa) = (&mut e[a * tw..][..tw], &mut o[a * tw..][..tw]);
            ea.fill(0.0);
            oa.fill(0.0);
            let y = 2 * ty + a;
            if y < h {
                split_columns(&plane[y * w..][..w], ea, oa);
            }
        }
        // A over the rows (r0, r0 + r1, r0 - r1, -r1), then over the columns the same.
        for i in 0..4 {
            rows_a(i, e, qe, tw);
            rows_a(i, o, qo, tw);
            let at = |j: usize| (4 * i + j) * ld + ty * tw;
            out[at(0)..][..tw].copy_from_slice(qe);
            zip2(&mut out[at(1)..][..tw], qe, qo, |a, b| a + b);
            zip2(&mut out[at(2)..][..tw], qe, qo, |a, b| a - b);
            zip2(&mut out[at(3)..][..tw], qo, qo, |_, b| -b);
        }
    }
}

/// Row `i` of `A` over two rows of `len` (`r`, row `a` at `a * len`) into `out`: `r0`,
/// `r0 + r1`, `r0 - r1` or `-r1`.
#[inline(always)]
fn rows_a(i: usize, r: &[f32], out: &mut [f32], len: usize) {
    let (r0, r1) = (&r[..len], &r[len..2 * len]);
    match i {
        0 => out[..len].copy_from_slice(r0),
        1 => zip2(out, r0, r1, |a, b| a + b),
        2 => zip2(out, r0, r1, |a, b| a - b),
        _ => zip2(out, r1, r1, |_, b| -b),
    }
}

/// `out[t] = f(a[t], b[t])` over the shortest of the three.
#[inline(always)]
fn zip2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `out[t] = f(a[t], b[t], c[t])` over the shortest of the four.
#[inline(always)]
fn zip3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(a, b, c);
    }
}

/// A row's even columns into `even` and odd ones into `odd` (a last odd column past an
/// odd-length row stays as it was).
#[inline(always)]
fn split_columns(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[row.len() / 2] = *last;
    }
    for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `G g Gᵀ` of a 3x3 kernel `g` (row-major): the 4x4 transformed kernel, row-major.
fn kernel_tile(g: &[f32]) -> [f32; XI] {
    let g4 = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    let cols: [[f32; 4]; 3] = [0, 1, 2].map(|r| g4(g[3 * r], g[3 * r + 1], g[3 * r + 2]));
    let mut t = [0.0; XI];
    for j in 0..4 {
        let c = g4(cols[0][j], cols[1][j], cols[2][j]);
        for i in 0..4 {
            t[4 * i + j] = c[i];
        }
    }
    t
}

/// `Gᵀ t G` of a 4x4 transformed gradient `t` (row-major): the 3x3 kernel gradient.
fn kernel_grad(t: &[f32; XI]) -> [f32; 9] {
    let g3 = |a: f32, b: f32, c: f32, d: f32| [a + (b + c) * 0.5, (b - c) * 0.5, (b + c) * 0.5 + d];
    let rows: [[f32; 3]; 4] =
        [0, 1, 2, 3].map(|r| g3(t[4 * r], t[4 * r + 1], t[4 * r + 2], t[4 * r + 3]));
    let mut k = [0.0; 9];
    for j in 0..3 {
        let c = g3(rows[0][j], rows[1][j], rows[2][j], rows[3][j]);
        for i in 0..3 {
            k[3 * i + j] = c[i];
        }
    }
    k
}

/// Fills `u` (`[row][ξ][col]`) with the transformed `rows x cols` kernels `kernel(row, col)`
/// (each 3x3, row-major).
fn transform_kernels(
    u: &mut [f32],
    (rows, cols): (usize, usize),
    kernel: impl Fn(usize, usize) -> [f32; 9] + Sync,
) {
    u.par_chunks_mut(stride(cols))
        .take(rows)
        .enumerate()
        .for_each(|(r, dst)| {
            for c in 0..cols {
                for (xi, v) in kernel_tile(&kernel(r, c)).into_iter().enumerate() {
                    dst[xi * cols + c] = v;
                }
            }
        });
}

/// The 3x3 taps of kernel `pair` (`co * cin + ci`) of `weight`.
fn taps(weight: &[f32], pair: usize) -> [f32; 9] {
    let mut k = [0.0; 9];
    k.copy_from_slice(&weight[pair * 9..][..9]);
    k
}

//! Matrix products on Intel AMX tiles for bf16 operands: bf16 tensors themselves (the tile
//! convolutions of `ops/conv2d/tiles.rs`) or `f32` copies of them (a 16-bit convolution's
//! GEMMs on `f32` copies), whose values `tdpbf16ps` (bf16 pairs into `f32` sums) takes without
//! loss. One tile instruction does 16x16x32 multiply-adds; on the machine measured a 32x32
//! block ran ~1 TFLOP/s on one core, against ~0.18 for the `gemm` crate's `f32` kernel.
//!
//! Each `32 x 32` block of a product is four tiles summed over the whole `k`, 32 values of `k`
//! a step, in a fixed order: the bits depend on the shapes alone, not on the thread count or
//! the work split. Per step and element the instruction sums the even and the odd products of
//! the 32 into two `f32` partial sums from zero and adds their sum to the element (round to
//! nearest even; denormal inputs and results are flushed to zero), as Intel's pseudocode says
//! and `tests::tile_order_is_intels_pseudocode` checks on the hardware.
//!
//! [`gemm`] packs one operand (the one with fewer 32-wide slabs) whole into tile layout; the
//! other is packed a slab at a time by the thread that uses it. Those packed copies (bf16,
//! half the bytes of `f32` operands) are the kernel's own scratch, as the `gemm` crate's
//! packing buffers are, and not charged to the device. Callers with a layout of their own
//! (the tile convolutions) give [`block_of`] each step's tile addresses instead.

use crate::dtype::bf16;
#[cfg(doc)]
use crate::simd::bf16_matrix_units;
use std::arch::asm;
use std::ops::Range;

/// Rows (of `a`) or columns (of `b`) of one packed slab: two tiles.
const SLAB: usize = 32;
/// Values of `k` per tile step (a tile row holds 32 bf16, 64 bytes).
const STEP: usize = 32;
/// `u16`s of one slab for one step (two 16 x 32 tiles).
const STEP_LEN: usize = SLAB * STEP;
/// Bytes of one step of a packed slab ([`pack_whole_cols`]).
pub(crate) const SLAB_STEP_BYTES: usize = STEP_LEN * 2;
/// Slabs a thread packs at a time of the operand it streams.
const RUN: usize = 16;

/// An element type the tiles read: bf16 itself, or an `f32` that holds a bf16 value.
pub(crate) trait TileValue: Copy + Send + Sync {
    /// The value's bf16 bits.
    fn bits(self) -> u16;
    /// Zero.
    const ZERO: Self;
    /// Whether the type is bf16 itself (2 bytes, its bits as they are): two neighbours along a
    /// row are one tile pair in memory.
    const RAW: bool;
}

impl TileValue for f32 {
    /// The upper half: exact for an `f32` that holds a bf16 value.
    #[inline(always)]
    fn bits(self) -> u16 {
        (self.to_bits() >> 16) as u16
    }
    const ZERO: Self = 0.0;
    const RAW: bool = false;
}

impl TileValue for bf16 {
    #[inline(always)]
    fn bits(self) -> u16 {
        self.to_bits()
    }
    const ZERO: Self = bf16::ZERO;
    const RAW: bool = true;
}

/// An operand whose element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, V> {
    data: &'a [V],
    rs: usize,
    cs: usize,
}

impl<'a, V> Strided<'a, V> {
    /// Element `(r, c)` at `data[r * rs + c * cs]`.
    pub(crate) fn new(data: &'a [V], rs: usize, cs: usize) -> Self {
        Strided { data, rs, cs }
    }
}

/// Two values as one bf16 pair (`lo` in the low half), as tiles take them.
#[inline(always)]
pub(crate) fn pair<V: TileValue>(lo: V, hi: V) -> u32 {
    ((hi.bits() as u32) << 16) | lo.bits() as u32
}

/// Element `kk` of a row of `k` (zero past the end), at `at` with elements `step` apart.
#[inline(always)]
fn get<V: TileValue>(data: &[V], at: usize, kk: usize, k: usize, step: usize) -> V {
    if kk < k {
        data[at + kk * step]
    } else {
        V::ZERO
    }
}

/// Rows `r0 .. r0 + 32` of `a` (`m x k`) packed as `a` tiles: per step of 32 values of `k`, a
/// `32 x 16` block of pairs, row `r` holding that step's values of row `r0 + r`. Rows past `m`
/// and values past `k` are zero.
///
/// # Safety
/// The CPU must have AVX-512 F and BW ([`bf16_matrix_units`] implies it).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_rows<V: TileValue>(
    a: Strided<'_, V>,
    (m, k): (usize, usize),
    r0: usize,
    out: &mut [u32],
) {
    let rows = SLAB.min(m - r0);
    if rows < SLAB || k % STEP != 0 {
        out.fill(0);
    }
    for r in 0..rows {
        let base = (r0 + r) * a.rs;
        for s in 0..k.div_ceil(STEP) {
            let dst = &mut out[s * STEP_LEN / 2 + r * STEP / 2..][..STEP / 2];
            let k0 = s * STEP;
            if a.cs == 1 && k0 + STEP <= k {
                let src = &a.data[base + k0..base + k0 + STEP];
                dst.iter_mut()
                    .zip(src.chunks_exact(2))
                    .for_each(|(d, p)| *d = pair(p[0], p[1]));
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    let kk = k0 + 2 * i;
                    *d = pair(
                        get(a.data, base, kk, k, a.cs),
                        get(a.data, base, kk + 1, k, a.cs),
                    );
                }
            }
        }
    }
}

/// Columns `c0 .. c0 + 32 * slabs` of `b` (`k x n`) packed as `slabs` consecutive slabs of
/// `b` tiles, each `out.len() / slabs` long: per step of 32 values of `k`, two `16 x 16`
/// blocks of pairs (a slab's columns `0 ..16`, then `16 ..32`), row `i` of a block holding
/// values `2i, 2i + 1` of the step. Columns past `n` and values past `k` are zero.
///
/// # Safety
/// The CPU must have AVX-512 F and BW ([`bf16_matrix_units`] implies it).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_cols<V: TileValue>(
    b: Strided<'_, V>,
    (k, n): (usize, usize),
    (c0, slabs): (usize, usize),
    out: &mut [u32],
) {
    let len = out.len() / slabs.max(1);
    if b.cs != 1 {
        for (t, o) in out.chunks_exact_mut(len).enumerate() {
            pack_slab_cols(b, (k, n), c0 + t * SLAB, o);
        }
        return;
    }
    // Rows of `b` are contiguous: a pair of rows at a time across all the slabs, 16 columns
    // a vector, so memory is read in long runs.
    let cols = (SLAB * slabs).min(n - c0);
    if cols < SLAB * slabs || k % STEP != 0 {
        out.fill(0);
    }
    for kk in (0..k).step_by(2) {
        let lo = &b.data[kk * b.rs + c0..][..cols];
        let hi = (kk + 1 < k).then(|| &b.data[(kk + 1) * b.rs + c0..][..cols]);
        for j0 in (0..cols).step_by(16) {
            let w = 16.min(cols - j0);
            let (t, j) = (j0 / SLAB, j0 % SLAB);
            let dst = &mut out[t * len + slot(kk, j)..][..w];
            let lo = &lo[j0..j0 + w];
            match hi {
                Some(hi) => dst
                    .iter_mut()
                    .zip(lo.iter().zip(&hi[j0..j0 + w]))
                    .for_each(|(d, (&l, &h))| *d = pair(l, h)),
                None => dst
                    .iter_mut()
                    .zip(lo)
                    .for_each(|(d, &l)| *d = pair(l, V::ZERO)),
            }
        }
    }
}

/// Where the pair of values `kk, kk + 1` of column `j` of a slab of `b` tiles goes.
#[inline(always)]
fn slot(kk: usize, j: usize) -> usize {
    (kk / STEP) * (STEP_LEN / 2) + (j / 16) * (STEP_LEN / 4) + (kk % STEP / 2) * 16 + j % 16
}

/// One slab of [`pack_cols`] from a `b` whose rows are not contiguous.
///
/// # Safety
/// As [`pack_cols`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_slab_cols<V: TileValue>(
    b: Strided<'_, V>,
    (k, n): (usize, usize),
    c0: usize,
    out: &mut [u32],
) {
    let cols = SLAB.min(n - c0);
    if cols < SLAB || k % STEP != 0 {
        out.fill(0);
    }
    // Columns of `b` are contiguous: bf16 pairs are words of memory, 16 columns x 16 pairs
    // transposed at a time.
    // (Rows an odd number of values apart are not whole words apart: element by element.)
    let full = if V::RAW && b.rs == 1 && b.cs.is_multiple_of(2) {
        cols / 16 * 16
    } else {
        0
    };
    for j0 in (0..full).step_by(16) {
        for kk in (0..k / STEP * STEP).step_by(STEP) {
            let src = b.data[(c0 + j0) * b.cs + kk..].as_ptr().cast::<u32>();
            let dst = out[slot(kk, j0)..].as_mut_ptr();
            // SAFETY: rows `c0 + j0 ..+16` of the stored transpose hold values `kk ..+32`
            // (a full step inside `k`, `cs` apart: `cs / 2` words), and the 16 tile rows of
            // the step at `dst` lie inside `out` (16 words, 16 apart).
            x86::transpose16(src, b.cs / 2, dst, 16);
        }
    }
    for j in 0..cols {
        let base = (c0 + j) * b.cs;
        let first = if j < full { k / STEP * STEP } else { 0 };
        for kk in (first..k).step_by(2) {
            let (l, h) = (
                get(b.data, base, kk, k, b.rs),
                get(b.data, base, kk + 1, k, b.rs),
            );
            out[slot(kk, j)] = pair(l, h);
        }
    }
}

mod x86 {
    use std::arch::x86_64::*;

    /// Writes the transpose of the 16 x 16 words at `src` (rows `src_ld` words apart, read
    /// unaligned) to `dst` (rows `dst_ld` words apart).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; both blocks must lie inside their allocations.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const u32, src_ld: usize, dst: *mut u32, dst_ld: usize) {
        let r: [__m512i; 16] =
            std::array::from_fn(|i| _mm512_loadu_si512(src.add(i * src_ld).cast()));
        // Pairs of rows interleaved by words, then by double words: u[4q + i] holds words
        // 4l + i of rows 4q ..+4 in each 128-bit lane l.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (q, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * q + j / 2], t[4 * q + j / 2 + 2]);
            if j % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        // 128-bit lanes: v[8h + i] = lanes (0, 2) or (1, 3) of u[8h + i % 4], u[8h + 4 + i % 4].
        let v: [__m512i; 16] = std::array::from_fn(|i| {
            let (h, j) = (i / 8, i % 8);
            let (a, b) = (u[8 * h + j % 4], u[8 * h + 4 + j % 4]);
            if j < 4 {
                _mm512_shuffle_i32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_i32x4::<0xdd>(a, b)
            }
        });
        for c in 0..16 {
            let (a, b) = (v[c % 8], v[8 + c % 8]);
            let o = if c < 8 {
                _mm512_shuffle_i32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_i32x4::<0xdd>(a, b)
            };
            _mm512_storeu_si512(dst.add(c * dst_ld).cast(), o);
        }
    }
}

/// Tile configuration (palette 1): tiles 0-3 the four `16 x 16` `f32` blocks of the product,
/// 4-5 two `16`-row blocks of `a`, 6-7 two `16`-column blocks of `b`; each 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = TileConfig({
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    c
});

/// Where one step's tiles are: the first 16 rows of `a` (16 rows of 64 bytes, `a_stride`
/// bytes apart) and its second 16 rows `a_half` bytes on; the first 16 columns of `b` (16 rows
/// of 16 bf16 pairs, `b_stride` apart) and its second 16 columns `b_half` bytes on.
#[derive(Clone, Copy)]
pub(crate) struct TileStep {
    pub(crate) a: *const u8,
    pub(crate) a_half: usize,
    pub(crate) a_stride: usize,
    pub(crate) b: *const u8,
    pub(crate) b_half: usize,
    pub(crate) b_stride: usize,
}

/// The tiles of step `s` of slabs packed by [`pack_rows`] and [`pack_cols`].
#[inline(always)]
fn packed_step(a: *const u32, b: *const u32, s: usize) -> TileStep {
    // Only addresses are computed here; `block`'s caller vouches for the slabs.
    let (a, b) = (
        a.wrapping_add(s * STEP_LEN / 2),
        b.wrapping_add(s * STEP_LEN / 2),
    );
    TileStep {
        a: a.cast(),
        a_half: STEP_LEN,
        a_stride: 64,
        b: b.cast(),
        b_half: STEP_LEN,
        b_stride: 64,
    }
}

/// `c = [c +] a * b` for one block at `c` (rows `ldc` elements apart) over `steps` steps whose
/// tiles `step(s)` gives; `load` keeps `c`'s value. The block is `32 x 32`, or 16 rows when
/// not `R2` (tiles 2-3 and `a`'s second half unused), or 16 columns when not `C2` (tiles 1 and
/// 3, `b`'s second half unused).
///
/// # Safety
/// The tile configuration must be loaded on this thread ([`with_tiles`]); every tile `step`
/// gives must be readable, and `c` a writable block.
#[inline(always)]
unsafe fn block<const R2: bool, const C2: bool>(
    steps: usize,
    step: impl Fn(usize) -> TileStep,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let sc = ldc * 4;
    let (c01, c10, c11) = (c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16));
    macro_rules! on_c {
        ($load:literal, $zero:literal, $p:expr) => {
            if load {
                asm!($load, p = in(reg) $p, sc = in(reg) sc, options(nostack, readonly));
            } else {
                asm!($zero, options(nostack, nomem));
            }
        };
    }
    on_c!("tileloadd tmm0, [{p} + {sc}*1]", "tilezero tmm0", c);
    if C2 {
        on_c!("tileloadd tmm1, [{p} + {sc}*1]", "tilezero tmm1", c01);
    }
    if R2 {
        on_c!("tileloadd tmm2, [{p} + {sc}*1]", "tilezero tmm2", c10);
    }
    if R2 && C2 {
        on_c!("tileloadd tmm3, [{p} + {sc}*1]", "tilezero tmm3", c11);
    }
    for s in 0..steps {
        let t = step(s);
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            a0 = in(reg) t.a, sa = in(reg) t.a_stride,
            b0 = in(reg) t.b, sb = in(reg) t.b_stride, options(nostack, readonly),
        );
        if C2 {
            asm!(
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                b1 = in(reg) t.b.add(t.b_half), sb = in(reg) t.b_stride, options(nostack, readonly),
            );
        }
        if R2 {
            asm!(
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a1 = in(reg) t.a.add(t.a_half), sa = in(reg) t.a_stride, options(nostack, readonly),
            );
        }
        if R2 && C2 {
            asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
        }
    }
    asm!("tilestored [{p} + {sc}*1], tmm0", p = in(reg) c, sc = in(reg) sc, options(nostack));
    if C2 {
        asm!("tilestored [{p} + {sc}*1], tmm1", p = in(reg) c01, sc = in(reg) sc, options(nostack));
    }
    if R2 {
        asm!("tilestored [{p} + {sc}*1], tmm2", p = in(reg) c10, sc = in(reg) sc, options(nostack));
    }
    if R2 && C2 {
        asm!("tilestored [{p} + {sc}*1], tmm3", p = in(reg) c11, sc = in(reg) sc, options(nostack));
    }
}

/// [`block`] of `rows` (16 or 32) by `cols` (16 or 32).
///
/// # Safety
/// As [`block`]'s.
#[inline(always)]
pub(crate) unsafe fn block_of(
    (rows, cols): (usize, usize),
    steps: usize,
    step: impl Fn(usize) -> TileStep,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    match (rows > 16, cols > 16) {
        (true, true) => block::<true, true>(steps, step, c, ldc, load),
        (false, true) => block::<false, true>(steps, step, c, ldc, load),
        (true, false) => block::<true, false>(steps, step, c, ldc, load),
        (false, false) => block::<false, false>(steps, step, c, ldc, load),
    }
}

/// The product's destination, shared by the threads that write its disjoint blocks.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
}

// SAFETY: the threads given an `Out` write disjoint blocks of it (one block, one thread).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    /// Block `(r0, c0)` of the product from packed slabs: 16 or 32 rows by 16 or 32 columns
    /// straight in the destination, through a `32 x 32` buffer where it has other sizes (at
    /// the destination's edge).
    ///
    /// # Safety
    /// As [`block`]'s, for a destination that holds `rows x cols` elements `ld` apart.
    unsafe fn block(&self, (r0, c0): (usize, usize), a: &[u32], b: &[u32], load: bool) {
        let steps = a.len().min(b.len()) / (STEP_LEN / 2);
        let (h, w) = (SLAB.min(self.rows - r0), SLAB.min(self.cols - c0));
        let at = self.ptr.add(r0 * self.ld + c0);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let step = |s| packed_step(a, b, s);
        if matches!(h, 16 | 32) && matches!(w, 16 | 32) {
            return block_of((h, w), steps, step, at, self.ld, load);
        }
        let mut buf = [0f32; SLAB * SLAB];
        for r in 0..h.min(if load { h } else { 0 }) {
            std::ptr::copy_nonoverlapping(at.add(r * self.ld), buf[r * SLAB..].as_mut_ptr(), w);
        }
        block_of((h, w), steps, step, buf.as_mut_ptr(), SLAB, load);
        for r in 0..h {
            std::ptr::copy_nonoverlapping(buf[r * SLAB..].as_ptr(), at.add(r * self.ld), w);
        }
    }
}

/// `dst (m x n, rows ld apart) = [dst +] a (m x k) * b (k x n)` on the tiles, `a` and `b`
/// bf16 values (an `f32` value that is not one loses its lower 16 bits).
///
/// # Safety
/// [`bf16_matrix_units`] must be true; `a` and `b` must hold their matrices at their strides, `dst`
/// must point to a writable block of `m x n` elements `ld` apart that no operand aliases, and,
/// with `accumulate`, be initialised.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<V: TileValue>(
    dst: *mut f32,
    ld: usize,
    a: Strided<'_, V>,
    b: Strided<'_, V>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let slab = k.div_ceil(STEP) * STEP_LEN / 2;
    let (a_slabs, b_slabs) = (m.div_ceil(SLAB), n.div_ceil(SLAB));
    let out = Out {
        ptr: dst,
        ld,
        rows: m,
        cols: n,
    };
    // The operand with fewer slabs is packed whole, up front; each thread packs the other's
    // slabs it uses, up to `RUN` at a time (so `b`'s rows are read in long runs).
    let whole_a = a_slabs <= b_slabs;
    let (whole_slabs, streamed) = if whole_a {
        (a_slabs, b_slabs)
    } else {
        (b_slabs, a_slabs)
    };
    let pack_a = |first: usize, out: &mut [u32]| {
        for (t, s) in out.chunks_exact_mut(slab).enumerate() {
            // SAFETY: the caller's contract (`bf16_matrix_units` implies AVX-512 F and BW).
            unsafe { pack_rows(a, (m, k), (first + t) * SLAB, s) };
        }
    };
    // SAFETY: as above.
    let pack_b = |first: usize, out: &mut [u32]| unsafe {
        pack_cols(b, (k, n), (first * SLAB, out.len() / slab), out)
    };
    let mut whole = vec![0u32; whole_slabs * slab];
    match whole_a {
        true => pack_a(0, &mut whole),
        false => pack_b(0, &mut whole),
    }
    let whole = &whole;
    on_tiles(streamed, parallel, |range| {
        let mut mine = vec![0u32; RUN.min(range.len()) * slab];
        for j0 in range.clone().step_by(RUN) {
            let mine = &mut mine[..RUN.min(range.end - j0) * slab];
            match whole_a {
                true => pack_b(j0, mine),
                false => pack_a(j0, mine),
            }
            for (t, ms) in mine.chunks_exact(slab).enumerate() {
                for (i, ws) in whole.chunks_exact(slab).enumerate() {
                    let (at, a, b) = match whole_a {
                        true => ((i * SLAB, (j0 + t) * SLAB), ws, ms),
                        false => (((j0 + t) * SLAB, i * SLAB), ms, ws),
                    };
                    // SAFETY: the caller's contract; block `at` is this thread's alone.
                    unsafe { out.block(at, a, b, accumulate) };
                }
            }
        }
    });
}

/// Runs `f` with the tile configuration loaded on this thread, and releases the tiles after.
/// Only where [`bf16_matrix_units`] holds.
pub(crate) fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    debug_assert!(crate::simd::bf16_matrix_units());
    // SAFETY: the callers run only where the tiles are (`bf16_matrix_units`); CONFIG is a
    // valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    let r = f();
    // SAFETY: as above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    r
}

/// `b` (`k x n`) packed whole into `out` as slabs of 32 columns ([`pack_cols`]): per slab
/// `k / 32` steps (rounded up) of [`SLAB_STEP_BYTES`], a step's two `16 x 16` tiles of pairs
/// half of that apart. `out` holds [`packed_len`]`(k, n)` words.
pub(crate) fn pack_whole_cols<V: TileValue>(
    b: Strided<'_, V>,
    (k, n): (usize, usize),
    out: &mut [u32],
) {
    assert_eq!(out.len(), packed_len(k, n), "packed operand's length");
    debug_assert!(crate::simd::bf16_matrix_units());
    // SAFETY: the callers run only where the tiles (and so AVX-512 F and BW) are.
    unsafe { pack_cols(b, (k, n), (0, n.div_ceil(SLAB)), out) };
}

/// Words of a `k x n` operand packed by [`pack_whole_cols`].
pub(crate) fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(SLAB) * k.div_ceil(STEP) * STEP_LEN / 2
}

/// Runs `work` over `0..slabs` split into ranges, on the thread pool when `parallel`, each
/// range with the tile configuration loaded on its thread (and released after).
fn on_tiles(slabs: usize, parallel: bool, work: impl Fn(Range<usize>) + Sync) {
    use rayon::prelude::*;
    let tasks = match parallel {
        true => (rayon::current_num_threads() * 4).min(slabs).max(1),
        false => 1,
    };
    let run = |t: usize| with_tiles(|| work(t * slabs / tasks..(t + 1) * slabs / tasks));
    match tasks {
        1 => run(0),
        _ => (0..tasks).into_par_iter().for_each(run),
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::{gemm_ld, Mat, Run};
    use super::Strided;
    use crate::dtype::bf16;
    use crate::simd::bf16_matrix_units;

    /// Values that are bf16 (8 significant bits), in [-2, 2): no product or sum comes near
    /// the denormals the tiles flush.
    fn bf16_values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
                half::bf16::from_f32(v).to_f32()
            })
            .collect()
    }

    /// Intel's pseudocode for `tdpbf16ps`, per element: per step of 32 values of `k` (zeros
    /// past `k`), the even and the odd products summed from zero in order, their sum added.
    fn pseudocode(at: impl Fn(usize) -> (f32, f32), k: usize, start: f32) -> f32 {
        let mut acc = start;
        for s in 0..k.div_ceil(32) {
            let (mut even, mut odd) = (0f32, 0f32);
            for p in 0..16 {
                let kk = s * 32 + 2 * p;
                let term = |kk: usize| if kk < k { at(kk) } else { (0.0, 0.0) };
                let ((a0, b0), (a1, b1)) = (term(kk), term(kk + 1));
                even += a0 * b0;
                odd += a1 * b1;
            }
            acc += even + odd;
        }
        acc
    }

    /// Every operand layout (as is, transposed), edges (sizes not multiples of 32), a wider
    /// destination, and `accumulate`: the tiles give Intel's pseudocode's bits, on one thread
    /// and on the pool alike.
    #[test]
    fn tile_order_is_intels_pseudocode() {
        if !bf16_matrix_units() {
            eprintln!("skipped: this CPU (or OS) gives no AMX-BF16 tiles");
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (17, 40, 33),
            (64, 96, 70),
            (40, 33, 300),
            (96, 20, 64),
            (48, 80, 96),
        ] {
            for (ta, tb, acc) in [
                (false, false, false),
                (true, false, true),
                (false, true, true),
            ] {
                let (a, b) = (bf16_values(m * k, 1), bf16_values(k * n, 2));
                let ld = n + 3;
                let start = bf16_values(m * ld, 3);
                let (ea, eb) = (
                    |i: usize, kk: usize| a[i * k + kk],
                    |kk: usize, j: usize| b[kk * n + j],
                );
                // Stored as the transpose when `ta`/`tb`.
                let at: Vec<f32> = match ta {
                    true => (0..k * m).map(|x| ea(x % m, x / m)).collect(),
                    false => a.clone(),
                };
                let bt: Vec<f32> = match tb {
                    true => (0..n * k).map(|x| eb(x % k, x / k)).collect(),
                    false => b.clone(),
                };
                let mut runs = Vec::new();
                for parallel in [false, true] {
                    let mut dst = start.clone();
                    let ma = if ta { Mat::t(&at) } else { Mat::n(&at) };
                    let mb = if tb { Mat::t(&bt) } else { Mat::n(&bt) };
                    let run = Run {
                        parallel,
                        bf16: true,
                    };
                    gemm_ld(&mut dst, ld, ma, mb, (m, n, k), acc, run);
                    runs.push(dst);
                }
                assert_eq!(
                    runs[0], runs[1],
                    "{m}x{n}x{k}: thread split changed the bits"
                );
                for i in 0..m {
                    for j in 0..n {
                        let init = if acc { start[i * ld + j] } else { 0.0 };
                        let want = pseudocode(|kk| (ea(i, kk), eb(kk, j)), k, init);
                        let got = runs[0][i * ld + j];
                        assert_eq!(got.to_bits(), want.to_bits(), "{m}x{n}x{k} ({i},{j})");
                    }
                }
            }
        }
    }

    /// bf16 operands give the bits their `f32` copies give, in every layout, through the
    /// transposing packer too (16 columns by 32 values of `k` at a time, edges beside).
    #[test]
    fn bf16_operands_give_the_bits_of_their_f32_copies() {
        if !bf16_matrix_units() {
            eprintln!("skipped: this CPU (or OS) gives no AMX-BF16 tiles");
            return;
        }
        for (m, n, k) in [(40, 48, 1024), (17, 33, 70), (64, 16, 64), (40, 48, 95)] {
            for (a_rows, b_rows) in [(true, true), (false, true), (true, false)] {
                let (a, b) = (bf16_values(m * k, 4), bf16_values(k * n, 5));
                let (a16, b16): (Vec<bf16>, Vec<bf16>) = (
                    a.iter().map(|&v| bf16::from_f32(v)).collect(),
                    b.iter().map(|&v| bf16::from_f32(v)).collect(),
                );
                // Stored row-major when `*_rows`, else as the transpose.
                let (ars, acs) = if a_rows { (k, 1) } else { (1, m) };
                let (brs, bcs) = if b_rows { (n, 1) } else { (1, k) };
                let run = |a: Strided<'_, f32>, b: Strided<'_, f32>| {
                    let mut c = vec![0f32; m * n];
                    // SAFETY: the tiles are there (checked); the operands hold their matrices.
                    unsafe { super::gemm(c.as_mut_ptr(), n, a, b, (m, n, k), false, true) };
                    c
                };
                let want = run(Strided::new(&a, ars, acs), Strided::new(&b, brs, bcs));
                let mut got = vec![0f32; m * n];
                let (sa, sb) = (
                    Strided::new(&a16[..], ars, acs),
                    Strided::new(&b16[..], brs, bcs),
                );
                // SAFETY: as above.
                unsafe { super::gemm(got.as_mut_ptr(), n, sa, sb, (m, n, k), false, true) };
                assert_eq!(got, want, "{m}x{n}x{k} a rows {a_rows} b rows {b_rows}");
            }
        }
    }
}

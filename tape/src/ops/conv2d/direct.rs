//! A direct 3x3 convolution (stride 1, padding 1) on the CPU, for convolutions with few output
//! channels: DenseNet's 48 -> 12 convolutions, and their input gradients (12 -> 48, through the
//! flipped kernel). There, im2col writes nine column elements per input element for only 12
//! multiply-adds each, and the GEMM packs them once more; this kernel reads the image itself.
//!
//! The image is copied once into a zero-padded buffer of width `w + 2`. In that buffer's flat
//! layout, output position `q = y * (w + 2) + x` reads tap `(i, j)` of channel `c` at
//! `c * plane + q + i * (w + 2) + j`: for a run of 16 consecutive `q`, 16 consecutive elements.
//! So the kernel computes 16 positions of 12 output channels at a time (12 accumulator vectors),
//! each loaded input vector feeding 12 fused multiply-adds; positions `x >= w` of each row (two
//! per row) are computed too and dropped.
//!
//! Every output is `bias` (or 0), then one fused multiply-add per input channel and tap, channels
//! outer, taps in row-major order: the same operations in the same order at every SIMD level and
//! on any thread count, so the same bits.

use super::Geometry;
use crate::simd::widest_simd;
use std::mem::MaybeUninit;

/// Output channels one pass computes (its accumulators: 12 vectors).
const CO: usize = 12;

/// Positions one pass computes (one AVX-512 vector of `f32`).
const LANES: usize = 16;

/// Output channels of the convolution the direct kernel takes at most (wider outputs make
/// im2col's columns pay off in the GEMM).
const MAX_OUT: usize = 24;

/// The sizes of one direct convolution of an image: `cin` planes of `h x w` to `cout`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

impl Direct {
    /// The direct forward of `g`, if it takes it: 3x3, stride 1, padding 1, at most
    /// [`MAX_OUT`] output channels, `f32` (`elem` 4 bytes).
    pub(super) fn forward(g: &Geometry, elem: usize) -> Option<Direct> {
        let fits = elem == 4 && (g.kh, g.kw, g.stride, g.padding) == (3, 3, 1, 1);
        (fits && g.cout <= MAX_OUT).then_some(Direct {
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
        })
    }

    /// The direct input gradient of `g`, when it takes `g`'s forward and `g` has fewer output
    /// than input channels (the CPU kernel's flipped path, whose flipped kernel it reads): a
    /// convolution of the output gradient (`cout` channels) with the flipped kernel to `cin`.
    pub(super) fn input_grad(g: &Geometry, elem: usize) -> Option<Direct> {
        let fewer_out = g.cout < g.cin;
        Self::forward(g, elem)
            .filter(|_| fewer_out)
            .map(|d| Direct {
                cin: d.cout,
                cout: d.cin,
                ..d
            })
    }

    fn w2(&self) -> usize {
        self.w + 2
    }

    /// Elements of one padded input plane.
    fn plane(&self) -> usize {
        (self.h + 2) * self.w2()
    }

    /// Positions computed per output plane (`h` rows of `w + 2`, in whole vectors).
    fn positions(&self) -> usize {
        (self.h * self.w2()).next_multiple_of(LANES)
    }

    fn groups(&self) -> usize {
        self.cout.div_ceil(CO)
    }

    /// The padded input, with room for the last vector's reads past the last plane.
    fn input_len(&self) -> usize {
        self.cin * self.plane() + 2 * LANES
    }

    /// Elements of the packed kernel ([`Direct::pack`]).
    pub(super) fn packed_len(&self) -> usize {
        self.groups() * self.cin * 9 * CO
    }

    /// Workspace elements of one image's convolution: the padded input and one group's output
    /// planes.
    pub(super) fn workspace_len(&self) -> usize {
        self.input_len() + CO * self.positions()
    }

    /// `out (cout x h x w) = conv(x (cin x h x w), kernel) + bias`, every element of `out`
    /// written; `packed` is the kernel as [`Direct::pack`] lays it out, `ws` holds
    /// [`Direct::workspace_len`] elements.
    pub(super) fn image(
        &self,
        x: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        ws: &mut [f32],
    ) {
        let (xp, op) = ws.split_at_mut(self.input_len());
        let wp = &packed[..self.packed_len()];
        self.pad(x, xp);
        let (hw, pos, w2) = (self.h * self.w, self.positions(), self.w2());
        let sizes = (self.cin, self.plane(), w2, pos);
        for grp in 0..self.groups() {
            let mut init = [0.0; CO];
            for (co, v) in init.iter_mut().enumerate() {
                *v = bias
                    .and_then(|b| b.get(grp * CO + co))
                    .copied()
                    .unwrap_or(0.0);
            }
            let wg = &wp[grp * self.cin * 9 * CO..][..self.cin * 9 * CO];
            group(xp, wg, sizes, init, &mut op[..CO * pos]);
            let real = CO.min(self.cout - grp * CO);
            for co in 0..real {
                let dst = &mut out[(grp * CO + co) * hw..][..hw];
                let src = &op[co * pos..];
                for (d, s) in dst.chunks_exact_mut(self.w).zip(src.chunks(w2)) {
                    d.iter_mut().zip(s).for_each(|(d, &s)| _ = d.write(s));
                }
            }
        }
    }

    /// Workspace elements of one image's weight gradient: the padded input and the output
    /// gradient transposed onto the padded positions (`positions x 16` per group of 16 output
    /// channels, zeros in the two extra columns of each row and past `cout`).
    pub(super) fn weight_grad_workspace_len(&self) -> usize {
        self.input_len() + self.cout.div_ceil(LANES) * self.positions() * LANES
    }

    /// Adds image `x`'s weight gradient, from its output gradient `g` (`cout x h x w`), into
    /// `gwt`, the gradient transposed (`gwt[(c * 9 + tap) * cout + o]`); with `overwrite`, writes
    /// it instead. Each element is one chain of fused multiply-adds over the positions in order
    /// (the lanes of a vector are 16 output channels). `ws` holds
    /// [`Direct::weight_grad_workspace_len`] elements.
    pub(super) fn weight_grad_image(
        &self,
        x: &[f32],
        g: &[f32],
        gwt: &mut [f32],
        overwrite: bool,
        ws: &mut [f32],
    ) {
        let (xp, gp) = ws.split_at_mut(self.input_len());
        self.pad(x, xp);
        let (hw, pos, w2) = (self.h * self.w, self.positions(), self.w2());
        gp.fill(0.0);
        for (o, plane) in g.chunks_exact(hw.max(1)).take(self.cout).enumerate() {
            let group = &mut gp[o / LANES * pos * LANES..][..pos * LANES];
            for (y, row) in plane.chunks_exact(self.w).enumerate() {
                for (xx, &v) in row.iter().enumerate() {
                    group[(y * w2 + xx) * LANES + o % LANES] = v;
                }
            }
        }
        let sizes = (self.cin, self.plane(), w2, pos);
        let mut sums = [[0.0; LANES]; 9];
        for grp in 0..self.cout.div_ceil(LANES) {
            let gt = &gp[grp * pos * LANES..][..pos * LANES];
            let real = LANES.min(self.cout - grp * LANES);
            for c in 0..self.cin {
                correlate(&xp[c * self.plane()..], gt, sizes, &mut sums);
                for (t, s) in sums.iter().enumerate() {
                    let dst = &mut gwt[(c * 9 + t) * self.cout + grp * LANES..][..real];
                    for (d, &v) in dst.iter_mut().zip(s) {
                        *d = if overwrite { v } else { *d + v };
                    }
                }
            }
        }
    }

    /// `x` into `xp` with a border of zeros (and zeros after the last plane).
    fn pad(&self, x: &[f32], xp: &mut [f32]) {
        xp.fill(0.0);
        let (w2, plane) = (self.w2(), self.plane());
        for c in 0..self.cin {
            for y in 0..self.h {
                let src = &x[(c * self.h + y) * self.w..][..self.w];
                xp[c * plane + (y + 1) * w2 + 1..][..self.w].copy_from_slice(src);
            }
        }
    }

    /// `weight (cout x cin x 3 x 3)` into `wp` as `[group][cin][tap][CO]`, zeros past `cout`.
    pub(super) fn pack(&self, weight: &[f32], wp: &mut [f32]) {
        let cin = self.cin;
        self.pack_with(wp, |o, c, tap| weight[(o * cin + c) * 9 + tap]);
    }

    /// The kernel of an input gradient ([`Direct::input_grad`]) from the forward's `weight`
    /// (`cin x cout x 3 x 3` in this convolution's terms), flipped, into `wp` as
    /// [`Direct::pack`] lays it out.
    pub(super) fn pack_flipped(&self, weight: &[f32], wp: &mut [f32]) {
        let cout = self.cout;
        self.pack_with(wp, |o, c, tap| weight[(c * cout + o) * 9 + 8 - tap]);
    }

    /// `wp[group][c][tap][co] = at(group * CO + co, c, tap)`, zeros past `cout`.
    fn pack_with(&self, wp: &mut [f32], at: impl Fn(usize, usize, usize) -> f32) {
        for grp in 0..self.groups() {
            for c in 0..self.cin {
                for tap in 0..9 {
                    let dst = &mut wp[((grp * self.cin + c) * 9 + tap) * CO..][..CO];
                    for (co, d) in dst.iter_mut().enumerate() {
                        let o = grp * CO + co;
                        *d = if o < self.cout { at(o, c, tap) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Sizes of one group's pass: (input channels, padded plane, padded width, positions).
type Sizes = (usize, usize, usize, usize);

/// One group of [`CO`] output channels over every position: `out` is `CO x positions`. The
/// AVX-512 build holds the accumulators in registers; the others compute the same fused
/// multiply-adds in the same order through [`group_portable`].
fn group(xp: &[f32], wp: &[f32], sizes: Sizes, init: [f32; CO], out: &mut [f32]) {
    let (cin, plane, w2, positions) = sizes;
    assert!(
        xp.len() >= (cin.max(1) - 1) * plane + positions + 2 * w2 + 2
            && wp.len() >= cin * 9 * CO
            && out.len() >= CO * positions
            && positions % LANES == 0,
        "direct convolution buffers too short"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        // SAFETY: the level in force never exceeds what the CPU supports; the buffers hold
        // every element the kernel reads and writes (checked above).
        return unsafe { x86::group_avx512(xp, wp, sizes, init, out) };
    }
    group_portable(xp, wp, sizes, init, out);
}

/// For each tap `t` of one padded input plane `xc`, the sums over the positions `q` of
/// `gt[q] * xc[q + offset(t)]`, `gt` holding the output gradient transposed (`positions x 16`,
/// 16 output channels a row): `sums[t]`, one lane per output channel. The AVX-512 build holds
/// the 9 accumulators in registers; the others run [`correlate_portable`], the same
/// operations in the same order.
fn correlate(xc: &[f32], gt: &[f32], sizes: Sizes, sums: &mut [[f32; LANES]; 9]) {
    let (_, _, w2, positions) = sizes;
    assert!(
        xc.len() >= positions + 2 * w2 + 2 && gt.len() >= positions * LANES,
        "direct convolution buffers too short"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        // SAFETY: the level in force never exceeds what the CPU supports; the buffers hold
        // every element the kernel reads (checked above).
        return unsafe { x86::correlate_avx512(xc, gt, sizes, sums) };
    }
    correlate_portable(xc, gt, sizes, sums);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Sizes, CO, LANES};
    use std::arch::x86_64::*;

    /// [`super::correlate`] in AVX-512.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, and the buffers must pass `correlate`'s length check.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn correlate_avx512(
        xc: &[f32],
        gt: &[f32],
        (_, _, w2, positions): Sizes,
        sums: &mut [[f32; LANES]; 9],
    ) {
        let taps: [usize; 9] = [0, 1, 2, w2, w2 + 1, w2 + 2, 2 * w2, 2 * w2 + 1, 2 * w2 + 2];
        let (xptr, gptr) = (xc.as_ptr(), gt.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 9];
        for q in 0..positions {
            // SAFETY (every access): inside the buffers, by the caller's length check.
            let gv = unsafe { _mm512_loadu_ps(gptr.add(q * LANES)) };
            for (a, &off) in acc.iter_mut().zip(&taps) {
                let xv = _mm512_set1_ps(unsafe { *xptr.add(q + off) });
                *a = _mm512_fmadd_ps(gv, xv, *a);
            }
        }
        for (s, a) in sums.iter_mut().zip(&acc) {
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), *a) };
        }
    }

    /// [`super::group`] in AVX-512: 12 accumulator registers, one input vector load per channel
    /// and tap feeding 12 fused multiply-adds with broadcast weights.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, and the buffers must pass `group`'s length check.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn group_avx512(
        xp: &[f32],
        wp: &[f32],
        (cin, plane, w2, positions): Sizes,
        init: [f32; CO],
        out: &mut [f32],
    ) {
        let taps: [usize; 9] = [0, 1, 2, w2, w2 + 1, w2 + 2, 2 * w2, 2 * w2 + 1, 2 * w2 + 2];
        let (xptr, wptr, optr) = (xp.as_ptr(), wp.as_ptr(), out.as_mut_ptr());
        for q0 in (0..positions).step_by(LANES) {
            let mut acc = [_mm512_setzero_ps(); CO];
            for co in 0..CO {
                acc[co] = _mm512_set1_ps(init[co]);
            }
            for c in 0..cin {
                // SAFETY (every access): inside the buffers, by the caller's length check.
                let xc = unsafe { xptr.add(c * plane + q0) };
                let wc = unsafe { wptr.add(c * 9 * CO) };
                for (t, &off) in taps.iter().enumerate() {
                    let xv = unsafe { _mm512_loadu_ps(xc.add(off)) };
                    for (co, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(unsafe { *wc.add(t * CO + co) });
                        *a = _mm512_fmadd_ps(xv, wv, *a);
                    }
                }
            }
            for (co, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(optr.add(co * positions + q0), *a) };
            }
        }
    }
}

widest_simd!(
    /// [`correlate`] in portable code, compiled for AVX2 and the baseline.
    fn correlate_portable(xc: &[f32], gt: &[f32], sizes: Sizes, sums: &mut [[f32; LANES]; 9]) =
        correlate_body;
);

#[inline(always)]
fn correlate_body(xc: &[f32], gt: &[f32], sizes: Sizes, sums: &mut [[f32; LANES]; 9]) {
    let (_, _, w2, positions) = sizes;
    *sums = [[0.0; LANES]; 9];
    for q in 0..positions {
        let gv: &[f32; LANES] = gt[q * LANES..][..LANES]
            .try_into()
            .expect("transposed gradient");
        for (t, s) in sums.iter_mut().enumerate() {
            let xv = xc[q + (t / 3) * w2 + t % 3];
            for (s, &g) in s.iter_mut().zip(gv) {
                *s = g.mul_add(xv, *s);
            }
        }
    }
}

widest_simd!(
    /// [`group`] in portable code, compiled for AVX2 and the baseline.
    fn group_portable(xp: &[f32], wp: &[f32], sizes: Sizes, init: [f32; CO], out: &mut [f32]) =
        group_body;
);

#[inline(always)]
fn group_body(xp: &[f32], wp: &[f32], sizes: Sizes, init: [f32; CO], out: &mut [f32]) {
    let (cin, plane, w2, positions) = sizes;
    let taps: [usize; 9] = std::array::from_fn(|t| (t / 3) * w2 + t % 3);
    for q0 in (0..positions).step_by(LANES) {
        let mut acc = init.map(|v| [v; LANES]);
        for c in 0..cin {
            let xc = &xp[c * plane + q0..];
            let wc = &wp[c * 9 * CO..][..9 * CO];
            for (tap, &off) in taps.iter().enumerate() {
                let xv: &[f32; LANES] = xc[off..off + LANES].try_into().expect("padded input");
                let wt: &[f32; CO] = wc[tap * CO..][..CO].try_into().expect("packed kernel");
                for (a, &wv) in acc.iter_mut().zip(wt) {
                    for (a, &xv) in a.iter_mut().zip(xv) {
                        *a = xv.mul_add(wv, *a);
                    }
                }
            }
        }
        for (co, a) in acc.iter().enumerate() {
            out[co * positions + q0..][..LANES].copy_from_slice(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct convolution against a plain loop over the definition (f64 sums), for the
    /// shapes it serves: 1 to 24 output channels (one group, a partial group, two groups), odd
    /// sizes, widths below, at and above a vector.
    #[test]
    fn direct_matches_the_definition() {
        for (cin, cout, h, w) in [
            (3, 12, 5, 7),
            (48, 12, 8, 8),
            (12, 48, 6, 17),
            (5, 24, 4, 4),
            (2, 1, 1, 1),
        ] {
            let x: Vec<f32> = (0..cin * h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wt: Vec<f32> = (0..cout * cin * 9)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 40.0)
                .collect();
            let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.25 - 1.0).collect();
            let d = Direct { cin, cout, h, w };
            let mut ws = vec![0.0; d.workspace_len()];
            let mut packed = vec![0.0; d.packed_len()];
            d.pack(&wt, &mut packed);
            let mut out = vec![MaybeUninit::new(f32::NAN); cout * h * w];
            d.image(&x, &packed, Some(&bias), &mut out, &mut ws);
            // The input gradient's kernel: this kernel flipped, read as `cout x cin` of the
            // convolution from `cout` channels back to `cin`.
            let back = Direct {
                cin: cout,
                cout: cin,
                h,
                w,
            };
            let mut flipped = vec![0.0; back.packed_len()];
            back.pack_flipped(&wt, &mut flipped);
            for o in 0..cin {
                for c in 0..cout {
                    for tap in 0..9 {
                        let got = flipped[((o / CO * cout + c) * 9 + tap) * CO + o % CO];
                        assert_eq!(got, wt[(c * cin + o) * 9 + 8 - tap]);
                    }
                }
            }
            // The weight gradient from the output gradient `g`, added onto 0.5 everywhere.
            let g: Vec<f32> = (0..cout * h * w)
                .map(|i| ((i * 29 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let mut ws = vec![0.0; d.weight_grad_workspace_len()];
            let mut gwt = vec![0.5f32; cin * 9 * cout];
            d.weight_grad_image(&x, &g, &mut gwt, false, &mut ws);
            for co in 0..cout {
                for c in 0..cin {
                    for tap in 0..9 {
                        let (i, j) = (tap / 3, tap % 3);
                        let (mut s, mut mag) = (0.0f64, 0.0f64);
                        for y in 0..h {
                            for xx in 0..w {
                                let (yy, xi) = (y + i, xx + j);
                                if yy < 1 || xi < 1 || yy > h || xi > w {
                                    continue;
                                }
                                let p = g[(co * h + y) * w + xx] as f64
                                    * x[(c * h + yy - 1) * w + xi - 1] as f64;
                                s += p;
                                mag += p.abs();
                            }
                        }
                        let got = gwt[(c * 9 + tap) * cout + co] as f64 - 0.5;
                        // One rounding per position's FMA (at most `h * (w + 2) + 16`), each
                        // within 2^-24 of a partial sum's magnitude, plus the final addition
                        // onto 0.5 (2^-24 of 0.5 + |sum|).
                        let n = (h * (w + 2) + 16) as f64;
                        let tol = n * 2f64.powi(-24) * mag + 2f64.powi(-24) * (0.5 + s.abs()) * 2.0;
                        assert!(
                            (got - s).abs() <= tol,
                            "{cin}->{cout} {h}x{w} gw[{co},{c},{tap}]: {got} vs {s}"
                        );
                    }
                }
            }
            for co in 0..cout {
                for y in 0..h {
                    for xx in 0..w {
                        let mut s = bias[co] as f64;
                        let mut mag = s.abs();
                        for c in 0..cin {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (yy, xi) = (y + i, xx + j);
                                    if yy < 1 || xi < 1 || yy > h || xi > w {
                                        continue;
                                    }
                                    let p = x[(c * h + yy - 1) * w + xi - 1] as f64
                                        * wt[((co * cin + c) * 3 + i) * 3 + j] as f64;
                                    s += p;
                                    mag += p.abs();
                                }
                            }
                        }
                        // SAFETY: `image` wrote every element.
                        let got = unsafe { out[(co * h + y) * w + xx].assume_init() } as f64;
                        // f32 fused multiply-adds: one rounding each, at most `cin * 9 + 1` of
                        // them, each within 2^-24 of the running sum's magnitude (<= `mag`).
                        let tol = (cin * 9 + 1) as f64 * 2f64.powi(-24) * mag;
                        assert!(
                            (got - s).abs() <= tol,
                            "{cin}->{cout} {h}x{w} [{co},{y},{xx}]: {got} vs {s}"
                        );
                    }
                }
            }
        }
    }
}

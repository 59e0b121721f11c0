//! `f64` reductions with independent partial sums, shared by the normalisation kernels: every sum
//! is taken in `f64` (accurate for `f32` inputs) while the compiler can still vectorise it. Each
//! runs compiled for the widest SIMD level in force ([`crate::simd`]); the sums are the same,
//! lane by lane, at every level.

use crate::dtype::Elem;
use crate::simd::widest_simd;
#[cfg(target_arch = "x86_64")]
use crate::simd::{simd_level, SimdLevel};

/// Independent `f64` accumulators per reduction: enough for two AVX-512 or four AVX2 registers
/// per sum, so the additions of consecutive elements do not wait on each other.
const LANES: usize = 16;

#[inline(always)]
fn lane_sum_body<T: Elem>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v.f64())).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v.f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn lane_sum2_body<T: Elem>(xs: &[T], ys: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (cx, cy) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let tail: f64 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(&a, &b)| f(a.f64(), b.f64()))
        .sum();
    for (a8, b8) in cx.zip(cy) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a8).zip(b8) {
            *acc += f(a.f64(), b.f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn masked_sums_body<T: Elem>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) {
    let n = g.len().min(y.len()).min(x.len());
    let (mut sg, mut sgx) = ([0.0f64; LANES], [0.0f64; LANES]);
    let full = n - n % LANES;
    let zero = T::zero();
    // g' = g where y > 0, else +0 (a NaN or infinite g where the ReLU is off does not reach the
    // sums, as in PyTorch's threshold backward).
    let mask = |g: T, y: T| if y > zero { g } else { zero };
    for ((gc, yc), xc) in g[..full]
        .chunks_exact(LANES)
        .zip(y[..full].chunks_exact(LANES))
        .zip(x[..full].chunks_exact(LANES))
    {
        let mut gm = [zero; LANES];
        for l in 0..LANES.min(gc.len()).min(yc.len()) {
            gm[l] = mask(gc[l], yc[l]);
        }
        for (l, &xv) in xc.iter().enumerate().take(LANES) {
            let gv = gm[l].f64();
            sg[l] += gv;
            sgx[l] += gv * (xv.f64() - mean);
        }
    }
    let (tg, tgx) = masked_tail(&g[full..n], &y[full..n], &x[full..n], mean);
    (sg.iter().sum::<f64>() + tg, sgx.iter().sum::<f64>() + tgx)
}

/// The masked sums of the elements past the last full group of lanes, one by one.
#[inline(always)]
fn masked_tail<T: Elem>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) {
    let (mut tg, mut tgx) = (0.0, 0.0);
    for ((&g, &y), &x) in g.iter().zip(y).zip(x) {
        let gv = if y > T::zero() { g.f64() } else { 0.0 };
        tg += gv;
        tgx += gv * (x.f64() - mean);
    }
    (tg, tgx)
}

#[inline(always)]
fn grad_sums_body<T: Elem>(g: &[T], x: &[T], mean: f64) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (cg, cx) = (g.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail_g: f64 = cg.remainder().iter().map(|&v| v.f64()).sum();
    let tail_gx: f64 = cg
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, &b)| a.f64() * (b.f64() - mean))
        .sum();
    for (g8, x8) in cg.zip(cx) {
        for (l, (&gv, &xv)) in g8.iter().zip(x8).enumerate() {
            let gv = gv.f64();
            sg[l] += gv;
            sgx[l] += gv * (xv.f64() - mean);
        }
    }
    (
        sg.iter().sum::<f64>() + tail_g,
        sgx.iter().sum::<f64>() + tail_gx,
    )
}

widest_simd!(
    /// `sum f(v)` over `xs`.
    pub(crate) fn lane_sum<T>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 = lane_sum_body;
);
widest_simd!(
    /// `sum f(a, b)` over paired elements.
    pub(crate) fn lane_sum2<T>(xs: &[T], ys: &[T], f: impl Fn(f64, f64) -> f64) -> f64 = lane_sum2_body;
);
widest_simd!(
    /// `(sum g, sum g * (x - mean))` in one pass, each sum exactly as [`lane_sum`] and
    /// [`lane_sum2`] take it (same lanes, same order: the same bits).
    pub(crate) fn grad_sums<T>(g: &[T], x: &[T], mean: f64) -> (f64, f64) = grad_sums_body;
);
widest_simd!(
    /// `(sum g', sum g' * (x - mean))` where `g' = g` at positions with `y > 0` and 0 elsewhere:
    /// both sums of batch norm + ReLU backward in one pass, compiled from the portable code.
    fn masked_sums_portable<T>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) = masked_sums_body;
);

/// `(sum g', sum g' * (x - mean))` (see [`masked_sums_portable`]): for `f32` on CPUs with AVX2
/// or AVX-512, in hand-written vector code (the compiler does not vectorise the portable loop: it
/// turns the mask into branches); else the portable code. Every path takes the same sums.
pub(crate) fn masked_sums<T: Elem>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(g), Some(y), Some(x)) = (as_f32(g), as_f32(y), as_f32(x)) {
        match simd_level() {
            // SAFETY: the level in force never exceeds what the CPU supports.
            SimdLevel::Avx512 => return unsafe { x86::masked_sums_f32_avx512(g, y, x, mean) },
            // SAFETY: as above.
            SimdLevel::Avx2 => return unsafe { x86::masked_sums_f32_avx2(g, y, x, mean) },
            SimdLevel::Baseline => {}
        }
    }
    masked_sums_portable(g, y, x, mean)
}

/// The elements of an `f32` slice seen as `f32`, when `T` is `f32`.
#[cfg(target_arch = "x86_64")]
fn as_f32<T: Elem>(xs: &[T]) -> Option<&[f32]> {
    super::map::as_dtype(xs)
}

/// The masked sums in x86-64 vector registers. Each accumulates exactly as the portable code's
/// [`LANES`] lanes do (lane `l` takes elements `l, l + LANES, ...` in order, with a separate
/// multiply and add, no fused multiply-add), so the sums are the same bits.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{masked_tail, LANES};
    use std::arch::x86_64::*;

    /// The lanes' sums plus the portable code's tail (elements past the last full group).
    fn finish(
        (g, y, x, mean): (&[f32], &[f32], &[f32], f64),
        full: usize,
        lanes_g: &[f64; LANES],
        lanes_gx: &[f64; LANES],
    ) -> (f64, f64) {
        let n = g.len().min(y.len()).min(x.len());
        let (tg, tgx) = masked_tail(&g[full..n], &y[full..n], &x[full..n], mean);
        (
            lanes_g.iter().sum::<f64>() + tg,
            lanes_gx.iter().sum::<f64>() + tgx,
        )
    }

    /// 16 lanes as two 8-lane `f64` registers: 16 `f32` compared and masked at once.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) fn masked_sums_f32_avx512(g: &[f32], y: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
        const { assert!(LANES == 16) };
        let n = g.len().min(y.len()).min(x.len());
        let full = n - n % LANES;
        let (mut lanes_g, mut lanes_gx) = ([0.0f64; LANES], [0.0f64; LANES]);
        // SAFETY: every load reads 16 elements at `i < full <= len` of each slice (unaligned
        // loads); AVX-512 is enabled for this function and checked at run time by its caller.
        unsafe {
            let m = _mm512_set1_pd(mean);
            let zero = _mm512_setzero_ps();
            let (mut sg_lo, mut sg_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            let (mut sx_lo, mut sx_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            let mut i = 0;
            while i < full {
                let gv = _mm512_loadu_ps(g.as_ptr().add(i));
                let yv = _mm512_loadu_ps(y.as_ptr().add(i));
                let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                let on = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(yv, zero);
                let gm = _mm512_maskz_mov_ps(on, gv);
                let g_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(gm));
                let g_hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                    _mm512_castps_pd(gm),
                )));
                let x_lo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(xv)), m);
                let x_hi = _mm512_sub_pd(
                    _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(xv),
                    ))),
                    m,
                );
                sg_lo = _mm512_add_pd(sg_lo, g_lo);
                sg_hi = _mm512_add_pd(sg_hi, g_hi);
                sx_lo = _mm512_add_pd(sx_lo, _mm512_mul_pd(g_lo, x_lo));
                sx_hi = _mm512_add_pd(sx_hi, _mm512_mul_pd(g_hi, x_hi));
                i += LANES;
            }
            _mm512_storeu_pd(lanes_g.as_mut_ptr(), sg_lo);
            _mm512_storeu_pd(lanes_g.as_mut_ptr().add(8), sg_hi);
            _mm512_storeu_pd(lanes_gx.as_mut_ptr(), sx_lo);
            _mm512_storeu_pd(lanes_gx.as_mut_ptr().add(8), sx_hi);
        }
        finish((g, y, x, mean), full, &lanes_g, &lanes_gx)
    }

    /// 16 lanes as four 4-lane `f64` registers: 8 `f32` compared and masked at once, twice.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn masked_sums_f32_avx2(g: &[f32], y: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
        const { assert!(LANES == 16) };
        let n = g.len().min(y.len()).min(x.len());
        let full = n - n % LANES;
        let (mut lanes_g, mut lanes_gx) = ([0.0f64; LANES], [0.0f64; LANES]);
        // SAFETY: every load reads 8 elements at `i + 8 <= full <= len` of each slice (unaligned
        // loads); AVX2 is enabled for this function and checked at run time by its caller.
        unsafe {
            let (zero, m) = (_mm256_setzero_ps(), _mm256_set1_pd(mean));
            let mut sg = [_mm256_setzero_pd(); 4];
            let mut sx = [_mm256_setzero_pd(); 4];
            let mut i = 0;
            while i < full {
                for half in 0..2 {
                    let at = i + 8 * half;
                    let gv = _mm256_loadu_ps(g.as_ptr().add(at));
                    let yv = _mm256_loadu_ps(y.as_ptr().add(at));
                    let xv = _mm256_loadu_ps(x.as_ptr().add(at));
                    let gm = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero));
                    let gs = [
                        _mm256_cvtps_pd(_mm256_castps256_ps128(gm)),
                        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(gm)),
                    ];
                    let xs = [
                        _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), m),
                        _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xv)), m),
                    ];
                    for q in 0..2 {
                        let r = 2 * half + q;
                        sg[r] = _mm256_add_pd(sg[r], gs[q]);
                        sx[r] = _mm256_add_pd(sx[r], _mm256_mul_pd(gs[q], xs[q]));
                    }
                }
                i += LANES;
            }
            for r in 0..4 {
                _mm256_storeu_pd(lanes_g.as_mut_ptr().add(4 * r), sg[r]);
                _mm256_storeu_pd(lanes_gx.as_mut_ptr().add(4 * r), sx[r]);
            }
        }
        finish((g, y, x, mean), full, &lanes_g, &lanes_gx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{for_each_supported_level, SimdLevel};

    /// Three inputs of `n` values whose every sum's rounding depends on its order (seeded).
    fn inputs(seed: u64, n: u64) -> [Vec<f32>; 3] {
        let v = |k: u64| -> Vec<f32> {
            (0..n)
                .map(|i| (crate::rng::normal(seed * 3 + k, 0, i) * 10.0) as f32)
                .collect()
        };
        [v(0), v(1), v(2)]
    }

    /// `xs` widened to `f64`.
    fn wide(xs: &[f32]) -> Vec<f64> {
        xs.iter().map(|&v| v as f64).collect()
    }

    /// The bits of every reduction of `(g, y, x)`, dispatched (`portable == false`) or from the
    /// portable bodies. A few sums can agree by chance with a wrongly ordered or fused one, so
    /// many inputs are compared.
    fn sums(g: &[f32], y: &[f32], x: &[f32], mean: f64, portable: bool) -> Vec<u64> {
        let sq = |a: f64| a * a - 0.5;
        let prod = |a: f64, b: f64| a * (b - mean);
        let (g64, y64, x64) = (wide(g), wide(y), wide(x));
        let v = if portable {
            let (a, b) = masked_sums_body(g, y, x, mean);
            let (c, d) = masked_sums_body(&g64, &y64, &x64, mean);
            let (e, f) = (lane_sum_body(g, |v| v), lane_sum2_body(g, x, prod));
            [lane_sum_body(x, sq), e, f, a, b, a, b, c, d]
        } else {
            let (a, b) = masked_sums(g, y, x, mean);
            let (c, d) = masked_sums(&g64, &y64, &x64, mean);
            let (e, f) = grad_sums(g, x, mean);
            let (p, q) = masked_sums_portable(g, y, x, mean);
            [lane_sum(x, sq), e, f, a, b, p, q, c, d]
        };
        v.iter().map(|s| s.to_bits()).collect()
    }

    /// Sums over 8 seeds, 7 lengths around the lane count and 3 means.
    fn all_sums(portable: bool) -> Vec<u64> {
        let mut bits = Vec::new();
        for seed in 0..8 {
            let [g, y, x] = inputs(seed, 1003);
            for len in [0, 7, 15, 16, 17, 64, 1003] {
                for mean in [0.3, -1.7, 5.1] {
                    let (g, y, x) = (&g[..len], &y[..len], &x[..len]);
                    bits.extend(sums(g, y, x, mean, portable));
                }
            }
        }
        bits
    }

    /// Every level this CPU has gives the portable code's sums, bit for bit (and the one-pass
    /// gradient sums equal the two separate sums).
    #[test]
    fn every_simd_level_gives_the_portable_sums_exactly() {
        let want = all_sums(true);
        let runs = for_each_supported_level(|_| all_sums(false));
        assert_eq!(runs[0].0, SimdLevel::Baseline);
        for (level, bits) in &runs {
            let differ = bits.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{level}: {differ} of {} sums differ", want.len());
        }
        println!(
            "levels compared: {:?}",
            runs.iter().map(|r| r.0).collect::<Vec<_>>()
        );
    }

    /// A NaN or infinite gradient where the ReLU is off does not reach the sums, at any level.
    #[test]
    fn masked_gradients_do_not_reach_the_sums() {
        let [mut g, mut y, x] = inputs(1, 1003);
        for (i, bad) in [(3, f32::NAN), (11, f32::INFINITY), (1000, f32::NAN)] {
            g[i] = bad;
            y[i] = if i == 11 { 0.0 } else { -1.0 };
        }
        for (level, (a, b)) in for_each_supported_level(|_| masked_sums(&g, &y, &x, 0.3)) {
            assert!(a.is_finite() && b.is_finite(), "{level}");
        }
    }
}

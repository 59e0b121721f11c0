//! `f64` reductions with independent partial sums, shared by the normalisation kernels: every sum
//! is taken in `f64` (accurate for `f32` inputs) while the compiler can still vectorise it. On
//! x86-64 CPUs with AVX2 the same code runs compiled for AVX2 (chosen at run time; the sums are
//! the same, lane by lane, on either path).

use crate::dtype::Elem;

/// Independent `f64` accumulators per reduction.
const LANES: usize = 8;

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
    let (mut tg, mut tgx) = (0.0, 0.0);
    for i in full..n {
        let gv = mask(g[i], y[i]).f64();
        tg += gv;
        tgx += gv * (x[i].f64() - mean);
    }
    (sg.iter().sum::<f64>() + tg, sgx.iter().sum::<f64>() + tgx)
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

/// Whether this CPU runs the AVX2 builds of the reductions (checked once).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
}

/// Defines `$name`, which runs `$body` compiled for AVX2 where the CPU has it, else as is.
macro_rules! dispatch_avx2 {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $($f:ident: $fty:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2<T: Elem>($($arg: $ty),* $(, $f: $fty)?) -> $ret {
            $body($($arg),* $(, $f)?)
        }

        $(#[$doc])*
        pub(crate) fn $name<T: Elem>($($arg: $ty),* $(, $f: $fty)?) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU supports AVX2 (checked at run time above).
                return unsafe { $avx2($($arg),* $(, $f)?) };
            }
            $body($($arg),* $(, $f)?)
        }
    };
}

dispatch_avx2!(
    /// `sum f(v)` over `xs`.
    lane_sum, lane_sum_avx2, lane_sum_body, (xs: &[T]) -> f64, f: impl Fn(f64) -> f64
);
dispatch_avx2!(
    /// `sum f(a, b)` over paired elements.
    lane_sum2, lane_sum2_avx2, lane_sum2_body, (xs: &[T], ys: &[T]) -> f64, f: impl Fn(f64, f64) -> f64
);
dispatch_avx2!(
    /// `(sum g, sum g * (x - mean))` in one pass, each sum exactly as [`lane_sum`] and
    /// [`lane_sum2`] take it (same lanes, same order: the same bits).
    grad_sums, grad_sums_avx2, grad_sums_body, (g: &[T], x: &[T], mean: f64) -> (f64, f64),
);
/// [`masked_sums_body`] for `f32` in AVX2 registers: 8 lanes of `f32` compared and masked at
/// once, widened to two 4-lane `f64` halves that accumulate exactly as the portable code's lanes
/// 0-3 and 4-7 do (separate multiply and add, no fused multiply-add), so the sums are the same
/// bits. The compiler does not vectorise the portable loop (it turns the mask into branches).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn masked_sums_f32_avx2(g: &[f32], y: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let n = g.len().min(y.len()).min(x.len());
    let full = n - n % LANES;
    let mut lanes_g = [0.0f64; LANES];
    let mut lanes_gx = [0.0f64; LANES];
    // SAFETY: every load reads 8 elements at `i < full <= len` of each slice; unaligned loads;
    // AVX2 is enabled for this function and checked at run time by its caller.
    unsafe {
        let (zero, m) = (_mm256_setzero_ps(), _mm256_set1_pd(mean));
        let (mut sg_lo, mut sg_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut sx_lo, mut sx_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < full {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let gm = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero));
            let g_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(gm));
            let g_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(gm));
            let x_lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), m);
            let x_hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xv)), m);
            sg_lo = _mm256_add_pd(sg_lo, g_lo);
            sg_hi = _mm256_add_pd(sg_hi, g_hi);
            sx_lo = _mm256_add_pd(sx_lo, _mm256_mul_pd(g_lo, x_lo));
            sx_hi = _mm256_add_pd(sx_hi, _mm256_mul_pd(g_hi, x_hi));
            i += LANES;
        }
        _mm256_storeu_pd(lanes_g.as_mut_ptr(), sg_lo);
        _mm256_storeu_pd(lanes_g.as_mut_ptr().add(4), sg_hi);
        _mm256_storeu_pd(lanes_gx.as_mut_ptr(), sx_lo);
        _mm256_storeu_pd(lanes_gx.as_mut_ptr().add(4), sx_hi);
    }
    let (mut tg, mut tgx) = (0.0, 0.0);
    for i in full..n {
        let gv = if y[i] > 0.0 { g[i] as f64 } else { 0.0 };
        tg += gv;
        tgx += gv * (x[i] as f64 - mean);
    }
    (
        lanes_g.iter().sum::<f64>() + tg,
        lanes_gx.iter().sum::<f64>() + tgx,
    )
}

/// The elements of an `f32` slice seen as `f32`, when `T` is `f32`.
fn as_f32<T: Elem>(xs: &[T]) -> Option<&[f32]> {
    (T::DTYPE == crate::dtype::DType::F32).then(|| {
        // SAFETY: `Elem` is sealed and `T::DTYPE == F32` only for `f32`, so `xs` is a `[f32]`.
        unsafe { std::slice::from_raw_parts(xs.as_ptr() as *const f32, xs.len()) }
    })
}

/// `(sum g', sum g' * (x - mean))`: [`masked_sums_f32_avx2`] for `f32` on CPUs with AVX2, else
/// [`masked_sums_portable`].
pub(crate) fn masked_sums<T: Elem>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        if let (Some(g), Some(y), Some(x)) = (as_f32(g), as_f32(y), as_f32(x)) {
            // SAFETY: the CPU supports AVX2 (checked at run time above).
            return unsafe { masked_sums_f32_avx2(g, y, x, mean) };
        }
    }
    masked_sums_portable(g, y, x, mean)
}

dispatch_avx2!(
    /// `(sum g', sum g' * (x - mean))` where `g' = g` at positions with `y > 0` and 0 elsewhere:
    /// both sums of batch norm + ReLU backward in one pass. The mask is applied as a multiplication
    /// (no branch) in the elements' own precision; `x - mean` is taken in `f64` (in `f32` it would
    /// lose the digits that distinguish `x` from a large mean).
    masked_sums_portable, masked_sums_avx2, masked_sums_body, (g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64),
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched reductions (AVX2 where the CPU has it) equal the portable code bit for bit.
    #[test]
    fn dispatched_sums_equal_the_portable_ones_exactly() {
        let n = 1003;
        let v = |k: u64| -> Vec<f32> {
            (0..n as u64)
                .map(|i| (crate::rng::normal(k, 0, i) * 10.0) as f32)
                .collect()
        };
        let (g, y, x) = (v(1), v(2), v(3));
        let sq = |a: f64| a * a - 0.5;
        assert_eq!(lane_sum(&x, sq).to_bits(), lane_sum_body(&x, sq).to_bits());
        let prod = |a: f64, b: f64| a * (b - 0.25);
        assert_eq!(
            lane_sum2(&g, &x, prod).to_bits(),
            lane_sum2_body(&g, &x, prod).to_bits()
        );
        for len in [0, 7, 8, 9, 64, 1003] {
            let (gs, xs) = (&g[..len], &x[..len]);
            let (a, b) = grad_sums(gs, xs, 0.3);
            let want = (lane_sum(gs, |v| v), lane_sum2(gs, xs, |g, x| g * (x - 0.3)));
            assert_eq!(
                (a.to_bits(), b.to_bits()),
                (want.0.to_bits(), want.1.to_bits())
            );
            let (a, b) = masked_sums(&g[..len], &y[..len], &x[..len], 0.3);
            let (c, d) = masked_sums_body(&g[..len], &y[..len], &x[..len], 0.3);
            assert_eq!(
                (a.to_bits(), b.to_bits()),
                (c.to_bits(), d.to_bits()),
                "{len}"
            );
            let (a, b) = masked_sums_portable(&g[..len], &y[..len], &x[..len], 0.3);
            assert_eq!(
                (a.to_bits(), b.to_bits()),
                (c.to_bits(), d.to_bits()),
                "{len}"
            );
        }
        // A NaN or infinite gradient where the ReLU is off does not reach the sums.
        let (mut g2, mut y2) = (g.clone(), y.clone());
        g2[3] = f32::NAN;
        y2[3] = -1.0;
        g2[11] = f32::INFINITY;
        y2[11] = 0.0;
        let (a, b) = masked_sums(&g2, &y2, &x, 0.3);
        assert!(a.is_finite() && b.is_finite());
    }
}

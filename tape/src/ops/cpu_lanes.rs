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
    let (one, zero) = (T::one(), T::zero());
    let mask = |y: T| if y > zero { one } else { zero };
    for ((gc, yc), xc) in g[..full]
        .chunks_exact(LANES)
        .zip(y[..full].chunks_exact(LANES))
        .zip(x[..full].chunks_exact(LANES))
    {
        let mut gm = [zero; LANES];
        for l in 0..LANES.min(gc.len()).min(yc.len()) {
            gm[l] = gc[l] * mask(yc[l]);
        }
        for (l, &xv) in xc.iter().enumerate().take(LANES) {
            let gv = gm[l].f64();
            sg[l] += gv;
            sgx[l] += gv * (xv.f64() - mean);
        }
    }
    let (mut tg, mut tgx) = (0.0, 0.0);
    for i in full..n {
        let gv = (g[i] * mask(y[i])).f64();
        tg += gv;
        tgx += gv * (x[i].f64() - mean);
    }
    (sg.iter().sum::<f64>() + tg, sgx.iter().sum::<f64>() + tgx)
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
    /// `(sum g', sum g' * (x - mean))` where `g' = g` at positions with `y > 0` and 0 elsewhere:
    /// both sums of batch norm + ReLU backward in one pass. The mask is applied as a multiplication
    /// (no branch) in the elements' own precision; `x - mean` is taken in `f64` (in `f32` it would
    /// lose the digits that distinguish `x` from a large mean).
    masked_sums, masked_sums_avx2, masked_sums_body, (g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64),
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
        let (a, b) = masked_sums(&g, &y, &x, 0.3);
        let (c, d) = masked_sums_body(&g, &y, &x, 0.3);
        assert_eq!((a.to_bits(), b.to_bits()), (c.to_bits(), d.to_bits()));
    }
}

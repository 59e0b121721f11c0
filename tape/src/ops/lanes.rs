//! `f64` reductions with independent partial sums, shared by the normalisation kernels: every sum
//! is taken in `f64` (accurate for `f32` inputs) while the compiler can still vectorise it.

use crate::dtype::Elem;

/// Independent `f64` accumulators per reduction.
const LANES: usize = 8;

/// `sum f(v)` over `xs`.
pub(crate) fn lane_sum<T: Elem>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
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

/// `sum f(a, b)` over paired elements.
pub(crate) fn lane_sum2<T: Elem>(xs: &[T], ys: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
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

/// `sum f(a, b, c)` over element triples.
pub(crate) fn lane_sum3<T: Elem>(
    xs: &[T],
    ys: &[T],
    zs: &[T],
    f: impl Fn(f64, f64, f64) -> f64,
) -> f64 {
    let mut acc = [0.0f64; LANES];
    let n = xs.len().min(ys.len()).min(zs.len());
    let full = n - n % LANES;
    for i in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(xs[i + l].f64(), ys[i + l].f64(), zs[i + l].f64());
        }
    }
    let tail: f64 = (full..n)
        .map(|i| f(xs[i].f64(), ys[i].f64(), zs[i].f64()))
        .sum();
    acc.iter().sum::<f64>() + tail
}

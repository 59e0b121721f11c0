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

/// `(sum g', sum g' * (x - mean))` where `g' = g` at positions with `y > 0` and 0 elsewhere:
/// both sums of batch norm + ReLU backward in one pass. The mask is applied as a multiplication
/// (no branch) in the elements' own precision; `x - mean` is taken in `f64` (in `f32` it would
/// lose the digits that distinguish `x` from a large mean).
pub(crate) fn masked_sums<T: Elem>(g: &[T], y: &[T], x: &[T], mean: f64) -> (f64, f64) {
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

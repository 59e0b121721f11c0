//! CPU kernels of `linear`, and the safe GEMM wrapper over the `gemm` crate that `conv2d` shares.

use crate::dtype::Elem;
use gemm::Parallelism;

/// Below this many multiply-adds a GEMM stays on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// A row-major matrix operand of `rows x cols`, stored as is or as its transpose.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'s, T> {
    data: &'s [T],
    transposed: bool,
}

impl<'s, T> Mat<'s, T> {
    /// `data` holds the matrix itself, row-major.
    pub(crate) fn n(data: &'s [T]) -> Self {
        Mat {
            data,
            transposed: false,
        }
    }

    /// `data` holds the matrix's transpose, row-major.
    pub(crate) fn t(data: &'s [T]) -> Self {
        Mat {
            data,
            transposed: true,
        }
    }

    /// (row stride, column stride) of a `rows x cols` operand.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        if self.transposed {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        }
    }
}

/// Whether a GEMM of `m x n x k` is worth splitting over threads (callers already inside a
/// parallel loop pass `false` to `gemm` instead).
pub(crate) fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_MACS
}

/// `dst (m x n, row-major) = [dst +] a (m x k) * b (k x n)`; `accumulate` keeps `dst`'s old value.
///
/// Panics if a slice is shorter than its matrix: callers pass buffers sized from checked shapes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Elem>(
    dst: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(dst.len() >= m * n && a.data.len() >= m * k && b.data.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    let (a_rs, a_cs) = a.strides(m, k);
    let (b_rs, b_cs) = b.strides(k, n);
    let par = if parallel && worth_parallel(m, n, k) {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the lengths were checked above against the strides computed for these dimensions,
    // so every element the kernel reads or writes lies inside its slice; `dst` is borrowed
    // mutably, so it aliases neither operand. `T` is f32 or f64 (`Elem` is sealed), which the
    // `gemm` crate supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// `out (n x o) = x (n x i) * w^T + bias`, `w` being `o x i`.
pub(crate) fn forward<T: Elem>(
    out: &mut [T],
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    (n, i, o): (usize, usize, usize),
) {
    let accumulate = match bias {
        Some(b) => {
            for row in out.chunks_exact_mut(o.max(1)).take(n) {
                row.copy_from_slice(&b[..o]);
            }
            true
        }
        None => false,
    };
    gemm(out, Mat::n(x), Mat::t(w), (n, o, i), accumulate, true);
}

/// `gx (n x i) = g (n x o) * w`.
pub(crate) fn grad_input<T: Elem>(
    gx: &mut [T],
    g: &[T],
    w: &[T],
    (n, i, o): (usize, usize, usize),
) {
    gemm(gx, Mat::n(g), Mat::n(w), (n, i, o), false, true);
}

/// `gw (o x i) = g^T (o x n) * x (n x i)`.
pub(crate) fn grad_weight<T: Elem>(
    gw: &mut [T],
    g: &[T],
    x: &[T],
    (n, i, o): (usize, usize, usize),
) {
    gemm(gw, Mat::t(g), Mat::n(x), (o, i, n), false, true);
}

/// `gb[j] = sum over rows of g[., j]`.
pub(crate) fn grad_bias<T: Elem>(gb: &mut [T], g: &[T], o: usize) {
    if o == 0 {
        return;
    }
    for row in g.chunks_exact(o) {
        gb.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
    }
}

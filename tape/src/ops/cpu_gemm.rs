//! The safe GEMM wrapper over the `gemm` crate that the CPU kernels of `linear` and `conv2d` share.

use crate::dtype::Elem;
use gemm::Parallelism;

/// Below this many multiply-adds a GEMM stays on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// A row-major matrix operand of `rows x cols`, stored as is or as its transpose, with a row
/// stride (`ld`) of at least the stored width.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'s, T> {
    data: &'s [T],
    transposed: bool,
    ld: Option<usize>,
}

impl<'s, T> Mat<'s, T> {
    /// `data` holds the matrix itself, row-major.
    pub(crate) fn n(data: &'s [T]) -> Self {
        Mat {
            data,
            transposed: false,
            ld: None,
        }
    }

    /// `data` holds the matrix's transpose, row-major.
    pub(crate) fn t(data: &'s [T]) -> Self {
        Mat {
            data,
            transposed: true,
            ld: None,
        }
    }

    /// The stored rows are `ld` elements apart (a block of a wider matrix).
    pub(crate) fn ld(self, ld: usize) -> Self {
        Mat {
            ld: Some(ld),
            ..self
        }
    }

    /// (stored rows, stored width, row stride) of a `rows x cols` operand.
    fn stored(&self, rows: usize, cols: usize) -> (usize, usize, usize) {
        let (r, w) = if self.transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        (r, w, self.ld.unwrap_or(w))
    }

    /// (row stride, column stride) of a `rows x cols` operand.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        let (_, _, ld) = self.stored(rows, cols);
        if self.transposed {
            (1, ld as isize)
        } else {
            (ld as isize, 1)
        }
    }

    /// Whether `data` holds a whole `rows x cols` operand.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        let (r, w, ld) = self.stored(rows, cols);
        ld >= w && (r == 0 || w == 0 || self.data.len() >= (r - 1) * ld + w)
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
pub(crate) fn gemm<T: Elem>(
    dst: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    gemm_ld(dst, n, a, b, (m, n, k), accumulate, parallel);
}

/// [`gemm`] into a block of a wider matrix whose rows are `dst_ld` elements apart.
pub(crate) fn gemm_ld<T: Elem>(
    dst: &mut [T],
    dst_ld: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let dst_fits = Mat::n(&*dst).ld(dst_ld).fits(m, n);
    assert!(
        dst_fits && a.fits(m, k) && b.fits(k, n),
        "gemm operands too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_ld)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
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
    // SAFETY: `fits` checked every slice against the strides computed for these dimensions, so
    // every element the kernel reads or writes lies inside its slice; `dst` is borrowed mutably,
    // so it aliases neither operand. `T` is f32 or f64 (`Elem` is sealed), which the `gemm` crate
    // supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_ld as isize,
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

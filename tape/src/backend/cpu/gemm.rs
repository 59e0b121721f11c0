//! The safe GEMM wrapper over the `gemm` crate that the CPU kernels of `linear` and `conv2d` share.

use super::map::as_dtype;
use crate::dtype::Elem;
use gemm::Parallelism;
use std::mem::MaybeUninit;

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

    /// The same stored data read as the operand's transpose.
    pub(crate) fn transpose(self) -> Self {
        Mat {
            transposed: !self.transposed,
            ..self
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

/// How a GEMM runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    /// Split over the thread pool when big enough (callers already inside a parallel loop say
    /// no).
    pub(crate) parallel: bool,
    /// Both operands hold bf16 values (`f32` copies of bf16 tensors), so that an `f32` product
    /// may run on the CPU's bf16 matrix units (`amx`) with `f32` sums.
    pub(crate) bf16: bool,
}

impl Run {
    /// A GEMM of any `f32`/`f64` values, split over threads when `parallel`.
    pub(crate) fn new(parallel: bool) -> Self {
        Run {
            parallel,
            bf16: false,
        }
    }
}

/// Whether a GEMM of `m x n x k` is worth splitting over threads (callers already inside a
/// parallel loop pass a [`Run`] that is not `parallel` instead).
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
    run: Run,
) {
    gemm_ld(dst, n, a, b, (m, n, k), accumulate, run);
}

/// [`gemm`] into a block of a wider matrix whose rows are `dst_ld` elements apart.
pub(crate) fn gemm_ld<T: Elem>(
    dst: &mut [T],
    dst_ld: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    dims: (usize, usize, usize),
    accumulate: bool,
    run: Run,
) {
    let dst_fits = Mat::n(&*dst).ld(dst_ld).fits(dims.0, dims.1);
    // SAFETY: `dst` is initialised, fits the `m x n` block (checked) and is borrowed mutably.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            dst_fits,
            dst_ld,
            a,
            b,
            dims,
            accumulate,
            run,
        )
    }
}

/// [`gemm_ld`] overwriting a block of not yet initialised elements (no zero fill first): every
/// element of the `m x n` block is written, the others are left as they are.
pub(crate) fn gemm_ld_uninit<T: Elem>(
    dst: &mut [MaybeUninit<T>],
    dst_ld: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    dims: (usize, usize, usize),
    run: Run,
) {
    let (m, n) = (dims.0, dims.1);
    let dst_fits = dst_ld >= n && (m == 0 || n == 0 || dst.len() >= (m - 1) * dst_ld + n);
    // SAFETY: `dst` fits the block (checked) and is borrowed mutably; with `accumulate` false
    // the kernel writes the block without reading it, so its elements need no initial value.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr().cast::<T>(),
            dst_fits,
            dst_ld,
            a,
            b,
            dims,
            false,
            run,
        )
    }
}

/// Where a GEMM's product goes: added into initialised elements, or written into slots that
/// hold nothing yet.
pub(crate) enum Dst<'s, T> {
    /// `dst += a * b`.
    Add(&'s mut [T]),
    /// `dst = a * b`, without reading `dst`.
    Write(&'s mut [MaybeUninit<T>]),
}

impl<T: Elem> Dst<'_, T> {
    /// The product into the block starting `at` elements in, rows `ld` apart.
    pub(crate) fn gemm_at(
        &mut self,
        at: usize,
        ld: usize,
        a: Mat<'_, T>,
        b: Mat<'_, T>,
        dims: (usize, usize, usize),
        run: Run,
    ) {
        match self {
            Dst::Add(d) => gemm_ld(&mut d[at..], ld, a, b, dims, true, run),
            Dst::Write(d) => gemm_ld_uninit(&mut d[at..], ld, a, b, dims, run),
        }
    }
}

/// [`gemm`] into `m x n` unsliced elements at `dst`, rows `dst_ld` apart.
///
/// # Safety
/// `dst_fits` must say truthfully that `dst` points to a writable allocation holding the whole
/// block, which no operand aliases; with `accumulate`, the block must be initialised.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Elem>(
    dst: *mut T,
    dst_fits: bool,
    dst_ld: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    run: Run,
) {
    assert!(
        dst_fits && a.fits(m, k) && b.fits(k, n),
        "gemm operands too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row `r` of the block lies inside `dst` (the caller's contract).
                unsafe { std::ptr::write_bytes(dst.add(r * dst_ld), 0, n) };
            }
        }
        return;
    }
    let (a_rs, a_cs) = a.strides(m, k);
    let (b_rs, b_cs) = b.strides(k, n);
    let parallel = run.parallel && worth_parallel(m, n, k);
    #[cfg(target_arch = "x86_64")]
    if run.bf16 && crate::simd::bf16_matrix_units() {
        if let (Some(ad), Some(bd)) = (as_dtype::<T, f32>(a.data), as_dtype::<T, f32>(b.data)) {
            let strided = |data, (rs, cs): (isize, isize)| {
                super::amx::Strided::new(data, rs as usize, cs as usize)
            };
            let (a, b) = (strided(ad, (a_rs, a_cs)), strided(bd, (b_rs, b_cs)));
            // SAFETY: the tiles are enabled (so available); the operands were checked to fit
            // their strides above and the caller vouches for `dst`, an f32 block as `T` is f32.
            let dst = dst.cast::<f32>();
            return unsafe { super::amx::gemm(dst, dst_ld, a, b, (m, n, k), accumulate, parallel) };
        }
    }
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: `fits` checked both operands against the strides computed for these dimensions and
    // the caller vouches for `dst`, so every element the kernel reads or writes lies inside its
    // allocation; `dst` aliases neither operand. `T` is f32 or f64 (`Elem` is sealed), which the
    // `gemm` crate supports; an all-zero bit pattern is 0.0 in both.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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

//! CPU kernel of the finiteness check: one parallel pass (rayon) over chunks of every tensor.

use super::FiniteKernels;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Elements per work item of the parallel pass.
const CHUNK: usize = 1 << 14;

fn any_non_finite<T: Elem>(xs: &[&Tensor]) -> Result<bool> {
    let mut chunks: Vec<&[T]> = Vec::new();
    for x in xs {
        chunks.extend(x.as_slice::<T>()?.chunks(CHUNK));
    }
    Ok(chunks.into_par_iter().any(|c| !all_finite(c)))
}

/// Lanes of [`all_finite`]'s sums.
const LANES: usize = 16;

/// Whether every element of `c` is finite: `v * 0` is 0 for a finite `v` and NaN for an infinity
/// or a NaN, so sums of it (in lanes, without an early exit, so that they vectorise) stay 0
/// exactly when no element is either.
fn all_finite<T: Elem>(c: &[T]) -> bool {
    let mut lanes = [T::zero(); LANES];
    let whole = c.chunks_exact(LANES);
    let tail = whole.remainder();
    for block in whole {
        for (s, &v) in lanes.iter_mut().zip(block) {
            *s += v * T::zero();
        }
    }
    tail.iter().chain(&lanes).all(|v| v.is_finite())
}

impl FiniteKernels for Cpu {
    fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = xs.first() else {
            return Err(crate::error::Error::invalid(
                super::OP,
                "no tensor to check",
            ));
        };
        let found = dispatch_float!(first.dtype(), T => any_non_finite::<T>(xs)?);
        Tensor::full(
            &[1],
            f64::from(u8::from(found)),
            first.dtype(),
            first.device(),
        )
    }
}

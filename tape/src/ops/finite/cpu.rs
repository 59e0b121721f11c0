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
    Ok(chunks
        .into_par_iter()
        .any(|c| c.iter().any(|v| !v.is_finite())))
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

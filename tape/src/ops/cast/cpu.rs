//! CPU kernel of the cast: one pass, parallel over chunks for large tensors.

use super::CastKernels;
use crate::backend::cpu::map::{written_vec, PAR_MIN};
use crate::backend::Cpu;
use crate::dtype::{DType, Scalar};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per task of the parallel cast.
const CHUNK: usize = 1 << 14;

impl CastKernels for Cpu {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), S => dispatch_scalar!(dtype, D => {
            let out = converted::<S, D>(x.as_slice::<S>()?);
            Tensor::from_vec(out, x.shape(), x.device())
        }))
    }
}

/// `src` converted element by element, rounded to nearest (ties to even).
pub(crate) fn converted<S: Scalar, D: Scalar>(src: &[S]) -> Vec<D> {
    // SAFETY: every chunk of the output is written by `convert_into` from an equal-length
    // chunk of `src`.
    unsafe {
        written_vec(src.len(), |out| {
            if src.len() >= PAR_MIN {
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, s)| convert_into(o, s));
            } else {
                convert_into(out, src);
            }
        })
    }
}

/// Writes `src` converted into the slots `out` (equal lengths). Through `f32` when neither side
/// is `f64` (exact for a 16-bit source, one rounding for a 16-bit destination), else through
/// `f64` (exact from every dtype, one rounding into the destination).
fn convert_into<S: Scalar, D: Scalar>(out: &mut [MaybeUninit<D>], src: &[S]) {
    let wide = S::DTYPE == DType::F64 || D::DTYPE == DType::F64;
    for (o, &v) in out.iter_mut().zip(src) {
        o.write(if wide {
            D::of(v.f64())
        } else {
            D::of_f32(v.f32())
        });
    }
}

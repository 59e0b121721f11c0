//! Cast: a tensor's values in another dtype, rounded to nearest (ties to even); the gradient is
//! cast back to the input's dtype. Mixed precision is built on it: a 16-bit activation is an
//! f32 result cast down once, and an f32 master weight reaches a 16-bit op through a cast whose
//! backward hands the parameter an f32 gradient (see [`crate::precision::Precision`]).

use super::checks::check_grad;
use crate::backend::{kernel_trait, kernels};
use crate::dtype::DType;
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

const OP: &str = "cast";

kernel_trait! {
    /// Device kernels of the cast.
    pub(crate) trait CastKernels {
        /// `x`'s values in `dtype`, rounded to nearest (ties to even); a new buffer.
        fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
        /// Elements `start .. start + numel(shape)` of `x` (row-major) in `dtype`, as a new
        /// tensor of `shape`: a cast of a run of images with no copy of them first.
        fn cast_range(&self, x: &Tensor, start: usize, shape: &[usize], dtype: DType) -> Result<Tensor>;
        /// `src`'s values rounded to `dst`'s dtype, written into `dst`'s elements
        /// `start .. start + src.numel()` (row-major) in place.
        fn cast_into(&self, dst: &mut Tensor, start: usize, src: &Tensor) -> Result<()>;
    }
}

/// `x` in `dtype` (`x` itself, shared, when it has that dtype already). Backward casts the
/// gradient to `x`'s dtype: an f32 leaf cast to bf16 gets an f32 gradient.
pub fn cast(tape: &mut Tape, x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let _profile = tape.profile_op(OP);
    let k = kernels(x.device())?;
    let out = k.cast(x, dtype)?;
    let (kx, x_dtype, shape) = (GradKey::of(x), x.dtype(), x.shape().to_vec());
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        check_grad(OP, g, &shape, None)?;
        grads.accumulate(&kx, k.cast(g, x_dtype)?)
    }))
}

/// Checks that `start .. start + len` lies inside the `total` elements of a tensor.
pub(crate) fn check_range(start: usize, len: usize, total: usize) -> Result<()> {
    match start.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(crate::error::Error::invalid(
            OP,
            format!("elements {start}..{start}+{len} of a tensor of {total}"),
        )),
    }
}

/// `x` in `dtype` with no tape (`x` itself when it has that dtype already): the kernel behind
/// [`cast`], for tensors no gradient flows through (a 16-bit copy of running statistics, say).
pub(crate) fn cast_values(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    kernels(x.device())?.cast(x, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn range_casts_read_and_write_only_their_elements() {
        let dev = Device::cpu();
        let k = kernels(&dev).unwrap();
        let x = Tensor::randn(&[3, 4], DType::F32, &dev, 5).unwrap();
        let all = x.to_dtype(DType::BF16).unwrap().to_f64_vec();
        let part = k.cast_range(&x, 4, &[2, 4], DType::BF16).unwrap();
        assert_eq!((part.shape(), part.dtype()), (&[2, 4][..], DType::BF16));
        assert_eq!(part.to_f64_vec(), all[4..12]);

        let mut dst = Tensor::zeros(&[3, 4], DType::BF16, &dev).unwrap();
        // All 12 of `x` from element 4 on would run past `dst`'s end.
        k.cast_into(&mut dst, 4, &x).unwrap_err();
        let src = k.cast_range(&x, 0, &[4], DType::F32).unwrap();
        k.cast_into(&mut dst, 8, &src).unwrap();
        let got = dst.to_f64_vec();
        assert_eq!(got[..8], [0.0; 8]);
        assert_eq!(got[8..], all[..4]);

        for start in [9, usize::MAX] {
            let err = k.cast_range(&x, start, &[4], DType::F32).unwrap_err();
            assert!(err.to_string().contains("elements"), "{err}");
            assert!(k.cast_into(&mut dst, start, &src).is_err());
        }
    }
}

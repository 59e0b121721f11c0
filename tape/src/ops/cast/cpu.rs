//! CPU kernel of the cast: one pass, parallel over chunks for large tensors.

use super::{check_range, CastKernels};
use crate::backend::cpu::convert::{convert_par, converted};
use crate::backend::cpu::map::as_slots;
use crate::backend::Cpu;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{numel_of, Tensor};

impl CastKernels for Cpu {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), S => dispatch_scalar!(dtype, D => {
            let out = converted::<S, D>(x.as_slice::<S>()?);
            Tensor::from_vec(out, x.shape(), x.device())
        }))
    }

    fn cast_range(
        &self,
        x: &Tensor,
        start: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let len = numel_of(shape);
        check_range(start, len, x.numel())?;
        dispatch_scalar!(x.dtype(), S => dispatch_scalar!(dtype, D => {
            let out = converted::<S, D>(&x.as_slice::<S>()?[start..start + len]);
            Tensor::from_vec(out, shape, x.device())
        }))
    }

    fn cast_into(&self, dst: &mut Tensor, start: usize, src: &Tensor) -> Result<()> {
        check_range(start, src.numel(), dst.numel())?;
        dispatch_scalar!(src.dtype(), S => dispatch_scalar!(dst.dtype(), D => {
            let out = &mut dst.make_mut::<D>()?[start..start + src.numel()];
            convert_par(as_slots(out), src.as_slice::<S>()?);
            Ok(())
        }))
    }
}

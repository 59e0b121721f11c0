//! CPU kernels of the tensor primitives.

use super::PrimitiveKernels;
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::device::Device;
use crate::dtype::{DType, Elem};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `acc[i] += g[i]`, in parallel for large buffers.
fn add_assign_t<T: Elem>(acc: &mut [T], g: &[T]) {
    if acc.len() >= PAR_MIN {
        acc.par_iter_mut().zip(g).for_each(|(a, &b)| *a += b);
    } else {
        acc.iter_mut().zip(g).for_each(|(a, &b)| *a += b);
    }
}

impl PrimitiveKernels for Cpu {
    fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        dispatch_float!(dtype, T => Tensor::from_vec(vec![T::of(value); n], shape, device))
    }

    fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()> {
        dispatch_float!(g.dtype(), T => add_assign_t::<T>(acc.make_mut::<T>()?, g.as_slice::<T>()?));
        Ok(())
    }
}

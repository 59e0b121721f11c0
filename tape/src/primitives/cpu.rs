//! CPU kernels of the tensor primitives.

use super::PrimitiveKernels;
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::device::Device;
use crate::dtype::{DType, Elem, Scalar};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `acc[i] += g[i]`, in parallel for large buffers.
fn add_assign_t<T: Elem>(acc: &mut [T], g: &[T]) {
    add_each(acc, g, |a, b| *a += b);
}

/// `acc[i] += g[i]` for a 16-bit dtype: the sum in `f32`, rounded once.
fn add_assign_half<T: Scalar>(acc: &mut [T], g: &[T]) {
    add_each(acc, g, |a, b| *a = T::of_f32(a.f32() + b.f32()));
}

/// `f(&mut acc[i], g[i])` for every `i`, in parallel for large buffers.
fn add_each<T: Scalar>(acc: &mut [T], g: &[T], f: impl Fn(&mut T, T) + Sync) {
    if acc.len() >= PAR_MIN {
        acc.par_iter_mut().zip(g).for_each(|(a, &b)| f(a, b));
    } else {
        acc.iter_mut().zip(g).for_each(|(a, &b)| f(a, b));
    }
}

impl PrimitiveKernels for Cpu {
    fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        dispatch_scalar!(dtype, T => Tensor::from_vec(vec![T::of(value); n], shape, device))
    }

    fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()> {
        dispatch_split!(g.dtype(),
            half S => add_assign_half::<S>(acc.make_mut()?, g.as_slice()?),
            float T => add_assign_t::<T>(acc.make_mut::<T>()?, g.as_slice::<T>()?));
        Ok(())
    }
}

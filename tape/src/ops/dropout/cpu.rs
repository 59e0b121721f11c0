//! CPU kernel of dropout: the mask is recomputed from the counter-based generator, never stored.

use super::DropoutKernels;
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::rng;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `out[i] = xs[i] / (1 - p)` where `uniform(seed, counter, i) >= p`, else 0.
fn apply_mask<T: Elem>(xs: &[T], seed: u64, counter: u64, p: f64) -> Vec<T> {
    let scale = T::of(1.0 / (1.0 - p));
    let f = |(i, &x): (usize, &T)| {
        if rng::uniform(seed, counter, i as u64) >= p {
            x * scale
        } else {
            T::zero()
        }
    };
    if xs.len() >= PAR_MIN {
        xs.par_iter().enumerate().map(f).collect()
    } else {
        xs.iter().enumerate().map(f).collect()
    }
}

impl DropoutKernels for Cpu {
    fn dropout_mask(&self, x: &Tensor, seed: u64, counter: u64, p: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => Tensor::from_vec(apply_mask::<T>(x.as_slice::<T>()?, seed, counter, p), x.shape(), x.device()))
    }
}

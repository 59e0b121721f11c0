//! CPU kernels of GELU: in `f64` (`libm`'s `erf` for the exact form), rounded once.

use super::{GeluApproximation, GeluKernels};
use crate::backend::cpu::map::{map_binary, map_unary};
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;
use std::f64::consts::FRAC_1_SQRT_2;

/// `sqrt(2 / pi)` (the same literal as in `kernels.cu`).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// `1 / sqrt(2 pi)` (the same literal as in `kernels.cu`).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// The cubic coefficient of the tanh form.
const C: f64 = 0.044715;

/// `gelu(x)`.
pub(super) fn value(x: f64, approx: GeluApproximation) -> f64 {
    match approx {
        GeluApproximation::None => 0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2)),
        GeluApproximation::Tanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + C * x * x * x)).tanh()),
    }
}

/// `gelu'(x)`.
pub(super) fn slope(x: f64, approx: GeluApproximation) -> f64 {
    match approx {
        GeluApproximation::None => {
            let cdf = 0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() * INV_SQRT_2PI;
            cdf + x * pdf
        }
        GeluApproximation::Tanh => {
            let t = (SQRT_2_OVER_PI * (x + C * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * C * x * x)
        }
    }
}

impl GeluKernels for Cpu {
    fn gelu_forward(&self, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => map_unary::<T>(x, |v| T::of(value(v.f64(), approx))))
    }

    fn gelu_backward(&self, g: &Tensor, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => map_binary::<T>(g, x, |g, x| T::of(g.f64() * slope(x.f64(), approx))))
    }
}

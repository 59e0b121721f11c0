//! Meta kernel of the anomaly flag: one element, no value (nothing on a meta device is ever
//! non-finite: readers of the flag treat a meta flag as clear).

use super::FiniteKernels;
use crate::backend::Meta;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl FiniteKernels for Meta {
    fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = xs.first() else {
            return Err(Error::invalid(super::OP, "no tensor to check"));
        };
        Tensor::meta(&[1], first.dtype(), first.device())
    }
}

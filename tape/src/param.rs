//! Named trainable parameters. A [`Parameter`] keeps its tensor id for life, so gradients and
//! optimizer state stay keyed to it across updates and weight loads.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A named tensor that requires a gradient (torchvision-style names such as
/// `features.denseblock1.denselayer1.norm1.weight`).
#[derive(Clone, Debug)]
pub struct Parameter {
    name: String,
    tensor: Tensor,
}

impl Parameter {
    /// Wraps `tensor` as a trainable parameter called `name`.
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Self {
        Parameter {
            name: name.into(),
            tensor: tensor.with_requires_grad(true),
        }
    }

    /// The parameter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the parameter (the module tree names its parameters: [`crate::nn::name_parameters`]).
    pub(crate) fn set_name(&mut self, name: String) {
        self.name = name;
    }

    /// Opens the memory report's scope of the module that owns this parameter (its name
    /// without the last part: `features.conv0` for `features.conv0.weight`) until the guard
    /// drops ([`crate::context::module_scope`]).
    pub fn module_scope(&self) -> crate::context::ScopeGuard {
        let module = self.name.rsplit_once('.').map_or(&*self.name, |(m, _)| m);
        crate::context::module_scope(module)
    }

    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The current value for in-place updates (optimizers); copy-on-write keeps the id.
    pub(crate) fn tensor_mut(&mut self) -> &mut Tensor {
        &mut self.tensor
    }

    /// Overwrites the value with `values` (same shape, any dtype; converted), keeping the id.
    pub fn assign(&mut self, values: &Tensor) -> Result<()> {
        if values.shape() != self.tensor.shape() {
            return Err(Error::shape(
                "Parameter::assign",
                format!(
                    "{}: expected shape {:?}, got {:?}",
                    self.name,
                    self.tensor.shape(),
                    values.shape()
                ),
            ));
        }
        assign_values(&mut self.tensor, values)
    }
}

/// Copies `values` (converted to `dst`'s dtype) into `dst` in place, keeping its id.
pub(crate) fn assign_values(dst: &mut Tensor, values: &Tensor) -> Result<()> {
    let src = values.try_to_f64_vec()?;
    dst.overwrite_from_f64(&src)
}

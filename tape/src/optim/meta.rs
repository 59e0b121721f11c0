//! Meta kernels of the fused optimizer updates: every parameter and state buffer made unique
//! for writing in place (a shared one copied first, as on the CPU), no values.

use super::{FusedUpdate, OptimKernels};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl OptimKernels for Meta {
    fn optim_multi(&self, update: FusedUpdate<'_, '_>, _found_inf: Option<&Tensor>) -> Result<()> {
        match update {
            FusedUpdate::Sgd(_, slots) => {
                for s in slots.iter_mut() {
                    s.p.buffer_mut()?;
                    if let Some((b, _)) = s.buf.as_mut() {
                        b.buffer_mut()?;
                    }
                }
            }
            FusedUpdate::Adam(_, slots) => {
                for s in slots.iter_mut() {
                    s.p.buffer_mut()?;
                    s.m.buffer_mut()?;
                    s.v.buffer_mut()?;
                }
            }
        }
        Ok(())
    }
}

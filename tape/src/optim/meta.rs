//! Meta kernels of the fused optimizer updates: every parameter and state buffer made unique
//! for writing in place (a shared one copied first, as on the CPU), no values.

use super::{AdamConfig, AdamSlot, OptimKernels, SgdConfig, SgdSlot};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl OptimKernels for Meta {
    fn sgd_multi(
        &self,
        _cfg: &SgdConfig,
        slots: &mut [SgdSlot<'_>],
        _found_inf: Option<&Tensor>,
    ) -> Result<()> {
        for s in slots.iter_mut() {
            s.p.buffer_mut()?;
            if let Some((b, _)) = s.buf.as_mut() {
                b.buffer_mut()?;
            }
        }
        Ok(())
    }

    fn adam_multi(
        &self,
        _cfg: &AdamConfig,
        slots: &mut [AdamSlot<'_>],
        _found_inf: Option<&Tensor>,
    ) -> Result<()> {
        for s in slots.iter_mut() {
            s.p.buffer_mut()?;
            s.m.buffer_mut()?;
            s.v.buffer_mut()?;
        }
        Ok(())
    }
}

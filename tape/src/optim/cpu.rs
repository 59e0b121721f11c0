//! CPU kernels of the optimizer updates (the element rules live beside each optimizer).

use super::{adam, sgd, AdamConfig, OptimKernels, SgdConfig};
use crate::backend::Cpu;
use crate::error::Result;
use crate::tensor::Tensor;

impl OptimKernels for Cpu {
    fn sgd_update(
        &self,
        cfg: &SgdConfig,
        p: &mut Tensor,
        g: &Tensor,
        buf: Option<(&mut Tensor, bool)>,
    ) -> Result<()> {
        dispatch_float!(g.dtype(), T => {
            let gs = g.as_slice::<T>()?;
            let buf = match buf {
                Some((b, first)) => Some((b.make_mut::<T>()?, first)),
                None => None,
            };
            sgd::update::<T>(cfg, p.make_mut::<T>()?, gs, buf);
        });
        Ok(())
    }

    fn adam_update(
        &self,
        cfg: &AdamConfig,
        t: u64,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()> {
        dispatch_float!(g.dtype(), T => adam::update::<T>(
            cfg,
            t,
            p.make_mut::<T>()?,
            g.as_slice::<T>()?,
            m.make_mut::<T>()?,
            v.make_mut::<T>()?,
        ));
        Ok(())
    }
}

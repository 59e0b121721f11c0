//! CPU kernels of the fused optimizer updates: one parallel pass (rayon) over every parameter
//! of the call, each tensor split into chunks of [`CHUNK`] elements; every chunk runs the same
//! element rule (beside each optimizer) as a one-tensor update would, so the results do not
//! depend on the split or the thread count, bit for bit.

use super::{adam, sgd, AdamConfig, AdamSlot, FusedUpdate, OptimKernels, SgdConfig, SgdSlot};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Elements per work item of the parallel pass.
const CHUNK: usize = 1 << 14;

/// Whether `found_inf` says to skip the update (its value is read inside the kernel: host
/// memory on the CPU).
fn skip(found_inf: Option<&Tensor>) -> Result<bool> {
    Ok(match found_inf {
        Some(f) => f.try_to_f64_vec()?.first().is_some_and(|&v| v != 0.0),
        None => false,
    })
}

/// A chunk of one SGD slot: parameter, gradient, momentum buffer and whether it is new.
type SgdJob<'s, T> = (&'s mut [T], &'s [T], Option<(&'s mut [T], bool)>);

fn sgd_pass<T: Elem>(cfg: &SgdConfig, slots: &mut [SgdSlot<'_>]) -> Result<()> {
    let mut jobs: Vec<SgdJob<'_, T>> = Vec::new();
    for s in slots.iter_mut() {
        let g = s.g.as_slice::<T>()?;
        let p = s.p.make_mut::<T>()?;
        match s.buf.as_mut() {
            Some((b, first)) => {
                let first = *first;
                let b = b.make_mut::<T>()?;
                for ((p, g), b) in p
                    .chunks_mut(CHUNK)
                    .zip(g.chunks(CHUNK))
                    .zip(b.chunks_mut(CHUNK))
                {
                    jobs.push((p, g, Some((b, first))));
                }
            }
            None => {
                for (p, g) in p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)) {
                    jobs.push((p, g, None));
                }
            }
        }
    }
    jobs.into_par_iter()
        .for_each(|(p, g, buf)| sgd::update::<T>(cfg, p, g, buf));
    Ok(())
}

/// A chunk of one Adam slot: step, parameter, gradient, first and second moment.
type AdamJob<'s, T> = (u64, &'s mut [T], &'s [T], &'s mut [T], &'s mut [T]);

fn adam_pass<T: Elem>(cfg: &AdamConfig, slots: &mut [AdamSlot<'_>]) -> Result<()> {
    let mut jobs: Vec<AdamJob<'_, T>> = Vec::new();
    for s in slots.iter_mut() {
        let t = s.step;
        let g = s.g.as_slice::<T>()?;
        let p = s.p.make_mut::<T>()?;
        let m = s.m.make_mut::<T>()?;
        let v = s.v.make_mut::<T>()?;
        let chunks = p
            .chunks_mut(CHUNK)
            .zip(g.chunks(CHUNK))
            .zip(m.chunks_mut(CHUNK))
            .zip(v.chunks_mut(CHUNK));
        for (((p, g), m), v) in chunks {
            jobs.push((t, p, g, m, v));
        }
    }
    jobs.into_par_iter()
        .for_each(|(t, p, g, m, v)| adam::update::<T>(cfg, t, p, g, m, v));
    Ok(())
}

impl OptimKernels for Cpu {
    fn optim_multi(&self, update: FusedUpdate<'_, '_>, found_inf: Option<&Tensor>) -> Result<()> {
        let Some(dtype) = update.first_grad().map(Tensor::dtype) else {
            return Ok(());
        };
        if skip(found_inf)? {
            return Ok(());
        }
        match update {
            FusedUpdate::Sgd(cfg, slots) => dispatch_float!(dtype, T => sgd_pass::<T>(cfg, slots)),
            FusedUpdate::Adam(cfg, slots) => {
                dispatch_float!(dtype, T => adam_pass::<T>(cfg, slots))
            }
        }
    }
}

//! CUDA kernel of the finiteness check: one multi-tensor launch over a device list of addresses
//! and lengths into a zeroed flag, no synchronisation; and [`PendingCopy`], the asynchronous read
//! of a flag (pinned host memory and an event). Compiled by NVRTC, not yet run on a GPU.

use super::FiniteKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::driver_err;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, multi_grid, scratch_from_host, CudaElem};
use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        NonFiniteMulti = "non_finite_multi",
    }
}

fn flag<T: CudaElem>(xs: &[&Tensor]) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::invalid(super::OP, "no tensor to check"))?;
    let dev = first.device();
    let be = &dev.cuda_handle(super::OP)?.backend;
    let count = xs.len();
    let mut list = vec![0u64; 2 * count];
    for (i, x) in xs.iter().enumerate() {
        list[i] = be.ptr(x.cuda_slice::<T>()?);
        list[count + i] = x.numel() as u64;
    }
    let mut out = Tensor::zeros(&[1], T::DTYPE, dev)?;
    let longest = list[count..].iter().copied().max().unwrap_or(0);
    if longest == 0 {
        return Ok(out);
    }
    let list_d = scratch_from_host::<u64>(dev, &list)?;
    let n = count as u64;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(be, K::NonFiniteMulti, T::DTYPE, multi_grid(longest as usize, count); &list_d.buf, &n, o)?;
    Ok(out)
}

impl FiniteKernels for CudaKernels {
    fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = xs.first() else {
            return Err(Error::invalid(super::OP, "no tensor to check"));
        };
        dispatch_float!(first.dtype(), T => flag::<T>(xs))
    }
}

/// A page-locked host slot of one element, of a flag's dtype (any dtype: a pending read may be
/// of any one-element tensor).
#[derive(Debug)]
enum Pinned {
    F32(PinnedHostSlice<f32>),
    F64(PinnedHostSlice<f64>),
    BF16(PinnedHostSlice<crate::dtype::bf16>),
    F16(PinnedHostSlice<crate::dtype::f16>),
}

/// Runs `$body` with `$p` bound to the slot of a [`Pinned`] and `$T` to its element type.
macro_rules! with_pinned {
    ($slot:expr, $p:ident: $T:ident => $body:expr) => {
        match $slot {
            Pinned::F32($p) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            Pinned::F64($p) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            Pinned::BF16($p) => {
                #[allow(dead_code)]
                type $T = crate::dtype::bf16;
                $body
            }
            Pinned::F16($p) => {
                #[allow(dead_code)]
                type $T = crate::dtype::f16;
                $body
            }
        }
    };
}

impl Pinned {
    fn context(&self) -> &Arc<CudaContext> {
        with_pinned!(self, p: T => p.context())
    }

    fn dtype(&self) -> DType {
        with_pinned!(self, _p: T => <T as Scalar>::DTYPE)
    }
}

/// Pinned slots of finished reads, kept for the next ones: allocating and freeing page-locked
/// memory every step would cost a driver call each, and freeing it synchronises the device.
static PINNED: Mutex<Vec<Pinned>> = Mutex::new(Vec::new());

fn pinned_pool() -> MutexGuard<'static, Vec<Pinned>> {
    PINNED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A free slot of `dtype` for `ctx`'s GPU, from the pool or new.
fn take_slot(ctx: &Arc<CudaContext>, dtype: DType) -> Result<Pinned> {
    {
        let mut pool = pinned_pool();
        if let Some(i) = pool
            .iter()
            .position(|p| p.dtype() == dtype && p.context() == ctx)
        {
            return Ok(pool.swap_remove(i));
        }
    }
    // SAFETY: the slot is written by the device-to-host copy before it is read (the read waits
    // for the event recorded after the copy).
    let r = match dtype {
        DType::F32 => unsafe { ctx.alloc_pinned(1) }.map(Pinned::F32),
        DType::F64 => unsafe { ctx.alloc_pinned(1) }.map(Pinned::F64),
        DType::BF16 => unsafe { ctx.alloc_pinned(1) }.map(Pinned::BF16),
        DType::F16 => unsafe { ctx.alloc_pinned(1) }.map(Pinned::F16),
    };
    r.map_err(|e| driver_err("cuMemHostAlloc", e))
}

/// The asynchronous read of a one-element GPU tensor ([`super::PendingScalar`] on CUDA): a
/// device-to-host copy into pinned memory queued on the GPU's stream, and an event after it.
#[derive(Debug)]
pub(crate) struct PendingCopy {
    slot: Option<Pinned>,
    event: CudaEvent,
}

impl PendingCopy {
    /// Queues the copy of `t`'s one element (on a GPU) and records an event after it.
    pub(crate) fn start(t: &Tensor) -> Result<PendingCopy> {
        let be = &t.device().cuda_handle("PendingScalar")?.backend;
        be.bind()?;
        let mut slot = take_slot(&be.ctx, t.dtype())?;
        let copied = with_pinned!(&mut slot, p: T => be
            .stream
            .memcpy_dtoh(&t.cuda_slice::<T>()?.slice(0..1), p));
        let event = copied
            .and_then(|()| be.stream.record_event(None))
            .map_err(|e| driver_err("cuMemcpyDtoHAsync", e));
        match event {
            Ok(event) => Ok(PendingCopy {
                slot: Some(slot),
                event,
            }),
            Err(e) => {
                pinned_pool().push(slot);
                Err(e)
            }
        }
    }

    /// Whether the copy is done (never waits).
    pub(crate) fn is_complete(&self) -> Result<bool> {
        self.event
            .try_is_complete()
            .map_err(|e| driver_err("cuEventQuery", e))
    }

    /// The copied value, waiting for the copy if needed; also whether it had to wait.
    pub(crate) fn finish(&mut self) -> Result<(f64, bool)> {
        let waited = !self.is_complete()?;
        if waited {
            self.event
                .synchronize()
                .map_err(|e| driver_err("cuEventSynchronize", e))?;
        }
        let v = match &self.slot {
            Some(slot) => with_pinned!(slot, p: T => p.as_slice().map(|s| Scalar::f64(s[0]))),
            None => {
                return Err(Error::Backend(
                    "PendingScalar: read twice (engine bug)".into(),
                ))
            }
        };
        Ok((v.map_err(|e| driver_err("cuEventSynchronize", e))?, waited))
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        // The slot goes back to the pool even if its copy is still queued: the next copy into it
        // is queued on the same stream, after this one.
        if let Some(slot) = self.slot.take() {
            pinned_pool().push(slot);
        }
    }
}

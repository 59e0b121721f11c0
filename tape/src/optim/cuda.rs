//! CUDA kernels of the fused optimizer updates (NVRTC, `kernels.cu`): one launch per call over
//! every parameter, which the kernel finds in one device array of addresses, lengths and
//! per-tensor values (copied to the GPU with the launch, no synchronisation). PyTorch's rules in
//! `f64` per element, compiled without FMA contraction, so they round exactly like the CPU
//! updates. Compiled and checked by NVRTC, but not yet run on a GPU.

use super::{AdamConfig, AdamSlot, FusedUpdate, OptimKernels, SgdConfig, SgdSlot};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, multi_grid, scratch_from_host, Backend, CudaElem, Scratch};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        SgdMulti = "sgd_multi",
        AdamMulti = "adam_multi",
    }
}

/// The skip flag as the kernels take it: its address (0 for none) and whether it is `f64`.
pub(crate) fn flag_arg(be: &Backend, found_inf: Option<&Tensor>) -> Result<(u64, i32)> {
    Ok(match found_inf {
        None => (0, 0),
        Some(f) => match f.dtype() {
            DType::F32 => (be.ptr(f.cuda_slice::<f32>()?), 0),
            DType::F64 => (be.ptr(f.cuda_slice::<f64>()?), 1),
            dtype @ (DType::BF16 | DType::F16) => {
                return Err(crate::error::Error::UnsupportedDType {
                    op: "an optimizer's skip flag",
                    dtype,
                })
            }
        },
    })
}

/// What a launch takes besides its rule's values: the argument list on the device, the longest
/// tensor's length and the skip flag's arguments (see [`flag_arg`]).
struct LaunchArgs {
    list: Scratch<u64>,
    longest: usize,
    flag: u64,
    flag_f64: i32,
}

/// The argument list `meta` copied to the device, the longest tensor's length (field `lengths`
/// of `meta`, `count` entries per field) and the skip flag's arguments; `None` when every tensor
/// is empty (nothing to launch).
fn launch_args(
    dev: &Device,
    be: &Backend,
    meta: &[u64],
    count: usize,
    lengths: usize,
    found_inf: Option<&Tensor>,
) -> Result<Option<LaunchArgs>> {
    let longest = meta[lengths * count..(lengths + 1) * count]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    if longest == 0 {
        return Ok(None);
    }
    let list = scratch_from_host::<u64>(dev, meta)?;
    let (flag, flag_f64) = flag_arg(be, found_inf)?;
    Ok(Some(LaunchArgs {
        list,
        longest: longest as usize,
        flag,
        flag_f64,
    }))
}

/// One SGD update of every slot in one launch. The argument list, `count` entries per field:
/// parameter addresses, gradient addresses, momentum buffer addresses (0: none), lengths,
/// whether each buffer is new.
fn sgd<T: CudaElem>(
    dev: &Device,
    cfg: &SgdConfig,
    slots: &mut [SgdSlot<'_>],
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let be = &dev.cuda_handle("Sgd")?.backend;
    let count = slots.len();
    let mut meta = vec![0u64; 5 * count];
    for (i, s) in slots.iter_mut().enumerate() {
        meta[i] = be.ptr(&*s.p.cuda_slice_mut::<T>()?);
        meta[count + i] = be.ptr(s.g.cuda_slice::<T>()?);
        if let Some((b, first)) = s.buf.as_mut() {
            meta[2 * count + i] = be.ptr(&*b.cuda_slice_mut::<T>()?);
            meta[4 * count + i] = u64::from(*first);
        }
        meta[3 * count + i] = s.p.numel() as u64;
    }
    let Some(LaunchArgs {
        list,
        longest,
        flag,
        flag_f64,
    }) = launch_args(dev, be, &meta, count, 3, found_inf)?
    else {
        return Ok(());
    };
    let (n, nesterov) = (count as u64, i32::from(cfg.nesterov));
    launch!(be, K::SgdMulti, T::DTYPE, multi_grid(longest, count);
        &list.buf, &n, &flag, &flag_f64, &cfg.lr, &cfg.momentum, &cfg.dampening, &cfg.weight_decay,
        &nesterov)
}

/// One Adam update of every slot in one launch. The argument list, `count` entries per field:
/// parameter, gradient, first and second moment addresses, lengths, each tensor's step size
/// `lr / (1 - beta1^t)` and `sqrt(1 - beta2^t)` (as `f64` bits).
fn adam<T: CudaElem>(
    dev: &Device,
    cfg: &AdamConfig,
    slots: &mut [AdamSlot<'_>],
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let be = &dev.cuda_handle("Adam")?.backend;
    let count = slots.len();
    let mut meta = vec![0u64; 7 * count];
    for (i, s) in slots.iter_mut().enumerate() {
        let t = s.step as f64;
        let bc1 = 1.0 - cfg.beta1.powf(t);
        let bc2_sqrt = (1.0 - cfg.beta2.powf(t)).sqrt();
        meta[i] = be.ptr(&*s.p.cuda_slice_mut::<T>()?);
        meta[count + i] = be.ptr(s.g.cuda_slice::<T>()?);
        meta[2 * count + i] = be.ptr(&*s.m.cuda_slice_mut::<T>()?);
        meta[3 * count + i] = be.ptr(&*s.v.cuda_slice_mut::<T>()?);
        meta[4 * count + i] = s.p.numel() as u64;
        meta[5 * count + i] = (cfg.lr / bc1).to_bits();
        meta[6 * count + i] = bc2_sqrt.to_bits();
    }
    let Some(LaunchArgs {
        list,
        longest,
        flag,
        flag_f64,
    }) = launch_args(dev, be, &meta, count, 4, found_inf)?
    else {
        return Ok(());
    };
    let n = count as u64;
    launch!(be, K::AdamMulti, T::DTYPE, multi_grid(longest, count);
        &list.buf, &n, &flag, &flag_f64, &cfg.beta1, &cfg.beta2, &cfg.eps, &cfg.weight_decay)
}

impl OptimKernels for CudaKernels {
    fn optim_multi(&self, update: FusedUpdate<'_, '_>, found_inf: Option<&Tensor>) -> Result<()> {
        let Some(first) = update.first_grad() else {
            return Ok(());
        };
        let (dev, dtype) = (first.device().clone(), first.dtype());
        match update {
            FusedUpdate::Sgd(cfg, slots) => {
                dispatch_float!(dtype, T => sgd::<T>(&dev, cfg, slots, found_inf))
            }
            FusedUpdate::Adam(cfg, slots) => {
                dispatch_float!(dtype, T => adam::<T>(&dev, cfg, slots, found_inf))
            }
        }
    }
}

//! CPU kernels of [`super::BlockStorage`]: per image, one contiguous run of `k * h * w` elements
//! at channel `c0` of the wide buffer; images in parallel when large.

use super::{channel_runs, BlockStorageKernels};
use crate::backend::cpu::map::{write_copy, written_vec, PAR_MIN};
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `f(wide image, packed image)` for every image, in parallel when large.
fn per_image<T: Scalar>(
    wide: &mut [T],
    packed: &[T],
    (n, wide_len, run, at): (usize, usize, usize, usize),
    f: impl Fn(&mut [T], &[T]) + Sync,
) {
    if run == 0 {
        return;
    }
    let body = |(dst, src): (&mut [T], &[T])| f(&mut dst[at..at + run], src);
    if n * run >= PAR_MIN {
        wide.par_chunks_mut(wide_len)
            .zip(packed.par_chunks(run))
            .for_each(body);
    } else {
        wide.chunks_mut(wide_len)
            .zip(packed.chunks(run))
            .for_each(body);
    }
}

/// `dst[:, c0 ..] += src` for a 16-bit dtype: each sum in `f32`, rounded once.
fn add_half<T: Scalar>(
    dst: &mut Tensor,
    src: &Tensor,
    runs: (usize, usize, usize, usize),
) -> Result<()> {
    let s = src.as_slice::<T>()?;
    per_image(dst.make_mut::<T>()?, s, runs, |d, s| {
        d.iter_mut()
            .zip(s)
            .for_each(|(d, &s)| *d = T::of_f32(d.f32() + s.f32()))
    });
    Ok(())
}

impl BlockStorageKernels for Cpu {
    fn write_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        let shape = src.dims4("block_storage")?;
        let r = channel_runs(dst, shape, c0)?;
        dispatch_scalar!(src.dtype(), T => {
            let s = src.as_slice::<T>()?;
            per_image(dst.make_mut::<T>()?, s, r, |d, s| d.copy_from_slice(s));
        });
        Ok(())
    }

    fn add_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        let shape = src.dims4("block_storage")?;
        let r = channel_runs(dst, shape, c0)?;
        dispatch_split!(src.dtype(),
        half S => add_half::<S>(dst, src, r)?,
        float T => {
            let s = src.as_slice::<T>()?;
            per_image(dst.make_mut::<T>()?, s, r, |d, s| {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d += s)
            });
        });
        Ok(())
    }

    fn read_channels(&self, src: &Tensor, c0: usize, k: usize) -> Result<Tensor> {
        let [n, _, h, w] = src.dims4("block_storage")?;
        let (n, wide_len, run, at) = channel_runs(src, [n, k, h, w], c0)?;
        dispatch_scalar!(src.dtype(), T => {
            let s = src.as_slice::<T>()?;
            let fill = |(i, out): (usize, &mut [std::mem::MaybeUninit<T>])| {
                write_copy(out, &s[i * wide_len + at..][..run]);
            };
            // SAFETY: every packed image (`run` elements) is written whole by `fill`.
            let v = unsafe {
                written_vec(n * run, |out| {
                    if run == 0 {
                        return;
                    }
                    if n * run >= PAR_MIN {
                        out.par_chunks_mut(run).enumerate().for_each(fill);
                    } else {
                        out.chunks_mut(run).enumerate().for_each(fill);
                    }
                })
            };
            Tensor::from_vec(v, &[n, k, h, w], src.device())
        })
    }
}

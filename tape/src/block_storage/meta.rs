//! Meta kernels of the block storage: writes and adds in place (a shared buffer copied first,
//! as on the CPU), reads as new packed tensors; shapes checked as the CPU checks them.

use super::{channel_runs, BlockStorageKernels};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl BlockStorageKernels for Meta {
    fn write_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        channel_runs(dst, src.dims4("block_storage")?, c0)?;
        dst.buffer_mut().map(|_| ())
    }

    fn add_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        channel_runs(dst, src.dims4("block_storage")?, c0)?;
        dst.buffer_mut().map(|_| ())
    }

    fn read_channels(&self, src: &Tensor, c0: usize, k: usize) -> Result<Tensor> {
        let [n, _, h, w] = src.dims4("block_storage")?;
        channel_runs(src, [n, k, h, w], c0)?;
        Tensor::meta(&[n, k, h, w], src.dtype(), src.device())
    }
}

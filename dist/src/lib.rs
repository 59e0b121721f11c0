//! `dist`: data-parallel training across processes and machines, on the field's engines only:
//! MPI (rsmpi over the system's Open MPI, behind the cargo feature `mpi`) starts the processes
//! (`mpirun -np N`, a hostfile for several machines) and reduces CPU tensors. Without MPI, or
//! outside `mpirun`, the world is this one process and nothing changes
//! ([`ProcessGroup::single`]).
//!
//! - [`ProcessGroup`]: rank, world size, local rank; all-reduce (sum, mean, max), broadcast,
//!   barrier, all-gather; [`ProcessGroup::abort`] ends every rank after a failure on one.
//! - [`DistributedSampler`]: each rank a disjoint strided shard of every epoch's permutation
//!   (PyTorch's `DistributedSampler(drop_last=False)`).
//! - [`Ddp`]: parameters and buffers broadcast from rank 0, then gradients averaged in buckets
//!   launched as soon as every gradient of a bucket is final during backward (on the
//!   communication thread, overlapping the rest of backward). Under checkpointing gradients
//!   become final in recompute order: buckets follow readiness, learned in the first step (as
//!   DDP rebuilds its buckets after its first iteration), not declaration order.
//! - [`SyncBatchNorm`]: batch norms that train with the global batch's statistics, reduced once
//!   in the forward pass and reused (not reduced again) by a checkpointed segment's recompute.

mod bucket_state;
mod buffer;
mod ddp;
mod error;
mod group;
mod join;
mod module_sync;
#[cfg(feature = "mpi")]
mod mpi_transport;
#[cfg(feature = "nccl")]
mod nccl_transport;
mod sampler;
mod sync_bn;
mod transport;

pub use bucket_state::{BucketLaunch, StepComm};
pub use buffer::{Buf, Pending};
pub use ddp::{Ddp, DdpOptions};
pub use error::{DistError, Result};
pub use group::{CommStats, ProcessGroup};
pub use join::{join, DistKind};
pub use module_sync::{broadcast_buffers, broadcast_module, module_fingerprint};
pub use sampler::DistributedSampler;
pub use sync_bn::{SyncBatchNorm, SyncBnStats};
pub use transport::{ReduceOp, Single, Transport};

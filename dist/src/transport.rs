//! [`Transport`]: what a backend (the single-process world, MPI, NCCL) does for a
//! [`ProcessGroup`](crate::ProcessGroup): collectives on host buffers, started now and waited for
//! later.

use crate::buffer::{Buf, Pending};

/// A reduction across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean (the sum divided by the world size).
    Mean,
    /// Element-wise maximum.
    Max,
}

/// The collectives of one backend. Calls are matched across ranks by their order, so every
/// rank starts the same collectives in the same order; a backend runs them in the order
/// started.
pub trait Transport: Send + Sync {
    /// This process's rank in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// This process's rank among the processes of its machine.
    fn local_rank(&self) -> usize;
    /// The backend's name (`single`, `mpi`).
    fn name(&self) -> &'static str;
    /// Starts an all-reduce of `buf` (every rank the same length and dtype); a mean is the sum
    /// divided by the world size where the backend receives it.
    fn all_reduce(&self, buf: Buf, op: ReduceOp) -> Pending<Buf>;
    /// Starts a broadcast of `root`'s `buf` (every rank the same length and dtype).
    fn broadcast(&self, buf: Buf, root: usize) -> Pending<Buf>;
    /// Starts an all-gather: every rank's `buf` (the same length everywhere), in rank order.
    fn all_gather(&self, buf: Buf) -> Pending<Buf>;
    /// Starts a barrier.
    fn barrier(&self) -> Pending<()>;
    /// Ends every process of the world with exit code `code`, now.
    fn abort(&self, code: i32) -> !;
}

/// The world of one process: every collective is the identity, nothing is communicated.
pub struct Single;

impl Transport for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce(&self, buf: Buf, _op: ReduceOp) -> Pending<Buf> {
        Pending::done(Ok(buf))
    }
    fn broadcast(&self, buf: Buf, _root: usize) -> Pending<Buf> {
        Pending::done(Ok(buf))
    }
    fn all_gather(&self, buf: Buf) -> Pending<Buf> {
        Pending::done(Ok(buf))
    }
    fn barrier(&self) -> Pending<()> {
        Pending::done(Ok(()))
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

//! [`ProcessGroup`]: the world of processes a data-parallel run spans, and its collectives on
//! tensors and host values, with [`CommStats`] counting what went over the wire.

use crate::buffer::{Buf, Pending};
use crate::error::{DistError, Result};
use crate::transport::{ReduceOp, Single, Transport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tape::Tensor;

/// What a group's collectives have done so far (this process's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    /// Collectives started (all-reduces, broadcasts, all-gathers, barriers).
    pub calls: u64,
    /// Bytes this process sent into all-reduces.
    pub all_reduce_bytes: u64,
    /// All-reduces started.
    pub all_reduces: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    all_reduce_bytes: AtomicU64,
    all_reduces: AtomicU64,
}

/// The processes of a run: rank, world size, local rank and collectives. Cheap to clone (all
/// clones are the same group). The single-process world ([`ProcessGroup::single`]) needs no
/// MPI and changes nothing it is given.
#[derive(Clone)]
pub struct ProcessGroup {
    transport: Arc<dyn Transport>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProcessGroup({}, rank {} of {})",
            self.backend(),
            self.rank(),
            self.world_size()
        )
    }
}

impl ProcessGroup {
    /// The world of this process alone (size 1).
    pub fn single() -> Self {
        Self::over(Arc::new(Single))
    }

    /// A group over `transport`.
    pub fn over(transport: Arc<dyn Transport>) -> Self {
        ProcessGroup {
            transport,
            counters: Arc::default(),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.transport.rank()
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.transport.world_size()
    }

    /// This process's rank on its machine (which GPU it takes).
    pub fn local_rank(&self) -> usize {
        self.transport.local_rank()
    }

    /// Whether this is rank 0 (the one that prints and writes files).
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The backend's name (`single`, `mpi`).
    pub fn backend(&self) -> &'static str {
        self.transport.name()
    }

    /// What the collectives have done so far.
    pub fn stats(&self) -> CommStats {
        CommStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            all_reduce_bytes: self.counters.all_reduce_bytes.load(Ordering::Relaxed),
            all_reduces: self.counters.all_reduces.load(Ordering::Relaxed),
        }
    }

    /// Starts an all-reduce of `buf`; the result (a mean divided by the world size) comes from
    /// [`Pending::wait`]. With one process, nothing changes (no division either).
    pub fn start_all_reduce(&self, buf: Buf, op: ReduceOp) -> Pending<Buf> {
        self.count_call();
        self.counters
            .all_reduce_bytes
            .fetch_add(buf.bytes() as u64, Ordering::Relaxed);
        self.counters.all_reduces.fetch_add(1, Ordering::Relaxed);
        self.transport.all_reduce(buf, op)
    }

    /// All-reduces `buf` and waits.
    pub fn all_reduce_buf(&self, buf: Buf, op: ReduceOp) -> Result<Buf> {
        self.start_all_reduce(buf, op).wait()
    }

    /// All-reduces `values` in place.
    pub fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        match self.all_reduce_buf(Buf::F64(values.to_vec()), op)? {
            Buf::F64(v) if v.len() == values.len() => {
                values.copy_from_slice(&v);
                Ok(())
            }
            other => Err(mismatch("all_reduce_f64", values.len(), &other)),
        }
    }

    /// The all-reduce of tensor `t` (same shape, dtype and device), e.g. a gradient's mean.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        let out = self.all_reduce_buf(Buf::of(t)?, op)?;
        out.tensor(0, t.shape(), t.device())
    }

    /// Overwrites `values` with rank `root`'s.
    pub fn broadcast_f64(&self, values: &mut [f64], root: usize) -> Result<()> {
        self.check_root("broadcast_f64", root)?;
        self.count_call();
        match self
            .transport
            .broadcast(Buf::F64(values.to_vec()), root)
            .wait()?
        {
            Buf::F64(v) if v.len() == values.len() => {
                values.copy_from_slice(&v);
                Ok(())
            }
            other => Err(mismatch("broadcast_f64", values.len(), &other)),
        }
    }

    /// Rank `root`'s tensor `t` (same shape, dtype and device on every rank).
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.check_root("broadcast", root)?;
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        self.count_call();
        let out = self.transport.broadcast(Buf::of(t)?, root).wait()?;
        out.tensor(0, t.shape(), t.device())
    }

    /// Every rank's `values` (the same length on every rank), in rank order.
    pub fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.count_call();
        match self
            .transport
            .all_gather(Buf::F64(values.to_vec()))
            .wait()?
        {
            Buf::F64(v) if v.len() == values.len() * self.world_size() => Ok(v
                .chunks(values.len().max(1))
                .map(<[f64]>::to_vec)
                .take(self.world_size())
                .collect()),
            other => Err(mismatch(
                "all_gather_f64",
                values.len() * self.world_size(),
                &other,
            )),
        }
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.count_call();
        self.transport.barrier().wait()
    }

    /// Whether `flag` is set on any rank (an all-reduce of the flag with max): what makes every
    /// rank skip a step that diverged on one.
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [f64::from(u8::from(flag))];
        self.all_reduce_f64(&mut v, ReduceOp::Max)?;
        Ok(v[0] != 0.0)
    }

    /// Sums `values` over the ranks (counts, losses times sample counts) and waits.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut v = values.to_vec();
        self.all_reduce_f64(&mut v, ReduceOp::Sum)?;
        Ok(v)
    }

    /// Ends the whole job now with exit code `code` (every rank, under MPI): after a failure on
    /// this rank, so that no other rank waits for it forever.
    pub fn abort(&self, code: i32) -> ! {
        self.transport.abort(code)
    }

    fn count_call(&self) {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn check_root(&self, op: &'static str, root: usize) -> Result<()> {
        if root < self.world_size() {
            return Ok(());
        }
        Err(DistError::Invalid {
            op,
            msg: format!("root {root} in a world of {}", self.world_size()),
        })
    }
}

fn mismatch(op: &'static str, expected: usize, got: &Buf) -> DistError {
    DistError::Invalid {
        op,
        msg: format!(
            "expected {expected} values back, got {} {:?}",
            got.len(),
            got.dtype()
        ),
    }
}

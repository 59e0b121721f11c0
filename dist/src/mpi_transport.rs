//! The MPI backend: one communication thread initialises MPI, runs every collective in the order
//! started (so that ranks match them) and finalises MPI when the group is dropped. The threads
//! that start collectives go on (backward goes on while a bucket is reduced) and wait for the
//! result when they need it.

use crate::buffer::{Buf, Pending};
use crate::error::{DistError, Result};
use crate::transport::{ReduceOp, Transport};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

type Job = Box<dyn FnOnce(&SimpleCommunicator) + Send>;

/// The world that `mpirun` started (or, run without it, this process alone as MPI's singleton).
pub(crate) struct MpiTransport {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    rank: usize,
    size: usize,
    local_rank: usize,
}

impl MpiTransport {
    /// Initialises MPI on a new communication thread and joins its world.
    pub(crate) fn start() -> Result<Self> {
        let (jobs, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<Result<(usize, usize, usize)>>();
        let thread = std::thread::Builder::new()
            .name("mpi".into())
            .spawn(move || {
                let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Multiple)
                else {
                    let _ = ready_tx.send(Err(DistError::Join(
                        "MPI is already initialised in this process".into(),
                    )));
                    return;
                };
                let world = universe.world();
                let local = world.split_shared(world.rank());
                let ids = (
                    world.rank() as usize,
                    world.size() as usize,
                    local.rank() as usize,
                );
                drop(local);
                if ready_tx.send(Ok(ids)).is_err() {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job(&world);
                }
            })
            .map_err(|e| DistError::Join(format!("cannot start the MPI thread: {e}")))?;
        let (rank, size, local_rank) = ready_rx
            .recv()
            .map_err(|_| DistError::Join("the MPI thread stopped while starting".into()))??;
        Ok(MpiTransport {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            rank,
            size,
            local_rank,
        })
    }

    /// Queues `job` on the communication thread; its result comes through the returned handle.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&SimpleCommunicator) -> T + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = channel();
        let boxed: Job = Box::new(move |world| {
            let t0 = Instant::now();
            let out = job(world);
            let _ = tx.send((Ok(out), t0.elapsed().as_secs_f64()));
        });
        let sent = match self.jobs.lock() {
            Ok(guard) => guard.as_ref().is_some_and(|s| s.send(boxed).is_ok()),
            Err(_) => false,
        };
        if !sent {
            return Pending::done(Err(DistError::Stopped { rank: self.rank }));
        }
        Pending::running(rx, self.rank)
    }
}

/// Element-wise reduction of `send` into a new vector.
fn reduce<T: Equivalence + Copy + Default>(
    world: &SimpleCommunicator,
    send: &[T],
    op: ReduceOp,
) -> Vec<T> {
    let mut out = vec![T::default(); send.len()];
    let op = match op {
        ReduceOp::Sum | ReduceOp::Mean => SystemOperation::sum(),
        ReduceOp::Max => SystemOperation::max(),
    };
    world.all_reduce_into(send, &mut out[..], op);
    out
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn name(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce(&self, buf: Buf, op: ReduceOp) -> Pending<Buf> {
        let n = self.size;
        self.run(move |world| {
            let mut out = match &buf {
                Buf::F32(v) => Buf::F32(reduce(world, v, op)),
                Buf::F64(v) => Buf::F64(reduce(world, v, op)),
            };
            if op == ReduceOp::Mean && n > 1 {
                out.divide(n);
            }
            out
        })
    }

    fn broadcast(&self, mut buf: Buf, root: usize) -> Pending<Buf> {
        self.run(move |world| {
            let root = world.process_at_rank(root as i32);
            match &mut buf {
                Buf::F32(v) => root.broadcast_into(&mut v[..]),
                Buf::F64(v) => root.broadcast_into(&mut v[..]),
            }
            buf
        })
    }

    fn all_gather(&self, buf: Buf) -> Pending<Buf> {
        let n = self.size;
        self.run(move |world| match &buf {
            Buf::F32(v) => {
                let mut out = vec![0f32; v.len() * n];
                world.all_gather_into(&v[..], &mut out[..]);
                Buf::F32(out)
            }
            Buf::F64(v) => {
                let mut out = vec![0f64; v.len() * n];
                world.all_gather_into(&v[..], &mut out[..]);
                Buf::F64(out)
            }
        })
    }

    fn barrier(&self) -> Pending<()> {
        self.run(|world| world.barrier())
    }

    fn abort(&self, code: i32) -> ! {
        // From the calling thread (MPI runs in its multi-threaded mode): the communication
        // thread may be blocked in a collective that a failed rank will never join.
        // SAFETY: MPI_Abort on MPI's world communicator, which stays valid while MPI is
        // initialised (the communication thread finalises only when the group is dropped).
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}

impl Drop for MpiTransport {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

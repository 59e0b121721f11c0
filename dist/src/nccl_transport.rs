//! The NCCL backend: MPI starts the processes and carries NCCL's unique id from rank 0 to every
//! rank (as nccl-tests and Horovod do); each rank's NCCL communicator lives on its own thread,
//! on its own CUDA stream of GPU `local rank`, and runs the all-reduces and broadcasts in the
//! order started. All-gathers and barriers (small host values) stay on MPI. A bucket goes to the
//! GPU, is reduced there by NCCL and comes back: the buckets are host buffers (see
//! [`crate::Buf`]), so gradients on a GPU make a round trip through the host.

use crate::buffer::{Buf, Pending};
use crate::error::{DistError, Result};
use crate::transport::{ReduceOp, Transport};
use cudarc::driver::{CudaContext, DeviceRepr};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp as NcclOp};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

type Job = Box<dyn FnOnce(&Comm) + Send>;

/// NCCL for all-reduces and broadcasts, MPI for the rest.
pub(crate) struct NcclTransport {
    mpi: Arc<dyn Transport>,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn failed(what: &str, e: impl std::fmt::Debug) -> DistError {
    DistError::Join(format!("NCCL: {what}: {e:?}"))
}

impl NcclTransport {
    /// Makes every rank of `mpi`'s world a member of one NCCL communicator (rank 0's unique id
    /// broadcast over MPI), on GPU `local rank`.
    pub(crate) fn start(mpi: Arc<dyn Transport>) -> Result<Self> {
        // SAFETY: only tries to load the library by its usual names.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(DistError::Join(
                "NCCL: the NCCL library was not found (install it, or use --dist mpi)".into(),
            ));
        }
        let mut wire = Buf::F64(vec![0.0; 128]);
        if mpi.rank() == 0 {
            let id = Id::new().map_err(|e| failed("ncclGetUniqueId", e))?;
            wire = Buf::F64(id.internal().iter().map(|&c| f64::from(c as u8)).collect());
        }
        let Buf::F64(values) = mpi.broadcast(wire, 0).wait()? else {
            return Err(failed("the unique id", "came back in another dtype"));
        };
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, &v) in internal.iter_mut().zip(&values) {
            *c = v as u8 as std::ffi::c_char;
        }
        let id = Id::uninit(internal);
        let (rank, size, gpu) = (mpi.rank(), mpi.world_size(), mpi.local_rank());
        let (jobs, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("nccl".into())
            .spawn(move || {
                let comm = (|| {
                    let ctx = CudaContext::new(gpu).map_err(|e| failed("CUDA context", e))?;
                    let stream = ctx.new_stream().map_err(|e| failed("CUDA stream", e))?;
                    Comm::from_rank(stream, rank, size, id)
                        .map_err(|e| failed("ncclCommInitRank", e))
                })();
                let comm = match comm {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(())).is_err() {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job(&comm);
                }
            })
            .map_err(|e| DistError::Join(format!("cannot start the NCCL thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| DistError::Join("the NCCL thread stopped while starting".into()))??;
        Ok(NcclTransport {
            mpi,
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `job` on the NCCL thread.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Comm) -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = channel();
        let boxed: Job = Box::new(move |comm| {
            let t0 = Instant::now();
            let out = job(comm);
            let _ = tx.send((out, t0.elapsed().as_secs_f64()));
        });
        let sent = match self.jobs.lock() {
            Ok(guard) => guard.as_ref().is_some_and(|s| s.send(boxed).is_ok()),
            Err(_) => false,
        };
        if !sent {
            return Pending::done(Err(DistError::Stopped { rank: self.rank() }));
        }
        Pending::running(rx, self.rank())
    }
}

/// What runs on the GPU between the copies.
enum OnDevice {
    AllReduce(ReduceOp),
    Broadcast(usize),
}

/// `host` to the GPU, `what` there, and back.
fn on_device<T: NcclType + DeviceRepr + Default + Clone>(
    comm: &Comm,
    host: &[T],
    what: &OnDevice,
) -> Result<Vec<T>> {
    let stream = comm.stream();
    let cuda = |e| DistError::Reducer(format!("NCCL bucket copy: {e:?}"));
    let mut d = stream.clone_htod(host).map_err(cuda)?;
    let done = match what {
        OnDevice::AllReduce(op) => comm.all_reduce_in_place(&mut d, &nccl_op(*op)),
        OnDevice::Broadcast(root) => comm.broadcast_in_place(&mut d, *root as i32),
    };
    done.map_err(|e| DistError::Reducer(format!("NCCL: {e:?}")))?;
    let out = stream.clone_dtoh(&d).map_err(cuda)?;
    stream.synchronize().map_err(cuda)?;
    Ok(out)
}

/// [`on_device`] for a buffer of either dtype.
fn run_on_device(comm: &Comm, buf: &Buf, what: &OnDevice) -> Result<Buf> {
    Ok(match buf {
        Buf::F32(v) => Buf::F32(on_device(comm, v, what)?),
        Buf::F64(v) => Buf::F64(on_device(comm, v, what)?),
    })
}

fn nccl_op(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Mean => NcclOp::Avg,
        ReduceOp::Max => NcclOp::Max,
    }
}

impl Transport for NcclTransport {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce(&self, buf: Buf, op: ReduceOp) -> Pending<Buf> {
        self.run(move |comm| run_on_device(comm, &buf, &OnDevice::AllReduce(op)))
    }

    fn broadcast(&self, buf: Buf, root: usize) -> Pending<Buf> {
        self.run(move |comm| run_on_device(comm, &buf, &OnDevice::Broadcast(root)))
    }

    fn all_gather(&self, buf: Buf) -> Pending<Buf> {
        self.mpi.all_gather(buf)
    }

    fn barrier(&self) -> Pending<()> {
        self.mpi.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}

impl Drop for NcclTransport {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

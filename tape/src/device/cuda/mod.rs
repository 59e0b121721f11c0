//! The CUDA plumbing shared by every op (cargo feature `cuda`): one [`Backend`] per GPU (context,
//! stream, stream-ordered memory pool, cuBLAS and cuDNN handles, NVRTC kernels) created on first
//! use and shared by all [`crate::Device`] handles of that GPU, each of which keeps its own memory
//! accounting and [`CudaOptions`].
//!
//! - Libraries load at run time (cudarc's dynamic loading): before calling anything, the
//!   backend checks that the driver, NVRTC, cuBLAS and cuDNN can be loaded, and names the one
//!   that cannot (a missing library would otherwise panic inside cudarc).
//! - All work goes to one stream per GPU, in order; cudarc's per-buffer event tracking is off
//!   (it only matters across streams), so a launch costs no event records.
//! - Buffers come from the stream-ordered pool (`cuMemAllocAsync` / `cuMemFreeAsync`) whose
//!   release threshold is set to "never", so freed blocks are reused without going back to the
//!   driver. Every buffer and workspace is charged to its device's [`crate::MemoryStats`].

mod buffer;
mod dnn;
mod elem;
mod error;
mod launch;
mod nvrtc;

pub(crate) use buffer::{alloc_slice, before_free, copy, download, overwrite, upload};
pub(crate) use dnn::{ConvKey, ConvPlan, Dnn, FindArgs, FindContext, TensorDesc};
pub(crate) use elem::{with_cuda_slice, CudaData, CudaElem, CudaScalar};
pub(crate) use error::{cublas_err, cudnn_err, driver_err};
pub(crate) use launch::{
    grid, launch, multi_grid, nvrtc_program, per_row, Kernel, PartList, Program, MAX_PARTS, RBLOCK,
    SUM_BLOCKS,
};
#[cfg(test)]
pub(crate) use nvrtc::{compile_cubin, options as nvrtc_options, PRELUDE, SUFFIXES};

use crate::device::{CudaOptions, Device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::Reservation;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    result as dres, sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, DriverError,
};
use nvrtc::Module;
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The default memory pool of a device (a raw driver handle).
struct Pool(dsys::CUmemoryPool);
// SAFETY: a memory pool handle may be used from any thread (the driver API is thread-safe).
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

/// Everything one GPU's ops share. Created once per ordinal and kept for the process's life.
pub(crate) struct Backend {
    pub(crate) ordinal: usize,
    /// The GPU's name.
    pub(crate) name: String,
    /// Compute capability.
    pub(crate) cc: (i32, i32),
    pub(crate) ctx: Arc<CudaContext>,
    /// The one stream all of this GPU's work runs on.
    pub(crate) stream: Arc<CudaStream>,
    /// The NVRTC programs compiled for this GPU so far, by the address of their (static)
    /// [`Program`]: looked up at every launch, so no string is hashed there.
    modules: Mutex<FxHashMap<usize, Module>>,
    blas: Mutex<CudaBlas>,
    dnn: Mutex<Dnn>,
    pool: Option<Pool>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Backend(cuda:{} \"{}\" sm_{}{}, programs {:?})",
            self.ordinal,
            self.name,
            self.cc.0,
            self.cc.1,
            self.modules
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|m| format!("{}: {}", m.name, m.build))
                .collect::<Vec<_>>()
        )
    }
}

/// What a CUDA [`Device`] holds: the shared backend, this handle's options and, with
/// [`CudaOptions::persistent_workspace`], its convolutions' shared workspace.
#[derive(Clone, Debug)]
pub(crate) struct CudaHandle {
    pub(crate) backend: Arc<Backend>,
    pub(crate) options: CudaOptions,
    pub(crate) shared_workspace: SharedWorkspace,
}

/// The one workspace every convolution of a device handle uses under
/// [`CudaOptions::persistent_workspace`]: grown on demand, kept (and charged to the handle's
/// accounting) for the handle's lifetime. Safe to reuse between calls: all of a GPU's work runs
/// on one stream, in order.
#[derive(Clone, Default)]
pub(crate) struct SharedWorkspace(Arc<Mutex<Option<Scratch<u8>>>>);

impl fmt::Debug for SharedWorkspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .0
            .lock()
            .map(|w| w.as_ref().map_or(0, |s| s.buf.len()))
            .unwrap_or(0);
        write!(f, "SharedWorkspace({len} bytes)")
    }
}

impl CudaHandle {
    /// This handle's options.
    pub(crate) fn options(&self) -> CudaOptions {
        self.options
    }

    /// Waits for all queued work on the GPU.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    /// `(free, total)` bytes of the GPU.
    pub(crate) fn mem_get_info(&self) -> Result<(usize, usize)> {
        self.backend.mem_get_info()
    }

    /// Bytes the GPU's memory pool holds (in use or cached), if it has a pool.
    pub(crate) fn reserved_bytes(&self) -> Option<usize> {
        let pool = self.backend.pool.as_ref()?;
        let mut value: u64 = 0;
        // SAFETY: the pool is this GPU's default pool; the attribute's value is a u64.
        unsafe {
            dres::mem_pool::get_attribute(
                pool.0,
                dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                &mut value as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .ok()?;
        usize::try_from(value).ok()
    }
}

/// Opens GPU `ordinal` (its shared backend is created on first use) for a new device handle.
pub(crate) fn open(ordinal: usize, options: CudaOptions) -> Result<CudaHandle> {
    let backend = Backend::get(ordinal)?;
    backend.bind()?;
    Ok(CudaHandle {
        backend,
        options,
        shared_workspace: SharedWorkspace::default(),
    })
}

/// The backends opened so far, and the failed attempts (an initialisation that failed once,
/// NVRTC compile included, is not retried: every later open returns the same error at once).
struct Opened {
    ok: Vec<Arc<Backend>>,
    failed: Vec<(usize, Error)>,
}

static BACKENDS: Mutex<Opened> = Mutex::new(Opened {
    ok: Vec::new(),
    failed: Vec::new(),
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to point the loader at the CUDA libraries.
const HINT: &str = "put the folder that holds it on LD_LIBRARY_PATH, or run `source scripts/cuda-env.sh` \
                    (it finds the CUDA 13 libraries that PyTorch's pip wheels ship and sets LD_LIBRARY_PATH)";

/// Fails, naming the library, unless the driver, NVRTC, cuBLAS and cuDNN can all be loaded.
/// The file names cudarc tries for `lib`, without repeats.
fn candidates(lib: &str) -> Vec<String> {
    let mut names = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn check_libraries() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate file names.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(Error::Backend(format!(
            "CUDA: cannot load the NVIDIA driver library libcuda.so (tried {:?}): this machine \
             has no NVIDIA driver, or the loader does not find it: {HINT}",
            candidates("cuda")
        )));
    }
    // SAFETY: as above.
    let libs = unsafe {
        [
            ("NVRTC", "nvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("cuBLAS", "cublas", cudarc::cublas::sys::is_culib_present()),
            ("cuDNN", "cudnn", cudarc::cudnn::sys::is_culib_present()),
        ]
    };
    let missing: Vec<String> = libs
        .iter()
        .filter(|l| !l.2)
        .map(|(name, lib, _)| format!("{name} (tried {:?})", candidates(lib)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "CUDA: cannot load {}; {HINT}",
            missing.join(" and ")
        )))
    }
}

/// The message of a panic payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

impl Backend {
    /// The backend of GPU `ordinal`, created on first use.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<Backend>> {
        let mut all = lock(&BACKENDS);
        if let Some(b) = all.ok.iter().find(|b| b.ordinal == ordinal) {
            return Ok(b.clone());
        }
        if let Some((_, e)) = all.failed.iter().find(|(o, _)| *o == ordinal) {
            return Err(e.clone());
        }
        let attempt = check_libraries().and_then(|()| {
            // A library with a missing symbol still panics inside cudarc's loader: report it.
            std::panic::catch_unwind(|| Backend::init(ordinal)).map_err(|p| {
                Error::Backend(format!(
                    "CUDA initialisation of GPU {ordinal} failed: {} ({HINT})",
                    panic_message(p.as_ref())
                ))
            })?
        });
        match attempt {
            Ok(b) => {
                let b = Arc::new(b);
                all.ok.push(b.clone());
                Ok(b)
            }
            Err(e) => {
                all.failed.push((ordinal, e.clone()));
                Err(e)
            }
        }
    }

    fn init(ordinal: usize) -> Result<Backend> {
        let count = CudaContext::device_count().map_err(|e| {
            Error::Backend(format!(
                "CUDA: no usable GPU ({})",
                driver_err("cuDeviceGetCount", e)
            ))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Backend(format!(
                "CUDA: there is no GPU {ordinal} ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("context creation", e))?;
        // SAFETY: called before this context has any buffer or stream. The engine queues all of
        // a GPU's work on one stream, in order, so no cross-stream synchronisation is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("cuStreamCreate", e))?;
        let name = ctx.name().map_err(|e| driver_err("cuDeviceGetName", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))?;
        // Keep freed blocks in the pool (release threshold "never") so that allocation in the
        // hot path is a cheap reuse; without pools cudarc falls back to cuMemAlloc/cuMemFree.
        let pool = if ctx.has_async_alloc() {
            // SAFETY: `cu_device` is this context's device; the attribute value is a u64.
            unsafe {
                match dres::device::get_default_mem_pool(ctx.cu_device()) {
                    Ok(pool) => {
                        let mut threshold: u64 = u64::MAX;
                        if let Err(e) = dres::mem_pool::set_attribute(
                            pool,
                            dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                            &mut threshold as *mut u64 as *mut std::ffi::c_void,
                        ) {
                            eprintln!(
                                "tape: warning: {}",
                                driver_err("cuMemPoolSetAttribute(RELEASE_THRESHOLD)", e)
                            );
                        }
                        Some(Pool(pool))
                    }
                    Err(e) => {
                        eprintln!(
                            "tape: warning: {}",
                            driver_err("cuDeviceGetDefaultMemPool", e)
                        );
                        None
                    }
                }
            }
        } else {
            None
        };
        // cuDNN 9 loads its convolution and op sub-libraries lazily: check them now, so that a
        // missing or mismatched libcudnn_ops / libcudnn_cnn is named up front (a warning only:
        // the ops report their own cuDNN status if they cannot run).
        // SAFETY: plain version queries.
        let checks = unsafe {
            [
                ("libcudnn_ops", cudarc::cudnn::sys::cudnnOpsVersionCheck()),
                ("libcudnn_cnn", cudarc::cudnn::sys::cudnnCnnVersionCheck()),
            ]
        };
        for (lib, status) in checks {
            if let Err(e) = status.result() {
                eprintln!("tape: warning: cuDNN sub-library check of {lib}: {:?}", e.0);
            }
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cublas_err("cublasCreate", e))?;
        let dnn = Dnn::new(&stream)?;
        Ok(Backend {
            ordinal,
            name,
            cc,
            ctx,
            stream,
            modules: Mutex::new(FxHashMap::default()),
            blas: Mutex::new(blas),
            dnn: Mutex::new(dnn),
            pool,
        })
    }

    /// The entry point of kernel `k` for `dtype`, its program compiled and loaded first if this
    /// GPU has not run any of its kernels yet (once per program and GPU).
    pub(crate) fn function<K: Kernel>(&self, k: K, dtype: DType) -> Result<CudaFunction> {
        let program = k.program();
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        let module = match modules.entry(program as *const Program as usize) {
            Entry::Occupied(m) => m.into_mut(),
            Entry::Vacant(v) => v.insert(Module::load(&self.ctx, self.cc, program)?),
        };
        Ok(module.get(k.index(), dtype).clone())
    }

    /// Waits for all queued work.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("cuStreamSynchronize", e))
    }

    /// `(free, total)` bytes of the GPU (`cuMemGetInfo`).
    pub(crate) fn mem_get_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| driver_err("cuMemGetInfo", e))
    }

    /// The cuDNN state (locked for the duration of the caller's cuDNN calls).
    pub(crate) fn dnn(&self) -> MutexGuard<'_, Dnn> {
        lock(&self.dnn)
    }

    /// The cuBLAS handle (locked for the duration of the caller's cuBLAS calls).
    pub(crate) fn blas(&self) -> MutexGuard<'_, CudaBlas> {
        lock(&self.blas)
    }

    /// Makes this GPU's context current on the calling thread (needed before raw cuDNN/cuBLAS
    /// calls on a thread that has not touched the GPU yet).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("cuCtxSetCurrent", e))
    }

    /// Makes the context current without consuming a recorded error (for drops, which run on
    /// whatever thread lets the last handle go: cudarc frees a buffer without binding first).
    pub(crate) fn bind_quiet(&self) {
        let ctx = self.ctx.cu_ctx();
        if dres::ctx::get_current().ok().flatten() != Some(ctx) {
            // SAFETY: `ctx` is this backend's live primary context.
            let _ = unsafe { dres::ctx::set_current(ctx) };
        }
    }

    /// `len` uninitialised elements from the pool (at least one, so every buffer has an address).
    /// On out-of-memory, waits for the stream, returns the pool's cached blocks to the driver and
    /// tries once more.
    pub(crate) fn alloc<T: DeviceRepr>(
        &self,
        len: usize,
    ) -> std::result::Result<CudaSlice<T>, DriverError> {
        let n = len.max(1);
        // SAFETY: the memory is uninitialised; every caller writes it before reading it.
        match unsafe { self.stream.alloc::<T>(n) } {
            Err(e) if error::is_oom(&e) => {
                self.stream.synchronize()?;
                if let Some(pool) = &self.pool {
                    // SAFETY: the pool is this device's default pool.
                    unsafe { dres::mem_pool::trim_to(pool.0, 0) }?;
                }
                // SAFETY: as above.
                unsafe { self.stream.alloc::<T>(n) }
            }
            r => r,
        }
    }

    /// The device address of a buffer (for raw cuDNN/cuBLAS calls and kernel argument lists).
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        // Event tracking is off, so the returned guard records nothing.
        let (p, _guard) = s.device_ptr(&self.stream);
        p
    }
}

/// Sets the math mode of the next cuBLAS GEMMs on `blas` (locked by the caller) for operands of
/// `dtype`: TF32 tensor-op math for `f32` where `tf32` allows it; for bf16 / f16 (cublasGemmEx
/// with `CUBLAS_COMPUTE_32F`) every reduction in `f32`, split-K ones included
/// (`CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION`); cuBLAS's default math otherwise.
pub(crate) fn set_gemm_math(blas: &CudaBlas, tf32: bool, dtype: DType) -> Result<()> {
    use cudarc::cublas::sys::cublasMath_t as M;
    let math = match dtype {
        DType::F32 if tf32 => M::CUBLAS_TF32_TENSOR_OP_MATH,
        DType::BF16 | DType::F16 => M::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
        DType::F32 | DType::F64 => M::CUBLAS_DEFAULT_MATH,
    };
    // SAFETY: the handle is locked by the caller; the math mode is a host-side setting of it.
    unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), math) }
        .result()
        .map_err(|e| cublas_err("cublasSetMathMode", e))
}

/// The error of a failed allocation of `bytes` on `device`: [`Error::OutOfMemory`] for an
/// out-of-memory status (with the GPU's free memory in the device name), else the status.
pub(crate) fn alloc_err(device: &Device, backend: &Backend, bytes: usize, e: DriverError) -> Error {
    if !error::is_oom(&e) {
        return driver_err("cuMemAllocAsync", e);
    }
    let (free, total) = backend.mem_get_info().unwrap_or((0, 0));
    let gb = |b: usize| b as f64 / 1e9;
    Error::OutOfMemory {
        device: format!(
            "{device} (\"{}\": {:.2} GB free of {:.2} GB)",
            backend.name,
            gb(free),
            gb(total)
        ),
        requested: bytes,
        in_use: device.memory().current(),
        limit: device.memory().limit().unwrap_or(total),
    }
}

/// A temporary device buffer (workspace, partial sums, labels) charged to its device while it
/// lives.
#[derive(Debug)]
pub(crate) struct Scratch<T> {
    pub(crate) buf: CudaSlice<T>,
    _charge: Reservation,
    backend: Arc<Backend>,
}

impl<T> Drop for Scratch<T> {
    fn drop(&mut self) {
        self.backend.bind_quiet();
    }
}

/// `len` uninitialised elements of scratch memory on `device`.
pub(crate) fn scratch<T: DeviceRepr>(device: &Device, len: usize) -> Result<Scratch<T>> {
    let cu = device.cuda_handle("scratch")?;
    let bytes = len * std::mem::size_of::<T>();
    let charge = device.reserve(bytes)?;
    let buf = cu
        .backend
        .alloc::<T>(len)
        .map_err(|e| alloc_err(device, &cu.backend, bytes, e))?;
    Ok(Scratch {
        buf,
        _charge: charge,
        backend: cu.backend.clone(),
    })
}

/// A convolution's workspace for one call: none, its own, or the device handle's shared one
/// (held locked for the call).
pub(crate) enum Workspace<'a> {
    /// No workspace (zero bytes).
    None,
    /// Allocated for this call, freed after it.
    Owned(Scratch<u8>),
    /// The handle's persistent workspace ([`CudaOptions::persistent_workspace`]).
    Shared(std::sync::MutexGuard<'a, Option<Scratch<u8>>>),
}

impl Workspace<'_> {
    /// The address and size to pass to cuDNN.
    pub(crate) fn ptr(&mut self, be: &Backend) -> (*mut std::ffi::c_void, usize) {
        let scratch = match self {
            Workspace::None => None,
            Workspace::Owned(s) => Some(s),
            Workspace::Shared(g) => g.as_mut(),
        };
        match scratch {
            Some(w) => {
                let len = w.buf.len();
                (mptr(be, &mut w.buf), len)
            }
            None => (std::ptr::null_mut(), 0),
        }
    }
}

/// A workspace of at least `bytes` for one convolution call on `device`: the handle's shared
/// one (grown to `bytes` if smaller) under [`CudaOptions::persistent_workspace`], else one of its
/// own.
pub(crate) fn conv_workspace<'a>(
    cu: &'a CudaHandle,
    device: &Device,
    bytes: usize,
) -> Result<Workspace<'a>> {
    if bytes == 0 {
        return Ok(Workspace::None);
    }
    if !cu.options.persistent_workspace {
        return scratch::<u8>(device, bytes).map(Workspace::Owned);
    }
    let mut guard = cu
        .shared_workspace
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.as_ref().is_none_or(|w| w.buf.len() < bytes) {
        // Free the smaller one first so the two are never charged at once.
        *guard = None;
        *guard = Some(scratch::<u8>(device, bytes)?);
    }
    Ok(Workspace::Shared(guard))
}

/// Class indices (labels) on a GPU, as `i32`, charged to the device while they live.
pub(crate) struct Indices(pub(crate) Scratch<i32>);

/// `values` (each checked by the caller to fit `i32`) copied to `device`.
pub(crate) fn upload_indices(device: &Device, values: &[usize]) -> Result<Indices> {
    let as_i32: Vec<i32> = values
        .iter()
        .map(|&y| {
            i32::try_from(y).map_err(|_| Error::invalid("labels", format!("label {y} exceeds i32")))
        })
        .collect::<Result<_>>()?;
    scratch_from_host::<i32>(device, &as_i32).map(Indices)
}

/// Copies host values to a new scratch buffer (labels and other small inputs).
pub(crate) fn scratch_from_host<T: DeviceRepr>(
    device: &Device,
    values: &[T],
) -> Result<Scratch<T>> {
    let cu = device.cuda_handle("scratch")?;
    let mut s = scratch::<T>(device, values.len())?;
    if !values.is_empty() {
        cu.backend
            .stream
            .memcpy_htod(values, &mut s.buf)
            .map_err(|e| driver_err("cuMemcpyHtoDAsync", e))?;
    }
    Ok(s)
}

/// A device address as the `const void*` raw cuDNN / cuBLAS calls take.
pub(crate) fn cptr<T>(be: &Backend, s: &CudaSlice<T>) -> *const std::ffi::c_void {
    be.ptr(s) as *const std::ffi::c_void
}

/// A device address as the `void*` raw cuDNN / cuBLAS calls write through.
pub(crate) fn mptr<T>(be: &Backend, s: &mut CudaSlice<T>) -> *mut std::ffi::c_void {
    be.ptr(&*s) as *mut std::ffi::c_void
}

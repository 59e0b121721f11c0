//! cuDNN: the handle of one GPU and caches of descriptors and convolution plans, all behind one
//! mutex (a cuDNN handle must not be used by two threads at once). Descriptors are created once
//! per shape and reused; a convolution plan also holds the algorithms chosen for its shape.

use super::error::cudnn_err;
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::cudnn::{result, sys};
use cudarc::driver::CudaStream;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// cuDNN's data type of a dtype.
pub(crate) fn data_type(dtype: DType) -> sys::cudnnDataType_t {
    match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F64 => sys::cudnnDataType_t::CUDNN_DATA_DOUBLE,
    }
}

/// A dimension as cuDNN's `int`, or an error for a tensor too large for cuDNN.
fn dim(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::invalid(op, format!("dimension {v} exceeds cuDNN's int range")))
}

fn dims4(op: &'static str, d: [usize; 4]) -> Result<[i32; 4]> {
    Ok([
        dim(op, d[0])?,
        dim(op, d[1])?,
        dim(op, d[2])?,
        dim(op, d[3])?,
    ])
}

/// A 4-d NCHW tensor descriptor.
#[derive(Debug)]
pub(crate) struct TensorDesc(pub(crate) sys::cudnnTensorDescriptor_t);
/// A 4-d KCRS filter descriptor.
#[derive(Debug)]
pub(crate) struct FilterDesc(pub(crate) sys::cudnnFilterDescriptor_t);
/// A 2-d convolution descriptor.
#[derive(Debug)]
pub(crate) struct ConvDesc(pub(crate) sys::cudnnConvolutionDescriptor_t);
/// A 2-d pooling descriptor.
#[derive(Debug)]
pub(crate) struct PoolDesc(pub(crate) sys::cudnnPoolingDescriptor_t);

// SAFETY: descriptors are host-side parameter blocks; they are only read or changed while the
// owning `Dnn` mutex is held, so no two threads use one at the same time.
unsafe impl Send for TensorDesc {}
unsafe impl Sync for TensorDesc {}
unsafe impl Send for FilterDesc {}
unsafe impl Sync for FilterDesc {}
unsafe impl Send for ConvDesc {}
unsafe impl Sync for ConvDesc {}
unsafe impl Send for PoolDesc {}
unsafe impl Sync for PoolDesc {}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}
impl Drop for PoolDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreatePoolingDescriptor and destroyed only here.
        let _ = unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

impl TensorDesc {
    fn new(op: &'static str, dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                data_type(dtype),
                dims4(op, dims)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetTensor4dDescriptor", e))?;
        Ok(d)
    }

    /// A 4-d descriptor of `dims` with explicit element `strides` (a view into a larger buffer).
    fn strided(
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Result<Self> {
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_tensor4d_descriptor_ex(
                d.0,
                data_type(dtype),
                dims4(op, dims)?,
                dims4(op, strides)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetTensor4dDescriptorEx", e))?;
        Ok(d)
    }
}

impl FilterDesc {
    fn new(op: &'static str, dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let d = FilterDesc(
            result::create_filter_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateFilterDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_filter4d_descriptor(
                d.0,
                data_type(dtype),
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                dims4(op, dims)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetFilter4dDescriptor", e))?;
        Ok(d)
    }
}

/// One algorithm choice of a convolution direction: the algorithm, the math type to run it
/// with, and its workspace bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Choice<A> {
    pub(crate) algo: A,
    pub(crate) math: sys::cudnnMathType_t,
    pub(crate) workspace: usize,
}

/// What picks a convolution plan: dtype, shapes, stride, padding and the device's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    pub(crate) dtype: DType,
    pub(crate) x: [usize; 4],
    pub(crate) w: [usize; 4],
    pub(crate) y: [usize; 4],
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) tf32: bool,
    pub(crate) workspace_limit: usize,
}

/// The descriptors and algorithms of one convolution shape (cached per [`ConvKey`]).
#[derive(Debug)]
pub(crate) struct ConvPlan {
    pub(crate) x: TensorDesc,
    pub(crate) w: FilterDesc,
    pub(crate) y: TensorDesc,
    /// `[1, cout, 1, 1]`: the bias, broadcast over the output.
    pub(crate) bias: TensorDesc,
    pub(crate) conv: ConvDesc,
    pub(crate) fwd: Choice<sys::cudnnConvolutionFwdAlgo_t>,
    pub(crate) bwd_data: Choice<sys::cudnnConvolutionBwdDataAlgo_t>,
    pub(crate) bwd_filter: Choice<sys::cudnnConvolutionBwdFilterAlgo_t>,
    /// Each direction's algorithm as cuDNN's `Find` measured it, once asked for
    /// ([`crate::CudaOptions::measure_conv_algorithms`]).
    pub(crate) found_fwd: OnceLock<Choice<sys::cudnnConvolutionFwdAlgo_t>>,
    pub(crate) found_bwd_data: OnceLock<Choice<sys::cudnnConvolutionBwdDataAlgo_t>>,
    pub(crate) found_bwd_filter: OnceLock<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>>,
}

/// The buffers of one convolution call, for cuDNN's `Find` to run the algorithms on: the two
/// operands (x and w forward, w and dy backward-data, x and dy backward-filter), the output it
/// may overwrite (every call writes it with beta = 0 right after) and a workspace of the limit.
pub(crate) struct FindArgs {
    pub(crate) a: *const c_void,
    pub(crate) b: *const c_void,
    pub(crate) out: *mut c_void,
    pub(crate) ws: *mut c_void,
    pub(crate) ws_bytes: usize,
}

/// What a `Find` call needs besides the buffers: the handle, the workspace limit and whether
/// math must be strict fp32.
#[derive(Clone, Copy)]
pub(crate) struct FindContext {
    pub(crate) handle: sys::cudnnHandle_t,
    pub(crate) limit: usize,
    pub(crate) strict: bool,
}

impl FindContext {
    fn math(&self) -> sys::cudnnMathType_t {
        if self.strict {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        }
    }

    /// The fastest usable measured candidate within the limit, as a [`Choice`].
    fn choose<A: Copy>(&self, cands: &[Candidate<A>], dir: &str) -> Result<Choice<A>> {
        let (algo, workspace, m) = pick(cands, self.limit, self.strict).ok_or_else(|| {
            Error::Backend(format!("cuDNN Find: no usable {dir} convolution algorithm"))
        })?;
        let math = if self.strict {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            m
        };
        Ok(Choice {
            algo,
            math,
            workspace,
        })
    }
}

/// What a cuDNN `Find` result row carries: the algorithm, its status, workspace and math type
/// (the three directions' perf structs have the same fields under different types).
trait FindResult: Copy {
    type Algo: Copy;
    fn candidate(&self) -> Candidate<Self::Algo>;
}

macro_rules! find_result {
    ($perf:ty, $algo:ty) => {
        impl FindResult for $perf {
            type Algo = $algo;
            fn candidate(&self) -> Candidate<$algo> {
                (self.algo, self.status, self.memory, self.mathType)
            }
        }
    };
}
find_result!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t
);
find_result!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t
);
find_result!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t
);

/// The choice cached in `cell`, or the one a `Find` run makes: `run` fills up to `requested`
/// results (fastest first) and says how many; the fastest usable within the limit is kept.
fn found<P: FindResult>(
    cell: &OnceLock<Choice<P::Algo>>,
    cx: FindContext,
    (dir, api, requested): (&str, &'static str, i32),
    run: impl FnOnce(*mut P, &mut i32) -> sys::cudnnStatus_t,
) -> Result<Choice<P::Algo>> {
    if let Some(c) = cell.get() {
        return Ok(*c);
    }
    // SAFETY: an all-zero perf struct is a valid value (algorithm 0, status success, math 0).
    let mut perf: Vec<P> = vec![unsafe { std::mem::zeroed() }; requested as usize];
    let mut returned = 0i32;
    run(perf.as_mut_ptr(), &mut returned)
        .result()
        .map_err(|e| cudnn_err(api, e))?;
    let cands: Vec<_> = perf[..returned.clamp(0, requested) as usize]
        .iter()
        .map(FindResult::candidate)
        .collect();
    let c = cx.choose(&cands, dir)?;
    Ok(*cell.get_or_init(|| c))
}

impl ConvPlan {
    /// The forward algorithm cuDNN's `Find` measures fastest on these buffers (`a`: x, `b`: w,
    /// `out`: y), run once per plan.
    pub(crate) fn find_fwd(
        &self,
        cx: FindContext,
        a: &FindArgs,
    ) -> Result<Choice<sys::cudnnConvolutionFwdAlgo_t>> {
        self.set_math(cx.math())?;
        let n = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as i32;
        let api = "cudnnFindConvolutionForwardAlgorithmEx";
        // SAFETY (the call): the descriptors are alive and match the buffers of `a` (made from
        // the same shapes); the workspace holds `a.ws_bytes`; the handle is locked by the caller;
        // the results array holds `n` entries.
        found(
            &self.found_fwd,
            cx,
            ("forward", api, n),
            |perf, returned| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    cx.handle,
                    self.x.0,
                    a.a,
                    self.w.0,
                    a.b,
                    self.conv.0,
                    self.y.0,
                    a.out,
                    n,
                    returned,
                    perf,
                    a.ws,
                    a.ws_bytes,
                )
            },
        )
    }

    /// The backward-data algorithm cuDNN's `Find` measures fastest (`a`: w, `b`: dy, `out`:
    /// dx), run once per plan.
    pub(crate) fn find_bwd_data(
        &self,
        cx: FindContext,
        a: &FindArgs,
    ) -> Result<Choice<sys::cudnnConvolutionBwdDataAlgo_t>> {
        self.set_math(cx.math())?;
        let n = sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as i32;
        let api = "cudnnFindConvolutionBackwardDataAlgorithmEx";
        // SAFETY: as in `find_fwd`.
        found(
            &self.found_bwd_data,
            cx,
            ("backward-data", api, n),
            |perf, returned| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                    cx.handle,
                    self.w.0,
                    a.a,
                    self.y.0,
                    a.b,
                    self.conv.0,
                    self.x.0,
                    a.out,
                    n,
                    returned,
                    perf,
                    a.ws,
                    a.ws_bytes,
                )
            },
        )
    }

    /// The backward-filter algorithm cuDNN's `Find` measures fastest (`a`: x, `b`: dy, `out`:
    /// dw), run once per plan.
    pub(crate) fn find_bwd_filter(
        &self,
        cx: FindContext,
        a: &FindArgs,
    ) -> Result<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>> {
        self.set_math(cx.math())?;
        let n =
            sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as i32;
        let api = "cudnnFindConvolutionBackwardFilterAlgorithmEx";
        // SAFETY: as in `find_fwd`.
        found(
            &self.found_bwd_filter,
            cx,
            ("backward-filter", api, n),
            |perf, returned| unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    cx.handle,
                    self.x.0,
                    a.a,
                    self.y.0,
                    a.b,
                    self.conv.0,
                    self.w.0,
                    a.out,
                    n,
                    returned,
                    perf,
                    a.ws,
                    a.ws_bytes,
                )
            },
        )
    }

    /// Sets the math type a direction was chosen with on the convolution descriptor (it differs
    /// between directions only with TF32 allowed). Call with the `Dnn` lock held.
    pub(crate) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<()> {
        // SAFETY: the descriptor is alive (owned by `self`) and used under the `Dnn` lock.
        unsafe { result::set_convolution_math_type(self.conv.0, math) }
            .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))
    }
}

/// A heuristic candidate: algorithm, status, workspace bytes, math type.
type Candidate<A> = (A, sys::cudnnStatus_t, usize, sys::cudnnMathType_t);

/// The first usable candidate (cuDNN lists them fastest first) whose workspace fits `limit`;
/// if none fits, the usable one with the smallest workspace. Strict fp32 admits only
/// candidates that run without tensor-op math.
fn pick<A: Copy>(
    cands: &[Candidate<A>],
    limit: usize,
    strict: bool,
) -> Option<(A, usize, sys::cudnnMathType_t)> {
    use sys::cudnnMathType_t as M;
    let usable: Vec<&Candidate<A>> = cands
        .iter()
        .filter(|c| c.1 == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
        .filter(|c| !strict || matches!(c.3, M::CUDNN_FMA_MATH | M::CUDNN_DEFAULT_MATH))
        .collect();
    usable
        .iter()
        .find(|c| c.2 <= limit)
        .or_else(|| usable.iter().min_by_key(|c| c.2))
        .map(|c| (c.0, c.2, c.3))
}

/// The cuDNN state of one GPU. Use only with the owning mutex held.
#[derive(Debug)]
pub(crate) struct Dnn {
    pub(crate) handle: sys::cudnnHandle_t,
    tensors: HashMap<(DType, [usize; 4]), Arc<TensorDesc>>,
    strided: HashMap<(DType, [usize; 4], [usize; 4]), Arc<TensorDesc>>,
    bn: HashMap<(DType, [usize; 4]), Arc<TensorDesc>>,
    pools: HashMap<(sys::cudnnPoolingMode_t, usize, usize, usize), Arc<PoolDesc>>,
    convs: HashMap<ConvKey, Arc<ConvPlan>>,
}

// SAFETY: the handle and descriptors are only used while the `Mutex<Dnn>` that owns this value
// is locked, so moving it between threads is sound (cuDNN forbids concurrent use of a handle,
// not use from different threads one after another).
unsafe impl Send for Dnn {}

impl Drop for Dnn {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: created by cudnnCreate and destroyed only here.
            let _ = unsafe { result::destroy_handle(self.handle) };
        }
    }
}

impl Dnn {
    /// A cuDNN handle that runs its work on `stream`.
    pub(crate) fn new(stream: &CudaStream) -> Result<Self> {
        let handle = result::create_handle().map_err(|e| cudnn_err("cudnnCreate", e))?;
        let dnn = Dnn {
            handle,
            tensors: HashMap::new(),
            strided: HashMap::new(),
            bn: HashMap::new(),
            pools: HashMap::new(),
            convs: HashMap::new(),
        };
        // SAFETY: the handle is valid and the stream outlives it (the backend owns both).
        unsafe { result::set_stream(dnn.handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| cudnn_err("cudnnSetStream", e))?;
        Ok(dnn)
    }

    /// The NCHW descriptor of a tensor of `dims`.
    pub(crate) fn tensor(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        if let Some(d) = self.tensors.get(&(dtype, dims)) {
            return Ok(d.clone());
        }
        let d = Arc::new(TensorDesc::new(op, dtype, dims)?);
        self.tensors.insert((dtype, dims), d.clone());
        Ok(d)
    }

    /// The descriptor of a strided 4-d view: `dims` with element `strides` (for example a
    /// channel slice `[n, c, h, w]` of an NCHW buffer of `C` channels: strides
    /// `[C*h*w, h*w, w, 1]`).
    pub(crate) fn tensor_strided(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        let key = (dtype, dims, strides);
        if let Some(d) = self.strided.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(TensorDesc::strided(op, dtype, dims, strides)?);
        self.strided.insert(key, d.clone());
        Ok(d)
    }

    /// The per-channel (`[1, C, 1, 1]`) parameter descriptor of spatial batch norm over `dims`.
    pub(crate) fn bn_param(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        if let Some(d) = self.bn.get(&(dtype, dims)) {
            return Ok(d.clone());
        }
        let x = self.tensor(op, dtype, dims)?;
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: both descriptors are alive.
        unsafe {
            sys::cudnnDeriveBNTensorDescriptor(
                d.0,
                x.0,
                sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnDeriveBNTensorDescriptor", e))?;
        let d = Arc::new(d);
        self.bn.insert((dtype, dims), d.clone());
        Ok(d)
    }

    /// A square pooling window.
    pub(crate) fn pool(
        &mut self,
        op: &'static str,
        mode: sys::cudnnPoolingMode_t,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Arc<PoolDesc>> {
        let key = (mode, kernel, stride, padding);
        if let Some(d) = self.pools.get(&key) {
            return Ok(d.clone());
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` receives a new descriptor.
        unsafe { sys::cudnnCreatePoolingDescriptor(&mut raw) }
            .result()
            .map_err(|e| cudnn_err("cudnnCreatePoolingDescriptor", e))?;
        let d = PoolDesc(raw);
        let (k, s, p) = (dim(op, kernel)?, dim(op, stride)?, dim(op, padding)?);
        // SAFETY: `d.0` was just created.
        unsafe {
            sys::cudnnSetPooling2dDescriptor(
                d.0,
                mode,
                sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                k,
                k,
                p,
                p,
                s,
                s,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnSetPooling2dDescriptor", e))?;
        let d = Arc::new(d);
        self.pools.insert(key, d.clone());
        Ok(d)
    }

    /// The plan of a convolution shape: descriptors plus the algorithm of each direction, chosen
    /// by cuDNN's heuristics within the workspace limit (strict fp32 unless `key.tf32`).
    pub(crate) fn conv(&mut self, key: ConvKey) -> Result<Arc<ConvPlan>> {
        if let Some(p) = self.convs.get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(self.new_plan(key)?);
        self.convs.insert(key, plan.clone());
        Ok(plan)
    }

    fn new_plan(&mut self, key: ConvKey) -> Result<ConvPlan> {
        const OP: &str = "conv2d";
        use sys::cudnnMathType_t as M;
        let x = TensorDesc::new(OP, key.dtype, key.x)?;
        let w = FilterDesc::new(OP, key.dtype, key.w)?;
        let y = TensorDesc::new(OP, key.dtype, key.y)?;
        let bias = TensorDesc::new(OP, key.dtype, [1, key.w[0], 1, 1])?;
        let conv = ConvDesc(
            result::create_convolution_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateConvolutionDescriptor", e))?,
        );
        let (p, s) = (dim(OP, key.padding)?, dim(OP, key.stride)?);
        // SAFETY: `conv.0` was just created.
        unsafe {
            result::set_convolution2d_descriptor(
                conv.0,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                data_type(key.dtype),
            )
        }
        .map_err(|e| cudnn_err("cudnnSetConvolution2dDescriptor", e))?;
        // Strict fp32: FMA math only (no TF32 tensor cores); TF32 allowed: cuDNN's default.
        let strict = !key.tf32;
        let math = if strict {
            M::CUDNN_FMA_MATH
        } else {
            M::CUDNN_DEFAULT_MATH
        };
        // SAFETY: descriptor alive.
        unsafe { result::set_convolution_math_type(conv.0, math) }
            .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))?;
        let h = self.handle;
        let limit = key.workspace_limit;
        let none = |dir: &str| {
            Error::Backend(format!(
                "cuDNN: no {dir} convolution algorithm supports {key:?}"
            ))
        };
        let keep_math = |m: M| if strict { M::CUDNN_FMA_MATH } else { m };

        // SAFETY (the three blocks below): every descriptor is alive; the perf arrays hold
        // `requested` entries, of which cuDNN fills `returned`; an all-zero perf struct is valid
        // (algorithm 0, CUDNN_STATUS_SUCCESS, math 0, determinism 0 are all defined values).
        let fwd = unsafe {
            let requested = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as i32;
            let mut perf: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> =
                vec![std::mem::zeroed(); requested as usize];
            let mut returned = 0i32;
            sys::cudnnGetConvolutionForwardAlgorithm_v7(
                h,
                x.0,
                w.0,
                conv.0,
                y.0,
                requested,
                &mut returned,
                perf.as_mut_ptr(),
            )
            .result()
            .map_err(|e| cudnn_err("cudnnGetConvolutionForwardAlgorithm_v7", e))?;
            let cands: Vec<_> = perf[..returned.clamp(0, requested) as usize]
                .iter()
                .map(|p| (p.algo, p.status, p.memory, p.mathType))
                .collect();
            let (algo, mem, m) = pick(&cands, limit, strict).ok_or_else(|| none("forward"))?;
            result::set_convolution_math_type(conv.0, keep_math(m))
                .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))?;
            let mut size = 0usize;
            sys::cudnnGetConvolutionForwardWorkspaceSize(h, x.0, w.0, conv.0, y.0, algo, &mut size)
                .result()
                .map_err(|e| cudnn_err("cudnnGetConvolutionForwardWorkspaceSize", e))?;
            Choice {
                algo,
                math: keep_math(m),
                workspace: size.max(mem),
            }
        };
        let bwd_data = unsafe {
            let requested =
                sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as i32;
            let mut perf: Vec<sys::cudnnConvolutionBwdDataAlgoPerf_t> =
                vec![std::mem::zeroed(); requested as usize];
            let mut returned = 0i32;
            sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                h,
                w.0,
                y.0,
                conv.0,
                x.0,
                requested,
                &mut returned,
                perf.as_mut_ptr(),
            )
            .result()
            .map_err(|e| cudnn_err("cudnnGetConvolutionBackwardDataAlgorithm_v7", e))?;
            let cands: Vec<_> = perf[..returned.clamp(0, requested) as usize]
                .iter()
                .map(|p| (p.algo, p.status, p.memory, p.mathType))
                .collect();
            let (algo, mem, m) =
                pick(&cands, limit, strict).ok_or_else(|| none("backward-data"))?;
            result::set_convolution_math_type(conv.0, keep_math(m))
                .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))?;
            let mut size = 0usize;
            sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                h, w.0, y.0, conv.0, x.0, algo, &mut size,
            )
            .result()
            .map_err(|e| cudnn_err("cudnnGetConvolutionBackwardDataWorkspaceSize", e))?;
            Choice {
                algo,
                math: keep_math(m),
                workspace: size.max(mem),
            }
        };
        let bwd_filter = unsafe {
            let requested =
                sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
                    as i32;
            let mut perf: Vec<sys::cudnnConvolutionBwdFilterAlgoPerf_t> =
                vec![std::mem::zeroed(); requested as usize];
            let mut returned = 0i32;
            sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                h,
                x.0,
                y.0,
                conv.0,
                w.0,
                requested,
                &mut returned,
                perf.as_mut_ptr(),
            )
            .result()
            .map_err(|e| cudnn_err("cudnnGetConvolutionBackwardFilterAlgorithm_v7", e))?;
            let cands: Vec<_> = perf[..returned.clamp(0, requested) as usize]
                .iter()
                .map(|p| (p.algo, p.status, p.memory, p.mathType))
                .collect();
            let (algo, mem, m) =
                pick(&cands, limit, strict).ok_or_else(|| none("backward-filter"))?;
            result::set_convolution_math_type(conv.0, keep_math(m))
                .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))?;
            let mut size = 0usize;
            sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                h, x.0, y.0, conv.0, w.0, algo, &mut size,
            )
            .result()
            .map_err(|e| cudnn_err("cudnnGetConvolutionBackwardFilterWorkspaceSize", e))?;
            Choice {
                algo,
                math: keep_math(m),
                workspace: size.max(mem),
            }
        };
        Ok(ConvPlan {
            x,
            w,
            y,
            bias,
            conv,
            fwd,
            bwd_data,
            bwd_filter,
            found_fwd: OnceLock::new(),
            found_bwd_data: OnceLock::new(),
            found_bwd_filter: OnceLock::new(),
        })
    }
}

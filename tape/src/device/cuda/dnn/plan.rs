//! Convolution plans: the descriptors of one convolution shape and the algorithm of each
//! direction, chosen by cuDNN's heuristics when the plan is made (`Find`'s measured choices are
//! in [`super::find`]).

use super::super::error::cudnn_err;
use super::desc::{ConvDesc, FilterDesc, TensorDesc};
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::cudnn::sys;
use std::sync::OnceLock;

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

impl ConvKey {
    /// Whether the calls must run strict fp32 math (FMA, no tensor-op math): `f32` and `f64`
    /// data without TF32 allowed. 16-bit data never is: tensor cores multiply 16-bit operands
    /// exactly and sum in `f32`, which is the precision the compute type asks for anyway.
    pub(crate) fn strict(&self) -> bool {
        !self.tf32 && !self.dtype.is_half()
    }
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
    /// Whether calls run strict fp32 math ([`ConvKey::strict`]).
    pub(crate) strict: bool,
    pub(crate) fwd: Choice<sys::cudnnConvolutionFwdAlgo_t>,
    pub(crate) bwd_data: Choice<sys::cudnnConvolutionBwdDataAlgo_t>,
    pub(crate) bwd_filter: Choice<sys::cudnnConvolutionBwdFilterAlgo_t>,
    /// Each direction's algorithm as cuDNN's `Find` measured it, once asked for
    /// ([`crate::CudaOptions::measure_conv_algorithms`]).
    pub(crate) found_fwd: OnceLock<Choice<sys::cudnnConvolutionFwdAlgo_t>>,
    pub(crate) found_bwd_data: OnceLock<Choice<sys::cudnnConvolutionBwdDataAlgo_t>>,
    pub(crate) found_bwd_filter: OnceLock<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>>,
}

/// What a cuDNN `Find` result row carries: the algorithm, its status, workspace and math type
/// (the three directions' perf structs have the same fields under different types).
pub(super) trait FindResult: Copy {
    /// The direction's algorithm type.
    type Algo: Copy;
    /// The row as a [`Candidate`].
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

/// A heuristic candidate: algorithm, status, workspace bytes, math type.
pub(super) type Candidate<A> = (A, sys::cudnnStatus_t, usize, sys::cudnnMathType_t);

/// The first usable candidate (cuDNN lists them fastest first) whose workspace fits `limit`;
/// if none fits, the usable one with the smallest workspace. Strict fp32 admits only
/// candidates that run without tensor-op math.
pub(super) fn pick<A: Copy>(
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

impl ConvPlan {
    /// The descriptors of `key`'s shapes and each direction's algorithm as cuDNN's heuristics
    /// rank them, within the workspace limit (strict fp32 where [`ConvKey::strict`]).
    pub(super) fn new(handle: sys::cudnnHandle_t, key: ConvKey) -> Result<ConvPlan> {
        const OP: &str = "conv2d";
        use sys::cudnnConvolutionBwdDataAlgo_t as D;
        use sys::cudnnConvolutionBwdFilterAlgo_t as F;
        use sys::cudnnConvolutionFwdAlgo_t as W;
        let x = TensorDesc::new(OP, key.dtype, key.x)?;
        let w = FilterDesc::new(OP, key.dtype, key.w)?;
        let y = TensorDesc::new(OP, key.dtype, key.y)?;
        let bias = TensorDesc::new(OP, key.dtype, [1, key.w[0], 1, 1])?;
        let conv = ConvDesc::new(
            OP,
            key.dtype,
            (key.padding, key.stride),
            strict_math(key.strict()),
        )?;
        let (h, c) = (handle, conv.0);
        // SAFETY (the six calls below): every descriptor is alive, `perf` holds `n` entries and
        // the handle is used under the `Dnn` lock.
        let fwd = heuristic(
            &conv,
            &key,
            ("forward", "cudnnGetConvolutionForwardAlgorithm_v7"),
            W::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as i32,
            |n, ret, perf| unsafe {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(h, x.0, w.0, c, y.0, n, ret, perf)
            },
            (
                "cudnnGetConvolutionForwardWorkspaceSize",
                |algo, size| unsafe {
                    sys::cudnnGetConvolutionForwardWorkspaceSize(h, x.0, w.0, c, y.0, algo, size)
                },
            ),
        )?;
        let bwd_data = heuristic(
            &conv,
            &key,
            (
                "backward-data",
                "cudnnGetConvolutionBackwardDataAlgorithm_v7",
            ),
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as i32,
            |n, ret, perf| unsafe {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(h, w.0, y.0, c, x.0, n, ret, perf)
            },
            (
                "cudnnGetConvolutionBackwardDataWorkspaceSize",
                |algo, size| unsafe {
                    sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                        h, w.0, y.0, c, x.0, algo, size,
                    )
                },
            ),
        )?;
        let bwd_filter = heuristic(
            &conv,
            &key,
            (
                "backward-filter",
                "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
            ),
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as i32,
            |n, ret, perf| unsafe {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h, x.0, y.0, c, w.0, n, ret, perf,
                )
            },
            (
                "cudnnGetConvolutionBackwardFilterWorkspaceSize",
                |algo, size| unsafe {
                    sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                        h, x.0, y.0, c, w.0, algo, size,
                    )
                },
            ),
        )?;
        Ok(ConvPlan {
            x,
            w,
            y,
            bias,
            conv,
            strict: key.strict(),
            fwd,
            bwd_data,
            bwd_filter,
            found_fwd: OnceLock::new(),
            found_bwd_data: OnceLock::new(),
            found_bwd_filter: OnceLock::new(),
        })
    }

    /// Sets the math type a direction was chosen with on the convolution descriptor (it differs
    /// between directions only with TF32 allowed). Call with the `Dnn` lock held.
    pub(crate) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<()> {
        self.conv.set_math(math)
    }
}

/// The math type every call runs with under strict fp32 (FMA only, no TF32 tensor cores), or
/// cuDNN's default where TF32 is allowed.
pub(super) fn strict_math(strict: bool) -> sys::cudnnMathType_t {
    if strict {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    }
}

/// One direction's heuristic choice: `list` ranks up to `requested` algorithms (fastest first)
/// and says how many it returned; the first usable one within the limit ([`pick`]) is kept,
/// its math type set on `conv`, and `size` gives its workspace bytes.
fn heuristic<P: FindResult>(
    conv: &ConvDesc,
    key: &ConvKey,
    (dir, api): (&str, &'static str),
    requested: i32,
    list: impl FnOnce(i32, &mut i32, *mut P) -> sys::cudnnStatus_t,
    (size_api, size): (
        &'static str,
        impl FnOnce(P::Algo, &mut usize) -> sys::cudnnStatus_t,
    ),
) -> Result<Choice<P::Algo>> {
    let strict = key.strict();
    // SAFETY: an all-zero perf struct is a valid value (algorithm 0, status success, math 0).
    let mut perf: Vec<P> = vec![unsafe { std::mem::zeroed() }; requested as usize];
    let mut returned = 0i32;
    list(requested, &mut returned, perf.as_mut_ptr())
        .result()
        .map_err(|e| cudnn_err(api, e))?;
    let cands: Vec<_> = perf[..returned.clamp(0, requested) as usize]
        .iter()
        .map(FindResult::candidate)
        .collect();
    let (algo, mem, m) = pick(&cands, key.workspace_limit, strict).ok_or_else(|| {
        Error::Backend(format!(
            "cuDNN: no {dir} convolution algorithm supports {key:?}"
        ))
    })?;
    let math = if strict { strict_math(true) } else { m };
    conv.set_math(math)?;
    let mut bytes = 0usize;
    size(algo, &mut bytes)
        .result()
        .map_err(|e| cudnn_err(size_api, e))?;
    Ok(Choice {
        algo,
        math,
        workspace: bytes.max(mem),
    })
}

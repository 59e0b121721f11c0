//! cuDNN's `Find`: each direction's algorithm measured on a convolution call's own buffers, once
//! per plan ([`crate::CudaOptions::measure_conv_algorithms`]).

use super::super::error::cudnn_err;
use super::plan::{pick, strict_math, Candidate, Choice, ConvPlan, FindResult};
use crate::error::{Error, Result};
use cudarc::cudnn::sys;
use std::ffi::c_void;
use std::sync::OnceLock;

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
        strict_math(self.strict)
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
}

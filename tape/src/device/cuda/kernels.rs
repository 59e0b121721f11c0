//! The engine's NVRTC kernels (`kernels.cu`): compiled once per GPU when the device is opened
//! (to a CUBIN for the GPU's architecture, falling back to PTX for the driver to JIT), loaded into
//! the context, and looked up by [`K`] and dtype at launch.

use super::error::driver_err;
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchConfig};
use cudarc::nvrtc;
use std::ffi::{c_char, CString};
use std::sync::Arc;

/// The CUDA source of every kernel.
pub(crate) const SOURCE: &str = include_str!("kernels.cu");

macro_rules! kernel_ids {
    ($($id:ident = $name:literal,)*) => {
        /// A kernel of `kernels.cu` (its `_f32` / `_f64` entry points).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum K { $($id,)* }
        /// Entry-point names without the dtype suffix, in the order of [`K`].
        const NAMES: &[&str] = &[$($name,)*];
    };
}

kernel_ids! {
    Fill = "fill",
    FillScalar = "fill_scalar",
    ReluFwd = "relu_fwd",
    ReluBwd = "relu_bwd",
    Add = "add",
    Mul = "mul",
    Scale = "scale",
    AddAssign = "add_assign",
    Concat = "concat",
    ConcatAdd = "concat_add",
    Split = "split",
    SplitAdd = "split_add",
    ReluMaskPart = "relu_mask_part",
    SumPartial = "sum_partial",
    SumFinal = "sum_final",
    Dropout = "dropout",
    CeLossRows = "ce_loss_rows",
    CeGrad = "ce_grad",
    BnSums = "bn_sums",
    BnScaleGrad = "bn_scale_grad",
    BnInvstd = "bn_invstd",
    GapFwd = "gap_fwd",
    GapBwd = "gap_bwd",
    BiasRows = "bias_rows",
    ColSum = "col_sum",
    SgdMulti = "sgd_multi",
    AdamMulti = "adam_multi",
    NonFiniteMulti = "non_finite_multi",
    CorrectCount = "correct_count",
    SoftmaxFwd = "softmax_fwd",
    SoftmaxBwd = "softmax_bwd",
    LnFwd = "ln_fwd",
    LnBwdInput = "ln_bwd_input",
    LnBwdAffine = "ln_bwd_affine",
    GeluFwd = "gelu_fwd",
    GeluBwd = "gelu_bwd",
    EmbeddingFwd = "embedding_fwd",
    EmbeddingBwd = "embedding_bwd",
    Permute = "permute",
}

/// Threads per block of the element-wise kernels.
pub(crate) const BLOCK: u32 = 256;
/// Threads per block of the reduction kernels (`RBLOCK` in `kernels.cu`).
pub(crate) const RBLOCK: u32 = 256;
/// Most blocks of a grid-stride launch (enough to fill any current GPU several times over).
const MAX_BLOCKS: usize = 1 << 15;
/// Blocks of the first stage of a full sum (`sum_partial`).
pub(crate) const SUM_BLOCKS: usize = 1024;

/// A grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Most blocks a multi-tensor launch gives one tensor (they stride over its elements).
const MULTI_BLOCKS_PER_TENSOR: usize = 64;
/// Most tensors one multi-tensor launch gives their own blocks at once (the grid's y size, at
/// most 65535; the kernels loop over the rest).
const MULTI_TENSORS_AT_ONCE: usize = 4096;

/// A multi-tensor launch over `tensors` tensors, the longest `longest` elements: blocks
/// `(x, t)` work on tensor `t` (and `t + grid.y`, ...), the `x` blocks striding over its
/// elements (`TENSOR_STRIDE` and `GRID_STRIDE` in `kernels.cu`).
pub(crate) fn multi_grid(longest: usize, tensors: usize) -> LaunchConfig {
    let x = longest
        .div_ceil(BLOCK as usize)
        .clamp(1, MULTI_BLOCKS_PER_TENSOR);
    let y = tensors.clamp(1, MULTI_TENSORS_AT_ONCE);
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One reduction block per row / channel (`rows` blocks of [`RBLOCK`] threads).
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (RBLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Most parts one `concat` / `split` launch handles (`MAX_PARTS` in `kernels.cu`).
pub(crate) const MAX_PARTS: usize = 32;

/// Up to [`MAX_PARTS`] tensors of a concatenation: device addresses, row widths and offsets,
/// passed by value to `concat` / `split` (the layout of `PartList` in `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartList {
    pub(crate) ptr: [u64; MAX_PARTS],
    pub(crate) width: [u64; MAX_PARTS],
    pub(crate) offset: [u64; MAX_PARTS],
}

impl Default for PartList {
    fn default() -> Self {
        PartList {
            ptr: [0; MAX_PARTS],
            width: [0; MAX_PARTS],
            offset: [0; MAX_PARTS],
        }
    }
}

// SAFETY: `PartList` is `#[repr(C)]` plain data (u64 arrays) with the exact layout of the
// kernel's `struct PartList` (three arrays of 32 unsigned 64-bit integers, 8-byte aligned).
unsafe impl DeviceRepr for PartList {}

/// The loaded kernels of one context.
#[derive(Debug)]
pub(crate) struct Kernels {
    funcs: Vec<CudaFunction>,
    _module: Arc<CudaModule>,
    /// How the module was built (for diagnostics): `cubin sm_90` or `ptx compute_90`.
    pub(crate) build: String,
}

impl Kernels {
    /// Compiles [`SOURCE`] for compute capability `cc` and loads every entry point.
    pub(crate) fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Self> {
        let (major, minor) = cc;
        let sm = format!("sm_{major}{minor}");
        // A CUBIN needs no JIT by the driver (and no PTX ISA the driver may not know yet).
        let (module, build) = match compile_cubin(SOURCE, &sm) {
            Ok(cubin) => match ctx.load_module(nvrtc::Ptx::from_binary(cubin)) {
                Ok(m) => (m, format!("cubin {sm}")),
                Err(e) => load_ptx(ctx, cc).map_err(|p| {
                    Error::Backend(format!(
                        "{p} (loading the {sm} CUBIN failed too: {})",
                        driver_err("cuModuleLoadData", e)
                    ))
                })?,
            },
            Err(cubin_err) => load_ptx(ctx, cc).map_err(|p| {
                Error::Backend(format!("{p} (CUBIN for {sm} failed too: {cubin_err})"))
            })?,
        };
        let mut funcs = Vec::with_capacity(2 * NAMES.len());
        for name in NAMES {
            for suffix in ["f32", "f64"] {
                let full = format!("{name}_{suffix}");
                let f = module
                    .load_function(&full)
                    .map_err(|e| driver_err("cuModuleGetFunction", e))?;
                funcs.push(f);
            }
        }
        Ok(Kernels {
            funcs,
            _module: module,
            build,
        })
    }

    /// The entry point of kernel `k` for `dtype`.
    pub(crate) fn get(&self, k: K, dtype: DType) -> &CudaFunction {
        let i = 2 * k as usize + usize::from(dtype == DType::F64);
        &self.funcs[i]
    }
}

/// NVRTC options of every build: no contraction into FMAs (CPU-identical rounding).
fn options() -> Vec<String> {
    vec!["--fmad=false".into(), "--std=c++17".into()]
}

/// PTX for `compute_XY`, JIT-compiled by the driver at load.
fn load_ptx(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
) -> Result<(Arc<CudaModule>, String)> {
    let arch: &'static str = match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (10, 3) => "compute_103",
        (12, 0) => "compute_120",
        (12, 1) => "compute_121",
        // NVRTC picks its default (oldest supported) virtual architecture: runs on newer GPUs.
        _ => "",
    };
    let opts = nvrtc::CompileOptions {
        arch: (!arch.is_empty()).then_some(arch),
        options: options(),
        name: Some("tape_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| match e {
        nvrtc::CompileError::CompileError { nvrtc, log, .. } => Error::Backend(format!(
            "NVRTC compiling the engine's kernels: {:?}: {}",
            nvrtc.0,
            log.to_string_lossy()
        )),
        other => Error::Backend(format!("NVRTC compiling the engine's kernels: {other:?}")),
    })?;
    let module = ctx
        .load_module(ptx)
        .map_err(|e| driver_err("cuModuleLoadData (PTX)", e))?;
    Ok((
        module,
        format!("ptx {}", if arch.is_empty() { "default" } else { arch }),
    ))
}

/// A CUBIN for `sm_XY` straight from NVRTC (the raw API: cudarc's safe one returns PTX only).
fn compile_cubin(src: &str, sm: &str) -> std::result::Result<Vec<u8>, String> {
    use nvrtc::sys;
    let csrc = CString::new(src).map_err(|e| e.to_string())?;
    let name = CString::new("tape_kernels.cu").map_err(|e| e.to_string())?;
    let prog = nvrtc::result::create_program(&csrc, Some(&name)).map_err(|e| format!("{e:?}"))?;
    let mut opts = options();
    opts.push(format!("--gpu-architecture={sm}"));
    // SAFETY: `prog` was created above and is destroyed exactly once below; the buffers handed to
    // NVRTC are sized from the sizes NVRTC reports.
    unsafe {
        let result = (|| {
            if let Err(e) = nvrtc::result::compile_program(prog, &opts) {
                let log = nvrtc::result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&bytes)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                return Err(format!("nvrtcCompileProgram: {:?}: {log}", e.0));
            }
            let mut size = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut size);
            if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                return Err(format!("nvrtcGetCUBINSize: {r:?} (size {size})"));
            }
            let mut buf = vec![0u8; size];
            let r = sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcGetCUBIN: {r:?}"));
            }
            Ok(buf)
        })();
        let _ = nvrtc::result::destroy_program(prog);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile with NVRTC (no GPU needed) and export every entry point the engine
    /// looks up; skipped where libnvrtc cannot be loaded.
    #[test]
    fn kernels_compile_and_export_every_entry_point() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { nvrtc::sys::is_culib_present() } {
            crate::testing::skipped("no NVRTC", "libnvrtc cannot be loaded");
            return;
        }
        let opts = nvrtc::CompileOptions {
            arch: Some("compute_90"),
            options: options(),
            ..Default::default()
        };
        let ptx = nvrtc::compile_ptx_with_opts(SOURCE, opts)
            .expect("PTX")
            .to_src();
        for name in NAMES {
            for suffix in ["f32", "f64"] {
                let entry = format!(".entry {name}_{suffix}(");
                assert!(ptx.contains(&entry), "missing {entry}");
            }
        }
        let cubin = compile_cubin(SOURCE, "sm_90").expect("CUBIN");
        assert!(cubin.len() > 1000);
    }

    #[test]
    fn part_list_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<PartList>(), 3 * 8 * MAX_PARTS);
        assert_eq!(std::mem::align_of::<PartList>(), 8);
    }
}

//! NVRTC: an op's [`Program`] compiled (after [`PRELUDE`]) once per GPU, to a CUBIN for the
//! GPU's architecture, falling back to PTX for the driver to JIT, and loaded into the context.

use super::error::driver_err;
use super::launch::Program;
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc;
use std::ffi::{c_char, CString};
use std::sync::Arc;

/// What every program starts with: the 16-bit types and their load / store conversions, the
/// per-dtype instantiation, integer types, grid-stride loops, block reductions, the
/// concatenation part list, multi-tensor loops.
pub(crate) const PRELUDE: &str = include_str!("prelude.cuh");

/// Every dtype's entry-point suffix, in the order [`Module`] keeps each kernel's entry points:
/// `NAME_f32`, `NAME_f64`, `NAME_bf16`, `NAME_f16` (the instantiations `FOR_EACH_DTYPE` in
/// `prelude.cuh` makes, in the same order).
pub(crate) const SUFFIXES: [(DType, &str); 4] = [
    (DType::F32, "f32"),
    (DType::F64, "f64"),
    (DType::BF16, "bf16"),
    (DType::F16, "f16"),
];

/// The position of `dtype` in [`SUFFIXES`].
fn slot(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F64 => 1,
        DType::BF16 => 2,
        DType::F16 => 3,
    }
}

/// One [`Program`] compiled and loaded into a GPU's context.
#[derive(Debug)]
pub(crate) struct Module {
    /// The program's name (for diagnostics).
    pub(crate) name: &'static str,
    funcs: Vec<CudaFunction>,
    _module: Arc<CudaModule>,
    /// How the module was built (for diagnostics): `cubin sm_90` or `ptx compute_90`.
    pub(crate) build: String,
}

impl Module {
    /// Compiles `program` (after [`PRELUDE`]) for compute capability `cc` and loads every entry
    /// point.
    pub(crate) fn load(ctx: &Arc<CudaContext>, cc: (i32, i32), program: &Program) -> Result<Self> {
        let source = format!("{PRELUDE}\n{}", program.source);
        let (major, minor) = cc;
        let sm = format!("sm_{major}{minor}");
        // A CUBIN needs no JIT by the driver (and no PTX ISA the driver may not know yet).
        let (module, build) = match compile_cubin(&source, &sm) {
            Ok(cubin) => match ctx.load_module(nvrtc::Ptx::from_binary(cubin)) {
                Ok(m) => (m, format!("cubin {sm}")),
                Err(e) => load_ptx(ctx, cc, &source).map_err(|p| {
                    Error::Backend(format!(
                        "{p} (loading the {sm} CUBIN failed too: {})",
                        driver_err("cuModuleLoadData", e)
                    ))
                })?,
            },
            Err(cubin_err) => load_ptx(ctx, cc, &source).map_err(|p| {
                Error::Backend(format!("{p} (CUBIN for {sm} failed too: {cubin_err})"))
            })?,
        };
        let mut funcs = Vec::with_capacity(SUFFIXES.len() * program.kernels.len());
        for name in program.kernels {
            for (_, suffix) in SUFFIXES {
                let full = format!("{name}_{suffix}");
                let f = module
                    .load_function(&full)
                    .map_err(|e| driver_err("cuModuleGetFunction", e))?;
                funcs.push(f);
            }
        }
        Ok(Module {
            name: program.name,
            funcs,
            _module: module,
            build,
        })
    }

    /// The entry point of the program's kernel `index` for `dtype`.
    pub(crate) fn get(&self, index: usize, dtype: DType) -> &CudaFunction {
        &self.funcs[SUFFIXES.len() * index + slot(dtype)]
    }
}

/// NVRTC options of every build: no contraction into FMAs (CPU-identical rounding).
pub(crate) fn options() -> Vec<String> {
    vec!["--fmad=false".into(), "--std=c++17".into()]
}

/// PTX for `compute_XY`, JIT-compiled by the driver at load.
fn load_ptx(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
    source: &str,
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
    let ptx = nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
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
pub(crate) fn compile_cubin(src: &str, sm: &str) -> std::result::Result<Vec<u8>, String> {
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

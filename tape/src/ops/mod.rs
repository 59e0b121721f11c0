//! The ops of the CNNs and the transformer, forward and backward, one folder each. `mod.rs`
//! holds the op's API, its checks, what it saves and its backward rule, written once for every
//! device; the arithmetic runs in device kernels behind the op's kernel trait, declared there with
//! `kernel_trait!` and implemented in `cpu.rs`, `meta.rs` and `cuda.rs` (with the op's NVRTC
//! kernels in `kernels.cu`). Every op takes the tape explicitly and records its backward
//! closure only when the tape records and an input wants a gradient.

mod accuracy;
mod autocast;
mod batch_norm;
mod batch_norm_relu;
mod cast;
mod checks;
mod concat;
mod conv2d;
mod cross_entropy;
mod dropout;
mod elementwise;
mod embedding;
mod finite;
mod gelu;
mod layer_norm;
mod linear;
mod matmul;
mod narrow;
mod permute;
mod pool;
mod reduce;
mod relu;
mod reshape;
mod softmax;
mod weighted;
mod widen;

// conv2d, linear, pooling:
pub use conv2d::{
    conv2d, conv2d_into_storage, conv2d_pass_workspace_bytes, conv2d_workspace_bytes,
    Conv2dOptions, Conv2dPass,
};
pub use linear::linear;
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d};

// batch norm, dropout, concat, cross-entropy:
pub use batch_norm::{batch_norm2d, BatchNormOptions, BatchStatsReducer, RunningStats, SyncPass};
pub use batch_norm_relu::{batch_norm_relu, batch_norm_relu_gathered, batch_norm_relu_prefix};
pub use concat::concat;
pub use cross_entropy::{cross_entropy, cross_entropy_labels};
pub use dropout::dropout;

pub use elementwise::{add, mul, scale};

// mixed precision:
pub use cast::cast;

// Not differentiable, no tape: the step's accuracy count and anomaly flag, kept on the device.
pub use accuracy::correct_count;
pub use finite::{flag_is_set, non_finite, PendingScalar};
pub use reduce::{mean, sum};
pub use relu::relu;
pub use reshape::reshape;

// transformer ops: matmul, softmax, layer norm, GELU, embedding, permute, narrow:
pub use embedding::embedding;
pub use gelu::{gelu, gelu_with, GeluApproximation};
pub use layer_norm::layer_norm;
pub use matmul::{matmul, matmul_with, MatmulOptions};
pub use narrow::{narrow, split};
pub use permute::{permute, transpose, MAX_PERMUTE_DIMS};
pub use softmax::{log_softmax, log_softmax_with, softmax, softmax_with, SoftmaxOptions};

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use crate::device::cuda::{compile_cubin, nvrtc_options, Kernel, Program, PRELUDE, SUFFIXES};
    use cudarc::nvrtc;

    /// One kernel of every op's NVRTC program.
    fn programs() -> Vec<&'static Program> {
        vec![
            crate::primitives::cuda::K::Fill.program(),
            crate::block_storage::cuda::K::Concat.program(),
            crate::ops::elementwise::cuda::K::Add.program(),
            crate::ops::relu::cuda::K::ReluFwd.program(),
            crate::ops::batch_norm_relu::cuda::K::ReluMaskPart.program(),
            crate::ops::reduce::cuda::K::SumFinal.program(),
            crate::ops::dropout::cuda::K::Dropout.program(),
            crate::ops::cross_entropy::cuda::K::CeGrad.program(),
            crate::ops::batch_norm::cuda::K::BnSums.program(),
            crate::ops::pool::cuda::K::GapFwd.program(),
            crate::ops::linear::cuda::K::BiasRows.program(),
            crate::optim::cuda::K::SgdMulti.program(),
            crate::ops::finite::cuda::K::NonFiniteMulti.program(),
            crate::ops::accuracy::cuda::K::CorrectCount.program(),
            crate::ops::softmax::cuda::K::SoftmaxFwd.program(),
            crate::ops::layer_norm::cuda::K::LnFwd.program(),
            crate::ops::gelu::cuda::K::GeluFwd.program(),
            crate::ops::embedding::cuda::K::EmbeddingFwd.program(),
            crate::ops::permute::cuda::K::Permute.program(),
            crate::ops::cast::cuda::K::ToF32.program(),
            crate::ops::conv2d::cuda::K::BiasAdd.program(),
        ]
    }

    /// Every op's program compiles with NVRTC (no GPU needed) after the prelude and exports the
    /// `_f32`, `_f64`, `_bf16` and `_f16` entry points of each kernel its enum names; skipped where libnvrtc
    /// cannot be loaded.
    #[test]
    fn every_program_compiles_and_exports_its_kernels() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { nvrtc::sys::is_culib_present() } {
            // CI sets TAPE_EXPECT_NVRTC=1 where it provides the library: a skip would hide a
            // kernel that no longer compiles.
            assert!(
                std::env::var("TAPE_EXPECT_NVRTC").as_deref() != Ok("1"),
                "TAPE_EXPECT_NVRTC=1 but libnvrtc cannot be loaded"
            );
            crate::testing::skipped("no NVRTC", "libnvrtc cannot be loaded");
            return;
        }
        let programs = programs();
        let mut names: Vec<&str> = programs.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), programs.len(), "program names are unique");
        for p in programs {
            let source = format!("{PRELUDE}\n{}", p.source);
            let opts = nvrtc::CompileOptions {
                arch: Some("compute_90"),
                options: nvrtc_options(),
                ..Default::default()
            };
            let ptx = nvrtc::compile_ptx_with_opts(&source, opts)
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.name))
                .to_src();
            for name in p.kernels {
                for (_, suffix) in SUFFIXES {
                    let entry = format!(".entry {name}_{suffix}(");
                    assert!(ptx.contains(&entry), "{}: missing {entry}", p.name);
                }
            }
            let cubin =
                compile_cubin(&source, "sm_90").unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(cubin.len() > 1000, "{}", p.name);
        }
    }
}

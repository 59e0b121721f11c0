//! Cross-crate examples, benches and tests live in this package; its library holds what they
//! share that belongs to no single crate: the models' benchmark cases on the shared harness and
//! the one-step harness that checks DenseNet against PyTorch's golden files.

pub mod densenet_bench;
pub mod one_step;
pub mod resnet_bench;

/// How a benchmark case runs: its recompute setting and its precision policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaseSetting {
    /// The recompute setting.
    pub mode: checkpoint::Recompute,
    /// The precision policy.
    pub precision: tape::Precision,
}

impl CaseSetting {
    /// `mode` under the `f32` policy.
    pub fn f32(mode: checkpoint::Recompute) -> Self {
        CaseSetting {
            mode,
            precision: tape::Precision::F32,
        }
    }
}

//! Cross-crate examples, benches and tests live in this package; its library holds what they
//! share that belongs to no single crate: the models' benchmark cases on the shared harness and
//! the one-step harness that checks DenseNet against PyTorch's golden files.

pub mod densenet_bench;
pub mod one_step;
pub mod resnet_bench;

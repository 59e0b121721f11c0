//! Cross-crate examples, benches and tests live in this package; its library holds what they
//! share that belongs to no single crate: the models' benchmark cases on the shared harness.

pub mod densenet_bench;
pub mod resnet_bench;

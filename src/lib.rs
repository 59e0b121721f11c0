//! Cross-crate examples, benches and tests live in this package.

//! Optimizers over named [`crate::Parameter`]s with run-time shapes.

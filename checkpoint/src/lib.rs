//! `checkpoint`: trade compute for memory on any model written on the `tape` engine.
//!
//! - [`checkpoint`] runs a segment without recording (keeping only its inputs) and re-runs it
//!   inside backward, in the recompute phase, to get its gradients.
//! - [`checkpoint_sequential`] and [`run_plan`] apply it to a chain of [`Layer`]s; a [`Policy`]
//!   says which ops' outputs to keep.
//! - [`planner`] picks what to recompute so that a predicted peak fits a memory budget at the
//!   least recompute cost (exact dynamic programming).
//!
//! Only `tape`'s public API is used: `Tape::record_always`, `Tape::backward_from` and
//! `Gradients::merge`.

pub mod planner;
mod segment;
mod sequential;

pub use segment::{checkpoint, checkpoint_with, CheckpointOptions, Fault};
pub use sequential::{checkpoint_sequential, run_plan, run_with_policy, Layer, OpKind, Policy};

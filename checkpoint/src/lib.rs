//! `checkpoint`: trade compute for memory on any model written on the `tape` engine.
//!
//! - [`checkpoint`] runs a segment without recording (keeping only its inputs) and re-runs it
//!   inside backward, in the recompute phase, to get its gradients.
//! - [`checkpoint_sequential`] and [`run_plan`] apply it to a chain of [`Stage`]s, a checkpointed
//!   segment's recompute possibly planned in turn (nested checkpoints); a [`Policy`] says which
//!   ops' outputs to keep.
//! - [`checkpoint_selective`] runs a segment under a per-op [`SelectivePolicy`] (PyTorch's
//!   selective activation checkpointing): it keeps the outputs of the ops the policy names
//!   (matmuls, linear layers) and recomputes only the others in backward.
//! - [`planner`] predicts a plan's peak by replaying the step event by event on bytes measured in
//!   a dry run, and picks what to recompute, at how many levels, so that the peak fits a memory
//!   budget at the least recompute cost (exact dynamic programming over recursive schedules).
//! - [`Recompute`] is the one setting every model of the workspace takes (`set_recompute` /
//!   `with_recompute`): naive, per block, a selective granularity ([`Selective`]), a budget in
//!   bytes or an explicit plan, spelled the same on every command line; [`PlanCache`] keeps a
//!   model's budget plans, made again when the bytes the device holds change.
//!
//! Only `tape`'s public API is used. Of the tape: `Tape::record_always`, `backward_from`,
//! `set_known_output`, `capture_outputs_of`, `take_captured_outputs`, `count_ops_run_elsewhere`,
//! `ops_started`, `context` / `set_context` / `with_context`, `is_recording`, `is_training`; of
//! the gradients: `Gradients::merge`, `take`, `get_id`, `accumulate_id`; besides them
//! `Tensor::deep_copy`, the device's `MemoryStats` (`current`, `peak`,
//! `reset_peak`, `warn`) and `tape::context::current`.

mod error;
mod plan_cache;
pub mod planner;
mod profile;
mod recompute;
mod segment;
mod selective;
mod sequential;

pub use plan_cache::PlanCache;
pub use recompute::{parse_bytes, Recompute, RecomputeError, Selective};
pub use segment::{checkpoint, checkpoint_with, CheckpointOptions, Fault, KnownOutput};
pub use selective::{checkpoint_selective, SelectivePolicy};
pub use sequential::{checkpoint_sequential, run_plan, run_with_policy, OpKind, Policy, Stage};

//! `candle-checkpoint`: gradient checkpointing (segment recompute) for models written with
//! candle, on candle's public API, with the memory-budget planner of `recompute-planner`.
//!
//! - [`checkpoint`] runs a segment of candle code keeping only its inputs and outputs in
//!   candle's graph, and runs it again inside backward; gradients reach the inputs and every
//!   parameter, passed in or captured (captured ones through [`backward`]). Checkpoints nest.
//! - [`checkpoint_sequential`] and [`run_plan`] apply it to a chain of [`Stage`]s; [`budget`]
//!   measures a chain's stages, asks the planner for the cheapest plan under a memory budget
//!   and runs it.
//! - [`is_recomputing`] tells modules with side effects that a segment is being recomputed;
//!   [`nn::BatchNorm`] uses it to update its running statistics once per step and
//!   [`nn::Dropout`] draws its masks from a [random stream](rng) the recompute replays.
//!   candle-nn's own `BatchNorm` updates its statistics a second time when recomputed, and its
//!   dropout cannot replay (candle's CPU device cannot be reseeded): use the adapter's inside
//!   checkpointed segments.
//! - [`fused`]: the optimizer step fused into backward. A [`fused::FusedUpdate`] updates each
//!   parameter a checkpointed segment captures inside the segment's recompute ([`fused::Sgd`],
//!   [`fused::AdamW`] or any [`fused::ParamUpdate`]) and drops its gradient there, so the step
//!   no longer holds every parameter's gradient to the end of backward.
//! - [`CountingAlloc`] counts the bytes a program holds (registered as the global allocator of a
//!   test or example), for the budget mode's profiles and peak measurements.

pub mod alloc;
pub mod budget;
mod checkpoint;
mod error;
pub mod fused;
mod grads;
mod inject;
mod link;
pub mod nn;
mod pack;
mod phase;
mod restore;
pub mod rng;
mod segment;
mod sequential;
mod storage;

pub use alloc::CountingAlloc;
pub use checkpoint::{checkpoint, checkpoint_arc};
pub use error::{Error, FusedError, Result};
pub use grads::{backward, take_captured};
pub use phase::is_recomputing;
pub use recompute_planner as planner;
pub use segment::SegmentFn;
pub use sequential::{checkpoint_sequential, run_plan, Stage};

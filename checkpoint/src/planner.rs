//! The checkpoint planner over the `tape` engine: the engine-free planner of the
//! `recompute-planner` crate (chain model, replayed peak, optimal nested plans, reports),
//! re-exported whole, plus [`profile_chain`], which measures a chain of [`crate::Stage`]s in a
//! dry run on the tape to build its [`ChainModel`]. Plans run with [`crate::run_plan`].
//!
//! The planner's functions fail with [`recompute_planner::Error`], which converts into
//! [`tape::Error::InvalidArgument`] (same `op`, same message) under `?`.

pub use crate::error::engine_error;
pub use crate::profile::profile_chain;
pub use recompute_planner::*;

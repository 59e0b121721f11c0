//! The checkpoint planner over the `tape` engine: the engine-free planner of the
//! `recompute-planner` crate (chain model, replayed peak, optimal nested plans, reports),
//! re-exported whole, plus [`profile_chain`], which measures a chain of [`crate::Stage`]s in a
//! dry run on the tape to build its [`ChainModel`]. Plans run with [`crate::run_plan`].
//!
//! The planner's functions fail with [`recompute_planner::Error`], which converts into
//! [`tape::Error::InvalidArgument`] (same `op`, same message) under `?`.

pub use crate::profile::profile_chain;
pub use recompute_planner::*;

/// A planner error as the engine's: the planner's errors are bad arguments, with the same `op`
/// and message (the planner crate depends on no engine, so the conversion lives here).
pub fn engine_error(e: recompute_planner::Error) -> tape::Error {
    match e {
        recompute_planner::Error::InvalidArgument { op, msg } => {
            tape::Error::InvalidArgument { op, msg }
        }
    }
}

//! The planner's errors as the engine's.

/// A planner error as the engine's: the planner's errors are bad arguments, with the same `op`
/// and message (the planner crate depends on no engine, so the conversion lives here).
pub fn engine_error(e: recompute_planner::Error) -> tape::Error {
    match e {
        recompute_planner::Error::InvalidArgument { op, msg } => {
            tape::Error::InvalidArgument { op, msg }
        }
    }
}

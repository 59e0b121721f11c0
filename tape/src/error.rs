//! The engine's typed error. Every user-reachable failure (bad shapes, mixed dtypes or devices,
//! invalid arguments, exhausted memory) comes back as an [`Error`], never as a panic.

use crate::dtype::DType;

/// Everything that can go wrong in the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the operation.
    #[error("shape error in {op}: {msg}")]
    Shape {
        /// The operation that was called.
        op: &'static str,
        /// What was wrong, with the shapes involved.
        msg: String,
    },
    /// Tensors of different dtypes were combined, or a slice of the wrong element type was asked for.
    #[error("dtype mismatch in {op}: expected {expected:?}, got {got:?}")]
    DType {
        /// The operation that was called.
        op: &'static str,
        /// The dtype the operation needed.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// A kernel that has no implementation for the dtype it was given (a low-precision dtype
    /// on a backend or op that computes only in `f32`/`f64`: cast first, or use a precision
    /// policy that keeps the op in `f32`).
    #[error("{op} has no {dtype:?} kernel on this backend; cast to F32 first (Tensor::to_dtype or ops::cast)")]
    UnsupportedDType {
        /// The operation that was called.
        op: &'static str,
        /// The dtype it was given.
        dtype: DType,
    },
    /// Tensors that live on different devices were combined.
    #[error("device mismatch in {op}: {lhs} vs {rhs}")]
    Device {
        /// The operation that was called.
        op: &'static str,
        /// The first device.
        lhs: String,
        /// The other device.
        rhs: String,
    },
    /// An argument outside its valid range (stride 0, empty concat, p outside [0,1), ...).
    #[error("invalid argument to {op}: {msg}")]
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// A device could not hand out the bytes an operation asked for.
    #[error(
        "out of memory on {device}: requested {requested} bytes with {in_use} in use and a limit of \
         {limit} bytes; try a memory-efficient mode (e.g. checkpointing) or a smaller batch"
    )]
    OutOfMemory {
        /// The device that ran out.
        device: String,
        /// Bytes requested by the failing allocation.
        requested: usize,
        /// Bytes in use when it was requested.
        in_use: usize,
        /// The device's limit in bytes.
        limit: usize,
    },
    /// A value was read from a tensor without values: one of a meta device, which has shapes
    /// but no values, or a [`crate::Tensor::stand_in`].
    #[error(
        "{op}: the tensor on {device} holds a shape and a dtype but no values (a meta device's \
         tensor, or a stand-in for an output that backward was not to read); run on a cpu or \
         cuda device to read values"
    )]
    NoValues {
        /// The read that was asked for.
        op: &'static str,
        /// The tensor's device.
        device: String,
    },
    /// The backward pass was misused (non-scalar loss, a seed of the wrong shape, ...).
    #[error("backward: {0}")]
    Backward(String),
    /// A failure of an outside library or resource (files, GPU libraries).
    #[error("{0}")]
    Backend(String),
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

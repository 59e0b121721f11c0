//! Per-op policies: which layer outputs a chain keeps, by the kind of layer that makes them.

/// What a layer computes, for per-op policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Convolution (compute-bound: worth keeping).
    Conv,
    /// Fully connected layer (compute-bound).
    Linear,
    /// Batch normalisation (memory-bound: cheap to recompute).
    BatchNorm,
    /// ReLU (memory-bound).
    Relu,
    /// Concatenation (memory-bound).
    Concat,
    /// Pooling (memory-bound).
    Pool,
    /// Dropout (memory-bound; replays its mask when recomputed).
    Dropout,
    /// Anything else, e.g. a whole block.
    Other,
}

/// Which layer outputs a chain keeps; the others are recomputed in backward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Record everything (no recompute).
    KeepAll,
    /// Keep the outputs of layers of these kinds; each run of other layers up to and including a
    /// kept layer is one checkpointed segment. `Keep(vec![OpKind::Conv])` is "keep conv outputs,
    /// recompute batch norm, ReLU and concat".
    Keep(Vec<OpKind>),
    /// Keep only the chain's input and output: the whole chain is one segment.
    RecomputeAll,
}

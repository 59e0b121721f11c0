//! candle modules that are safe inside checkpointed segments: a [`BatchNorm`] that updates its
//! running statistics only outside the recompute phase, and a [`Dropout`] whose masks come from
//! the adapter's replayable random stream.

mod batch_norm;
mod dropout;

pub use batch_norm::BatchNorm;
pub use dropout::Dropout;

//! Datasets (to be written).

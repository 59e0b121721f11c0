//! What the multi-process DenseNet tests share: the global batch, a small DenseNet, shards of the
//! batch, the relative difference and the tolerance.

use densenet::DenseNetConfig;
use dist::{join, DistKind, ProcessGroup};
use tape::{DType, Device, Tensor};

/// Images in the global batch.
pub const GLOBAL: usize = 64;
/// Image side.
pub const IMAGE: usize = 8;
/// SGD steps compared.
pub const STEPS: u64 = 3;
/// Why 1e-10 and not bit equality: the group sums each channel's statistics and gradient sums
/// rank by rank (and the gradients bucket by bucket) where one process sums them in one pass,
/// so every sum differs from the single process's in the order of its additions: a relative
/// difference of a few f64 epsilons (2.2e-16) per reduction, grown by the network's depth and
/// three SGD steps (measured here: below 1e-14 relative per tensor). 1e-10 leaves a wide margin
/// for other machines and libm's, and is still orders of magnitude below any real error (such
/// as normalising each shard with its own statistics).
pub const TOL: f64 = 1e-10;

/// A check's outcome: an error names what differs.
pub type Check = Result<(), String>;

/// An error as the check's message.
pub fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// A DenseNet small enough to step three times in f64 in a test.
pub fn config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 3,
        block_config: vec![2, 3],
        bn_size: 2,
        num_init_features: 6,
        num_classes: 4,
        ..DenseNetConfig::default()
    }
}

/// The images and labels of `indices` out of the global batch.
pub fn shard(
    all: &[f64],
    labels: &[usize],
    indices: &[usize],
    dev: &Device,
) -> (Tensor, Vec<usize>) {
    let plane = 3 * IMAGE * IMAGE;
    let x: Vec<f64> = indices
        .iter()
        .flat_map(|&i| all[i * plane..(i + 1) * plane].iter().copied())
        .collect();
    let shape = [indices.len(), 3, IMAGE, IMAGE];
    let t = Tensor::from_f64(&x, &shape, DType::F64, dev).expect("a shard");
    (t, indices.iter().map(|&i| labels[i]).collect())
}

/// `|a - b| / |b|` in the Euclidean norm.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n.max(1e-300)).sqrt()
}

/// The world `mpirun` started (without it: this process alone); exits 1 if it cannot be joined.
pub fn join_world() -> ProcessGroup {
    join(DistKind::Mpi).unwrap_or_else(|err| {
        eprintln!("cannot join the MPI world: {err}");
        std::process::exit(1)
    })
}

/// Ends every rank (non-zero, naming this rank) if `check` failed; otherwise rank 0 prints
/// `passed`.
pub fn expect_ok(g: &ProcessGroup, check: Check, passed: impl FnOnce() -> String) {
    if let Err(msg) = check {
        eprintln!("rank {} of {}: FAILED: {msg}", g.rank(), g.world_size());
        g.abort(1);
    }
    if g.is_root() {
        println!("{}", passed());
    }
}

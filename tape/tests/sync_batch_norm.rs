//! Synchronised batch norm without MPI: two threads stand for two processes (a reducer that
//! sums over both through a barrier), each normalising half of a batch, against one call on the
//! whole batch; a reducer that changes nothing (a world of one) against the unsynchronised op,
//! bit for bit; and the recompute phase reusing the forward pass's statistics with no reduction.
//! For `batch_norm2d` and the fused `batch_norm_relu` alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use tape::ops::{self, BatchNormOptions, BatchStatsReducer, RunningStats, SyncPass};
use tape::{Context, DType, Device, Phase, Result, Tape, Tensor};

const N: usize = 6;

/// One CPU device for the whole test (tensors of two devices do not mix).
fn dev() -> Device {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEV.get_or_init(Device::cpu).clone()
}

const C: usize = 3;
const HW: usize = 4;

/// Sums over `ranks` threads: each adds its values, waits for the others, reads the total.
struct ThreadSum {
    total: Mutex<Vec<f64>>,
    barrier: Barrier,
}

impl ThreadSum {
    fn new(ranks: usize) -> Self {
        ThreadSum {
            total: Mutex::new(Vec::new()),
            barrier: Barrier::new(ranks),
        }
    }
}

impl BatchStatsReducer for ThreadSum {
    fn sum(&self, values: &mut [f64], _pass: SyncPass) -> Result<()> {
        {
            let mut t = self.total.lock().unwrap();
            t.resize(values.len(), 0.0);
            t.iter_mut().zip(values.iter()).for_each(|(t, v)| *t += v);
        }
        self.barrier.wait();
        values.copy_from_slice(&self.total.lock().unwrap());
        if self.barrier.wait().is_leader() {
            self.total.lock().unwrap().clear();
        }
        self.barrier.wait();
        Ok(())
    }
}

/// A world of one that counts its calls by pass.
#[derive(Default)]
struct Counting {
    forward: AtomicUsize,
    backward: AtomicUsize,
}

impl BatchStatsReducer for Counting {
    fn sum(&self, _values: &mut [f64], pass: SyncPass) -> Result<()> {
        match pass {
            SyncPass::Forward => self.forward.fetch_add(1, Ordering::SeqCst),
            SyncPass::Backward => self.backward.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
}

fn ctx(phase: Phase) -> Context {
    Context {
        training: true,
        phase,
        seed: 0,
        counter: 0,
        keep_batch_stats: true,
        precision: tape::Precision::F32,
    }
}

/// The rows `from..to` (images) of an NCHW tensor.
fn rows(t: &Tensor, from: usize, to: usize) -> Tensor {
    let v = t.to_f64_vec();
    let per = C * HW;
    let shape = [to - from, C, 2, 2];
    Tensor::from_f64(&v[from * per..to * per], &shape, DType::F64, &dev()).unwrap()
}

/// What one call produced: output, input gradient, weight and bias gradients.
type Run = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Batch norm (`fused`: the fused op with ReLU) of `x` in `phase`, then backward of
/// `sum(y * r)`.
fn run(x: &Tensor, r: &Tensor, running: &RunningStats, fused: bool, phase: Phase) -> Result<Run> {
    let dev = dev();
    let x = x.clone().with_requires_grad(true);
    let w = Tensor::from_f64(&[1.5, 0.5, -1.0], &[C], DType::F64, &dev)?.with_requires_grad(true);
    let b = Tensor::from_f64(&[0.1, -0.2, 0.3], &[C], DType::F64, &dev)?.with_requires_grad(true);
    let mut tape = Tape::with_context(true, ctx(phase));
    let opts = BatchNormOptions::default();
    let y = match fused {
        true => ops::batch_norm_relu(&mut tape, &[&x], &w, &b, running, opts)?,
        false => ops::batch_norm2d(&mut tape, &x, &w, &b, running, opts)?,
    };
    let yr = ops::mul(&mut tape, &y, r)?;
    let loss = ops::sum(&mut tape, &yr)?;
    let grads = tape.backward(&loss)?;
    let g = |t: &Tensor| grads.get(t).map(Tensor::to_f64_vec).unwrap_or_default();
    Ok((y.to_f64_vec(), g(&x), g(&w), g(&b)))
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
            "{what} element {i}: {x} vs {y}"
        );
    }
}

fn inputs() -> (Tensor, Tensor) {
    let dev = dev();
    let shape = [N, C, 2, 2];
    let x = Tensor::randn(&shape, DType::F64, &dev, 3).unwrap();
    // Shift the channels apart so that each half's statistics differ from the whole's.
    let v: Vec<f64> = x
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i < N / 2 * C * HW { 2.0 } else { -1.0 })
        .collect();
    let x = Tensor::from_f64(&v, &shape, DType::F64, &dev).unwrap();
    (x, Tensor::randn(&shape, DType::F64, &dev, 4).unwrap())
}

fn two_halves_match_the_whole(fused: bool) {
    let (x, r) = inputs();
    let whole_stats = RunningStats::new(C, DType::F64, &dev()).unwrap();
    let whole = run(&x, &r, &whole_stats, fused, Phase::Forward).unwrap();
    let reducer: Arc<dyn BatchStatsReducer> = Arc::new(ThreadSum::new(2));
    let halves: Vec<(Run, RunningStats)> = std::thread::scope(|s| {
        let handles: Vec<_> = [(0, N / 2), (N / 2, N)]
            .into_iter()
            .map(|(from, to)| {
                let (x, r, reducer) = (rows(&x, from, to), rows(&r, from, to), reducer.clone());
                s.spawn(move || {
                    let stats = RunningStats::new(C, DType::F64, &dev()).unwrap();
                    stats.set_sync(Some(reducer));
                    (run(&x, &r, &stats, fused, Phase::Forward).unwrap(), stats)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cat = |f: fn(&Run) -> &Vec<f64>| -> Vec<f64> {
        halves.iter().flat_map(|(h, _)| f(h).clone()).collect()
    };
    close(&cat(|h| &h.0), &whole.0, "output");
    close(&cat(|h| &h.1), &whole.1, "input gradient");
    // The weight's and bias's gradients stay each rank's own: their sum is the whole's.
    let add = |i: usize, f: fn(&Run) -> &Vec<f64>| f(&halves[0].0)[i] + f(&halves[1].0)[i];
    let gw: Vec<f64> = (0..C).map(|i| add(i, |h| &h.2)).collect();
    let gb: Vec<f64> = (0..C).map(|i| add(i, |h| &h.3)).collect();
    close(&gw, &whole.2, "weight gradient");
    close(&gb, &whole.3, "bias gradient");
    for (_, stats) in &halves {
        close(
            &stats.mean().to_f64_vec(),
            &whole_stats.mean().to_f64_vec(),
            "running mean",
        );
        close(
            &stats.var().to_f64_vec(),
            &whole_stats.var().to_f64_vec(),
            "running var",
        );
        assert_eq!(stats.num_batches_tracked(), 1);
    }
}

#[test]
fn batch_norm_two_ranks_match_one_batch() {
    two_halves_match_the_whole(false);
}

#[test]
fn batch_norm_relu_two_ranks_match_one_batch() {
    two_halves_match_the_whole(true);
}

fn world_of_one_is_bit_identical(fused: bool) {
    let (x, r) = inputs();
    let plain = RunningStats::new(C, DType::F64, &dev()).unwrap();
    let synced = RunningStats::new(C, DType::F64, &dev()).unwrap();
    let counting = Arc::new(Counting::default());
    synced.set_sync(Some(counting.clone()));
    assert!(synced.is_synced() && !plain.is_synced());
    let a = run(&x, &r, &plain, fused, Phase::Forward).unwrap();
    let b = run(&x, &r, &synced, fused, Phase::Forward).unwrap();
    assert_eq!(a, b);
    assert_eq!(plain.mean().to_f64_vec(), synced.mean().to_f64_vec());
    assert_eq!(plain.var().to_f64_vec(), synced.var().to_f64_vec());
    assert_eq!(counting.forward.load(Ordering::SeqCst), 2);
    assert_eq!(counting.backward.load(Ordering::SeqCst), 1);
}

#[test]
fn batch_norm_world_of_one_changes_nothing() {
    world_of_one_is_bit_identical(false);
}

#[test]
fn batch_norm_relu_world_of_one_changes_nothing() {
    world_of_one_is_bit_identical(true);
}

/// A checkpointed segment's first pass of the layer: forward phase, nothing recorded (it keeps
/// the batch statistics for the recompute). Its output.
fn first_pass(x: &Tensor, running: &RunningStats, fused: bool) -> Vec<f64> {
    let dev = dev();
    let w = Tensor::from_f64(&[1.5, 0.5, -1.0], &[C], DType::F64, &dev).unwrap();
    let b = Tensor::from_f64(&[0.1, -0.2, 0.3], &[C], DType::F64, &dev).unwrap();
    let mut tape = Tape::with_context(false, ctx(Phase::Forward));
    let opts = BatchNormOptions::default();
    let y = match fused {
        true => ops::batch_norm_relu(&mut tape, &[x], &w, &b, running, opts).unwrap(),
        false => ops::batch_norm2d(&mut tape, x, &w, &b, running, opts).unwrap(),
    };
    y.to_f64_vec()
}

fn recompute_reuses_the_forward_statistics(fused: bool) {
    let (x, r) = inputs();
    let stats = RunningStats::new(C, DType::F64, &dev()).unwrap();
    let counting = Arc::new(Counting::default());
    stats.set_sync(Some(counting.clone()));
    let first = first_pass(&x, &stats, fused);
    assert_eq!(counting.forward.load(Ordering::SeqCst), 2);
    let mean = stats.mean().to_f64_vec();
    let again = run(&x, &r, &stats, fused, Phase::Recompute).unwrap();
    assert_eq!(first, again.0, "the recompute gives the first pass's bits");
    // No reduction in the recompute's forward (its backward reduces, as the step's one
    // backward does), and the running statistics were updated once.
    assert_eq!(counting.forward.load(Ordering::SeqCst), 2);
    assert_eq!(counting.backward.load(Ordering::SeqCst), 1);
    assert_eq!(stats.num_batches_tracked(), 1);
    assert_eq!(stats.mean().to_f64_vec(), mean);
    // That recompute took the kept statistics: another computes and reduces them again (every
    // process alike), with the same result.
    let third = run(&x, &r, &stats, fused, Phase::Recompute).unwrap();
    assert_eq!(counting.forward.load(Ordering::SeqCst), 4);
    close(&third.0, &first, "a recompute without kept statistics");
    // Off again: each process's own batch, no reduction.
    stats.set_sync(None);
    run(&x, &r, &stats, fused, Phase::Forward).unwrap();
    assert_eq!(counting.forward.load(Ordering::SeqCst), 4);
}

#[test]
fn batch_norm_recompute_makes_no_reduction() {
    recompute_reuses_the_forward_statistics(false);
}

#[test]
fn batch_norm_relu_recompute_makes_no_reduction() {
    recompute_reuses_the_forward_statistics(true);
}

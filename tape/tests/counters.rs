//! The per-device work counters: exact launch, allocation and sync counts of small op
//! sequences, the same on every run, kept apart per device, nested kernel calls counted once,
//! and the GPU counting what the CPU counts (GPU half skipped without a GPU).

use tape::{ops, testing, Counters, DType, Device, Tape, Tensor};

fn counts(launches: u64, allocs: u64, syncs: u64) -> Counters {
    Counters {
        launches,
        allocs,
        syncs,
    }
}

/// Counts of the phases of `loss = sum(relu(x * w))`, its backward and two reads, on `dev`.
fn phases(dev: &Device) -> [Counters; 4] {
    let x = tape::testing::randn_leaf(&[2, 3], DType::F32, dev, 0);
    let w = Tensor::randn(&[2, 3], DType::F32, dev, 1).unwrap();
    let c0 = dev.counters();
    let mut tape = Tape::recording();
    let y = ops::mul(&mut tape, &x, &w).unwrap();
    let r = ops::relu(&mut tape, &y).unwrap();
    let loss = ops::sum(&mut tape, &r).unwrap();
    let c1 = dev.counters();
    let grads = tape.backward(&loss).unwrap();
    let c2 = dev.counters();
    let _ = loss.scalar().unwrap();
    let _ = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
    let c3 = dev.counters();
    drop((y, r));
    let (_, moved) = dev.count(|| loss.to_device(&Device::cpu()).unwrap());
    [c1 - c0, c2 - c1, c3 - c2, moved]
}

#[test]
fn a_small_op_sequence_counts_exactly() {
    let dev = Device::cpu();
    let [forward, backward, reads, moved] = phases(&dev);
    // mul, relu, sum: one kernel call and one output buffer each; no read.
    assert_eq!(forward, counts(3, 3, 0));
    // The seed (ones), the sum's fill, relu's and mul's input gradients (w wants none).
    assert_eq!(backward, counts(4, 4, 0));
    // loss.scalar() and to_vec of the gradient: one read each, no kernel.
    assert_eq!(reads, counts(0, 0, 2));
    // Copying the loss to another device reads it on this one (the copy is allocated there).
    assert_eq!(moved, counts(0, 0, 1));
}

#[test]
fn counts_are_deterministic_and_per_device() {
    let (a, b) = (Device::cpu(), Device::cpu());
    let first = phases(&a);
    let before_b = b.counters();
    let second = phases(&a);
    assert_eq!(first, second, "the same work counts the same");
    assert_eq!(
        b.counters(),
        before_b,
        "work on one device counts nothing on another"
    );
    assert_eq!(phases(&b), first);
}

#[test]
fn a_kernel_inside_a_kernel_and_reads_inside_kernels_count_nothing() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[4, 5], DType::F64, &dev, 3);
    // The CPU's sum makes its output with `full` and its gradient fill reads the incoming
    // gradient on the host: both inside the kernel call, so one launch each and no sync.
    let mut tape = Tape::recording();
    let (loss, c) = dev.count(|| ops::mean(&mut tape, &x).unwrap());
    assert_eq!(c, counts(1, 1, 0));
    let (_, c) = dev.count(|| tape.backward(&loss).unwrap());
    assert_eq!(c, counts(2, 2, 0), "seed and fill: no host read counted");
    // Tensor constructors from host data allocate without a kernel; `full` is a kernel call.
    let (_, c) = dev.count(|| Tensor::from_f64(&[1.0, 2.0], &[2], DType::F32, &dev).unwrap());
    assert_eq!(c, counts(0, 1, 0));
    let (_, c) = dev.count(|| Tensor::zeros(&[7], DType::F32, &dev).unwrap());
    assert_eq!(c, counts(1, 1, 0));
}

#[test]
fn counters_subtract_and_display() {
    let a = counts(5, 7, 2);
    let b = counts(2, 3, 2);
    assert_eq!(a - b, counts(3, 4, 0));
    assert_eq!(a.since(b), a - b);
    assert_eq!(b.since(a), counts(0, 0, 0), "saturating: no wrap-around");
    assert_eq!(a.to_string(), "5 launches, 7 allocs, 2 syncs");
}

#[test]
fn on_gpu() {
    let Some(gpu) = testing::gpu() else {
        return;
    };
    // The same sequence counts the same on a GPU (a read is a device-to-host copy there).
    assert_eq!(phases(&gpu), phases(&Device::cpu()));
}

//! The engine's core: tensors, the tape's memory behaviour during backward, typed errors, and
//! finite-difference checks of the element-wise ops.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::{ops, Context, DType, Device, Error, Phase, Tape, Tensor};

const N: usize = 1000;

/// An op under a gradient check.
type OpFn = dyn Fn(&mut Tape, &[Tensor]) -> tape::Result<Tensor>;

fn train_ctx() -> Context {
    Tape::recording().context()
}

#[test]
fn creation_and_readback() {
    let dev = Device::cpu();
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &dev).unwrap();
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(
        Tensor::ones(&[2], DType::F64, &dev)
            .unwrap()
            .to_vec::<f64>()
            .unwrap(),
        vec![1.0, 1.0]
    );
    let a = Tensor::randn(&[64], DType::F64, &dev, 3).unwrap();
    let b = Tensor::randn(&[64], DType::F64, &dev, 3).unwrap();
    let c = Tensor::randn(&[64], DType::F64, &dev, 4).unwrap();
    assert_eq!(a.to_f64_vec(), b.to_f64_vec());
    assert_ne!(a.to_f64_vec(), c.to_f64_vec());
    assert_ne!(a.id(), b.id());
    let clone = a.clone();
    assert_eq!(clone.id(), a.id());
    assert!(clone.shares_buffer(&a));
    let mut tape = Tape::no_grad();
    let r = ops::reshape(&mut tape, &t, &[3, 2]).unwrap();
    assert_eq!(r.shape(), &[3, 2]);
    assert!(r.shares_buffer(&t));
    assert_ne!(r.id(), t.id());
}

#[test]
fn buffers_are_charged_while_alive_and_shared_by_clones() {
    let dev = Device::cpu();
    assert_eq!(dev.memory().current(), 0);
    let a = Tensor::zeros(&[N], DType::F32, &dev).unwrap();
    assert_eq!(dev.memory().current(), 4 * N);
    let b = a.clone();
    assert_eq!(dev.memory().current(), 4 * N, "a clone shares the buffer");
    let c = Tensor::zeros(&[N], DType::F64, &dev).unwrap();
    assert_eq!(dev.memory().current(), 12 * N);
    drop((a, b, c));
    assert_eq!(dev.memory().current(), 0);
    assert_eq!(dev.memory().peak(), 12 * N);
    dev.memory().reset_peak();
    assert_eq!(dev.memory().peak(), 0);
}

/// `x` (`N` random `f32` values that require a gradient) through `k` applications of `op` on a
/// recording tape, then summed: `x`, the tape and the loss (the chain's output dropped).
fn summed_chain(
    dev: &Device,
    k: usize,
    op: impl Fn(&mut Tape, &Tensor) -> tape::Result<Tensor>,
) -> (Tensor, Tape<'_>, Tensor) {
    let x = tape::testing::randn_leaf(&[N], DType::F32, dev, 1);
    let mut tape = Tape::recording();
    let mut h = x.clone();
    for _ in 0..k {
        h = op(&mut tape, &h).unwrap();
    }
    let loss = ops::sum(&mut tape, &h).unwrap();
    (x, tape, loss)
}

#[test]
fn forward_chain_holds_exactly_the_saved_outputs() {
    let dev = Device::cpu();
    let k = 6;
    // Each relu saves its output.
    let (_x, tape, loss) = summed_chain(&dev, k, ops::relu);
    // x + k relu outputs + the 1-element loss.
    assert_eq!(dev.memory().current(), 4 * N * (k + 1) + 4);
    let grads = tape.backward(&loss).unwrap();
    // Saved outputs are gone with the tape; x, the loss and x's gradient remain.
    assert_eq!(dev.memory().current(), 4 * N * 2 + 4);
    assert_eq!(grads.len(), 1);
}

#[test]
fn backward_frees_intermediate_gradients_as_it_goes() {
    let dev = Device::cpu();
    let k = 10;
    // Scale saves nothing.
    let (x, tape, loss) = summed_chain(&dev, k, |t, h| ops::scale(t, h, 0.5));
    assert_eq!(dev.memory().current(), 4 * N + 4);
    dev.memory().reset_peak();
    let grads = tape.backward(&loss).unwrap();
    // At most two gradients live at once: the one consumed and the one produced.
    let expected_peak = 4 * N + 4 + 2 * 4 * N;
    let keep_everything = 4 * N + 4 + k * 4 * N;
    assert_eq!(dev.memory().peak(), expected_peak);
    assert!(dev.memory().peak() < keep_everything);
    let g = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
    assert!(g.iter().all(|&v| v == 0.5f32.powi(k as i32)));
}

#[test]
fn gradients_accumulate_over_consumers() {
    let dev = Device::cpu();
    let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], &[3], &dev)
        .unwrap()
        .with_requires_grad(true);
    let mut tape = Tape::recording();
    let a = ops::scale(&mut tape, &x, 2.0).unwrap();
    let b = ops::mul(&mut tape, &x, &x).unwrap();
    let c = ops::add(&mut tape, &a, &b).unwrap();
    let grads = tape::testing::grads_of_sum(tape, &c);
    assert_eq!(
        grads.get(&x).unwrap().to_vec::<f64>().unwrap(),
        vec![4.0, -2.0, 8.0]
    );
}

#[test]
fn no_grad_tape_records_nothing_and_leaves_nothing() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[N], DType::F32, &dev, 1);
    let mut tape = Tape::no_grad();
    let y = ops::relu(&mut tape, &x).unwrap();
    assert!(tape.is_empty());
    assert!(!y.requires_grad());
    assert!(!tape.is_training());
    let mut rec = Tape::recording();
    let z = ops::relu(&mut rec, &x.detach()).unwrap();
    assert!(rec.is_empty(), "nothing requires a gradient");
    assert!(!z.requires_grad());
}

#[test]
fn context_carries_mode_phase_and_random_stream() {
    let mut tape = Tape::recording().with_seed(9);
    assert!(tape.is_training());
    assert_eq!(tape.phase(), Phase::Forward);
    assert_eq!(tape.next_random_stream(), (9, 0));
    assert_eq!(tape.next_random_stream(), (9, 1));
    let mut ctx = tape.context();
    ctx.phase = Phase::Recompute;
    let inner = Tape::with_context(true, ctx);
    assert_eq!(inner.phase(), Phase::Recompute);
    assert_eq!(inner.context().counter, 2);
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let other = Device::cpu();
    let a = Tensor::zeros(&[2, 3], DType::F32, &dev).unwrap();
    let b = Tensor::zeros(&[3, 2], DType::F32, &dev).unwrap();
    let c = Tensor::zeros(&[2, 3], DType::F64, &dev).unwrap();
    let d = Tensor::zeros(&[2, 3], DType::F32, &other).unwrap();
    let mut tape = Tape::recording();
    let shape = |r: tape::Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
    assert!(shape(ops::add(&mut tape, &a, &b)));
    assert!(matches!(
        ops::add(&mut tape, &a, &c),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        ops::add(&mut tape, &a, &d),
        Err(Error::Device { .. })
    ));
    assert!(shape(ops::mul(&mut tape, &a, &b)));
    assert!(shape(ops::reshape(&mut tape, &a, &[4])));
    assert!(shape(Tensor::from_vec(vec![1.0f32; 5], &[2, 3], &dev)));
    assert!(matches!(a.to_vec::<f64>(), Err(Error::DType { .. })));
    assert!(matches!(a.dims4("test"), Err(Error::Shape { .. })));
    assert!(matches!(a.scalar(), Err(Error::Shape { .. })));
    let x = a.clone().with_requires_grad(true);
    let y = ops::relu(&mut tape, &x).unwrap();
    assert!(matches!(tape.backward(&y), Err(Error::Backward(_))));
    let tape = Tape::recording();
    let seed = Tensor::zeros(&[3], DType::F32, &dev).unwrap();
    assert!(matches!(
        tape.backward_from(&y, seed),
        Err(Error::Backward(_))
    ));
}

#[test]
fn memory_limit_gives_out_of_memory() {
    let dev = Device::cpu();
    dev.memory().set_limit(Some(4 * N));
    let a = Tensor::zeros(&[N], DType::F32, &dev).unwrap();
    let err = Tensor::zeros(&[1], DType::F32, &dev).unwrap_err();
    match err {
        Error::OutOfMemory {
            requested,
            in_use,
            limit,
            ..
        } => {
            assert_eq!((requested, in_use, limit), (4, 4 * N, 4 * N));
        }
        e => panic!("expected OutOfMemory, got {e:?}"),
    }
    assert!(err_text_mentions_mode(
        &Tensor::zeros(&[1], DType::F32, &dev).unwrap_err()
    ));
    assert_eq!(
        dev.memory().current(),
        4 * N,
        "a failed allocation charges nothing"
    );
    drop(a);
    dev.memory().set_limit(None);
    assert!(dev.reserve(1 << 30).is_ok());
}

fn err_text_mentions_mode(e: &Error) -> bool {
    e.to_string().contains("memory-efficient mode")
}

fn elementwise_inputs(len: usize, seed: u64) -> (Tensor, Tensor) {
    let dev = Device::cpu();
    (
        Tensor::randn(&[len], DType::F64, &dev, seed).unwrap(),
        Tensor::randn(&[len], DType::F64, &dev, seed + 1).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn gradcheck_add_mul(len in 1usize..64, seed in 0u64..1 << 62) {
        let (a, b) = elementwise_inputs(len, seed);
        let r = check_gradients(&[a.clone(), b.clone()], train_ctx(), |t, xs| ops::add(t, &xs[0], &xs[1])).unwrap();
        prop_assert!(r.max_rel_error <= 1e-6, "add {:?}", r);
        let r = check_gradients(&[a, b], train_ctx(), |t, xs| ops::mul(t, &xs[0], &xs[1])).unwrap();
        prop_assert!(r.max_rel_error <= 1e-6, "mul {:?}", r);
    }

    #[test]
    fn gradcheck_scale_relu_reduce_reshape(len in 1usize..64, s in -3.0f64..3.0, seed in 0u64..1 << 62) {
        let (a, _) = elementwise_inputs(len, seed);
        // The ReLU's kink: an input within the finite difference of 0 has no gradient.
        prop_assume!(a.to_f64_vec().iter().all(|v| v.abs() > 1e-3));
        let cases: Vec<(&str, Box<OpFn>)> = vec![
            ("scale", Box::new(move |t, xs| ops::scale(t, &xs[0], s))),
            ("relu", Box::new(|t, xs| ops::relu(t, &xs[0]))),
            ("sum", Box::new(|t, xs| ops::sum(t, &xs[0]))),
            ("mean", Box::new(|t, xs| ops::mean(t, &xs[0]))),
            ("reshape", Box::new(|t, xs| ops::reshape(t, &xs[0], &[1, xs[0].numel()]))),
        ];
        for (name, f) in cases {
            let r = check_gradients(std::slice::from_ref(&a), train_ctx(), f).unwrap();
            prop_assert!(r.max_rel_error <= 1e-6, "{} {:?}", name, r);
        }
    }
}

#[test]
fn gradcheck_detects_a_wrong_gradient() {
    // A deliberately wrong backward (twice the true gradient) must be caught.
    let dev = Device::cpu();
    let x = Tensor::randn(&[5], DType::F64, &dev, 1).unwrap();
    let r = check_gradients(&[x], train_ctx(), |t, xs| {
        let y = ops::scale(t, &xs[0], 1.0)?;
        let wrong = y.detach();
        let k = tape::GradKey::of(&xs[0]);
        Ok(t.record("wrong_shape", &[&xs[0]], wrong, move |g, grads| {
            grads.accumulate(&k, ops::scale(&mut Tape::no_grad(), g, 2.0)?)
        }))
    })
    .unwrap();
    assert!(r.max_rel_error > 0.5);
}

/// Without the `cuda` feature a GPU cannot be opened, and the error says why; with it, the
/// error (on a machine without a GPU) names what is missing.
#[test]
fn opening_a_gpu_fails_with_a_clear_error_or_succeeds() {
    match Device::cuda(0) {
        Ok(dev) => assert!(dev.is_cuda()),
        Err(e) => {
            let msg = e.to_string();
            if cfg!(feature = "cuda") {
                assert!(msg.contains("CUDA"), "{msg}");
            } else {
                assert!(msg.contains("without the cargo feature `cuda`"), "{msg}");
            }
            // A failed open is cached: the second attempt gives the same error at once.
            assert_eq!(Device::cuda(0).unwrap_err(), e);
        }
    }
}

/// ReLU propagates NaN as PyTorch does, forward; backward passes no gradient through it.
#[test]
fn relu_propagates_nan() {
    let dev = Device::cpu();
    for dtype in [DType::F32, DType::F64] {
        let x = common::leaf(Tensor::from_f64(
            &[f64::NAN, -1.0, 2.0, 0.0],
            &[4],
            dtype,
            &dev,
        ));
        let mut tape = Tape::recording();
        let y = ops::relu(&mut tape, &x).unwrap();
        let v = y.to_f64_vec();
        assert!(v[0].is_nan(), "{dtype:?}: relu(NaN) = {}", v[0]);
        assert_eq!(&v[1..], &[0.0, 2.0, 0.0]);
        let loss = ops::sum(&mut tape, &y).unwrap();
        let g = tape.backward(&loss).unwrap().get(&x).unwrap().to_f64_vec();
        assert_eq!(g, vec![0.0, 0.0, 1.0, 0.0]);
    }
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
    use tape::testing::*;
    use tape::{DType, Device, Error, Result, Tape, Tensor};

    #[test]
    fn elementwise_reduce_reshape_match_cpu() {
        for_gpu_cases(4, 6, |dev, p, case, dtype| {
            let shape = [p.int(1, 6), p.int(1, 7), p.int(1, 9)];
            let a = randn(&shape, dtype, case * 10 + 1);
            let b = randn(&shape, dtype, case * 10 + 2);
            let two = [a.clone(), b.clone()];
            let m = [true, true];
            compare_unary(dev, "relu", &a, &|t, x| ops::relu(t, &x[0]));
            compare(dev, "add", &two, &m, training(), &|t, x| {
                ops::add(t, &x[0], &x[1])
            });
            compare(dev, "mul", &two, &m, training(), &|t, x| {
                ops::mul(t, &x[0], &x[1])
            });
            compare_unary(dev, "scale", &a, &|t, x| ops::scale(t, &x[0], -1.75));
            compare_unary(dev, "sum", &a, &|t, x| ops::sum(t, &x[0]));
            compare_unary(dev, "mean", &a, &|t, x| ops::mean(t, &x[0]));
            let n = a.numel();
            compare_unary(dev, "reshape", &a, &|t, x| {
                let y = ops::reshape(t, &x[0], &[n])?;
                ops::relu(t, &y)
            });
            // The same buffer used twice: gradients accumulate (add_assign on the device).
            compare_unary(dev, "x*x+x", &a, &|t, x| {
                let y = ops::mul(t, &x[0], &x[0])?;
                ops::add(t, &y, &x[0])
            });
        });
    }

    #[test]
    fn reshape_shares_the_buffer() {
        let Some(dev) = gpu() else { return };
        let x = Tensor::randn(&[4, 6], DType::F32, &dev, 1).unwrap();
        let before = dev.memory().current();
        let y = ops::reshape(&mut Tape::no_grad(), &x, &[24]).unwrap();
        assert!(y.shares_buffer(&x));
        assert_eq!(
            dev.memory().current(),
            before,
            "a reshape allocates nothing"
        );
    }

    #[test]
    fn memory_accounting_counts_gpu_buffers_and_workspaces() {
        let Some(dev) = gpu() else { return };
        assert_eq!(dev.memory().current(), 0);
        let x = Tensor::zeros(&[8, 16, 32, 32], DType::F32, &dev).unwrap();
        assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4);
        let y = Tensor::ones(&[100], DType::F64, &dev).unwrap();
        assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4 + 800);
        drop(y);
        assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4);
        // A convolution: output plus, while it runs, its cuDNN workspace (if the algorithm has one).
        dev.memory().reset_peak();
        let w = Tensor::randn(&[16, 16, 3, 3], DType::F32, &dev, 1).unwrap();
        let base = dev.memory().current();
        let out = ops::conv2d(
            &mut Tape::no_grad(),
            &x,
            &w,
            None,
            Conv2dOptions {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        assert_eq!(dev.memory().current(), base + out.size_in_bytes());
        assert!(dev.memory().peak() >= base + out.size_in_bytes());
        drop((x, w, out));
        assert_eq!(dev.memory().current(), 0, "every GPU buffer is released");
        // The driver's view is available beside the engine's.
        let (free, total) = dev
            .mem_get_info()
            .unwrap()
            .expect("a CUDA device reports cuMemGetInfo");
        assert!(free <= total && total > 0);
        // A limit makes allocations fail with the typed error, as on the CPU.
        dev.memory().set_limit(Some(1000));
        match Tensor::zeros(&[1000], DType::F32, &dev) {
            Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, 4000),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        dev.memory().set_limit(None);
    }

    #[test]
    fn gpu_tensors_copy_and_refuse_host_access() {
        let Some(dev) = gpu() else { return };
        let host = randn(&[3, 4], DType::F32, 9);
        let x = host.to_device(&dev).unwrap();
        assert_ne!(x.id(), host.id(), "to_device makes a new leaf");
        assert_eq!(x.to_vec::<f32>().unwrap(), host.to_vec::<f32>().unwrap());
        assert_eq!(x.to_f64_vec(), host.to_f64_vec());
        assert!(matches!(
            x.as_slice::<f32>(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(x.to_vec::<f64>(), Err(Error::DType { .. })));
        let back = x.to_device(&Device::cpu()).unwrap();
        assert_eq!(
            back.as_slice::<f32>().unwrap(),
            host.as_slice::<f32>().unwrap()
        );
        // Mixing devices is a typed error, not a crash.
        let mut tape = Tape::no_grad();
        assert!(matches!(
            ops::add(&mut tape, &x, &host),
            Err(Error::Device { .. })
        ));
        // f64 round trip and scalar reads.
        let s = Tensor::full(&[1], 2.5, DType::F64, &dev).unwrap();
        assert_eq!(s.scalar().unwrap(), 2.5);
        assert_eq!(
            x.to_dtype(DType::F64).unwrap().to_f64_vec(),
            host.to_f64_vec()
        );
    }

    #[test]
    fn a_conv_bn_relu_pool_linear_chain_matches_cpu() {
        let Some(dev) = gpu() else { return };
        for dtype in DTYPES {
            // The CPU reference runs on one device: the running statistics live where the inputs
            // are copied (each `Device::cpu()` is a device of its own).
            let cpu = Device::cpu();
            let running_c = RunningStats::new(6, dtype, &cpu).unwrap();
            let running_g = RunningStats::new(6, dtype, &dev).unwrap();
            let inputs = [
                randn(&[4, 3, 10, 10], dtype, 1),
                randn(&[6, 3, 3, 3], dtype, 2),
                Tensor::ones(&[6], dtype, &Device::cpu()).unwrap(),
                Tensor::zeros(&[6], dtype, &Device::cpu()).unwrap(),
                randn(&[5, 6], dtype, 3),
                randn(&[5], dtype, 4),
            ];
            fn chain(
                running: &RunningStats,
            ) -> impl Fn(&mut Tape, &[Tensor]) -> Result<Tensor> + '_ {
                move |t: &mut Tape, x: &[Tensor]| -> Result<Tensor> {
                    let y = ops::conv2d(
                        t,
                        &x[0],
                        &x[1],
                        None,
                        Conv2dOptions {
                            stride: 1,
                            padding: 1,
                        },
                    )?;
                    let y = ops::batch_norm2d(
                        t,
                        &y,
                        &x[2],
                        &x[3],
                        running,
                        BatchNormOptions::default(),
                    )?;
                    let y = ops::relu(t, &y)?;
                    let y = ops::avg_pool2d(t, &y, 2, 2, 0)?;
                    let y = ops::global_avg_pool(t, &y)?;
                    let logits = ops::linear(t, &y, &x[4], Some(&x[5]))?;
                    ops::cross_entropy(t, &logits, &[0, 1, 2, 3])
                }
            }
            let mask = [true; 6];
            let (a, ga) = eval(&cpu, &inputs, &mask, training(), &chain(&running_c));
            let (b, gb) = eval(&dev, &inputs, &mask, training(), &chain(&running_g));
            let t = tol(dtype);
            assert!(rel(&b, &a) <= t, "chain loss {dtype:?}");
            for (i, (x, y)) in gb.iter().zip(&ga).enumerate() {
                let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
                assert!(
                    rel(x, y) <= t,
                    "chain gradient {i} {dtype:?}: {:e}",
                    rel(x, y)
                );
            }
            let (mc, mg) = (
                running_c.mean().to_f64_vec(),
                running_g.mean().try_to_f64_vec().unwrap(),
            );
            assert!(rel(&mg, &mc) <= t, "chain running mean {dtype:?}");
        }
    }
}

/// The host cache: reserved bytes are reported beside the engine's allocated bytes, and
/// releasing the cache leaves the engine's accounting untouched.
#[test]
fn host_cache_reports_reserved_bytes_and_releases() {
    let dev = Device::cpu();
    // Ones, so that the pages are touched and resident.
    let x = Tensor::ones(&[1 << 20], DType::F64, &dev).unwrap();
    let allocated = dev.memory().current();
    assert_eq!(allocated, 8 << 20);
    if let Some(reserved) = dev.reserved_bytes() {
        assert!(reserved >= allocated, "{reserved} < {allocated}");
    }
    drop(x);
    tape::host_cache::release();
    assert_eq!(dev.memory().current(), 0);
    assert_eq!(
        tape::host_cache::is_enabled(),
        cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var("TAPE_HOST_CACHE").map_or(true, |v| v != "0")
    );
}

/// Marks split forward and backward into the stretches between them: each forward note is the
/// peak of the unit that a mark closes (the last unit stays open), each backward note the peak
/// of its stretch, in the order backward meets them; without a watcher a mark records nothing
/// and does not call its label.
#[test]
fn unit_peaks_are_noted_between_marks() {
    use tape::{ops, DType, Device, Tape, UnitPeaks};
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[1000], DType::F64, &dev, 1);
    let peaks = UnitPeaks::new(&dev);
    let mut tape = Tape::recording().watch_unit_peaks(peaks.clone());
    tape.mark(|| "small".into());
    let small = ops::scale(&mut tape, &x, 2.0).unwrap();
    let small = ops::sum(&mut tape, &small).unwrap();
    tape.mark(|| "big".into());
    // A unit whose backward holds a 10x larger gradient.
    let wide = ops::reshape(&mut tape, &x, &[1, 1000]).unwrap();
    let wide = ops::concat(&mut tape, &[&wide; 10]).unwrap();
    let big = ops::sum(&mut tape, &wide).unwrap();
    let loss = ops::add(&mut tape, &small, &big).unwrap();
    drop(wide);
    // Forward: "small" (closed by the "big" mark) held x, the scaled copy and the sum; "big" is
    // still open.
    let forward = peaks.take_forward();
    assert_eq!(forward.len(), 1, "{forward:?}");
    assert_eq!(forward[0], ("small".to_string(), 2 * 8000 + 8));
    let grads = tape.backward(&loss).unwrap();
    drop(grads);
    let notes = peaks.take_backward();
    let labels: Vec<&str> = notes.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["big", "small"]);
    let (big_peak, small_peak) = (notes[0].1, notes[1].1);
    assert!(big_peak >= 10 * 8000, "the concat's gradient: {big_peak}");
    // x, its gradient, and the scale's output and input gradients with their sum.
    assert!(small_peak < 6 * 8000, "{small_peak}");
    assert!(big_peak > 2 * small_peak);
    assert!(peaks.take_backward().is_empty(), "take clears the notes");

    let mut plain = Tape::recording();
    plain.mark(|| panic!("no watcher: the label is not made"));
}

/// The mean is the sum over the count, and its gradient one over the count per element.
#[test]
fn mean_and_its_gradient() {
    use tape::{ops, DType, Device, Tape, Tensor};
    let dev = Device::cpu();
    let x = crate::common::leaf(Tensor::from_f64(
        &[1.0, 2.0, 3.0, 6.0],
        &[2, 2],
        DType::F64,
        &dev,
    ));
    let mut tape = Tape::recording();
    let m = ops::mean(&mut tape, &x).unwrap();
    assert_eq!(m.to_f64_vec(), vec![3.0]);
    let grads = tape.backward(&m).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_f64_vec(), vec![0.25; 4]);
}

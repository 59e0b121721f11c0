//! The ops that keep a training step on the device: labels made once per batch
//! ([`Labels`], shared by the loss and its gradient), the top-1 hit count (`correct_count`)
//! and the fused finiteness flag (`non_finite`), each one kernel call and no host read.

use tape::testing::{gpu, DTYPES};
use tape::{ops, Counters, DType, Device, Error, Labels, Tape, Tensor};

/// Top-1 hits the plain way: the last maximum in `total_cmp` order of each row.
fn hits_by_hand(logits: &[f64], classes: usize, labels: &[usize]) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &y)| {
            let mut best = 0;
            for j in 0..classes {
                if row[j].total_cmp(&row[best]).is_ge() {
                    best = j;
                }
            }
            best == y
        })
        .count()
}

/// Logits with ties, NaNs and infinities here and there.
fn logits(n: usize, classes: usize, seed: u64) -> Vec<f64> {
    let mut v = Tensor::randn(&[n * classes], DType::F64, &Device::cpu(), seed)
        .unwrap()
        .to_f64_vec();
    for (i, x) in v.iter_mut().enumerate() {
        match i % 17 {
            3 => *x = 0.5,
            5 => *x = 0.5,
            7 if i % 3 == 0 => *x = f64::NAN,
            11 if i % 5 == 0 => *x = f64::INFINITY,
            13 if i % 7 == 0 => *x = f64::NEG_INFINITY,
            _ => {}
        }
    }
    v
}

fn labels_for(n: usize, classes: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 7 + i / 3) % classes).collect()
}

#[test]
fn correct_count_counts_top1_hits_in_one_launch() {
    for dtype in DTYPES {
        for (n, classes) in [(1, 1), (5, 3), (64, 10), (300, 7)] {
            let dev = Device::cpu();
            let values = logits(n, classes, n as u64);
            let x = Tensor::from_f64(&values, &[n, classes], dtype, &dev).unwrap();
            let y = labels_for(n, classes);
            let labels = Labels::new(&y, &dev).unwrap();
            let (count, c) = dev.count(|| ops::correct_count(&x, &labels).unwrap());
            assert_eq!(
                c,
                Counters {
                    launches: 1,
                    allocs: 1,
                    syncs: 0
                }
            );
            assert_eq!(count.shape(), &[1]);
            assert_eq!(count.dtype(), dtype);
            // The rounded logits are what the op sees.
            let want = hits_by_hand(&x.to_f64_vec(), classes, &y);
            assert_eq!(
                count.scalar().unwrap(),
                want as f64,
                "{dtype:?} {n}x{classes}"
            );
        }
    }
    // Every row right, and a row whose maximum appears twice: the last one counts.
    let dev = Device::cpu();
    let x = Tensor::from_f64(&[0.0, 2.0, 1.0, 3.0, 1.0, 3.0], &[2, 3], DType::F32, &dev).unwrap();
    let count = |y: &[usize]| {
        let labels = Labels::new(y, &dev).unwrap();
        ops::correct_count(&x, &labels).unwrap().scalar().unwrap()
    };
    assert_eq!(count(&[1, 2]), 2.0);
    assert_eq!(count(&[1, 0]), 1.0);
    assert_eq!(count(&[0, 0]), 0.0);
}

#[test]
fn correct_count_checks_its_arguments() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[2, 3], DType::F32, &dev).unwrap();
    let count =
        |x: &Tensor, y: &[usize], on: &Device| ops::correct_count(x, &Labels::new(y, on).unwrap());
    assert!(matches!(count(&x, &[0], &dev), Err(Error::Shape { .. })));
    assert!(matches!(
        count(&x, &[0, 3], &dev),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        count(&x, &[0, 1], &Device::cpu()),
        Err(Error::Device { .. })
    ));
    let flat = Tensor::zeros(&[6], DType::F32, &dev).unwrap();
    assert!(matches!(
        count(&flat, &[0, 1], &dev),
        Err(Error::Shape { .. })
    ));
    let none = Tensor::zeros(&[2, 0], DType::F32, &dev).unwrap();
    assert!(matches!(
        count(&none, &[0, 0], &dev),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Tensors of several sizes (one spans several CPU work chunks), all finite.
fn finite_set(dtype: DType, dev: &Device) -> Vec<Tensor> {
    [1, 10, 16384, 40_000, 0]
        .iter()
        .enumerate()
        .map(|(i, &n)| Tensor::randn(&[n], dtype, dev, i as u64).unwrap())
        .collect()
}

#[test]
fn non_finite_flags_any_nan_or_infinity_in_one_launch() {
    for dtype in DTYPES {
        let dev = Device::cpu();
        let set = finite_set(dtype, &dev);
        let refs: Vec<&Tensor> = set.iter().collect();
        let (flag, c) = dev.count(|| ops::non_finite(&refs).unwrap());
        assert_eq!(
            c,
            Counters {
                launches: 1,
                allocs: 1,
                syncs: 0
            }
        );
        assert_eq!((flag.shape(), flag.dtype()), (&[1][..], dtype));
        assert_eq!(flag.scalar().unwrap(), 0.0);
        // One bad element anywhere, in any tensor (the last elements of the long one too).
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (t, at) in [(0, 0), (1, 9), (2, 16383), (3, 16384), (3, 39_999)] {
                let mut set = finite_set(dtype, &dev);
                let mut v = set[t].to_f64_vec();
                v[at] = bad;
                set[t] = Tensor::from_f64(&v, set[t].shape(), dtype, &dev).unwrap();
                let refs: Vec<&Tensor> = set.iter().collect();
                let flag = ops::non_finite(&refs).unwrap().scalar().unwrap();
                assert_eq!(flag, 1.0, "{dtype:?} {bad} in tensor {t} at {at}");
            }
        }
    }
    // The largest finite values are finite.
    let dev = Device::cpu();
    let big = Tensor::from_f64(
        &[f64::from(f32::MAX), -f64::from(f32::MAX)],
        &[2],
        DType::F32,
        &dev,
    );
    assert_eq!(
        ops::non_finite(&[&big.unwrap()]).unwrap().scalar().unwrap(),
        0.0
    );
}

#[test]
fn non_finite_checks_its_arguments() {
    let dev = Device::cpu();
    let a = Tensor::zeros(&[2], DType::F32, &dev).unwrap();
    let b = Tensor::zeros(&[2], DType::F64, &dev).unwrap();
    let c = Tensor::zeros(&[2], DType::F32, &Device::cpu()).unwrap();
    assert!(matches!(
        ops::non_finite(&[]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ops::non_finite(&[&a, &b]),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        ops::non_finite(&[&a, &c]),
        Err(Error::Device { .. })
    ));
}

#[test]
fn labels_made_once_serve_the_loss_and_its_gradient() {
    for dtype in DTYPES {
        let dev = Device::cpu();
        let (n, classes) = (6, 4);
        let x = tape::testing::randn_leaf(&[n, classes], dtype, &dev, 9);
        let y = labels_for(n, classes);
        let run = |labels: Option<&Labels>| {
            let mut tape = Tape::recording();
            let loss = match labels {
                Some(l) => ops::cross_entropy_labels(&mut tape, &x, l).unwrap(),
                None => ops::cross_entropy(&mut tape, &x, &y).unwrap(),
            };
            let g = tape.backward(&loss).unwrap();
            (loss.to_f64_vec(), g.get(&x).unwrap().to_f64_vec())
        };
        let labels = Labels::new(&y, &dev).unwrap();
        assert_eq!(labels.values(), &y[..]);
        assert_eq!((labels.len(), labels.is_empty()), (n, false));
        assert!(labels.device().same(&dev));
        assert_eq!(run(Some(&labels)), run(None), "{dtype:?}");
        // Labels on another device, too few or out of range are errors.
        let mut tape = Tape::recording();
        let other = Labels::new(&y, &Device::cpu()).unwrap();
        let r = ops::cross_entropy_labels(&mut tape, &x, &other);
        assert!(matches!(r, Err(Error::Device { .. })));
        let short = Labels::new(&y[1..], &dev).unwrap();
        let r = ops::cross_entropy_labels(&mut tape, &x, &short);
        assert!(matches!(r, Err(Error::Shape { .. })));
        let wide = Labels::new(&[0, 1, 2, 3, 4, 0], &dev).unwrap();
        let r = ops::cross_entropy_labels(&mut tape, &x, &wide);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
    }
}

/// On a GPU: both ops against the CPU, with the same counts. Skipped without a usable GPU;
/// fails instead under `TAPE_EXPECT_GPU=1`. Not yet run on a GPU.
#[test]
fn on_gpu() {
    let Some(g) = gpu() else { return };
    for dtype in DTYPES {
        let (n, classes) = (300, 7);
        let y = labels_for(n, classes);
        let count = |dev: &Device| {
            let x = Tensor::from_f64(&logits(n, classes, 4), &[n, classes], dtype, dev).unwrap();
            let labels = Labels::new(&y, dev).unwrap();
            let (t, c) = dev.count(|| ops::correct_count(&x, &labels).unwrap());
            (t.scalar().unwrap(), c)
        };
        assert_eq!(count(&g), count(&Device::cpu()), "{dtype:?}");
        let flag = |dev: &Device, bad: bool| {
            let mut set = finite_set(dtype, dev);
            if bad {
                let mut v = set[3].to_f64_vec();
                v[39_999] = f64::NAN;
                set[3] = Tensor::from_f64(&v, &[40_000], dtype, dev).unwrap();
            }
            let refs: Vec<&Tensor> = set.iter().collect();
            let (t, c) = dev.count(|| ops::non_finite(&refs).unwrap());
            (t.scalar().unwrap(), c)
        };
        for bad in [false, true] {
            assert_eq!(flag(&g, bad), flag(&Device::cpu(), bad), "{dtype:?} {bad}");
        }
    }
}

//! Data tests: the CIFAR-10 binary loader (layout, labels, normalisation, errors naming the
//! file), the crop/flip augmentation, seeded shuffling and the synthetic dataset.

use densenet::data::{
    epoch_batches, epoch_order, load_cifar10, load_cifar10_files, synthetic, Augment, CropFlip,
    Dataset, CIFAR10_MEAN, CIFAR10_STD,
};
use densenet::DenseNetError;
use std::path::{Path, PathBuf};
use tape::{DType, Device};

const RECORD: usize = 3073;

/// A fresh, unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "densenet-data-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pixel value of record `r`, channel `c`, row `y`, column `x` in the files we write.
fn pixel(r: usize, c: usize, y: usize, x: usize) -> u8 {
    ((r * 31 + c * 80 + y * 5 + x * 3) % 256) as u8
}

/// `n` CIFAR-10 records whose labels are `label_of(r)` and pixels `pixel(first + r, ..)`.
fn records(first: usize, n: usize, label_of: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * RECORD);
    for r in 0..n {
        out.push(label_of(first + r));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(pixel(first + r, c, y, x));
                }
            }
        }
    }
    out
}

/// Writes a full CIFAR-10 directory: `per_file` records in each of the five train files and
/// `test_n` in the test file; record `r` (counted across the train files) has label `r % 10`.
fn write_cifar(dir: &Path, per_file: usize, test_n: usize) {
    for f in 0..5 {
        let bytes = records(f * per_file, per_file, |r| (r % 10) as u8);
        std::fs::write(dir.join(format!("data_batch_{}.bin", f + 1)), bytes).unwrap();
    }
    let bytes = records(1000, test_n, |r| (9 - r % 10) as u8);
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
}

fn data_err(r: densenet::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(DenseNetError::Data(msg)) => msg,
        other => panic!("expected a Data error, got {other:?}"),
    }
}

#[test]
fn loads_records_with_labels_and_channel_planes() {
    let tmp = TempDir::new("load");
    write_cifar(tmp.path(), 3, 4);
    let (train, test) = load_cifar10(tmp.path()).unwrap();
    assert_eq!(train.len(), 15);
    assert_eq!(test.len(), 4);
    assert_eq!(train.num_classes(), 10);
    assert_eq!(train.image_shape(), [3, 32, 32]);
    // Labels in file order across data_batch_1..5.
    let want: Vec<u8> = (0..15).map(|r| (r % 10) as u8).collect();
    assert_eq!(train.labels(), &want[..]);
    assert_eq!(test.labels(), &[9, 8, 7, 6]);
    // Pixel placement: byte 1 + c*1024 + y*32 + x of a record is channel c, row y, column x.
    for r in [0, 4, 14] {
        let img = train.image(r);
        for (c, y, x) in [(0, 0, 0), (0, 0, 31), (1, 5, 7), (2, 31, 0), (2, 31, 31)] {
            assert_eq!(
                img[c * 1024 + y * 32 + x],
                pixel(r, c, y, x),
                "record {r} c{c} y{y} x{x}"
            );
        }
    }
    assert_eq!(test.image(2)[1024 + 3 * 32 + 4], pixel(1002, 1, 3, 4));
    assert_eq!(train.mean(), &CIFAR10_MEAN);
    assert_eq!(train.std(), &CIFAR10_STD);
}

#[test]
fn finds_the_unpacked_archive_folder() {
    let tmp = TempDir::new("nested");
    let nested = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&nested).unwrap();
    write_cifar(&nested, 1, 1);
    let (train, test) = load_cifar10(tmp.path()).unwrap();
    assert_eq!((train.len(), test.len()), (5, 1));
}

#[test]
fn batch_tensor_is_normalised_per_channel() {
    let tmp = TempDir::new("norm");
    write_cifar(tmp.path(), 2, 2);
    let (train, _) = load_cifar10(tmp.path()).unwrap();
    let dev = Device::cpu();
    let batch = train.batch(&[3, 0], DType::F64, &dev).unwrap();
    assert_eq!(batch.images.shape(), &[2, 3, 32, 32]);
    assert_eq!(batch.images.dtype(), DType::F64);
    assert_eq!(batch.labels, vec![3, 0]);
    let v = batch.images.to_f64_vec();
    for (b, r) in [(0usize, 3usize), (1, 0)] {
        for (c, y, x) in [(0, 0, 0), (1, 10, 20), (2, 31, 31)] {
            let raw = pixel(r, c, y, x) as f64 / 255.0;
            let want = (raw - CIFAR10_MEAN[c] as f64) / CIFAR10_STD[c] as f64;
            let got = v[((b * 3 + c) * 32 + y) * 32 + x];
            assert!((got - want).abs() < 1e-6, "b{b} c{c}: {got} vs {want}");
        }
    }
    // Exact extremes: 0 and 255 map to (0 - m) / s and (1 - m) / s.
    let ds = Dataset::new(vec![0, 255], vec![0], [2, 1, 1], 1)
        .unwrap()
        .with_normalization(&[0.25, 0.5], &[0.5, 0.25])
        .unwrap();
    let t = ds.batch(&[0], DType::F32, &dev).unwrap();
    assert_eq!(t.images.dtype(), DType::F32);
    assert_eq!(t.images.to_f64_vec(), vec![-0.5, 2.0]);
    // Out-of-range and empty batches fail cleanly.
    assert!(data_err(train.batch(&[10], DType::F32, &dev)).contains("out of range"));
    assert!(data_err(train.batch(&[], DType::F32, &dev)).contains("at least one"));
}

#[test]
fn missing_file_error_names_the_file() {
    let tmp = TempDir::new("missing");
    write_cifar(tmp.path(), 1, 1);
    std::fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
    let msg = data_err(load_cifar10(tmp.path()));
    assert!(msg.contains("data_batch_3.bin"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");

    let msg = data_err(load_cifar10(&tmp.path().join("no-such-dir")));
    assert!(
        msg.contains("no-such-dir") && msg.contains("no such directory"),
        "{msg}"
    );
}

#[test]
fn truncated_file_error() {
    let tmp = TempDir::new("trunc");
    write_cifar(tmp.path(), 2, 1);
    let mut bytes = records(0, 2, |_| 1);
    bytes.truncate(RECORD + 100);
    std::fs::write(tmp.path().join("data_batch_2.bin"), bytes).unwrap();
    let msg = data_err(load_cifar10(tmp.path()));
    assert!(msg.contains("data_batch_2.bin"), "{msg}");
    assert!(msg.contains("3173") && msg.contains("3073"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn empty_file_error() {
    let tmp = TempDir::new("empty");
    write_cifar(tmp.path(), 1, 1);
    std::fs::write(tmp.path().join("test_batch.bin"), b"").unwrap();
    let msg = data_err(load_cifar10(tmp.path()));
    assert!(
        msg.contains("test_batch.bin") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn bad_label_error() {
    let tmp = TempDir::new("label");
    let path = tmp.path().join("labels.bin");
    std::fs::write(&path, records(0, 3, |r| if r == 2 { 42 } else { 1 })).unwrap();
    let msg = data_err(load_cifar10_files(&[&path]));
    assert!(msg.contains("labels.bin"), "{msg}");
    assert!(
        msg.contains("record 2") && msg.contains("label 42"),
        "{msg}"
    );
    assert!(msg.contains("expected 0..=9"), "{msg}");
}

#[test]
fn dataset_new_validates() {
    assert!(data_err(Dataset::new(vec![0; 5], vec![0], [1, 2, 2], 2)).contains("expected 4"));
    assert!(data_err(Dataset::new(vec![0; 4], vec![2], [1, 2, 2], 2)).contains("label 2"));
    let ds = Dataset::new(vec![0; 4], vec![1], [1, 2, 2], 2).unwrap();
    assert!(data_err(ds.clone().with_normalization(&[0.5], &[0.0])).contains("std"));
    assert!(data_err(ds.with_normalization(&[0.5, 0.5], &[1.0, 1.0])).contains("needs 1"));
}

#[test]
fn truncate_keeps_a_prefix() {
    let (mut train, _) = synthetic(20, 0, 4, 8, 1);
    let first = train.image(3).to_vec();
    train.truncate(5);
    assert_eq!(train.len(), 5);
    assert_eq!(train.images().len(), 5 * 3 * 64);
    assert_eq!(train.image(3), &first[..]);
    train.truncate(100);
    assert_eq!(train.len(), 5);
}

/// A 2-channel 3x4 image whose pixel (c, y, x) is `1 + 100c + 10y + x` (never 0).
fn ramp() -> Vec<u8> {
    let mut v = Vec::new();
    for c in 0..2 {
        for y in 0..3 {
            for x in 0..4 {
                v.push((1 + 100 * c + 10 * y + x) as u8);
            }
        }
    }
    v
}

#[test]
fn flip_reverses_columns() {
    let src = ramp();
    let mut dst = vec![0; src.len()];
    CropFlip {
        dy: 0,
        dx: 0,
        flip: true,
    }
    .apply(&src, [2, 3, 4], &mut dst);
    for c in 0..2 {
        for y in 0..3 {
            for x in 0..4 {
                assert_eq!(dst[(c * 3 + y) * 4 + x], src[(c * 3 + y) * 4 + (3 - x)]);
            }
        }
    }
    let mut id = vec![0; src.len()];
    CropFlip::default().apply(&src, [2, 3, 4], &mut id);
    assert_eq!(id, src);
}

#[test]
fn crop_with_offset_shifts_and_zero_fills() {
    let src = ramp();
    let mut dst = vec![0xAA; src.len()];
    // A crop at (top, left) = (pad + 1, pad - 2) of the padded image: out(y, x) = in(y + 1, x - 2).
    CropFlip {
        dy: 1,
        dx: -2,
        flip: false,
    }
    .apply(&src, [2, 3, 4], &mut dst);
    for c in 0..2 {
        for y in 0..3 {
            for x in 0..4 {
                let got = dst[(c * 3 + y) * 4 + x];
                let (sy, sx) = (y as isize + 1, x as isize - 2);
                if sy >= 3 || sx < 0 {
                    assert_eq!(got, 0, "border c{c} y{y} x{x}");
                } else {
                    assert_eq!(
                        got,
                        src[(c * 3 + sy as usize) * 4 + sx as usize],
                        "c{c} y{y} x{x}"
                    );
                }
            }
        }
    }
    // Row 0 of channel 0 is [0, 0, in(1,0), in(1,1)]; the last row is all zero.
    assert_eq!(&dst[0..4], &[0, 0, 11, 12]);
    assert_eq!(&dst[8..12], &[0, 0, 0, 0]);
    // Crop then flip: out(y, x) = in(y + dy, (w - 1 - x) + dx).
    CropFlip {
        dy: -1,
        dx: 1,
        flip: true,
    }
    .apply(&src, [2, 3, 4], &mut dst);
    assert_eq!(&dst[0..4], &[0, 0, 0, 0]);
    assert_eq!(&dst[4..8], &[0, 4, 3, 2]);
}

#[test]
fn augmentation_draws_stay_in_range_and_vary() {
    let aug = Augment::cifar(7);
    let draws: Vec<CropFlip> = (0..2000).map(|i| aug.draw(0, i)).collect();
    assert!(draws
        .iter()
        .all(|d| (-4..=4).contains(&d.dy) && (-4..=4).contains(&d.dx)));
    for v in -4..=4 {
        assert!(
            draws.iter().any(|d| d.dx == v) && draws.iter().any(|d| d.dy == v),
            "offset {v}"
        );
    }
    let flips = draws.iter().filter(|d| d.flip).count();
    assert!((800..1200).contains(&flips), "{flips} flips of 2000");
    assert_ne!(
        (0..50).map(|i| aug.draw(0, i)).collect::<Vec<_>>(),
        (0..50).map(|i| aug.draw(1, i)).collect::<Vec<_>>(),
        "epochs draw differently"
    );
    let none = Augment {
        pad: 0,
        flip: false,
        seed: 7,
    };
    assert!((0..100).all(|i| none.draw(3, i) == CropFlip::default()));
}

#[test]
fn same_seed_same_augmented_batch() {
    let (train, _) = synthetic(16, 0, 4, 32, 3);
    let dev = Device::cpu();
    let idx = [5, 1, 9, 12];
    let a = train
        .augmented_batch(&idx, &Augment::cifar(11), 2, DType::F32, &dev)
        .unwrap();
    let b = train
        .augmented_batch(&idx, &Augment::cifar(11), 2, DType::F32, &dev)
        .unwrap();
    assert_eq!(a.images.to_f64_vec(), b.images.to_f64_vec());
    assert_eq!(a.labels, b.labels);
    // An image's augmentation depends on its index, not on its place in the batch.
    let c = train
        .augmented_batch(&[12, 5], &Augment::cifar(11), 2, DType::F32, &dev)
        .unwrap();
    let (av, cv) = (a.images.to_f64_vec(), c.images.to_f64_vec());
    let n = 3 * 32 * 32;
    assert_eq!(&av[3 * n..4 * n], &cv[0..n]);
    assert_eq!(&av[0..n], &cv[n..2 * n]);
    let d = train
        .augmented_batch(&idx, &Augment::cifar(12), 2, DType::F32, &dev)
        .unwrap();
    assert_ne!(av, d.images.to_f64_vec());
    // The augmented batch equals crop/flip of the raw bytes, then normalisation.
    let cf = Augment::cifar(11).draw(2, 9);
    let mut raw = vec![0; n];
    cf.apply(train.image(9), [3, 32, 32], &mut raw);
    let want = Dataset::new(raw, vec![train.labels()[9]], [3, 32, 32], 4)
        .unwrap()
        .with_normalization(train.mean(), train.std())
        .unwrap()
        .batch(&[0], DType::F32, &dev)
        .unwrap();
    assert_eq!(&av[2 * n..3 * n], &want.images.to_f64_vec()[..]);
}

#[test]
fn shuffling_is_a_seeded_permutation() {
    for n in [0, 1, 2, 10, 1000] {
        let mut o = epoch_order(n, 5, 0);
        assert_eq!(o.len(), n);
        o.sort_unstable();
        assert_eq!(o, (0..n).collect::<Vec<_>>());
    }
    assert_eq!(epoch_order(100, 5, 3), epoch_order(100, 5, 3));
    assert_ne!(epoch_order(100, 5, 3), epoch_order(100, 5, 4));
    assert_ne!(epoch_order(100, 5, 3), epoch_order(100, 6, 3));
    assert_ne!(epoch_order(100, 5, 3), (0..100).collect::<Vec<_>>());
    let batches = epoch_batches(10, 4, 5, 3);
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    assert_eq!(batches.concat(), epoch_order(10, 5, 3));
}

#[test]
fn synthetic_shapes_and_labels() {
    let (train, test) = synthetic(50, 13, 7, 16, 9);
    assert_eq!((train.len(), test.len()), (50, 13));
    assert_eq!(train.image_shape(), [3, 16, 16]);
    assert_eq!(test.image_shape(), [3, 16, 16]);
    assert_eq!(train.num_classes(), 7);
    assert!(train.labels().iter().chain(test.labels()).all(|&l| l < 7));
    for k in 0..7 {
        assert!(train.labels().contains(&k), "class {k} missing");
    }
    // Normalised with the training set's statistics, shared by the test set.
    assert_eq!(train.mean(), test.mean());
    assert_eq!(train.std(), test.std());
    let dev = Device::cpu();
    let all: Vec<usize> = (0..train.len()).collect();
    let v = train
        .batch(&all, DType::F64, &dev)
        .unwrap()
        .images
        .to_f64_vec();
    let plane = 16 * 16;
    for c in 0..3 {
        let vals: Vec<f64> = (0..50)
            .flat_map(|i| v[(i * 3 + c) * plane..(i * 3 + c + 1) * plane].to_vec())
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / vals.len() as f64;
        assert!(
            mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-2,
            "channel {c}: {mean} {var}"
        );
    }
    // Reproducible, and train and test are different draws.
    assert_eq!(synthetic(50, 13, 7, 16, 9), (train.clone(), test.clone()));
    assert_ne!(synthetic(50, 13, 7, 16, 10).0, train);
    assert_ne!(train.image(0), test.image(0));
}

#[test]
fn synthetic_classes_are_separable_by_mean_colour() {
    // A nearest-class-mean classifier on mean colour already beats chance by far: the set is
    // learnable.
    let (train, test) = synthetic(200, 100, 10, 16, 4);
    let colour = |img: &[u8]| -> [f64; 3] {
        let p = img.len() / 3;
        std::array::from_fn(|c| {
            img[c * p..(c + 1) * p]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / p as f64
        })
    };
    let mut centre = [[0f64; 3]; 10];
    let mut count = [0f64; 10];
    for i in 0..train.len() {
        let l = train.labels()[i] as usize;
        let c = colour(train.image(i));
        (0..3).for_each(|k| centre[l][k] += c[k]);
        count[l] += 1.0;
    }
    for l in 0..10 {
        (0..3).for_each(|k| centre[l][k] /= count[l]);
    }
    let hits = (0..test.len())
        .filter(|&i| {
            let c = colour(test.image(i));
            let best = (0..10)
                .min_by(|&a, &b| {
                    let d = |l: usize| (0..3).map(|k| (c[k] - centre[l][k]).powi(2)).sum::<f64>();
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            best == test.labels()[i] as usize
        })
        .count();
    assert!(hits >= 60, "{hits}/100");
}

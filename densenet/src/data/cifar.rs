//! The CIFAR-10 binary format (`cifar-10-binary.tar.gz`): `data_batch_1.bin` ..
//! `data_batch_5.bin` (50,000 training images) and `test_batch.bin` (10,000 test images). Each
//! record is one label byte (0-9) followed by 3072 pixel bytes: the 1024 red, then 1024 green,
//! then 1024 blue values of a 32x32 image, each plane row-major.

use super::Dataset;
use crate::error::{io_err, DenseNetError, Result};
use std::path::{Path, PathBuf};

/// Side of a CIFAR-10 image.
pub const CIFAR10_SIZE: usize = 32;
/// Pixel bytes of one record (3 planes of 32x32).
pub const CIFAR10_IMAGE_BYTES: usize = 3 * CIFAR10_SIZE * CIFAR10_SIZE;
/// Bytes of one record: the label byte and the pixels.
pub const CIFAR10_RECORD_BYTES: usize = 1 + CIFAR10_IMAGE_BYTES;
/// Number of CIFAR-10 classes.
pub const CIFAR10_CLASSES: usize = 10;
/// The seed's per-channel mean of CIFAR-10 training pixels (RGB, in `[0, 1]`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// The seed's per-channel standard deviation of CIFAR-10 training pixels (RGB, in `[0, 1]`).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// The training files, in order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// The class names, by label.
pub const CIFAR10_CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Splits CIFAR-10 records into pixel bytes and labels; `name` (the file) goes into every error.
/// Fails on empty input, a size that is not a whole number of 3073-byte records, or a label
/// above 9.
pub fn parse_cifar10(bytes: &[u8], name: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() {
        return Err(DenseNetError::Data(format!(
            "{name}: the file is empty, expected {CIFAR10_RECORD_BYTES}-byte CIFAR-10 records \
             (1 label byte + {CIFAR10_IMAGE_BYTES} pixel bytes)"
        )));
    }
    if !bytes.len().is_multiple_of(CIFAR10_RECORD_BYTES) {
        return Err(DenseNetError::Data(format!(
            "{name}: size {} bytes is not a multiple of the {CIFAR10_RECORD_BYTES}-byte CIFAR-10 \
             record (1 label byte + {CIFAR10_IMAGE_BYTES} pixel bytes): {} whole records and {} \
             bytes left over; the file is truncated or not in the CIFAR-10 binary format",
            bytes.len(),
            bytes.len() / CIFAR10_RECORD_BYTES,
            bytes.len() % CIFAR10_RECORD_BYTES
        )));
    }
    let n = bytes.len() / CIFAR10_RECORD_BYTES;
    let mut images = Vec::with_capacity(n * CIFAR10_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label as usize >= CIFAR10_CLASSES {
            return Err(DenseNetError::Data(format!(
                "{name}: record {i} (byte offset {}) has label {label}, expected 0..=9; \
                 is this CIFAR-100 or another format rather than CIFAR-10 binary?",
                i * CIFAR10_RECORD_BYTES
            )));
        }
        labels.push(label);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

fn not_found(path: &Path) -> DenseNetError {
    DenseNetError::Data(format!(
        "{}: file not found; expected the CIFAR-10 binary version (data_batch_1.bin .. \
         data_batch_5.bin and test_batch.bin, from cifar-10-binary.tar.gz)",
        path.display()
    ))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            not_found(path)
        } else {
            io_err(path)(e)
        }
    })
}

/// Reads CIFAR-10 binary files (concatenated, in order) into one dataset with the seed's
/// normalisation ([`CIFAR10_MEAN`], [`CIFAR10_STD`]).
pub fn load_cifar10_files<P: AsRef<Path>>(paths: &[P]) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        let (im, lb) = parse_cifar10(&bytes, &path.display().to_string())?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    Dataset::new(
        images,
        labels,
        [3, CIFAR10_SIZE, CIFAR10_SIZE],
        CIFAR10_CLASSES,
    )?
    .with_normalization(&CIFAR10_MEAN, &CIFAR10_STD)
}

/// The directory holding the batch files: `dir` itself, or `dir/cifar-10-batches-bin` (what the
/// archive unpacks to) when only that one has them.
fn batches_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(DenseNetError::Data(format!(
            "{}: {}; pass the folder holding data_batch_1.bin .. data_batch_5.bin and \
             test_batch.bin",
            dir.display(),
            if dir.exists() {
                "not a directory"
            } else {
                "no such directory"
            }
        )));
    }
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join(CIFAR10_TRAIN_FILES[0]).exists() && nested.join(CIFAR10_TRAIN_FILES[0]).exists() {
        return Ok(nested);
    }
    Ok(dir.to_path_buf())
}

/// Loads CIFAR-10 from `dir` (or `dir/cifar-10-batches-bin`): the five training files and the
/// test file, as (train, test) with the seed's normalisation. Errors name the offending file.
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    let dir = batches_dir(dir)?;
    // Check every file exists first, so a missing one is reported before minutes of reading.
    let train_paths: Vec<PathBuf> = CIFAR10_TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    let test_path = dir.join(CIFAR10_TEST_FILE);
    for p in train_paths.iter().chain(std::iter::once(&test_path)) {
        if !p.exists() {
            return Err(not_found(p));
        }
    }
    let train = load_cifar10_files(&train_paths)?;
    let test = load_cifar10_files(&[test_path])?;
    Ok((train, test))
}
